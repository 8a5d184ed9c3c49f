//! The `fieldtune` binary as a user runs it: real model folders, real image folders, both
//! engines; bad input gives one clear error line and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};

mod common;
use common::{fieldtune, mnist_adapt_args, root, text};

/// Runs, expects failure with exactly one `error:` line mentioning every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = fieldtune(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got:\n{err}"
    );
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: error line lacks '{n}':\n{}",
            lines[0]
        );
    }
}

fn model_copy(dir: &Path, toml: Option<&str>, onnx: Option<&[u8]>) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    let src = root().join("models/mnist-cnn");
    std::fs::write(
        m.join("model.toml"),
        toml.map(str::to_string)
            .unwrap_or_else(|| std::fs::read_to_string(src.join("model.toml")).unwrap()),
    )
    .unwrap();
    std::fs::write(
        m.join("model.onnx"),
        onnx.map(<[u8]>::to_vec)
            .unwrap_or_else(|| std::fs::read(src.join("model.onnx")).unwrap()),
    )
    .unwrap();
    m
}

#[test]
fn eval_reports_the_measured_source_accuracy_on_both_engines() {
    for engine in ["ort", "tract"] {
        let o = fieldtune(&[
            "eval",
            "--model",
            "models/mnist-cnn",
            "--data",
            "data/opencv-digits",
            "--engine",
            engine,
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        // 4,728 of 5,000, as measured with PyTorch and ONNX Runtime in models/mnist-cnn/MODEL.md.
        assert!(out.contains("accuracy: 0.9456"), "{engine}: {out}");
        assert!(out.lines().next().unwrap().starts_with("engine:"), "{out}");
    }
}

#[test]
fn truncated_and_corrupt_models_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let full = std::fs::read(root().join("models/mnist-cnn/model.onnx")).unwrap();
    let m = model_copy(d.path(), None, Some(&full[..full.len() / 2]));
    let ms = m.to_str().unwrap();
    fails_with(
        &["eval", "--model", ms, "--data", "data/opencv-digits"],
        &["model.onnx", "truncated or corrupt"],
    );
    std::fs::write(m.join("model.onnx"), b"this is not a protobuf at all").unwrap();
    fails_with(
        &[
            "compile",
            "--model",
            ms,
            "--out",
            d.path().join("s.onnx").to_str().unwrap(),
        ],
        &["model.onnx"],
    );
}

#[test]
fn channel_and_size_mismatches_are_refused() {
    let base = std::fs::read_to_string(root().join("models/mnist-cnn/model.toml")).unwrap();
    let rgb = base
        .replace("channels = 1", "channels = 3")
        .replace("mean = [0.1307]", "mean = [0.1307, 0.1307, 0.1307]")
        .replace("std = [0.3081]", "std = [0.3081, 0.3081, 0.3081]");
    let cases = [
        (rgb, vec!["model.onnx", "channels=3"]),
        (
            base.replace("height = 28", "height = 32"),
            vec!["height=32"],
        ),
        (
            base.replace("channels = 1", "channels = 2"),
            vec!["model.toml", "channels"],
        ),
    ];
    for (toml, needles) in cases {
        let d = tempfile::tempdir().unwrap();
        let m = model_copy(d.path(), Some(&toml), None);
        let args = [
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            "data/opencv-digits",
        ];
        fails_with(&args, &needles);
    }
}

#[test]
fn a_non_image_file_in_a_folder_is_named() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("data/3");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::copy(
        root()
            .join("data/mnist/3")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        c.join("a.png"),
    )
    .unwrap();
    std::fs::write(c.join("notes.txt"), b"hello").unwrap();
    let data = d.path().join("data");
    fails_with(
        &[
            "eval",
            "--model",
            "models/mnist-cnn",
            "--data",
            data.to_str().unwrap(),
        ],
        &["notes.txt"],
    );
    std::fs::remove_file(c.join("notes.txt")).unwrap();
    std::fs::write(c.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fails_with(
        &[
            "eval",
            "--model",
            "models/mnist-cnn",
            "--data",
            data.to_str().unwrap(),
        ],
        &["broken.png"],
    );
}

#[test]
fn an_op_without_gradient_rule_is_refused_by_name_and_node() {
    use fieldtune_graph::ir::{Graph, Node};
    let model = fieldtune_graph::load_model(&root().join("models/mnist-cnn/model.onnx")).unwrap();
    let mut g = Graph::from_model(&model).unwrap();
    // Route the first ReLU's output through a float Mod (no gradient rule) before the pool.
    let relu = g.nodes.iter().position(|n| n.op == "Relu").unwrap();
    let out = g.nodes[relu].outputs[0].clone();
    for n in g.nodes.iter_mut().skip(relu + 1) {
        for i in n.inputs.iter_mut() {
            if *i == out {
                *i = "mod_out".into();
            }
        }
    }
    g.nodes.insert(
        relu + 1,
        Node {
            name: "my_mod".into(),
            op: "Mod".into(),
            domain: String::new(),
            inputs: vec![out, "mod_by".into()],
            outputs: vec!["mod_out".into()],
            attrs: vec![fieldtune_graph::ir::attr::int("fmod", 1)],
        },
    );
    g.initializers.push((
        "mod_by".into(),
        fieldtune_tensor::Tensor::f32(vec![], vec![7.0]).unwrap(),
    ));
    let bytes = fieldtune_graph::encode_model(&g.to_model("test"));
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path(), None, Some(&bytes));
    fails_with(
        &[
            "compile",
            "--model",
            m.to_str().unwrap(),
            "--out",
            d.path().join("s.onnx").to_str().unwrap(),
        ],
        &["my_mod", "Mod", "no gradient rule"],
    );
}

#[test]
fn adapt_writes_a_loadable_model_that_improves_on_the_target() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("adapted");
    let o = fieldtune(&mnist_adapt_args(
        "data/opencv-digits",
        out.to_str().unwrap(),
        &[
            "--eval",
            "data/opencv-digits",
            "--steps",
            "60",
            "--engine",
            "ort",
        ],
    ));
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapt.json")).unwrap()).unwrap();
    let before = summary["accuracy_before"].as_f64().unwrap();
    let after = summary["accuracy_after"].as_f64().unwrap();
    assert!((before - 0.9456).abs() < 1e-9, "{before}");
    assert!(
        after > before + 0.01,
        "60 steps of uda-im should gain a point on OpenCV digits: {before} -> {after}"
    );
    assert_eq!(summary["history"].as_array().unwrap().len(), 60);
    // The written model folder evaluates to the same accuracy on the other engine.
    let o = fieldtune(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        "data/opencv-digits",
        "--engine",
        "tract",
    ]);
    let (s2, e2) = text(&o);
    assert!(o.status.success(), "{e2}");
    assert!(
        s2.contains(&format!("accuracy: {after:.4}")),
        "tract eval of the adapted model: {s2} vs {after}"
    );
    assert!(out.join("checkpoint.safetensors").is_file());
}

#[test]
fn help_teaches_the_commands() {
    let (out, _) = text(&fieldtune(&["--help"]));
    for c in ["adapt", "eval", "compile", "doctor", "demo"] {
        assert!(out.contains(c), "{out}");
    }
    let (out, _) = text(&fieldtune(&["adapt", "--help"]));
    assert!(
        out.contains("uda-im") && out.contains("--unlabeled"),
        "{out}"
    );
}

#[test]
fn a_diverging_run_stops_at_the_non_finite_step_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("adapted");
    fails_with(
        &mnist_adapt_args(
            "data/opencv-digits",
            out.to_str().unwrap(),
            &["--steps", "10", "--lr", "1e30", "--engine", "tract"],
        ),
        &["step", "NaN", "nothing is written"],
    );
    assert!(!out.exists(), "a failed run must not leave a model folder");
}

/// Tensor names in a safetensors file (its JSON header).
fn safetensors_names(path: &Path) -> Vec<String> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

#[test]
fn a_bare_onnx_batchnorm_backbone_adapts_with_tent_on_its_batchnorm_only() {
    let d = tempfile::tempdir().unwrap();
    let unl = d.path().join("frames");
    std::fs::create_dir_all(&unl).unwrap();
    for i in 0..12u32 {
        let img = image::GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([((x * 13 + y * 7 + i * 29) % 256) as u8])
        });
        img.save(unl.join(format!("{i:03}.png"))).unwrap();
    }
    let out = d.path().join("adapted");
    let model = "models/usps-cnn/model.onnx";
    let o = fieldtune(&[
        "adapt",
        "--model",
        model,
        "--mean",
        "0.2471",
        "--std",
        "0.2994",
        "--unlabeled",
        unl.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--objective",
        "tent",
        "--train",
        "bn",
        "--batchnorm",
        "train",
        "--batch",
        "6",
        "--steps",
        "3",
        "--engine",
        "tract",
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    // BatchNorm scales and biases trained; running statistics were updated and saved.
    let mut names = safetensors_names(&out.join("checkpoint.safetensors"));
    names.sort();
    assert_eq!(
        names,
        [
            "features.1.bias",
            "features.1.running_mean",
            "features.1.running_var",
            "features.1.weight",
            "features.5.bias",
            "features.5.running_mean",
            "features.5.running_var",
            "features.5.weight",
        ],
        "{stdout}"
    );
    let o = fieldtune(&[
        "compile",
        "--model",
        model,
        "--train",
        "head",
        "--objective",
        "tent",
        "--out",
        d.path().join("step.onnx").to_str().unwrap(),
    ]);
    let (s, e) = text(&o);
    assert!(o.status.success(), "{e}");
    assert!(s.contains("trainable parameters (Head): 2 tensors"), "{s}");
    assert!(s.contains("GFLOP per step"), "{s}");
    fails_with(
        &[
            "compile", "--model", model, "--mean", "0.1,0.2", "--std", "1", "--out", "x.onnx",
        ],
        &["usps-cnn/model.onnx", "--mean has 2 values", "1 channels"],
    );
}

#[test]
fn cotta_and_rotation_objectives_adapt_without_anchors_and_save_only_the_model() {
    let d = tempfile::tempdir().unwrap();
    // CoTTA on ONNX Runtime: tract 0.23.9 cannot load the restore streams of the large
    // classifier weight (ARCHITECTURE.md, "The train step").
    for (objective, engine) in [("cotta", "ort"), ("rotation", "tract")] {
        let out = d.path().join(objective);
        let o = fieldtune(&[
            "adapt",
            "--model",
            "models/mnist-cnn",
            "--unlabeled",
            "data/opencv-digits",
            "--out",
            out.to_str().unwrap(),
            "--objective",
            objective,
            "--batch",
            "8",
            "--steps",
            "2",
            "--engine",
            engine,
        ]);
        let (stdout, err) = text(&o);
        assert!(o.status.success(), "{objective}: {stdout}\n{err}");
        let mut names = safetensors_names(&out.join("checkpoint.safetensors"));
        names.sort();
        // The trained tensors only: the rotation loss reads the classifier's input, so the
        // last layer gets no gradient there; the rotation head is never part of the model.
        let mut expect = vec![
            "classifier.0.bias",
            "classifier.0.weight",
            "classifier.2.bias",
            "classifier.2.weight",
            "features.0.bias",
            "features.0.weight",
            "features.3.bias",
            "features.3.weight",
        ];
        if objective == "rotation" {
            expect.retain(|n| !n.starts_with("classifier.2"));
        }
        assert_eq!(names, expect, "{objective}");
    }
    let o = fieldtune(&["adapt", "--help"]);
    let (s, _) = text(&o);
    assert!(s.contains("cotta") && s.contains("rotation"), "{s}");
}

#[test]
fn jigsaw_corruption_and_feature_consistency_objectives_adapt_and_save_only_the_model() {
    let d = tempfile::tempdir().unwrap();
    for (objective, engine) in [
        ("jigsaw", "ort"),
        ("corruption", "tract"),
        ("feature-consistency", "tract"),
    ] {
        let out = d.path().join(objective);
        let mut args = vec![
            "adapt",
            "--model",
            "models/mnist-cnn",
            "--unlabeled",
            "data/opencv-digits",
            "--out",
            out.to_str().unwrap(),
            "--objective",
            objective,
            "--batch",
            "8",
            "--steps",
            "2",
            "--engine",
            engine,
        ];
        if objective == "feature-consistency" {
            args.extend(["--labeled", "models/mnist-cnn/anchors"]);
        }
        let o = fieldtune(&args);
        let (stdout, err) = text(&o);
        assert!(o.status.success(), "{objective}: {stdout}\n{err}");
        let log = std::fs::read_to_string(out.join("adapt.json")).unwrap();
        let term = match objective {
            "jigsaw" => "loss_jigsaw",
            "corruption" => "loss_corruption",
            _ => "loss_feature_consistency",
        };
        assert!(log.contains(term), "{objective}: no {term} in adapt.json");
        let mut names = safetensors_names(&out.join("checkpoint.safetensors"));
        names.sort();
        // The jigsaw and corruption heads read the classifier's input (the last layer gets
        // no gradient) and are never part of the model; the anchors' CE trains every layer.
        let mut expect = vec![
            "classifier.0.bias",
            "classifier.0.weight",
            "classifier.2.bias",
            "classifier.2.weight",
            "features.0.bias",
            "features.0.weight",
            "features.3.bias",
            "features.3.weight",
        ];
        if objective != "feature-consistency" {
            expect.retain(|n| !n.starts_with("classifier.2"));
        }
        assert_eq!(names, expect, "{objective}");
    }
    let o = fieldtune(&["adapt", "--help"]);
    let (s, _) = text(&o);
    assert!(
        s.contains("jigsaw") && s.contains("corruption") && s.contains("feature-consistency"),
        "{s}"
    );
    // compile reports the head and what the task adds.
    let onnx = d.path().join("step.onnx");
    let o = fieldtune(&[
        "compile",
        "--model",
        "models/mnist-cnn",
        "--config",
        "configs/adapt-uda-im-jigsaw.toml",
        "--out",
        onnx.to_str().unwrap(),
    ]);
    let (s, err) = text(&o);
    assert!(o.status.success(), "{s}\n{err}");
    let line = s
        .lines()
        .find(|l| l.starts_with("pretext heads"))
        .unwrap_or("");
    assert!(
        line.contains("2 tensors")
            && line.contains("jigsaw.weight [4, ")
            && line.contains("GFLOP per step"),
        "{s}"
    );
}

/// `fieldtune tta` with a pretext head in a method's settings: the head trains with the
/// model, and the predictions read the model's weights only (the head is no input of the
/// prediction graph).
#[test]
fn tta_trains_a_pretext_head_and_predicts_without_it() {
    let d = tempfile::tempdir().unwrap();
    for (section, term) in [
        ("[jigsaw]\nweight = 1.0\n", "jigsaw"),
        ("[rotation]\nweight = 1.0\n", "rotation"),
    ] {
        let cfg = d.path().join(format!("{term}.toml"));
        std::fs::write(&cfg, format!("trainable = \"all\"\n{section}")).unwrap();
        let out = d.path().join(format!("{term}.json"));
        let o = fieldtune(&[
            "tta",
            "--model",
            "models/mnist-cnn",
            "--data",
            "data",
            "--domains",
            "opencv-digits",
            "--limit",
            "64",
            "--methods",
            "tent",
            "--method-config",
            &format!("tent={}", cfg.display()),
            "--settings",
            "reset",
            "--seeds",
            "0",
            "--batch",
            "32",
            "--engine",
            "ort",
            "--out",
            out.to_str().unwrap(),
        ]);
        let (stdout, err) = text(&o);
        assert!(o.status.success(), "{term}: {stdout}\n{err}");
        let json = std::fs::read_to_string(&out).unwrap();
        assert!(json.contains(&format!("\"{term}\"")), "{term}: {json}");
    }
}

#[test]
fn compile_for_a_tuned_target_reports_what_it_replaced() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("s.onnx");
    let o = fieldtune(&[
        "compile",
        "--model",
        "models/usps-cnn",
        "--out",
        out.to_str().unwrap(),
        "--target",
        "ort-cpu",
    ]);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    for needle in [
        "target ort-cpu",
        "portable ->",
        "ai.fieldtune ops: BatchNormTrain x2, BatchNormTrainGrad x2, ClipGrad x3, MaxPoolGrad x2",
        "standard ops replaced:",
    ] {
        assert!(stdout.contains(needle), "no '{needle}' in:\n{stdout}");
    }
    let model = fieldtune_graph::load_model(&out).unwrap();
    assert!(model
        .opset_import
        .iter()
        .any(|o| o.domain == "ai.fieldtune"));
    fails_with(
        &[
            "compile",
            "--model",
            "models/usps-cnn",
            "--out",
            d.path().join("t.onnx").to_str().unwrap(),
            "--target",
            "cuda",
        ],
        &["unknown target 'cuda'"],
    );
}

/// inpaint trains its decoder head with the backbone and saves only the model; compile reports
/// the head; colorize refuses a grayscale model, naming its channel count.
#[test]
fn inpaint_adapts_and_colorize_refuses_a_grayscale_model() {
    let d = tempfile::tempdir().unwrap();
    let (out, col) = (d.path().join("inpaint"), d.path().join("colorize"));
    let mut args = vec![
        "adapt",
        "--model",
        "models/mnist-cnn",
        "--unlabeled",
        "data/opencv-digits",
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "8",
        "--steps",
        "2",
        "--engine",
        "tract",
        "--objective",
        "inpaint",
    ];
    let o = fieldtune(&args);
    let (stdout, err) = text(&o);
    assert!(o.status.success(), "{stdout}\n{err}");
    let log = std::fs::read_to_string(out.join("adapt.json")).unwrap();
    assert!(
        log.contains("loss_inpaint"),
        "no loss_inpaint in adapt.json"
    );
    // The decoder reads features.5.out: the classifier gets no gradient; the head is not saved.
    let mut names = safetensors_names(&out.join("checkpoint.safetensors"));
    names.sort();
    let expect = [
        "features.0.bias",
        "features.0.weight",
        "features.3.bias",
        "features.3.weight",
    ];
    assert_eq!(names, expect);
    let onnx = d.path().join("step.onnx");
    let o = fieldtune(&[
        "compile",
        "--model",
        "models/mnist-cnn",
        "--objective",
        "inpaint",
        "--out",
        onnx.to_str().unwrap(),
    ]);
    let (s, err) = text(&o);
    assert!(o.status.success(), "{s}\n{err}");
    let line = s.lines().find(|l| l.starts_with("pretext heads"));
    assert!(
        line.is_some_and(|l| l.contains("1040 values (inpaint.weight [16, 64, 1, 1], inpaint.bias")),
        "{s}"
    );
    *args.last_mut().unwrap() = "colorize";
    args[6] = col.to_str().unwrap();
    fails_with(&args, &["colorize needs an RGB model", "has 1 channel"]);
    let (help, _) = text(&fieldtune(&["adapt", "--help"]));
    assert!(
        help.contains("inpaint") && help.contains("colorize"),
        "{help}"
    );
}
