//! `fieldtune run` as an operator meets it: SIGUSR1 asks for a round, the Prometheus endpoint
//! answers on loopback, SIGTERM stops cleanly with a summary, and `fieldtune report` draws the
//! event log.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldtune_field::events::read_events;

fn wait_for(log: &Path, what: &str, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(what)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn get(addr: &str, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn sigusr1_starts_a_round_metrics_answer_and_sigterm_stops_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
model = "{root}/models/mnist-cnn"
state_dir = "state"
[source]
paths = ["{root}/data/opencv-digits"]
order = "shuffled"
fps = 200.0
loop = true
[pipeline]
stats_every_s = 0.5
[output]
path = "predictions.jsonl"
[trigger]
drift = false
min_replay = 64
[adapt]
steps = 5
[metrics]
listen = "{addr}"
"#,
            root = root.display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("state/events.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    assert!(wait_for(&log, "\"stats\"", 60), "the run did not start");
    std::thread::sleep(Duration::from_millis(500)); // replay frames to train on
    assert!(Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_for(&log, "\"round_ended\"", 60),
        "SIGUSR1 did not start a round"
    );

    let metrics = get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.0 200 OK"), "{metrics}");
    let frames: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fieldtune_frames_total "))
        .expect("frames counter")
        .parse()
        .unwrap();
    assert!(frames > 0.0, "{metrics}");
    assert!(metrics.contains("# TYPE fieldtune_rounds_total counter"));
    assert!(metrics.contains("fieldtune_rounds_total 1"), "{metrics}");
    assert!(get(&addr, "/other").starts_with("HTTP/1.0 404"));

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "SIGTERM did not stop the run"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("p99 during rounds / idle") || err.contains("inference latency"),
        "{err}"
    );
    let (events, _) = read_events(&log).unwrap();
    let started: Vec<_> = events
        .iter()
        .filter(|e| e.event == "round_started")
        .collect();
    assert_eq!(started[0].str("reason"), Some("manual"));
    assert_eq!(events.last().unwrap().event, "stopped");
    assert!(tmp.path().join("state/summary.json").exists());

    let png = tmp.path().join("report.png");
    let out = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["report", "--events"])
        .arg(&log)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 rounds"));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
}

#[test]
fn bad_configs_are_one_line_errors_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "model = \"m\"\n[source]\npaths = [\"d\"]\n[trigger]\nevery_frame = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("every_frame"),
        "{err}"
    );
    // A model folder that does not exist.
    std::fs::write(&cfg, "model = \"nowhere\"\n[source]\npaths = [\"d\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nowhere"), "{err}");
    // --print-config without a file prints the documented defaults.
    let out = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(["run", "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[gate]") && text.contains("max_anchor_drop = 0.01"),
        "{text}"
    );
}
