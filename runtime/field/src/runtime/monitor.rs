//! The monitor thread: every `stats_every_s` it logs the inference loop's last window as a
//! `stats` event (and keeps it for the metrics), and it stops the run at `max_seconds`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::RunState;
use super::summary::mib;
use crate::budget::rss_bytes;
use crate::events::{EventLog, FieldEvent, Stats};

/// Runs until the run stops; `every` and `max_seconds` in seconds (`max_seconds` 0: no cap).
pub(crate) fn monitor_thread(
    state: Arc<RunState>,
    events: Arc<EventLog>,
    every: f64,
    max_seconds: f64,
) {
    let t0 = Instant::now();
    let mut next = t0 + Duration::from_secs_f64(every);
    let mut last_frames = 0;
    let mut last_t = t0;
    while !state.stopped() {
        std::thread::sleep(Duration::from_millis(50));
        if max_seconds > 0.0 && t0.elapsed().as_secs_f64() >= max_seconds {
            tracing::info!("max_seconds reached");
            state.request_stop();
        }
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs_f64(every);
        let Some(w) = state.take_window() else {
            continue;
        };
        let frames = state.frames.load(Ordering::Relaxed);
        let now = Instant::now();
        let fps =
            (frames - last_frames) as f64 / now.duration_since(last_t).as_secs_f64().max(1e-9);
        (last_frames, last_t) = (frames, now);
        let (cap, out) = state.queue_counts();
        let l = w.latency.summary();
        events.emit(FieldEvent::Stats(Stats {
            frames,
            fps,
            window_frames: w.frames,
            latency_p50_ms: l.p50_ms,
            latency_p99_ms: l.p99_ms,
            latency_max_ms: l.max_ms,
            entropy: w.mean_entropy(),
            confidence: w.mean_confidence(),
            ema_entropy: w.ema_entropy,
            ema_confidence: w.ema_confidence,
            accuracy: w.accuracy(),
            version: w.version,
            round_active: w.round_active,
            capture_dropped: cap.dropped,
            output_dropped: out.dropped,
            rss_mb: mib(rss_bytes().unwrap_or(0)),
            drift_entropy_limit: w.drift_limits.map(|l| l.0),
            drift_confidence_limit: w.drift_limits.map(|l| l.1),
        }));
    }
}
