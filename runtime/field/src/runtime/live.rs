//! The live weights on the inference thread: the [`Handover`] that brings new ones from the
//! round thread, and the [`LiveSession`] that serves them, on the primary session or, when it
//! fails, on the fallback session of the same weights.
//!
//! Fallback: a primary run that returns an error has the same frame answered by the
//! fallback session (so no frame is lost and none answered twice), and the fallback serves
//! from then on; `deadline_misses` missed deadlines in a row do the same from the next frame
//! (the late frame was answered by the primary). Every `retry_s` the primary is probed on the
//! frame at hand: if it answers, its answer is the frame's and it serves again. Each switch is
//! an event (`engine_fallback`, `engine_restored`), written from the inference thread (rare).
//!
//! The fallback session is built with the weights, on the round thread, whenever the primary
//! is (at start and at every commit or reset): a failing primary then costs one fallback run
//! on that frame, not a model build on the hot path, for the memory of a second CPU session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fieldtune_engine::Session;
use fieldtune_tensor::Tensor;

use super::fault::FrameClock;
use super::state::RunState;
use crate::config::EnginePlan;
use crate::error::Result;
use crate::events::{EngineFallback, EngineRestored, EventLog, FieldEvent};

/// Weights on their way to the inference loop (sessions built, gated and checkpointed on
/// the round thread): the primary session and, with `fallback = "tract"`, the fallback's.
pub(crate) struct LiveModel {
    pub session: Box<dyn Session>,
    pub fallback: Option<Box<dyn Session>>,
    pub version: u64,
}

/// What the supervisor tells the inference loop, which never waits for it: new weights to
/// swap in between two frames, that a round started, and that the drift detector should
/// measure a new baseline.
#[derive(Default)]
pub(crate) struct Handover {
    has_model: AtomicBool,
    model: Mutex<Option<LiveModel>>,
    round_started: AtomicBool,
    rebaseline: AtomicBool,
}

impl Handover {
    /// Supervisor: offers new weights (replacing any not yet taken).
    pub fn offer(&self, m: LiveModel) {
        *self.model.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
        self.has_model.store(true, Ordering::Release);
    }

    /// Supervisor: a round started (the frame triggers restart their count).
    pub fn round_started(&self) {
        self.round_started.store(true, Ordering::Relaxed);
    }

    /// The offered weights, if any and if the lock is free.
    fn try_take(&self) -> Option<LiveModel> {
        if !self.has_model.load(Ordering::Acquire) {
            return None;
        }
        let m = self.model.try_lock().ok()?.take()?;
        self.has_model.store(false, Ordering::Release);
        Some(m)
    }

    pub fn take_round_started(&self) -> bool {
        self.round_started.swap(false, Ordering::Relaxed)
    }

    /// Supervisor: the drift detector should measure a new baseline (after weights it
    /// offered, once the inference loop has taken them).
    pub fn rebaseline(&self) {
        self.rebaseline.store(true, Ordering::Release);
    }

    /// Inference loop: whether to measure a new baseline now (not while offered weights wait
    /// to be taken).
    pub fn take_rebaseline(&self) -> bool {
        !self.has_model.load(Ordering::Acquire) && self.rebaseline.swap(false, Ordering::AcqRel)
    }
}

/// Names of the two engines and the fallback policy.
pub(crate) struct Engines {
    pub primary: String,
    pub fallback: String,
    pub retry: Duration,
    pub deadline: Option<Duration>,
    pub deadline_misses: u32,
}

impl Engines {
    pub fn new(primary: String, fallback: String, plan: &EnginePlan) -> Engines {
        Engines {
            primary,
            fallback,
            retry: plan.retry,
            deadline: plan.deadline,
            deadline_misses: plan.deadline_misses,
        }
    }
}

/// The sessions that serve, their weights' version, and where replaced sessions go to be
/// dropped (on the round thread, off the hot path).
pub(crate) struct LiveSession {
    session: Box<dyn Session>,
    fallback: Option<Box<dyn Session>>,
    pub version: u64,
    retire: mpsc::Sender<Box<dyn Session>>,
    engines: Engines,
    clock: Arc<FrameClock>,
    events: Arc<EventLog>,
    state: Arc<RunState>,
    /// Since when the fallback serves (and when the primary was last probed).
    on_fallback: Option<Instant>,
    episode_frames: u64,
    misses: u32,
    pub fallbacks: u64,
    pub restores: u64,
}

impl LiveSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        m: LiveModel,
        retire: mpsc::Sender<Box<dyn Session>>,
        engines: Engines,
        clock: Arc<FrameClock>,
        events: Arc<EventLog>,
        state: Arc<RunState>,
    ) -> LiveSession {
        state.set_engines(&engines.primary, &engines.fallback);
        LiveSession {
            session: m.session,
            fallback: m.fallback,
            version: m.version,
            retire,
            engines,
            clock,
            events,
            state,
            on_fallback: None,
            episode_frames: 0,
            misses: 0,
            fallbacks: 0,
            restores: 0,
        }
    }

    /// Swaps in the weights `handover` offers, if any (both sessions); true when new
    /// weights went live.
    pub fn swap_if_offered(&mut self, handover: &Handover) -> bool {
        let Some(m) = handover.try_take() else {
            return false;
        };
        let old = std::mem::replace(&mut self.session, m.session);
        let _ = self.retire.send(old);
        let old_fb = std::mem::replace(&mut self.fallback, m.fallback);
        if let Some(old_fb) = old_fb {
            let _ = self.retire.send(old_fb);
        }
        if self.fallback.is_none() && self.on_fallback.is_some() {
            // No fallback for these weights: the primary serves again.
            self.restore(self.clock_frame());
        }
        self.version = m.version;
        true
    }

    fn clock_frame(&self) -> u64 {
        self.clock.get()
    }

    fn run(s: &mut dyn Session, input_name: &str, input: &Tensor, output: &str) -> Result<Tensor> {
        Ok(s.run_fetch(&[(input_name, input)], &[output])?.remove(0))
    }

    fn restore(&mut self, frame: u64) {
        self.on_fallback = None;
        self.restores += 1;
        self.state.set_on_fallback(false);
        tracing::info!(
            "frame {frame}: {} serves again ({} frames on {})",
            self.engines.primary,
            self.episode_frames,
            self.engines.fallback
        );
        self.events.emit(FieldEvent::EngineRestored(EngineRestored {
            engine: self.engines.primary.clone(),
            frame,
            fallback_frames: self.episode_frames,
        }));
    }

    fn fall_back(&mut self, frame: u64, reason: String) {
        tracing::warn!(
            "frame {frame}: {} -> {}: {reason}",
            self.engines.primary,
            self.engines.fallback
        );
        self.on_fallback = Some(Instant::now());
        self.fallbacks += 1;
        self.episode_frames = 0;
        self.misses = 0;
        self.state.set_on_fallback(true);
        self.events.emit(FieldEvent::EngineFallback(EngineFallback {
            role: "inference".into(),
            from: self.engines.primary.clone(),
            to: self.engines.fallback.clone(),
            reason,
            frame: Some(frame),
            round: None,
        }));
    }

    /// Answers frame `frame`: the output named `output`, from exactly one session.
    pub fn infer(
        &mut self,
        frame: u64,
        input_name: &str,
        input: &Tensor,
        output: &str,
    ) -> Result<Tensor> {
        self.clock.set(frame);
        if let Some(since) = self.on_fallback {
            if since.elapsed() >= self.engines.retry {
                // Probe the primary on this frame: its answer, if any, is the frame's.
                if let Ok(t) = Self::run(self.session.as_mut(), input_name, input, output) {
                    self.restore(frame);
                    self.state.count_served(false);
                    return Ok(t);
                }
                self.on_fallback = Some(Instant::now());
            }
            if let Some(fb) = self.fallback.as_mut() {
                let t = Self::run(fb.as_mut(), input_name, input, output)?;
                self.episode_frames += 1;
                self.state.count_served(true);
                return Ok(t);
            }
        }
        let t0 = Instant::now();
        match Self::run(self.session.as_mut(), input_name, input, output) {
            Ok(t) => {
                self.state.count_served(false);
                if let Some(d) = self.engines.deadline {
                    let took = t0.elapsed();
                    if took > d {
                        self.misses += 1;
                        if self.misses >= self.engines.deadline_misses && self.fallback.is_some() {
                            let reason = format!(
                                "{} deadlines of {:.1} ms missed in a row (last {:.1} ms)",
                                self.misses,
                                d.as_secs_f64() * 1e3,
                                took.as_secs_f64() * 1e3
                            );
                            self.fall_back(frame + 1, reason);
                        }
                    } else {
                        self.misses = 0;
                    }
                }
                Ok(t)
            }
            Err(e) => {
                let Some(_) = self.fallback else {
                    return Err(e);
                };
                self.fall_back(frame, e.to_string());
                let fb = self.fallback.as_mut().expect("checked above");
                let t = Self::run(fb.as_mut(), input_name, input, output)?;
                self.episode_frames += 1;
                self.state.count_served(true);
                Ok(t)
            }
        }
    }
}
