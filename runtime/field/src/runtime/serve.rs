//! The inference loop, on the caller's thread: frames from the capture queue through the live
//! session, predictions to the output queue, frames to the replay buffer, statistics to the
//! monitor, trigger requests to the supervisor.
//!
//! Inference never waits for adaptation: new weights arrive through a [`Handover`] that the
//! loop looks at with an atomic flag and takes with a `try_lock`, the replay buffer is fed only
//! when its lock is free, and triggers and windows leave through an atomic and a `try_lock`.
//! Everything about the live session (taking new weights, running it, falling back, retiring
//! the old one) is in [`LiveSession`](super::live::LiveSession).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fieldtune_frames::{write_normalized, ModelConfig};
use fieldtune_tensor::Tensor;

use super::live::{Handover, LiveSession};
use super::pipeline::{FrameSlot, Prediction};
use super::state::RunState;
use super::summary::VersionServed;
use crate::budget::rss_bytes;
use crate::config::RunConfig;
use crate::error::{FieldError, Result};
use crate::queue::SlotQueue;
use crate::replay::ReplayBuffer;
use crate::stats::{softmax_stats, LatencyHist, StatsWindow};
use crate::trigger::FrameTriggers;

/// What the inference loop counted over the whole run.
#[derive(Default)]
pub(crate) struct Totals {
    pub idle: LatencyHist,
    pub during: LatencyHist,
    pub labeled: u64,
    pub correct: u64,
    pub errors: u64,
    pub rss_peak: u64,
    pub fallbacks: u64,
    pub restores: u64,
    /// What each live model version served, in version order.
    pub versions: BTreeMap<u64, VersionServed>,
}

/// The inference loop's surroundings: the queues it joins, the replay buffer it feeds, and
/// the state and hand-over it shares with the other threads.
pub(crate) struct InferenceLoop<'a> {
    pub cfg: &'a RunConfig,
    pub model: &'a ModelConfig,
    pub capture: &'a SlotQueue<FrameSlot>,
    pub output: &'a SlotQueue<Prediction>,
    pub replay: &'a Mutex<ReplayBuffer>,
    pub state: &'a RunState,
    pub handover: &'a Handover,
}

impl InferenceLoop<'_> {
    /// Serves until the capture queue is drained, `max_frames` is reached or the run stops
    /// (the caller stops the other threads, after letting a running round finish).
    pub fn run(&self, mut live: LiveSession) -> Result<Totals> {
        let (cfg, mcfg, state) = (self.cfg, self.model, self.state);
        let mut totals = Totals::default();
        let mut input = Tensor::zeros_f32(vec![
            1,
            mcfg.channels as usize,
            mcfg.height as usize,
            mcfg.width as usize,
        ]);
        let k = mcfg.classes.len();
        let mut triggers = FrameTriggers::new(&cfg.trigger);
        let mut window = StatsWindow {
            version: live.version,
            ..StatsWindow::default()
        };
        let every = Duration::from_secs_f64(cfg.pipeline.stats_every_s);
        let mut window_start = Instant::now();
        let mut consecutive_errors = 0u32;
        let mut replay_skipped = 0u64;
        let max_frames = cfg.pipeline.max_frames;
        loop {
            live.swap_if_offered(self.handover);
            if self.handover.take_rebaseline() {
                // New weights outside a recovery episode, a reset, or a settled episode.
                triggers.committed();
            }
            if self.handover.take_round_started() {
                triggers.round_started();
            }
            if state.stopped() {
                break;
            }
            let Some(slot) = self.capture.pop(Duration::from_millis(100)) else {
                if self.capture.is_drained() {
                    break;
                }
                continue;
            };
            let during_round = state.round_active.load(Ordering::Relaxed);
            let t = Instant::now();
            let res =
                write_normalized(&slot.image, mcfg, 0, input.as_f32_mut().expect("f32 input"))
                    .map_err(FieldError::from)
                    .and_then(|_| live.infer(slot.id, &mcfg.input, &input, &mcfg.output));
            let us = t.elapsed().as_secs_f64() * 1e6;
            let logits = match res {
                Ok(v) => v,
                Err(e) => {
                    totals.errors += 1;
                    consecutive_errors += 1;
                    tracing::error!("frame {}: inference failed: {e}", slot.id);
                    self.capture.release(slot);
                    if consecutive_errors >= 100 {
                        state.request_stop();
                        return Err(e);
                    }
                    continue;
                }
            };
            consecutive_errors = 0;
            if during_round {
                totals.during.record_us(us);
            } else {
                totals.idle.record_us(us);
            }
            window.latency.record_us(us);
            window.round_active |= during_round;
            let stats = logits
                .as_f32()
                .filter(|v| v.len() == k)
                .and_then(softmax_stats);
            let (class, conf, entropy) = stats.unwrap_or((0, f64::NAN, f64::NAN));
            window.frames += 1;
            if stats.is_some() {
                window.entropy_sum += entropy;
                window.confidence_sum += conf;
            }
            let served = totals
                .versions
                .entry(live.version)
                .or_insert_with(|| VersionServed::new(live.version));
            served.add(
                stats.map(|_| (conf, entropy)),
                slot.label.map(|l| l == class),
            );
            if let Some(l) = slot.label {
                window.labeled += 1;
                totals.labeled += 1;
                if l == class {
                    window.correct += 1;
                    totals.correct += 1;
                }
            }
            // The replay buffer is never waited for: a busy lock (a round taking its
            // snapshot) skips this frame.
            match self.replay.try_lock() {
                Ok(mut r) => r.push(&slot.image, slot.id),
                Err(_) => replay_skipped += 1,
            }
            state.last_frame_id.store(slot.id, Ordering::Relaxed);
            if let Some(reason) = triggers.observe(entropy, conf) {
                state.request_round(reason);
            }
            if let Some(d) = triggers.drift() {
                if let Some((h, c)) = d.ema() {
                    window.ema_entropy = h;
                    window.ema_confidence = c;
                }
                window.drift_limits = d.baseline().map(|(bh, bc)| {
                    let (rise, drop) = d.thresholds();
                    (bh + rise, bc - drop)
                });
            }
            if let Some(_free) = self.output.acquire() {
                self.output.push(Prediction {
                    frame: slot.id,
                    t_ms: slot.t_ms,
                    class,
                    confidence: conf as f32,
                    version: live.version,
                    label: slot.label,
                });
            }
            self.capture.release(slot);
            let n = state.frames.fetch_add(1, Ordering::Relaxed) + 1;
            if window_start.elapsed() >= every {
                window.version = live.version;
                if state.offer_window(window) {
                    window = StatsWindow {
                        version: live.version,
                        ..StatsWindow::default()
                    };
                    window_start = Instant::now();
                    totals.rss_peak = totals.rss_peak.max(rss_bytes().unwrap_or(0));
                }
            }
            if max_frames > 0 && n >= max_frames {
                tracing::info!("max_frames reached");
                break;
            }
        }
        totals.fallbacks = live.fallbacks;
        totals.restores = live.restores;
        if replay_skipped > 0 {
            tracing::debug!(
                "{replay_skipped} frames skipped the replay buffer while a round read it"
            );
        }
        Ok(totals)
    }
}
