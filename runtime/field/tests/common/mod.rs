//! Helpers of the field runtime's integration tests: the shipped model and data, configs
//! in temporary folders, reading what a run wrote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use fieldtune_engine::EnginePreference;
use fieldtune_field::events::{read_events, Event};
use fieldtune_field::{RunConfig, RunOptions};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// A config from TOML text where `@ROOT` and `@TMP` stand for the repository root and `tmp`.
pub fn config(text: &str, tmp: &Path) -> (RunConfig, PathBuf) {
    let text = text
        .replace("@ROOT", &root().display().to_string())
        .replace("@TMP", &tmp.display().to_string());
    let path = tmp.join("run.toml");
    std::fs::write(&path, text).expect("write config");
    (RunConfig::load(&path).expect("config"), path)
}

/// ONNX Runtime when its library is found (scripts/install-ort.sh), else tract.
pub fn options(config_path: &Path) -> RunOptions {
    RunOptions {
        engine: EnginePreference::Auto,
        ort_lib: None,
        handle_signals: false,
        config_path: config_path.to_path_buf(),
        observer: None,
    }
}

pub fn events(cfg: &RunConfig) -> Vec<Event> {
    read_events(&cfg.events_path()).expect("event log").0
}

pub fn kinds<'a>(ev: &'a [Event], kind: &str) -> Vec<&'a Event> {
    ev.iter().filter(|e| e.event == kind).collect()
}

/// One output line.
#[derive(Clone, Debug)]
pub struct Line {
    pub frame: u64,
    pub class: usize,
    pub version: u64,
    pub label: Option<usize>,
}

pub fn predictions(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .expect("predictions")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            Line {
                frame: v["frame"].as_u64().expect("frame"),
                class: v["class_id"].as_u64().expect("class_id") as usize,
                version: v["version"].as_u64().expect("version"),
                label: v["label"].as_str().map(|s| s.parse().expect("digit label")),
            }
        })
        .collect()
}

/// A stop flag for `fieldtune_field::run` that a watcher thread sets once `file` holds `needle`
/// `count` times (e.g. frames answered by version 1, rounds ended) or 300 s passed; join the
/// thread after the run.
pub fn stop_when(
    file: PathBuf,
    needle: &'static str,
    count: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let watcher = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(200));
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.matches(needle).count() >= count {
                break;
            }
        }
        flag.store(true, Ordering::Relaxed);
    });
    (stop, watcher)
}
