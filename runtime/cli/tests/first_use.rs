//! What a new user meets first (issue 19): a bare .onnx beside its model.toml, a bare .onnx
//! without one, commands copied from the README, logs sent to a file, `--help`.

use std::path::{Path, PathBuf};

mod common;
use common::{fieldtune, root, text};

/// The single `error:` line of a failed run (asserting there is exactly one, and no panic).
fn error_line(args: &[&str]) -> String {
    let o = fieldtune(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one error line:\n{err}");
    lines[0].to_string()
}

/// `fieldtune eval` of `model` on the OpenCV digits with tract; stdout and stderr.
fn eval_digits(model: &Path, extra: &[&str]) -> (String, String) {
    let m = model.to_str().unwrap();
    let mut args = vec!["eval", "--model", m, "--data", "data/opencv-digits"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--engine", "tract"]);
    let o = common::fieldtune_log(&args, "info");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{args:?}:\n{out}\n{err}");
    (out, err)
}

/// The shipped MNIST model.onnx alone in a fresh folder (no model.toml beside it).
fn lone_onnx(d: &Path) -> PathBuf {
    let onnx = d.join("model.onnx");
    std::fs::copy(root().join("models/mnist-cnn/model.onnx"), &onnx).unwrap();
    onnx
}

#[test]
fn a_bare_onnx_beside_its_model_toml_is_read_as_that_model_toml_says() {
    // models/mnist-cnn/model.onnx with the model.toml beside it: the folder's accuracy
    // (94.56%), not the 73.72% of unnormalised pixels, and a log line saying which file.
    let onnx = root().join("models/mnist-cnn/model.onnx");
    let (out, err) = eval_digits(&onnx, &[]);
    assert!(out.contains("accuracy: 0.9456"), "{out}");
    assert!(
        err.contains("as described by") && err.contains("models/mnist-cnn/model.toml"),
        "{err}"
    );
    // --mean/--std still override it.
    let (out, _) = eval_digits(&onnx, &["--mean", "0", "--std", "1"]);
    assert!(out.contains("accuracy: 0.7372"), "{out}");
}

#[test]
fn a_bare_onnx_without_normalisation_is_an_error_unless_raw_input_says_so() {
    let d = tempfile::tempdir().unwrap();
    let onnx = lone_onnx(d.path());
    let o = onnx.to_str().unwrap();
    let e = error_line(&["eval", "--model", o, "--data", "data/opencv-digits"]);
    assert!(
        e.contains(o)
            && e.contains("normalisation is unknown")
            && e.contains("--mean/--std")
            && e.contains("--raw-input")
            && e.contains("model.toml"),
        "{e}"
    );
    // The same for adapt, before any work.
    let out = d.path().join("out");
    let e = error_line(&[
        "adapt",
        "--model",
        o,
        "--unlabeled",
        "data/opencv-digits",
        "--objective",
        "tent",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--raw-input"), "{e}");
    assert!(!out.exists());
    // Said explicitly: raw pixels (the shipped MNIST model scores 73.72% on them).
    let (out, _) = eval_digits(&onnx, &["--raw-input"]);
    assert!(out.contains("accuracy: 0.7372"), "{out}");
    let (out, _) = eval_digits(&onnx, &["--mean", "0.1307", "--std", "0.3081"]);
    assert!(out.contains("accuracy: 0.9456"), "{out}");
    // compile reads no images: it needs no normalisation.
    let step = d.path().join("step.onnx");
    let c = fieldtune(&["compile", "--model", o, "--out", step.to_str().unwrap()]);
    assert!(c.status.success(), "{}", text(&c).1);
    // --raw-input with --mean is a contradiction.
    let c = fieldtune(&[
        "eval",
        "--model",
        o,
        "--raw-input",
        "--mean",
        "0.5",
        "--std",
        "0.2",
        "--data",
        "x",
    ]);
    let e = text(&c).1;
    assert_eq!(c.status.code(), Some(2), "{e}");
    assert!(e.contains("'--raw-input' cannot be used with"), "{e}");
}

#[test]
fn a_model_toml_beside_a_bare_onnx_that_does_not_fit_it_names_both_files() {
    let base = std::fs::read_to_string(root().join("models/mnist-cnn/model.toml")).unwrap();
    let cases = [
        (base.replace("height = 28", "height = 32"), "height=32"),
        (
            base.replace("channels = 1", "channels = 3")
                .replace("mean = [0.1307]", "mean = [0.1, 0.1, 0.1]")
                .replace("std = [0.3081]", "std = [0.3, 0.3, 0.3]"),
            "channels=3",
        ),
        (
            base.replace(", \"9\"]", "]"),
            "output 'logits' has 10 classes",
        ),
        (
            base.replace("input = \"input\"", "input = \"image\""),
            "names input 'image'",
        ),
    ];
    for (toml, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        let onnx = lone_onnx(d.path());
        let toml_path = d.path().join("model.toml");
        std::fs::write(&toml_path, toml).unwrap();
        let e = error_line(&[
            "eval",
            "--model",
            onnx.to_str().unwrap(),
            "--data",
            "data/opencv-digits",
        ]);
        assert!(
            e.contains(onnx.to_str().unwrap())
                && e.contains(toml_path.to_str().unwrap())
                && e.contains(needle),
            "{needle}: {e}"
        );
    }
}
