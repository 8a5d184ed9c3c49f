//! `fieldtune run` with `[fleet]` as a SuperNode of a test SuperLink (fleet_run, fleet_run_prox):
//! the run and its event log, the ServerApp's `fieldtune fleet` config and its `flwr run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldtune_field::events::{read_events, Event};

use super::superlink::SuperLink;

/// A running `fieldtune run`, stopped with SIGTERM on drop.
pub struct Run {
    child: Child,
    pub events: PathBuf,
    pub state: PathBuf,
}

impl Run {
    /// `fieldtune run` of the shipped MNIST CNN on OpenCV digits (every frame served, looping),
    /// a node of the SuperLink on `port`; a fleet round runs `steps` steps of `uda-im`.
    pub fn start(dir: &Path, port: u16, steps: usize) -> Run {
        let root = super::root();
        let cfg = dir.join("run.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
model = "{root}/models/mnist-cnn"
state_dir = "state"
[source]
paths = ["{root}/data/opencv-digits"]
order = "shuffled"
fps = 100.0
loop = true
[pipeline]
when_full = "block"
stats_every_s = 0.5
max_seconds = 120.0
[output]
path = "predictions.jsonl"
[trigger]
drift = false
manual_signal = false
min_replay = 64
[adapt]
steps = {steps}
[fleet]
superlink = "127.0.0.1:{port}"
insecure = true
key = "node.key"
heartbeat_s = 10.0
"#,
                root = root.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
            .spawn()
            .unwrap();
        Run {
            child,
            events: dir.join("state/events.jsonl"),
            state: dir.join("state"),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        read_events(&self.events).map(|e| e.0).unwrap_or_default()
    }

    pub fn kinds(&self, kind: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.event == kind)
            .collect()
    }

    /// Waits until `n` events match `pred`.
    pub fn wait(&self, what: &str, secs: u64, n: usize, pred: impl Fn(&Event) -> bool) {
        let t0 = Instant::now();
        while self.events().iter().filter(|e| pred(e)).count() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no {what} in {secs} s: {}\nrun.log:\n{}",
                std::fs::read_to_string(&self.events).unwrap_or_default(),
                std::fs::read_to_string(self.state.with_file_name("run.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the summary.
    pub fn stop(mut self) -> serde_json::Value {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "fieldtune run ended with {status}");
        let text = std::fs::read_to_string(self.state.join("summary.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is(kind: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.event == kind
}

pub fn node_active(e: &Event) -> bool {
    e.event == "fleet_node" && e.str("state") == Some("active")
}

/// The `fieldtune fleet` config the ServerApp exports its initial arrays and evaluates with
/// (the same model as the run; no node runs from it).
pub fn server_config(dir: &Path, port: u16) -> PathBuf {
    let m = super::root().join("models/mnist-cnn");
    let p = dir.join("fleet.toml");
    std::fs::write(
        &p,
        format!(
            "superlink = \"127.0.0.1:{port}\"\ninsecure = true\nkey = \"{k}\"\nheartbeat_s = 10.0\n\
             model = \"{m}\"\nlabeled = \"{m}/anchors\"\nunlabeled = \"{m}/anchors\"\nslice = 0\nslice_of = 1\n\
             recipe = \"uda-im\"\nsteps = 2\nseed = 0\nsend = \"all\"\n",
            k = dir.join("server-side.key").display(),
            m = m.display()
        ),
    )
    .unwrap();
    p
}

/// `flwr run` of the fleet app with `run_config`; its output.
pub fn flwr_run(link: &SuperLink, dir: &Path, run_config: &str) -> String {
    let rc = format!(
        "fieldtune='{}' fleet-config='{}' eval-data='{}' round-timeout=60.0 {run_config}",
        env!("CARGO_BIN_EXE_fieldtune"),
        server_config(dir, link.port).display(),
        super::root().join("models/mnist-cnn/anchors").display()
    );
    link.run_app(&rc)
}

/// Asserts, from a stopped run's summary `s`, that frames were served while its fleet rounds ran
/// and that every frame got exactly one prediction line in `dir`/predictions.jsonl.
pub fn assert_served_through_rounds(dir: &Path, s: &serde_json::Value) {
    assert!(
        s["latency_during_rounds"]["count"].as_u64().unwrap() > 0,
        "no frame was served during the fleet rounds: {s}"
    );
    let lines = std::fs::read_to_string(dir.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert_eq!(
        lines,
        s["frames"].as_u64().unwrap(),
        "every frame answered once"
    );
}
