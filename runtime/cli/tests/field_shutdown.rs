//! Nothing blocks a stop: the first SIGTERM ends a run whose inference is stuck within
//! `[pipeline] shutdown_s` (non-zero, with a message), a second one at once, and FIFOs where
//! files are expected (model files, config, checkpoints) are refused without blocking.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::root;

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

/// Waits up to `secs` for `child`; kills it and returns `None` when it is still running.
fn wait(child: &mut Child, secs: f64) -> Option<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut s);
    s
}

/// `fieldtune run ARGS` with its stderr piped.
fn spawn_run(args: &[&Path]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

/// A run whose primary inference stalls for two minutes from frame 3 on.
fn stalled_run(tmp: &Path, shutdown_s: f64) -> Child {
    let cfg = tmp.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
model = "{root}/models/mnist-cnn"
state_dir = "state"
[source]
paths = ["{root}/data/opencv-digits"]
fps = 100.0
loop = true
[pipeline]
shutdown_s = {shutdown_s}
[output]
path = "none"
[trigger]
drift = false
manual_signal = false
[fault]
inference_stalls = [[3, 1000000]]
inference_stall_ms = 120000
"#,
            root = root().display()
        ),
    )
    .unwrap();
    let child = spawn_run(&[Path::new("--config"), &cfg]);
    let log = tmp.join("state/events.jsonl");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("\"started\"")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Frame 3 is reached within a few frames at 100 fps: inference is now stuck.
    std::thread::sleep(Duration::from_millis(500));
    child
}

#[test]
fn sigterm_ends_a_stuck_run_within_shutdown_s() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = stalled_run(tmp.path(), 2.0);
    let t0 = Instant::now();
    kill(&child, "-TERM");
    let status = wait(&mut child, 20.0).expect("SIGTERM did not end a stuck run");
    let took = t0.elapsed();
    let err = stderr_of(&mut child);
    assert!(!status.success(), "{err}");
    assert!(took < Duration::from_secs(8), "took {took:?}: {err}");
    assert!(took >= Duration::from_secs(2), "took {took:?}: {err}");
    assert!(err.contains("pipeline.shutdown_s"), "{err}");
}

#[test]
fn a_second_signal_ends_the_run_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = stalled_run(tmp.path(), 300.0);
    kill(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    kill(&child, "-INT");
    let status = wait(&mut child, 20.0).expect("a second signal did not end the run");
    assert!(!status.success());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn fifos_for_files_are_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = t.join("m");
    std::fs::create_dir(&model).unwrap();
    let shipped = root().join("models/mnist-cnn");
    std::fs::copy(shipped.join("model.toml"), model.join("model.toml")).unwrap();
    std::fs::copy(shipped.join("model.onnx"), model.join("model.onnx")).unwrap();
    std::fs::create_dir(t.join("state")).unwrap();
    let cfg = t.join("run.toml");
    std::fs::write(
        &cfg,
        "model = \"m\"\nstate_dir = \"state\"\n[source]\npaths = [\"frames\"]\n",
    )
    .unwrap();
    let fieldtune = |args: &[&Path]| {
        let mut child = spawn_run(args);
        let status = wait(&mut child, 30.0);
        (status, stderr_of(&mut child))
    };
    let check = [Path::new("--config"), &cfg, Path::new("--check-state")];
    // A FIFO as a checkpoint, as model.onnx, as model.toml.
    for (fifo, name) in [
        (
            t.join("state/last-good.safetensors"),
            "last-good.safetensors",
        ),
        (model.join("model.onnx"), "model.onnx"),
        (model.join("model.toml"), "model.toml"),
    ] {
        std::fs::remove_file(&fifo).ok();
        mkfifo(&fifo);
        let (status, err) = fieldtune(&check);
        let status = status.unwrap_or_else(|| panic!("--check-state hangs on a FIFO {name}"));
        assert!(!status.success(), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
        std::fs::remove_file(&fifo).unwrap();
        let src = shipped.join(name);
        if src.exists() {
            std::fs::copy(src, &fifo).unwrap();
        }
    }
    // The config itself.
    let fifo_cfg = t.join("fifo.toml");
    mkfifo(&fifo_cfg);
    let (status, err) = fieldtune(&[Path::new("--config"), &fifo_cfg]);
    assert!(status.is_some(), "run hangs on a FIFO config");
    assert!(err.contains("fifo.toml") && err.contains("FIFO"), "{err}");
}
