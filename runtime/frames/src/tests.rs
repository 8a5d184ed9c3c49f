//! Folder loading, decoding and tensor conversion tests (on PNGs written to a temp folder).

use std::path::Path;

use crate::testutil::{gray, write, TempDir};
use crate::*;

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn cfg(channels: u8, height: u32, width: u32) -> ModelConfig {
    let c = channels as usize;
    ModelConfig {
        input: "input".into(),
        output: "logits".into(),
        channels,
        height,
        width,
        mean: vec![0.1307; c],
        std: vec![0.3081; c],
        classes: classes(10),
    }
}

fn names(ds: &Dataset) -> Vec<String> {
    ds.items()
        .iter()
        .map(|i| {
            i.path
                .strip_prefix(ds.root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// dir/0/{a,b}.png, dir/2/c.png, plus hidden entries that must be ignored.
fn labeled_tree() -> TempDir {
    let dir = TempDir::new("labeled");
    let p = dir.path();
    write(&p.join("2/c.png"), &gray(5, 4, 3));
    write(&p.join("0/b.png"), &gray(5, 4, 2));
    write(&p.join("0/a.png"), &gray(5, 4, 1));
    std::fs::write(p.join("0/.DS_Store"), b"junk").unwrap();
    std::fs::create_dir_all(p.join(".cache")).unwrap();
    std::fs::write(p.join(".cache/x.txt"), b"junk").unwrap();
    dir
}

#[test]
fn labeled_folder_loads_sorted_with_labels() {
    let dir = labeled_tree();
    let ds = Dataset::labeled(dir.path(), &classes(3)).unwrap();
    assert_eq!(names(&ds), ["0/a.png", "0/b.png", "2/c.png"]);
    assert_eq!(ds.labels(), [Some(0), Some(0), Some(2)]);
    assert!(ds.is_fully_labeled());
    assert_eq!(ds.len(), 3);
    let imgs = ds.load_all(&cfg(1, 4, 5)).unwrap();
    assert_eq!(imgs, [gray(5, 4, 1), gray(5, 4, 2), gray(5, 4, 3)]);
}

#[test]
fn labeled_folder_errors_name_the_culprit() {
    let dir = labeled_tree();
    write(&dir.path().join("x/d.png"), &gray(5, 4, 4));
    let err = Dataset::labeled(dir.path(), &classes(3)).unwrap_err();
    assert!(
        matches!(&err, FramesError::UnknownClass { name, .. } if name == "x"),
        "{err}"
    );
    assert!(err.to_string().contains("\"x\""), "{err}");

    let dir = labeled_tree();
    write(&dir.path().join("stray.png"), &gray(5, 4, 4));
    let err = Dataset::labeled(dir.path(), &classes(3)).unwrap_err();
    assert!(
        matches!(err, FramesError::UnexpectedEntry { ref path, .. } if path.ends_with("stray.png"))
    );

    let dir = labeled_tree();
    std::fs::write(dir.path().join("2/notes.txt"), b"hello").unwrap();
    let err = Dataset::labeled(dir.path(), &classes(3)).unwrap_err();
    assert!(
        matches!(err, FramesError::UnsupportedFile { ref path } if path.ends_with("2/notes.txt"))
    );
    assert!(err.to_string().contains("notes.txt"), "{err}");

    let dir = labeled_tree();
    std::fs::create_dir_all(dir.path().join("0/nested")).unwrap();
    let err = Dataset::labeled(dir.path(), &classes(3)).unwrap_err();
    assert!(
        matches!(err, FramesError::UnexpectedEntry { ref path, .. } if path.ends_with("0/nested"))
    );
}

#[test]
fn empty_datasets_are_errors_naming_the_folder() {
    let dir = TempDir::new("empty");
    let err = Dataset::labeled(dir.path(), &classes(3)).unwrap_err();
    assert!(matches!(err, FramesError::EmptyDataset { ref dir } if dir.is_dir()));
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("1")).unwrap();
    assert!(matches!(
        Dataset::labeled(dir.path(), &classes(3)),
        Err(FramesError::EmptyDataset { .. })
    ));
    assert!(matches!(
        Dataset::unlabeled(dir.path(), None),
        Err(FramesError::EmptyDataset { .. })
    ));
    let missing = dir.path().join("nope");
    let err = Dataset::unlabeled(&missing, None).unwrap_err();
    assert!(
        matches!(err, FramesError::Io { .. }) && err.to_string().contains("nope"),
        "{err}"
    );
}

#[test]
fn unlabeled_flat_and_class_folders() {
    let flat = TempDir::new("flat");
    write(&flat.path().join("b.jpg"), &gray(6, 6, 9).to_rgb());
    write(&flat.path().join("a.png"), &gray(6, 6, 1));
    std::fs::write(flat.path().join(".hidden.txt"), b"x").unwrap();
    let ds = Dataset::unlabeled(flat.path(), Some(&classes(10))).unwrap();
    assert_eq!(names(&ds), ["a.png", "b.jpg"]);
    assert_eq!(ds.labels(), [None, None]);
    assert!(!ds.is_fully_labeled());
    let imgs = ds.load_all(&cfg(1, 6, 6)).unwrap();
    assert_eq!(imgs[0], gray(6, 6, 1));
    assert_eq!(
        imgs[1].shape(),
        ImageShape {
            channels: 1,
            height: 6,
            width: 6
        }
    );

    let tree = labeled_tree();
    let ds = Dataset::unlabeled(tree.path(), Some(&classes(3))).unwrap();
    assert_eq!(ds.labels(), [Some(0), Some(0), Some(2)]);
    let ds = Dataset::unlabeled(tree.path(), None).unwrap();
    assert_eq!(names(&ds), ["0/a.png", "0/b.png", "2/c.png"]);
    assert_eq!(ds.labels(), [None, None, None]);
    let err = Dataset::unlabeled(tree.path(), Some(&classes(2))).unwrap_err();
    assert!(matches!(err, FramesError::UnknownClass { ref name, .. } if name == "2"));

    write(&tree.path().join("loose.png"), &gray(5, 4, 0));
    let err = Dataset::unlabeled(tree.path(), None).unwrap_err();
    assert!(matches!(err, FramesError::UnexpectedEntry { .. }), "{err}");

    std::fs::write(flat.path().join("readme.txt"), b"x").unwrap();
    let err = Dataset::unlabeled(flat.path(), None).unwrap_err();
    assert!(
        matches!(err, FramesError::UnsupportedFile { ref path } if path.ends_with("readme.txt"))
    );
}

#[test]
fn corrupt_images_give_decode_errors_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let good = dir.path().join("0/good.png");
    write(&good, &gray(16, 16, 0));
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("0/truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("0/text.jpg");
    std::fs::write(&text, b"this is not a jpeg").unwrap();
    let c = cfg(1, 16, 16);

    for path in [&truncated, &text] {
        let err = load_image(path, &c).unwrap_err();
        assert!(
            matches!(err, FramesError::Decode { path: ref p, .. } if p == path),
            "{err}"
        );
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(err.to_string().contains(&*name), "{err}");
    }
    // The listing accepts them (image extensions); decoding names the first bad one.
    let ds = Dataset::labeled(dir.path(), &classes(1)).unwrap();
    let err = ds.load_all(&c).unwrap_err();
    assert!(
        matches!(err, FramesError::Decode { ref path, .. } if path == &text),
        "{err}"
    );
    let err = load_image(dir.path().join("0/missing.png"), &c).unwrap_err();
    assert!(matches!(err, FramesError::Io { .. }), "{err}");
}

#[test]
fn load_image_converts_channels_and_resizes() {
    let dir = TempDir::new("convert");
    let red = dir.path().join("red.png");
    let mut rgb = Image8::filled(8, 4, 3, 0);
    for p in rgb.data.chunks_exact_mut(3) {
        p.copy_from_slice(&[255, 0, 0]);
    }
    write(&red, &rgb);

    // Same size, to gray: PIL luma of pure red is 76.
    let g = load_image(&red, &cfg(1, 4, 8)).unwrap();
    assert_eq!(
        g.shape(),
        ImageShape {
            channels: 1,
            height: 4,
            width: 8
        }
    );
    assert!(g.data.iter().all(|&v| v == 76));
    // Resized (down and up): a constant stays constant.
    let small = load_image(&red, &cfg(3, 2, 4)).unwrap();
    assert_eq!(
        small.shape(),
        ImageShape {
            channels: 3,
            height: 2,
            width: 4
        }
    );
    assert!(small.data.chunks_exact(3).all(|p| p == [255, 0, 0]));
    let big = load_image(&red, &cfg(1, 28, 28)).unwrap();
    assert_eq!(
        big.shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    assert!(big.data.iter().all(|&v| v == 76));

    // Gray to RGB repeats the value.
    let gpath = dir.path().join("g.png");
    write(&gpath, &gray(3, 3, 40));
    let rgb = load_image(&gpath, &cfg(3, 3, 3)).unwrap();
    assert_eq!(rgb, gray(3, 3, 40).to_rgb());

    // Bilinear resize of a left/right split. Downscaling widens the triangle to 2 px (as
    // PIL's antialiased BILINEAR does): output x=1 centres at input 3.0 and weighs inputs 1..4
    // by 1/8, 3/8, 3/8, 1/8, so 200/8 = 25.
    let mut split = Image8::filled(8, 2, 1, 0);
    for y in 0..2 {
        for x in 4..8 {
            split.data[y * 8 + x] = 200;
        }
    }
    let half = split.resized(4, 2);
    assert_eq!(&half.data[..4], &[0, 25, 175, 200]);
    let double = split.resized(16, 2);
    assert_eq!(double.data[0], 0);
    assert_eq!(double.data[15], 200);
    assert!(
        double.data[7] > 0 && double.data[8] < 200,
        "{:?}",
        &double.data[..16]
    );
}

#[test]
fn to_tensor_normalises_nchw() {
    let mut c = cfg(3, 1, 2);
    c.mean = vec![0.5, 0.25, 0.0];
    c.std = vec![0.5, 0.25, 1.0];
    let a = Image8::new(2, 1, 3, vec![255, 0, 51, 0, 255, 255]).unwrap();
    let b = Image8::new(2, 1, 3, vec![0; 6]).unwrap();
    let t = to_tensor(&[&a, &b], &c).unwrap();
    assert_eq!(t.shape(), [2, 3, 1, 2]);
    let v = t.as_f32().unwrap();
    let expected = [
        1.0, -1.0, // image a, channel 0: (1 - .5) / .5, (0 - .5) / .5
        -1.0, 3.0, // channel 1: (0 - .25) / .25, (1 - .25) / .25
        0.2, 1.0, // channel 2: 51 / 255, 1
        -1.0, -1.0, -1.0, -1.0, 0.0, 0.0, // image b
    ];
    for (got, want) in v.iter().zip(expected) {
        assert!((got - want).abs() < 1e-6, "{v:?}");
    }

    let mnist = cfg(1, 1, 2);
    let img = Image8::new(2, 1, 1, vec![0, 255]).unwrap();
    let t = to_tensor(&[&img], &mnist).unwrap();
    let v = t.as_f32().unwrap();
    assert!((v[0] - (-0.1307 / 0.3081)).abs() < 1e-6 && (v[1] - 0.8693 / 0.3081).abs() < 1e-5);

    let empty = to_tensor(&[], &mnist).unwrap();
    assert_eq!(empty.shape(), [0, 1, 1, 2]);
}

#[test]
fn to_tensor_rejects_wrong_shapes() {
    let c = cfg(1, 28, 28);
    let ok = Image8::filled(28, 28, 1, 0);
    let small = Image8::filled(27, 28, 1, 0);
    let rgb = Image8::filled(28, 28, 3, 0);
    let err = to_tensor(&[&ok, &small], &c).unwrap_err();
    assert!(
        matches!(err, FramesError::ShapeMismatch { index: 1, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("1x28x27") && msg.contains("1x28x28"), "{msg}");
    let err = to_tensor(&[&rgb], &c).unwrap_err();
    assert!(err.to_string().contains("3x28x28"), "{err}");
    let broken = Image8 {
        width: 28,
        height: 28,
        channels: 1,
        data: vec![0; 3],
    };
    assert!(matches!(
        to_tensor(&[&broken], &c),
        Err(FramesError::ShapeMismatch { .. })
    ));
}

#[test]
fn parallel_load_keeps_order() {
    let dir = TempDir::new("many");
    for i in 0..100u8 {
        write(
            &dir.path().join(format!("{}/{i:03}.png", i % 3)),
            &gray(4, 4, i),
        );
    }
    let ds = Dataset::labeled(dir.path(), &classes(3)).unwrap();
    let imgs = ds.load_all(&cfg(1, 4, 4)).unwrap();
    for (item, img) in ds.items().iter().zip(&imgs) {
        let i: u8 = item
            .path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(img, &gray(4, 4, i));
        assert_eq!(item.label, Some(i as usize % 3));
    }
}

/// The shipped MNIST model folder, when present: its config and 1,000 anchor images.
#[test]
fn shipped_mnist_model_folder() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cnn");
    let toml = model_toml_path(&model);
    if !toml.exists() {
        eprintln!("skipping: {} not present", toml.display());
        return;
    }
    let cfg = ModelConfig::load(&toml).unwrap();
    assert_eq!(
        cfg.input_shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    assert_eq!(cfg.classes, classes(10));
    let anchors = model.join("anchors");
    if !anchors.exists() {
        eprintln!("skipping anchors: {} not present", anchors.display());
        return;
    }
    let ds = Dataset::labeled(&anchors, &cfg.classes).unwrap();
    assert_eq!(ds.len(), 1000);
    assert!(ds.is_fully_labeled());
    let imgs = ds.load_all(&cfg).unwrap();
    let refs: Vec<&Image8> = imgs.iter().collect();
    let t = to_tensor(&refs, &cfg).unwrap();
    assert_eq!(t.shape(), [1000, 1, 28, 28]);
    assert!(t.as_f32().unwrap().iter().all(|v| v.is_finite()));
}

/// The shipped digit folders, when present: every file decodes to the MNIST model's input.
#[test]
fn shipped_digit_folders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
    let cfg = cfg(1, 28, 28);
    for name in ["mnist", "opencv-digits"] {
        let dir = root.join(name);
        if !dir.is_dir() {
            eprintln!("skipping: {} not present", dir.display());
            continue;
        }
        let ds = Dataset::labeled(&dir, &cfg.classes).unwrap();
        assert!(
            ds.is_fully_labeled() && ds.len() >= 1000,
            "{name}: {}",
            ds.len()
        );
        let imgs = ds.load_all(&cfg).unwrap();
        assert!(imgs.iter().all(|i| i.shape() == cfg.input_shape()));
        let unlabeled = Dataset::unlabeled(&dir, None).unwrap();
        assert_eq!(unlabeled.len(), ds.len());
    }
}
