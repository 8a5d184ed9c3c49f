//! ONNX Runtime sessions built at the same moment in a fresh process all load.
//!
//! Every session carries the fieldtune op domain, and ONNX Runtime registers a custom-op
//! domain in a process-wide map on the first build, without a lock: unserialised, two builds
//! racing there fail with "the domain is already exist". The race exists only before the
//! first build of a process, so the test runs its loads in fresh child processes (this same
//! test binary, re-run with [`CHILD`] set).

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use fieldtune_engine::Engine;

/// Set in the child processes: do the concurrent loads instead of spawning.
const CHILD: &str = "FIELDTUNE_CONCURRENT_LOADS_CHILD";
const THREADS: usize = 8;
const PROCESSES: usize = 24;

/// Builds [`THREADS`] sessions at once, released together by a barrier.
fn concurrent_loads() {
    let engine = Arc::new(common::ort());
    let model = Arc::new(common::gemm_relu_model());
    let start = Arc::new(Barrier::new(THREADS));
    let loads: Vec<_> = (0..THREADS)
        .map(|i| {
            let (engine, model, start) = (engine.clone(), model.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                engine
                    .load(&model, &format!("gemm-{i}"))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let failed: Vec<String> = loads
        .into_iter()
        .filter_map(|h| h.join().expect("load thread panicked").err())
        .collect();
    assert!(failed.is_empty(), "concurrent loads failed: {failed:#?}");
}

#[test]
fn sessions_built_at_once_in_a_fresh_process_all_load() {
    if std::env::var_os(CHILD).is_some() {
        return concurrent_loads();
    }
    let exe = std::env::current_exe().unwrap();
    for run in 0..PROCESSES {
        let out = Command::new(&exe)
            .args([
                "--exact",
                "sessions_built_at_once_in_a_fresh_process_all_load",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child process {run} of {PROCESSES}: {}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
