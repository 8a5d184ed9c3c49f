//! `fieldtune run`'s engine plan as a user meets it: `--print-config` documents the keys, bad
//! values and a missing provider are one error line naming the key, `doctor --board` says
//! which plan this machine would get.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fieldtune, root};

/// A run config in `dir` on the shipped model and 20 MNIST frames, plus `engine`.
fn run_config(dir: &Path, engine: &str) -> PathBuf {
    let r = root();
    let text = format!(
        "model = \"{m}\"\nstate_dir = \"{s}\"\n[source]\npaths = [\"{d}\"]\nfps = 0.0\nlimit = 2\npreload = true\n[output]\npath = \"none\"\n[trigger]\ndrift = false\nmanual_signal = false\n[engine]\n{engine}\n",
        m = r.join("models/mnist-cnn").display(),
        s = dir.join("state").display(),
        d = r.join("data/mnist").display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn print_config_documents_the_engine_plan_keys() {
    let o = fieldtune(&["run", "--print-config"]);
    let out = String::from_utf8_lossy(&o.stdout);
    for key in [
        "inference = \"auto\"",
        "train = \"auto\"",
        "fallback = \"none\"",
        "train_fallback",
        "retry_s",
        "inference_deadline_ms",
        "trt_cache",
        "gpu_memory_mb",
        "inference_errors",
        "train_error_rounds",
    ] {
        assert!(out.contains(key), "--print-config lacks {key}:\n{out}");
    }
}

#[test]
fn bad_engine_values_and_a_missing_provider_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (engine, needles) in [
        ("inference = \"ort:rocm\"", vec!["engine.inference", "rocm"]),
        (
            "inference = \"ort:tensorrt\"",
            vec!["engine.inference", "cuda"],
        ),
        ("retry_s = -2.0", vec!["engine.retry_s"]),
        (
            "inference_deadline_ms = -1.0",
            vec!["engine.inference_deadline_ms"],
        ),
        ("fallback = \"cpu\"", vec!["engine.fallback"]),
        (
            "inference = \"ort:cuda\"\nfallback = \"none\"",
            vec!["engine.inference", "CUDAExecutionProvider"],
        ),
    ] {
        let p = run_config(tmp.path(), engine);
        let line = error_line(&fieldtune(&["run", "--config", p.to_str().unwrap()]));
        for n in needles {
            assert!(line.contains(n), "{engine}: {line}");
        }
    }
    // A trt_cache under a regular file cannot be created.
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    let p = run_config(
        tmp.path(),
        &format!("trt_cache = \"{}\"", tmp.path().join("file/trt").display()),
    );
    let line = error_line(&fieldtune(&["run", "--config", p.to_str().unwrap()]));
    assert!(
        line.contains("engine.trt_cache") && line.contains("not writable"),
        "{line}"
    );
}

#[test]
fn doctor_says_which_plan_a_board_gets_here() {
    let o = fieldtune(&["doctor", "--board", "jetson-orin-nano-8gb"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    let plan = out
        .lines()
        .skip_while(|l| !l.starts_with("engine plan"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("why:"), "{out}");
    // The profile asks for TensorRT and CUDA; the plan names them and says what it got.
    assert!(plan.contains("tensorrt") && plan.contains("cuda"), "{plan}");
}
