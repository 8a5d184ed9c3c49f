//! Opt-in Prometheus text endpoint (`[metrics] listen = "127.0.0.1:PORT"`): a small HTTP/1.0
//! responder on its own thread answering `GET /metrics` (anything else: 404). Loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{io_err, Result};
use crate::stats::StatsWindow;

/// The run's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsSnapshot {
    pub frames: u64,
    pub capture_dropped: u64,
    pub output_dropped: u64,
    pub rounds: u64,
    pub commits: u64,
    pub rollbacks: u64,
    pub resets: u64,
    pub version: u64,
    pub round_active: bool,
    /// Whether a recovery episode is open.
    pub recovering: bool,
    /// Recovery episodes opened.
    pub episodes: u64,
    /// Frames answered by the primary inference engine.
    pub frames_primary: u64,
    /// Frames answered by the fallback engine.
    pub frames_fallback: u64,
    /// Whether the fallback serves now.
    pub on_fallback: bool,
    /// The last complete stats window.
    pub window: StatsWindow,
}

/// Where the endpoint reads the figures (the runtime's shared state).
pub trait MetricsSource: Send + Sync {
    fn snapshot(&self) -> MetricsSnapshot;
    /// The endpoint's thread ends when this turns true.
    fn stopped(&self) -> bool;
}

/// Renders `m` in the Prometheus text format.
pub fn render(m: &MetricsSnapshot) -> String {
    let mut s = String::with_capacity(2048);
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        s.push_str(&format!(
            "# HELP fieldtune_{name} {help}\n# TYPE fieldtune_{name} {kind}\n"
        ));
        if value.is_finite() {
            s.push_str(&format!("fieldtune_{name} {value}\n"));
        } else {
            s.push_str(&format!("fieldtune_{name} NaN\n"));
        }
    };
    put(
        "frames_total",
        "counter",
        "Frames classified.",
        m.frames as f64,
    );
    put(
        "capture_dropped_total",
        "counter",
        "Frames dropped because the inference queue was full.",
        m.capture_dropped as f64,
    );
    put(
        "output_dropped_total",
        "counter",
        "Predictions dropped because the output queue was full.",
        m.output_dropped as f64,
    );
    put(
        "rounds_total",
        "counter",
        "Adaptation rounds run.",
        m.rounds as f64,
    );
    put(
        "commits_total",
        "counter",
        "Rounds whose weights passed the gate and went live.",
        m.commits as f64,
    );
    put(
        "rollbacks_total",
        "counter",
        "Rounds rejected by the gate.",
        m.rollbacks as f64,
    );
    put(
        "resets_total",
        "counter",
        "Resets to the source weights after repeated failures.",
        m.resets as f64,
    );
    put(
        "model_version",
        "gauge",
        "Version of the live weights (0 = source).",
        m.version as f64,
    );
    put(
        "round_active",
        "gauge",
        "1 while a round runs.",
        m.round_active as u8 as f64,
    );
    put(
        "recovering",
        "gauge",
        "1 while a recovery episode is open ([recovery]); 0 once it has settled.",
        m.recovering as u8 as f64,
    );
    put(
        "recovery_episodes_total",
        "counter",
        "Recovery episodes opened by drift triggers.",
        m.episodes as f64,
    );
    put(
        "frames_primary_total",
        "counter",
        "Frames answered by the primary inference engine ([engine] inference).",
        m.frames_primary as f64,
    );
    put(
        "frames_fallback_total",
        "counter",
        "Frames answered by the fallback engine ([engine] fallback).",
        m.frames_fallback as f64,
    );
    put(
        "serving_fallback",
        "gauge",
        "1 while the fallback engine serves.",
        m.on_fallback as u8 as f64,
    );
    let w = &m.window;
    let l = w.latency.summary();
    put(
        "inference_latency_p50_seconds",
        "gauge",
        "Inference latency, median of the last stats window.",
        l.p50_ms / 1e3,
    );
    put(
        "inference_latency_p99_seconds",
        "gauge",
        "Inference latency, 99th percentile of the last stats window.",
        l.p99_ms / 1e3,
    );
    put(
        "prediction_entropy",
        "gauge",
        "Mean prediction entropy (nats) of the last stats window.",
        w.mean_entropy(),
    );
    put(
        "prediction_confidence",
        "gauge",
        "Mean max-softmax confidence of the last stats window.",
        w.mean_confidence(),
    );
    put(
        "entropy_ema",
        "gauge",
        "EMA of prediction entropy (drift trigger).",
        w.ema_entropy,
    );
    put(
        "accuracy",
        "gauge",
        "Live accuracy of the last stats window (only when frames carry labels).",
        w.accuracy().unwrap_or(f64::NAN),
    );
    put(
        "resident_memory_bytes",
        "gauge",
        "Process RSS.",
        crate::budget::rss_bytes().unwrap_or(0) as f64,
    );
    s
}

fn answer(mut conn: TcpStream, source: &dyn MetricsSource) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if req.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", render(&source.snapshot()))
    } else {
        ("404 Not Found", "only GET /metrics\n".to_string())
    };
    let _ = write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Binds `addr` and serves until `source` says it stopped. Returns the bound address.
pub fn serve(
    addr: &str,
    source: Arc<dyn MetricsSource>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).map_err(io_err(format!("metrics.listen {addr}")))?;
    let local = listener.local_addr().map_err(io_err(addr))?;
    listener.set_nonblocking(true).map_err(io_err(addr))?;
    let h = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !source.stopped() {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        answer(conn, source.as_ref());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map_err(io_err("metrics thread"))?;
    Ok((local, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_per_engine_and_the_serving_engine_are_rendered() {
        let m = MetricsSnapshot {
            frames: 10,
            frames_primary: 3,
            frames_fallback: 7,
            on_fallback: true,
            ..MetricsSnapshot::default()
        };
        let text = render(&m);
        assert!(
            text.contains("fieldtune_frames_primary_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("fieldtune_frames_fallback_total 7\n"),
            "{text}"
        );
        assert!(text.contains("fieldtune_serving_fallback 1\n"), "{text}");
        let back = render(&MetricsSnapshot::default());
        assert!(back.contains("fieldtune_serving_fallback 0\n"), "{back}");
    }
}
