//! Opt-in Prometheus text endpoint (`[metrics] listen = "127.0.0.1:PORT"`): a small HTTP/1.0
//! responder answering `GET /metrics` (anything else: 404). Loopback only. Connections are
//! answered concurrently, each on its own thread with read and write timeouts, at most
//! [`MAX_CONNECTIONS`] at once (more get a 503 and are closed at once).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{io_err, Result};
use crate::stats::StatsWindow;

/// The run's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsSnapshot {
    pub frames: u64,
    /// Frames skipped as unreadable or unusable.
    pub bad_frames: u64,
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
        "bad_frames_total",
        "counter",
        "Frames skipped because they could not be read or used ([source] max_bad_frames in a row stop the run).",
        m.bad_frames as f64,
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

/// Connections answered at once; more are closed at once (with a 503) so that idle or slow
/// clients cannot hold the endpoint.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request, and to take the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

fn answer(mut conn: TcpStream, source: &dyn MetricsSource) {
    let _ = conn.set_read_timeout(Some(CONNECTION_TIMEOUT));
    let _ = conn.set_write_timeout(Some(CONNECTION_TIMEOUT));
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

/// Answers `conn` on a thread of its own while fewer than [`MAX_CONNECTIONS`] are open;
/// otherwise says 503 without waiting and closes it.
fn dispatch(conn: TcpStream, source: &Arc<dyn MetricsSource>, open: &Arc<AtomicUsize>) {
    if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        open.fetch_sub(1, Ordering::AcqRel);
        // Still non-blocking (accepted from a non-blocking listener): never waits.
        let _ = (&conn).write_all(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let (source, done) = (source.clone(), open.clone());
    let spawned = std::thread::Builder::new()
        .name("metrics-conn".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if conn.set_nonblocking(false).is_ok() {
                answer(conn, source.as_ref());
            }
            done.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `addr` and serves until `source` says it stopped. Returns the bound address. Each
/// connection is answered on its own thread with read and write timeouts
/// ([`CONNECTION_TIMEOUT`]); at most [`MAX_CONNECTIONS`] at once.
pub fn serve(
    addr: &str,
    source: Arc<dyn MetricsSource>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).map_err(io_err(format!("metrics.listen {addr}")))?;
    let local = listener.local_addr().map_err(io_err(addr))?;
    listener.set_nonblocking(true).map_err(io_err(addr))?;
    let open = Arc::new(AtomicUsize::new(0));
    let h = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !source.stopped() {
                match listener.accept() {
                    Ok((conn, _)) => dispatch(conn, &source, &open),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .map_err(io_err("metrics thread"))?;
    Ok((local, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn frames_per_engine_and_the_serving_engine_are_rendered() {
        let m = MetricsSnapshot {
            frames: 10,
            frames_primary: 3,
            frames_fallback: 7,
            on_fallback: true,
            bad_frames: 2,
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
        assert!(text.contains("fieldtune_bad_frames_total 2\n"), "{text}");
        let back = render(&MetricsSnapshot::default());
        assert!(back.contains("fieldtune_serving_fallback 0\n"), "{back}");
    }

    struct Fixed;

    impl MetricsSource for Fixed {
        fn snapshot(&self) -> MetricsSnapshot {
            MetricsSnapshot {
                frames: 42,
                ..MetricsSnapshot::default()
            }
        }
        fn stopped(&self) -> bool {
            false
        }
    }

    fn get(addr: SocketAddr) -> Option<String> {
        let mut c = TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    }

    #[test]
    fn metrics_answer_while_250_idle_connections_are_open() {
        let (addr, _h) = serve("127.0.0.1:0", Arc::new(Fixed)).unwrap();
        let idle: Vec<TcpStream> = (0..250)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let t0 = Instant::now();
        // A client that meets a full endpoint is told so at once (503) and asks again.
        let answer = loop {
            match get(addr) {
                Some(s) if s.starts_with("HTTP/1.0 200") => break s,
                _ => {
                    assert!(t0.elapsed() < Duration::from_secs(10), "no answer");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        assert!(answer.contains("fieldtune_frames_total 42\n"), "{answer}");
        drop(idle);
    }
}
