//! Hostile and unlucky command lines: outputs aimed at the inputs are refused with the
//! inputs byte-identical, and out-of-range numbers are refused by name instead of panicking,
//! aborting or exhausting memory.

use std::path::{Path, PathBuf};

mod common;
use common::{fieldtune, mnist_adapt_args, root};

/// Expects a plain failure (no panic, no signal) whose stderr holds every needle.
fn refused(args: &[&str], needles: &[&str]) {
    let o = fieldtune(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "{args:?}: expected an error exit, got {:?}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks '{n}':\n{err}");
    }
}

/// A copy of the shipped digit model (model.onnx, model.toml, anchors) under `dir`.
fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    let src = root().join("models/mnist-cnn");
    copy_tree(&src, &m);
    m
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn snapshot(m: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = ["model.onnx", "model.toml"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(m.join(n)).unwrap()))
        .collect();
    v.sort();
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn compile_onto_the_models_own_onnx_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    let before = snapshot(&m);
    let onnx = m.join("model.onnx");
    refused(
        &["compile", "--model", s(&m), "--out", s(&onnx)],
        &["would overwrite", "model.onnx"],
    );
    // The same file under another name (a hard link) is the same input.
    let link = d.path().join("step.onnx");
    std::fs::hard_link(&onnx, &link).unwrap();
    refused(
        &["compile", "--model", s(&m), "--out", s(&link)],
        &["would overwrite", "step.onnx"],
    );
    assert_eq!(snapshot(&m), before, "the model is byte-identical");
}

#[test]
fn adapt_onto_the_model_folder_or_a_folder_holding_it_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    let before = snapshot(&m);
    let anchors = m.join("anchors");
    for out in [m.clone(), d.path().to_path_buf()] {
        refused(
            &[
                "adapt",
                "--model",
                s(&m),
                "--labeled",
                s(&anchors),
                "--unlabeled",
                "data/opencv-digits",
                "--out",
                s(&out),
                "--steps",
                "1",
                "--engine",
                "tract",
            ],
            &["would overwrite"],
        );
    }
    assert_eq!(snapshot(&m), before, "the model is byte-identical");
}

#[test]
fn adapt_replaces_its_output_folder_whole_and_leaves_nothing_beside_it() {
    let d = tempfile::tempdir().unwrap();
    let parent = d.path().join("outs");
    let out = parent.join("adapted");
    for seed in ["1", "2"] {
        let args = mnist_adapt_args(
            "data/opencv-digits/0",
            s(&out),
            &[
                "--steps", "2", "--batch", "4", "--seed", seed, "--engine", "ort",
            ],
        );
        if seed == "2" {
            // The first run's folder is not replaced without --force, and stays as it was.
            let before = std::fs::read(out.join("adapt.json")).unwrap();
            refused(&args, &["adapted", "not empty", "adapt.json", "--force"]);
            assert_eq!(std::fs::read(out.join("adapt.json")).unwrap(), before);
        }
        let mut args = args.to_vec();
        args.push("--force");
        let o = fieldtune(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let names: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["adapted".to_string()], "nothing left beside it");
        let mut files: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "adapt.json",
                "checkpoint.safetensors",
                "model.onnx",
                "model.toml"
            ]
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("adapt.json")).unwrap()).unwrap();
        assert_eq!(
            summary["settings"]["seed"].as_u64().unwrap().to_string(),
            seed
        );
    }
    // A folder holding anything else is not replaced (it would be lost).
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    refused(
        &mnist_adapt_args(
            "data/opencv-digits/0",
            s(&out),
            &["--steps", "1", "--engine", "ort", "--force"],
        ),
        &["notes.txt", "not part of a model folder"],
    );
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn out_of_range_numbers_are_refused_by_name() {
    refused(
        &["tta", "--model", "m", "--data", "d", "--batch", "0"],
        &["--batch"],
    );
    refused(
        &[
            "adapt",
            "--model",
            "models/mnist-cnn",
            "--unlabeled",
            "data/opencv-digits",
            "--out",
            "/nonexistent-out",
            "--batch",
            "100000000",
        ],
        &["--batch", "4096"],
    );
    refused(&["--threads", "100000", "doctor"], &["--threads"]);
    refused(
        &[
            "adapt",
            "--model",
            "m",
            "--unlabeled",
            "u",
            "--out",
            "o",
            "--print-config",
            "--steps",
            "100000000000",
        ],
        &["steps"],
    );
}

#[test]
fn run_configs_with_huge_sizes_or_outputs_on_the_model_are_refused_by_key() {
    let d = tempfile::tempdir().unwrap();
    let m = model_copy(d.path());
    let before = snapshot(&m);
    let cfg = d.path().join("run.toml");
    let head = "model = \"model\"\n[source]\npaths = [\"frames\"]\n";
    for (extra, key) in [
        (
            "[pipeline]\ncapture_queue = 4611686018427387904\n",
            "pipeline.capture_queue",
        ),
        (
            "[pipeline]\noutput_queue = 4611686018427387904\n",
            "pipeline.output_queue",
        ),
        (
            "[replay]\ncapacity = 4611686018427387904\n",
            "replay.capacity",
        ),
        ("[replay]\ncapacity = 100000000\n", "replay.capacity"),
        ("[engine]\ntrain_threads = 100000\n", "engine.train_threads"),
        ("[output]\npath = \"model/model.onnx\"\n", "output.path"),
        ("[events]\npath = \"model/model.toml\"\n", "events.path"),
    ] {
        std::fs::write(&cfg, format!("{head}{extra}")).unwrap();
        refused(
            &["run", "--config", s(&cfg), "--print-config"],
            &[key, "run.toml"],
        );
    }
    // `--output` on the command line is checked the same way.
    std::fs::write(&cfg, head).unwrap();
    let onnx = m.join("model.onnx");
    refused(
        &[
            "run",
            "--config",
            s(&cfg),
            "--output",
            s(&onnx),
            "--max-frames",
            "1",
        ],
        &["output.path", "would overwrite"],
    );
    assert_eq!(snapshot(&m), before, "the model is byte-identical");
}

#[test]
fn check_state_checks_checkpoints_against_the_model() {
    use fieldtune_field::store::{CheckpointMeta, Store};
    use fieldtune_tensor::Tensor;
    use std::collections::HashMap;
    let model = root().join("models/mnist-cnn");
    let sha =
        fieldtune_adapt::checkpoint::sha256_hex(&std::fs::read(model.join("model.onnx")).unwrap());
    let bias = |n: usize, v: f32| {
        HashMap::from([(
            "features.0.bias".to_string(),
            Tensor::f32(vec![n], vec![v; n]).unwrap(),
        )])
    };
    for (what, source, commit, needle) in [
        ("wrong shape", bias(33, 0.0), None, "features.0.bias"),
        (
            "NaN weights",
            bias(32, 0.0),
            Some(bias(32, f32::NAN)),
            "NaN",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let (st, _, _) = Store::open(&state, &sha, &source).unwrap();
        if let Some(p) = commit {
            let meta = CheckpointMeta {
                version: 1,
                round: 1,
                step: 1,
                kind: "adapted".into(),
                model_sha256: sha.clone(),
                metrics: serde_json::Value::Null,
                unix_ms: 1,
            };
            st.commit(&p, &meta).unwrap();
        }
        drop(st);
        let cfg = d.path().join("run.toml");
        std::fs::write(
            &cfg,
            format!(
                "model = \"{}\"\nstate_dir = \"state\"\n[source]\npaths = [\"frames\"]\n",
                s(&model)
            ),
        )
        .unwrap();
        let o = fieldtune(&["run", "--config", s(&cfg), "--check-state"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: --check-state said ok");
        assert!(
            err.contains(needle) && err.contains("safetensors"),
            "{what}: {err}"
        );
    }
}

#[test]
fn report_into_a_missing_folder_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let events = root().join("runtime/field/tests/fixtures/events-v1.jsonl");
    let out = d.path().join("no-such-dir/sub/x.png");
    refused(
        &["report", "--events", s(&events), "--out", s(&out)],
        &["no-such-dir", "does not exist"],
    );
    assert!(!d.path().join("no-such-dir").exists(), "no folder created");
    let copy = d.path().join("events.jsonl");
    std::fs::copy(&events, &copy).unwrap();
    refused(
        &["report", "--events", s(&copy), "--out", s(&copy)],
        &["would overwrite"],
    );
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&events).unwrap()
    );
    refused(
        &["report", "--events", s(&events), "--width", "1000000"],
        &["--width"],
    );
}
