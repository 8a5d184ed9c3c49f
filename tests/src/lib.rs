//! Helpers shared by the cross-crate tests: both engines, random tensors, and a central
//! finite-difference gradient check that runs compiled gradient graphs on a real engine.

use fieldtune_engine::{Engine, OrtEngine, OrtOptions, Session, TractEngine};
use fieldtune_graph::autodiff::backward;
use fieldtune_graph::builder::Builder;
use fieldtune_graph::ir::{attr, encode_model, Elem};
use fieldtune_graph::proto::AttributeProto;
use fieldtune_tensor::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A 2-D Conv's attributes: `group`, the same stride and dilation on both axes, explicit
/// `pads` (`[top, left, bottom, right]`) and `kernel_shape`.
pub fn conv_attrs(
    group: usize,
    stride: usize,
    dilation: usize,
    pads: [i64; 4],
    kernel: [usize; 2],
) -> Vec<AttributeProto> {
    vec![
        attr::int("group", group as i64),
        attr::ints("strides", &[stride as i64; 2]),
        attr::ints("dilations", &[dilation as i64; 2]),
        attr::ints("pads", &pads),
        attr::ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
    ]
}

/// Repository root (tests run from the crate dir).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// ONNX Runtime, found the way users find it. Tests need it: a missing library fails loudly.
pub fn ort() -> OrtEngine {
    OrtEngine::new(OrtOptions {
        intra_threads: Some(1),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("ONNX Runtime not found: run scripts/install-ort.sh ({e})"))
}

/// The target the parity suites compile for: portable, or with `FIELDTUNE_TARGET=tuned` the
/// fieldtune-domain ops that both ONNX Runtime (CPU) and tract register, so one graph runs on
/// both engines.
pub fn suite_target() -> fieldtune_graph::Target {
    match std::env::var(fieldtune_graph::TARGET_ENV).as_deref() {
        Ok("tuned") => fieldtune_graph::Target::OrtCpu,
        _ => fieldtune_graph::Target::Portable,
    }
}

/// Both engines, ONNX Runtime first.
pub fn engines() -> Vec<Box<dyn Engine>> {
    vec![Box::new(ort()), Box::new(TractEngine::new())]
}

/// ||a - b|| / max(||b||, floor), in f64 (L2 over all elements).
pub fn rel_l2(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    let (a, b) = (a.as_f32().expect("f32"), b.as_f32().expect("f32"));
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    d / n.max(floor)
}

/// A seeded RNG.
pub fn rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform f32 tensor in [lo, hi).
pub fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::f32(
        shape.to_vec(),
        (0..n).map(|_| rng.gen_range(lo..hi)).collect(),
    )
    .expect("sized")
}

/// Uniform values pushed at least `gap` away from zero (keeps ReLU kinks out of reach of
/// finite differences).
pub fn away_from_zero(rng: &mut ChaCha8Rng, shape: &[usize], gap: f32) -> Tensor {
    let n = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            let m = rng.gen_range(gap..1.0);
            if rng.gen_bool(0.5) {
                m
            } else {
                -m
            }
        })
        .collect();
    Tensor::f32(shape.to_vec(), v).expect("sized")
}

/// Distinct values (a shuffled ramp over `[-span/2, span/2)` with spacing `span/n`) so
/// max-pool windows never tie.
pub fn distinct(rng: &mut ChaCha8Rng, shape: &[usize], span: f32) -> Tensor {
    use rand::seq::SliceRandom;
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * span).collect();
    v.shuffle(rng);
    Tensor::f32(shape.to_vec(), v).expect("sized")
}

/// `x + a * v`, elementwise (f32 tensors of one shape).
pub fn axpy(x: &Tensor, v: &Tensor, a: f32) -> Tensor {
    let d = x
        .as_f32()
        .expect("f32")
        .iter()
        .zip(v.as_f32().expect("f32"))
        .map(|(x, v)| x + a * v)
        .collect();
    Tensor::f32(x.shape().to_vec(), d).expect("sized")
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    a.as_f32()
        .expect("f32")
        .iter()
        .zip(b.as_f32().expect("f32"))
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

/// Result of one gradient check.
#[derive(Debug)]
pub struct GradCheck {
    /// (input, analytic directional derivative, finite difference) per checked direction.
    pub rows: Vec<(String, f64, f64)>,
}

impl GradCheck {
    /// Largest |analytic - numeric| / max(|numeric|, floor).
    pub fn worst(&self, floor: f64) -> f64 {
        self.rows
            .iter()
            .map(|(_, a, n)| (a - n).abs() / n.abs().max(a.abs()).max(floor))
            .fold(0.0, f64::max)
    }
}

/// Builds `loss = sum(op_output * R)` for a random R, differentiates it with fieldtune's
/// autodiff, runs the gradient graph on `engine`, and compares each input's directional
/// derivative along random directions with a central finite difference of the same graph.
/// `build` adds the op(s) under test and returns the output. Integer inputs (`I64`) are fed
/// but not differentiated.
pub fn gradcheck(
    engine: &dyn Engine,
    inputs: &[(&str, Tensor)],
    eps: f32,
    seed: u64,
    build: impl FnOnce(&mut Builder, &[String]) -> fieldtune_graph::Result<String>,
) -> GradCheck {
    let mut r = rng(seed);
    let mut b = Builder::new(17);
    let mut names = Vec::new();
    for (n, t) in inputs {
        let elem = if t.as_f32().is_some() {
            Elem::F32
        } else {
            Elem::I64
        };
        names.push(b.input(n, elem, t.shape()).expect("input"));
    }
    let y = build(&mut b, &names).expect("build");
    let ys = b.shape(&y).expect("shape");
    let weights = b.constant(uniform(&mut r, &ys, -1.0, 1.0));
    let prod = b.op("Mul", &[&y, &weights], vec![]).expect("mul");
    let axes: Vec<i64> = (0..ys.len() as i64).collect();
    let loss = if axes.is_empty() {
        prod
    } else {
        b.reduce("ReduceSum", &prod, &axes, false).expect("sum")
    };
    let wrt: Vec<String> = inputs
        .iter()
        .filter(|(_, t)| t.as_f32().is_some())
        .map(|(n, _)| n.to_string())
        .collect();
    let grads = backward(&mut b, &loss, &wrt).expect("backward");
    b.output_as(&loss, "loss").expect("out");
    for w in &wrt {
        let g = grads[w]
            .clone()
            .unwrap_or_else(|| panic!("no gradient reaches {w}"));
        b.output_as(&g, &format!("grad.{w}")).expect("out");
    }
    let graph = b.finish("gradcheck");
    let bytes = encode_model(&graph.to_model("gradcheck"));
    let mut s = engine.load(&bytes, "gradcheck").expect("load");
    let eval = |s: &mut Box<dyn Session>, feeds: &[(String, Tensor)]| -> Vec<(String, Tensor)> {
        let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
        s.run(&refs).expect("run")
    };
    let base: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let outs = eval(&mut s, &base);
    let get = |outs: &[(String, Tensor)], n: &str| {
        outs.iter().find(|(k, _)| k == n).expect("output").1.clone()
    };
    let loss_of = |outs: &[(String, Tensor)]| get(outs, "loss").as_f32().expect("f32")[0] as f64;
    let mut rows = Vec::new();
    for w in &wrt {
        let g = get(&outs, &format!("grad.{w}"));
        let x = &inputs.iter().find(|(n, _)| n == w).expect("input").1;
        for _ in 0..3 {
            let v = uniform(&mut r, x.shape(), -1.0, 1.0);
            let analytic = dot(&g, &v);
            let mut plus = base.clone();
            let mut minus = base.clone();
            for (n, t) in plus.iter_mut() {
                if n == w {
                    *t = axpy(x, &v, eps);
                }
            }
            for (n, t) in minus.iter_mut() {
                if n == w {
                    *t = axpy(x, &v, -eps);
                }
            }
            let fd = (loss_of(&eval(&mut s, &plus)) - loss_of(&eval(&mut s, &minus)))
                / (2.0 * eps as f64);
            rows.push((w.clone(), analytic, fd));
        }
    }
    GradCheck { rows }
}

/// Loads `count` PNGs of a class folder tree (`dir/<class>/*.png`), spread over classes, as a
/// normalised NCHW batch with labels (MNIST normalisation: mean 0.1307, std 0.3081).
pub fn digit_batch(dir: &std::path::Path, count: usize, offset: usize) -> (Tensor, Tensor) {
    let mut files: Vec<(std::path::PathBuf, i64)> = Vec::new();
    for class in 0..10i64 {
        let mut f: Vec<_> = std::fs::read_dir(dir.join(class.to_string()))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        f.sort();
        files.extend(f.into_iter().map(|p| (p, class)));
    }
    let stride = files.len() / count;
    let mut x = Vec::with_capacity(count * 784);
    let mut y = Vec::with_capacity(count);
    for i in 0..count {
        let (p, c) = &files[(i * stride + offset) % files.len()];
        let img = image::open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_luma8();
        x.extend(
            img.pixels()
                .map(|px| (px.0[0] as f32 / 255.0 - 0.1307) / 0.3081),
        );
        y.push(*c);
    }
    (
        Tensor::f32(vec![count, 1, 28, 28], x).expect("sized"),
        Tensor::i64(vec![count], y).expect("sized"),
    )
}

/// Python with Debian's torch, for the reference scripts (`FIELDTUNE_PYTHON` overrides).
pub fn reference_python() -> String {
    std::env::var("FIELDTUNE_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// One real UDA batch: `labeled` MNIST anchors with labels, `unlabeled` OpenCV digits as the
/// weak view, and the weak view plus uniform noise as the strong view (augmentation itself is
/// not under test where this is used). `offset` picks different images per step.
pub fn uda_batch(
    labeled: usize,
    unlabeled: usize,
    offset: usize,
    rng: &mut ChaCha8Rng,
) -> [Tensor; 4] {
    let root = repo_root();
    let (xl, yl) = digit_batch(&root.join("models/mnist-cnn/anchors"), labeled, offset * 3);
    let (xw, _) = digit_batch(&root.join("data/opencv-digits"), unlabeled, offset * 5);
    let noise = uniform(rng, xw.shape(), -0.5, 0.5);
    let xs = axpy(&xw, &noise, 1.0);
    [xl, yl, xw, xs]
}

/// The batch and hyper-parameter feeds of one train step (`x_labeled`, `y_labeled`,
/// `x_weak`, `x_strong`, `lr`, `step`), for tests that run the step as a plain session.
pub fn step_feeds<'a>(
    batch: &'a [Tensor; 4],
    lr: &'a Tensor,
    step: &'a Tensor,
) -> Vec<(&'a str, &'a Tensor)> {
    use fieldtune_graph::inputs;
    vec![
        (inputs::X_LABELED, &batch[0]),
        (inputs::Y_LABELED, &batch[1]),
        (inputs::X_WEAK, &batch[2]),
        (inputs::X_STRONG, &batch[3]),
        (inputs::LR, lr),
        (inputs::STEP, step),
    ]
}

/// One real RGB batch for a `side` x `side` model normalised with mean 0.5, std 0.25 per
/// channel (models/resnet-tiny): `labeled` and `unlabeled` photos of data/imagenet-samples/clean
/// (one per class folder, in name order, resized with a triangle filter), labels `i mod 10`
/// (the photos' classes are not the model's; only the arithmetic is under test), the strong
/// view the weak one plus uniform noise. `offset` picks different photos per step.
pub fn rgb_batch(
    labeled: usize,
    unlabeled: usize,
    side: u32,
    offset: usize,
    rng: &mut ChaCha8Rng,
) -> [Tensor; 4] {
    let dir = repo_root().join("data/imagenet-samples/clean");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flat_map(|c| std::fs::read_dir(c.expect("entry").path()).expect("class folder"))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let load = |count: usize, start: usize| -> Tensor {
        let s = side as usize;
        let mut x = vec![0f32; count * 3 * s * s];
        for i in 0..count {
            let p = &files[(start + i) % files.len()];
            let img = image::open(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .to_rgb8();
            let img =
                image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle);
            for (k, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    x[(i * 3 + c) * s * s + k] = (px.0[c] as f32 / 255.0 - 0.5) / 0.25;
                }
            }
        }
        Tensor::f32(vec![count, 3, s, s], x).expect("sized")
    };
    let xl = load(labeled, offset * 3);
    let yl =
        Tensor::i64(vec![labeled], (0..labeled as i64).map(|i| i % 10).collect()).expect("sized");
    let xw = load(unlabeled, offset * 5 + 1);
    let noise = uniform(rng, xw.shape(), -0.5, 0.5);
    let xs = axpy(&xw, &noise, 1.0);
    [xl, yl, xw, xs]
}
