//! [`RunState`]: what the threads of a run share, owned by this module. Counters are plain
//! atomics; the two messages that cross the hot path (a trigger request from the inference
//! loop, a finished stats window for the monitor) are taken without waiting: an atomic swap
//! and a `try_lock`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::metrics::{MetricsSnapshot, MetricsSource};
use crate::queue::{QueueCounts, SlotQueue};
use crate::stats::StatsWindow;
use crate::trigger::Reason;

/// A queue whose counters can be read (the capture and output queues hold different slots).
trait Counted: Send + Sync {
    fn counts(&self) -> QueueCounts;
}

impl<T: Send> Counted for SlotQueue<T> {
    fn counts(&self) -> QueueCounts {
        SlotQueue::counts(self)
    }
}

/// State shared between the threads of a run.
#[derive(Default)]
pub(crate) struct RunState {
    /// Ends the run: set by a signal, `max_seconds`, a failing stage or the end of serving.
    pub stop: AtomicBool,
    /// Manual trigger (SIGUSR1 sets it, the supervisor takes it).
    pub manual: Arc<AtomicBool>,
    /// Frames classified (inference loop).
    pub frames: AtomicU64,
    /// Frames skipped as unreadable or unusable (capture thread).
    pub bad_frames: AtomicU64,
    /// Source frame number of the last frame classified (inference loop).
    pub last_frame_id: AtomicU64,
    /// Whether a recovery episode is open (supervisor).
    pub recovering: AtomicBool,
    /// Recovery episodes opened (supervisor).
    pub episodes: AtomicU64,
    /// Version of the live weights (supervisor).
    pub version: AtomicU64,
    /// Whether a round runs (supervisor).
    pub round_active: AtomicBool,
    pub rounds: AtomicU64,
    pub commits: AtomicU64,
    pub rollbacks: AtomicU64,
    pub resets: AtomicU64,
    /// Fleet rounds run, and those that passed the gate (`[fleet]`, supervisor).
    pub fleet_rounds: AtomicU64,
    pub fleet_passed: AtomicU64,
    /// A trigger reason code from the inference loop (0: none).
    request: AtomicU8,
    /// The inference loop's finished stats window, for the monitor.
    window: Mutex<Option<StatsWindow>>,
    /// The last window the monitor logged, for the metrics.
    last_window: Mutex<StatsWindow>,
    /// The capture and output queues, once they exist.
    queues: OnceLock<[Arc<dyn Counted>; 2]>,
    /// Frames answered by the primary and by the fallback inference session (inference loop).
    served_primary: AtomicU64,
    served_fallback: AtomicU64,
    /// Whether the fallback serves now.
    on_fallback: AtomicBool,
    /// Names of the primary and fallback engines.
    engines: OnceLock<[String; 2]>,
}

impl RunState {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Registers the capture and output queues whose counters the stats report.
    pub fn set_queues<A: Send + 'static, B: Send + 'static>(
        &self,
        capture: Arc<SlotQueue<A>>,
        output: Arc<SlotQueue<B>>,
    ) {
        let _ = self.queues.set([capture, output]);
    }

    /// Counters of the capture and output queues.
    pub fn queue_counts(&self) -> (QueueCounts, QueueCounts) {
        match self.queues.get() {
            Some([c, o]) => (c.counts(), o.counts()),
            None => Default::default(),
        }
    }

    /// Inference loop: asks for a round, unless a request is already waiting.
    pub fn request_round(&self, reason: Reason) {
        let _ =
            self.request
                .compare_exchange(0, reason.code(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Supervisor: takes the waiting request, if any.
    pub fn take_request(&self) -> Option<Reason> {
        Reason::from_code(self.request.swap(0, Ordering::Relaxed))
    }

    /// Supervisor: drops a request made during a round.
    pub fn clear_request(&self) {
        self.request.store(0, Ordering::Relaxed);
    }

    /// Inference loop: hands over a finished window unless the monitor holds the lock;
    /// false when it did not (the loop keeps counting into the same window).
    pub fn offer_window(&self, w: StatsWindow) -> bool {
        match self.window.try_lock() {
            Ok(mut g) => {
                *g = Some(w);
                true
            }
            Err(_) => false,
        }
    }

    /// Monitor: takes the finished window, if there is one, and keeps it as the last one.
    pub fn take_window(&self) -> Option<StatsWindow> {
        let w = self.window.lock().ok().and_then(|mut g| g.take())?;
        *self.last_window.lock().unwrap_or_else(|p| p.into_inner()) = w;
        Some(w)
    }

    /// Inference loop: names the engines (once).
    pub fn set_engines(&self, primary: &str, fallback: &str) {
        let _ = self
            .engines
            .set([primary.to_string(), fallback.to_string()]);
    }

    /// Inference loop: one frame answered, by the fallback or the primary.
    pub fn count_served(&self, fallback: bool) {
        let c = if fallback {
            &self.served_fallback
        } else {
            &self.served_primary
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Inference loop: the fallback serves now (or not).
    pub fn set_on_fallback(&self, on: bool) {
        self.on_fallback.store(on, Ordering::Relaxed);
    }

    /// Frames answered per engine (engines that answered none left out).
    pub fn frames_by_engine(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = std::collections::BTreeMap::new();
        if let Some([p, f]) = self.engines.get() {
            for (name, n) in [(p, &self.served_primary), (f, &self.served_fallback)] {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    *m.entry(name.clone()).or_insert(0) += n;
                }
            }
        }
        m
    }

    /// The last complete stats window.
    pub fn last_window(&self) -> StatsWindow {
        *self.last_window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MetricsSource for RunState {
    fn snapshot(&self) -> MetricsSnapshot {
        let (cap, out) = self.queue_counts();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            frames: c(&self.frames),
            bad_frames: c(&self.bad_frames),
            capture_dropped: cap.dropped,
            output_dropped: out.dropped,
            rounds: c(&self.rounds),
            commits: c(&self.commits),
            rollbacks: c(&self.rollbacks),
            resets: c(&self.resets),
            version: c(&self.version),
            round_active: self.round_active.load(Ordering::Relaxed),
            recovering: self.recovering.load(Ordering::Relaxed),
            episodes: c(&self.episodes),
            frames_primary: c(&self.served_primary),
            frames_fallback: c(&self.served_fallback),
            on_fallback: self.on_fallback.load(Ordering::Relaxed),
            window: self.last_window(),
        }
    }

    fn stopped(&self) -> bool {
        RunState::stopped(self)
    }
}
