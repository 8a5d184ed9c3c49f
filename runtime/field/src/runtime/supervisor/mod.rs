//! The round thread's [`RoundSupervisor`]: the commit protocol. A trigger (manual, schedule,
//! or a request of the inference loop) passes the cooldown, replay and temperature checks;
//! the round trains on a replay snapshot; the gate judges its weights against the live ones
//! on held-out probe frames and the anchors; a pass is checkpointed, then handed to the
//! inference loop; a failure is rolled back, and `max_failures` in a row reset the live model
//! to the source weights.
//!
//! A drift trigger, with `[recovery]` on, opens an episode instead ([`crate::recovery`]): its
//! rounds train on post-trigger frames and follow each other while they gain.

mod commit;
mod episode;
mod failures;
mod fleet;
mod setup;

pub(crate) use setup::SupervisorSetup;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fieldtune_engine::{Engine, Session};
use fieldtune_tensor::Tensor;

use super::fleet::FleetJob;
use super::live::Handover;
use super::roles::{Serving, Training};
use super::state::RunState;
use super::summary::mib;
use crate::budget::{Budget, BudgetVerdict};
use crate::config::RunConfig;
use crate::error::Result;
use crate::events::{
    EventLog, FieldEvent, GatedRound, Paused, Resumed, RoundEnded, RoundStarted, StoppedRound,
    TriggerIgnored, TrtEngine,
};
use crate::gate::{probe, GateInput, GateVerdict};
use crate::recovery::{EpisodeRound, Recovery, RoundOutcome, SettleReason};
use crate::replay::ReplayBuffer;
use crate::round::{Cut, RoundControl, RoundPlan, RoundTrainer};
use crate::store::{CheckpointMeta, Store};
use crate::trigger::{Reason, Schedule};
use fleet::{FleetBase, FleetOutcome};

/// Accuracy of `classes` against `labels`.
fn accuracy(classes: &[usize], labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    classes.iter().zip(labels).filter(|(c, l)| c == l).count() as f64 / labels.len() as f64
}

/// Anchor accuracy of `session`.
fn anchor_accuracy(session: &mut dyn Session, trainer: &RoundTrainer) -> Result<f64> {
    let (images, labels) = trainer.anchors();
    let stats = probe(session, &trainer.model().config, images, 250)?;
    Ok(accuracy(&stats.classes, labels))
}

/// The live weights as the supervisor knows them.
struct Live {
    weights: HashMap<String, Tensor>,
    meta: CheckpointMeta,
    /// A session of the live weights for the gate's comparisons (the inference loop has its
    /// own).
    reference: Box<dyn Session>,
    anchor_accuracy: f64,
}

/// A candidate that the gate judged.
struct Judged {
    verdict: GateVerdict,
    input: GateInput,
    session: Box<dyn Session>,
    bytes: Vec<u8>,
}

/// One round's numbers in this process and over the state folder's history.
#[derive(Clone, Copy)]
struct RoundNo {
    /// 1-based in this process (what `[fault]` counts).
    here: u64,
    /// Counted on from the resumed checkpoint's round (what events and checkpoints show).
    total: u64,
}

/// Runs the rounds of a run and owns what they change: the train step, the checkpoint store
/// and the live weights.
pub(crate) struct RoundSupervisor {
    cfg: RunConfig,
    state: Arc<RunState>,
    handover: Arc<Handover>,
    events: Arc<EventLog>,
    replay: Arc<Mutex<ReplayBuffer>>,
    infer_engine: Arc<dyn Engine>,
    retired: mpsc::Receiver<Box<dyn Session>>,
    serving: Serving,
    training: Training,
    trainer: RoundTrainer,
    store: Store,
    budget: Budget,
    live: Live,
    /// Failed rounds in a row.
    failures: u32,
    /// Rounds run in this process.
    rounds: u64,
    /// The resumed checkpoint's round.
    base_round: u64,
    /// Whether the temperature ceiling holds rounds back (a `paused` event was logged).
    hot: bool,
    /// The drift episode policy and its open episode.
    recovery: Recovery,
    last_round_end_frame: u64,
    last_skip_log: Instant,
    /// The train engine (FedProx rounds compile a train step anchored at the server's arrays).
    train_engine: Box<dyn Engine>,
    /// Messages of the fleet node thread (`[fleet]`).
    fleet: Option<mpsc::Receiver<FleetJob>>,
    /// What the last fleet round trained and how the gate judged it (for its reply).
    fleet_out: Option<FleetOutcome>,
}

/// A `trt_engine` event for the session just loaded on `engine`, if TensorRT made it.
pub(super) fn note_trt(engine: &dyn Engine, events: &EventLog, version: u64) {
    if let Some(b) = engine.take_trt_build() {
        events.emit(FieldEvent::TrtEngine(TrtEngine {
            label: b.label,
            version,
            path: b.path.as_str().into(),
            ms: b.ms,
            refit: b.refit,
        }));
    }
}

impl RoundSupervisor {
    /// The engine the primary inference sessions come from: its description and its name.
    pub fn engine_desc(&self) -> (String, String) {
        (
            self.infer_engine.describe(),
            self.serving.primary_name.clone(),
        )
    }

    /// Waits for triggers and runs rounds until the run stops.
    pub fn run(mut self) -> Result<()> {
        tracing::info!("budget: {}", self.budget.thermal.describe());
        let mut schedule = Schedule::new(&self.cfg.trigger, Instant::now());
        while !self.state.stopped() {
            std::thread::sleep(Duration::from_millis(20));
            for s in self.retired.try_iter() {
                drop(s);
            }
            if let Some(job) = self.take_fleet_job() {
                self.fleet_message(job)?;
                continue;
            }
            let reason = if self.state.manual.swap(false, Ordering::Relaxed) {
                Some(Reason::Manual)
            } else if schedule.due(Instant::now(), SystemTime::now()) {
                Some(Reason::Schedule)
            } else {
                self.state.take_request()
            };
            let reason = self.open_episode(reason);
            let (reason, episode) = match reason {
                Some(r) => (r, None),
                None => match self.episode_round_due() {
                    Some(e) => (Reason::Drift, Some(e)),
                    None => continue,
                },
            };
            if let Some(why) = self.held_back(reason, episode.is_some()) {
                if self.last_skip_log.elapsed() > Duration::from_secs(10)
                    || reason == Reason::Manual
                {
                    tracing::debug!("{} trigger ignored: {why}", reason.as_str());
                    self.last_skip_log = Instant::now();
                }
                if reason == Reason::Manual {
                    self.events.emit(FieldEvent::Trigger(TriggerIgnored {
                        reason,
                        ignored: why.into(),
                    }));
                }
                continue;
            }
            self.rounds += 1;
            let no = RoundNo {
                here: self.rounds,
                total: self.base_round + self.rounds,
            };
            let outcome = self.round(reason, no, episode, None)?;
            match episode {
                Some(_) => {
                    if let Some(s) = self.recovery.after_round(outcome) {
                        self.settled(s);
                    }
                }
                None => self.recovery.train_step_changed(),
            }
            self.last_round_end_frame = self.state.frames.load(Ordering::Relaxed);
            self.state.clear_request();
        }
        self.end_episode(SettleReason::Stopped);
        Ok(())
    }

    /// Why a trigger does not start a round now, if it does not: the cooldown, too few replay
    /// frames, or the temperature ceiling (logging `paused` and `resumed` as it changes). An
    /// episode's rounds wait only for the temperature.
    fn held_back(&mut self, reason: Reason, episode: bool) -> Option<&'static str> {
        let frames = self.state.frames.load(Ordering::Relaxed);
        let replay_len = self.replay.lock().map(|r| r.len()).unwrap_or(0);
        let ceiling = self.cfg.budget.temperature_ceiling_c;
        if !episode
            && reason != Reason::Manual
            && self.rounds > 0
            && frames < self.last_round_end_frame + self.cfg.trigger.cooldown_frames
        {
            Some("cooldown")
        } else if !episode && replay_len < self.cfg.trigger.min_replay {
            Some("too few replay frames")
        } else if let BudgetVerdict::Hot(t) = self.budget.thermal(self.hot) {
            if !self.hot {
                tracing::warn!("{t:.1} C is above the temperature ceiling: rounds wait");
                self.events.emit(FieldEvent::Paused(Paused {
                    celsius: t,
                    ceiling: Some(ceiling),
                    round: None,
                }));
                self.hot = true;
            }
            Some("above the temperature ceiling")
        } else {
            if self.hot {
                tracing::info!("cooled below the ceiling: rounds may start");
                self.events.emit(FieldEvent::Resumed(Resumed { ceiling }));
                self.hot = false;
            }
            None
        }
    }

    /// One round: snapshot -> train -> gate -> commit or roll back. An episode's round trains
    /// and probes on the frames since its trigger; a fleet round starts from the server's
    /// arrays (`fleet`), keeps what it trained in `fleet_out` and commits as kind `fleet`.
    fn round(
        &mut self,
        reason: Reason,
        no: RoundNo,
        episode: Option<EpisodeRound>,
        mut fleet: Option<FleetBase>,
    ) -> Result<RoundOutcome> {
        let t0 = Instant::now();
        let round_total = no.total;
        self.state.round_active.store(true, Ordering::Relaxed);
        self.handover.round_started();
        self.state.rounds.fetch_add(1, Ordering::Relaxed);
        let snapshot = {
            let replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            match episode {
                Some(e) => replay.recent_since(e.since),
                None => replay.snapshot(),
            }
        };
        let oldest_frame = snapshot.oldest();
        // Every k-th frame is held out as the probe that judges the unlabeled objective.
        let k = (1.0 / self.cfg.replay.probe_fraction).round().max(2.0) as usize;
        let (mut train, mut probe_set) = (Vec::new(), Vec::new());
        for (i, f) in snapshot.frames.into_iter().enumerate() {
            if i % k == k - 1 {
                probe_set.push(f);
            } else {
                train.push(f);
            }
        }
        let poison = self.cfg.fault.poison(no.here);
        self.events.emit(FieldEvent::RoundStarted(RoundStarted {
            round: round_total,
            reason,
            frame: self.state.frames.load(Ordering::Relaxed),
            train_frames: train.len(),
            probe_frames: probe_set.len(),
            version: self.live.meta.version,
            poison: poison.map(|p| format!("{p:?}")),
            oldest_frame,
            episode_round: episode.map(|e| e.index),
        }));
        if episode.is_some() {
            self.recovery
                .round_started(self.state.last_frame_id.load(Ordering::Relaxed));
        }
        let plan = RoundPlan {
            steps: episode.and_then(|e| e.steps),
            carry: episode.and_then(|e| e.carry),
        };
        tracing::info!(
            "round {round_total} ({}): {} replay frames + {} probe",
            reason.as_str(),
            train.len(),
            probe_set.len()
        );
        let events = &self.events;
        let mut on_pause = |t: f64| {
            tracing::warn!("round {round_total} paused: {t:.1} C is above the ceiling");
            events.emit(FieldEvent::Paused(Paused {
                celsius: t,
                ceiling: None,
                round: Some(round_total),
            }));
        };
        let mut ctl = RoundControl {
            budget: &self.budget,
            stop: &self.state.stop,
            on_pause: &mut on_pause,
        };
        if let Some(f) = &self.training.faults {
            f.set_round(no.here);
        }
        let result = match fleet.as_mut() {
            Some(f) => f
                .trainer
                .as_mut()
                .unwrap_or(&mut self.trainer)
                .run_round(&f.weights, &train, no.here, poison, plan, &mut ctl),
            None => {
                self.trainer
                    .run_round(&self.live.weights, &train, no.here, poison, plan, &mut ctl)
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                self.fail(round_total, None, &e)?;
                self.train_fallback(round_total, &e)?;
                return Ok(RoundOutcome::Failed);
            }
        };
        let metrics = result.metrics.iter().cloned().collect();
        if result.cut == Some(Cut::Stop) {
            self.state.round_active.store(false, Ordering::Relaxed);
            self.events
                .emit(FieldEvent::RoundEnded(RoundEnded::Stopped(StoppedRound {
                    round: round_total,
                    steps: result.steps,
                    cut: "stop".into(),
                    metrics,
                    seconds: result.seconds,
                })));
            return Ok(RoundOutcome::Stopped);
        }
        let judged = self.gate(&result, &probe_set);
        self.state.round_active.store(false, Ordering::Relaxed);
        let judged = match judged {
            Ok(j) => j,
            Err(e) => {
                self.fail(round_total, Some(result.steps), &e)?;
                return Ok(RoundOutcome::Failed);
            }
        };
        self.events
            .emit(FieldEvent::RoundEnded(RoundEnded::Gated(GatedRound {
                round: round_total,
                steps: result.steps,
                seconds: t0.elapsed().as_secs_f64(),
                train_seconds: result.seconds,
                busy_seconds: result.busy_seconds,
                paused_seconds: result.paused_seconds,
                rss_growth_mb: mib(result.rss_growth),
                cut: result.cut.as_ref().map(|c| format!("{c:?}")),
                mask_rate: result
                    .metrics
                    .iter()
                    .find(|(n, _)| n == "mask_rate")
                    .map(|m| m.1),
                metrics,
                gate: judged.verdict.clone(),
                probe_entropy_before: judged.input.before.mean_entropy,
                probe_entropy_after: judged.input.after.mean_entropy,
            })));
        if fleet.is_some() {
            self.fleet_out = Some(FleetOutcome::new(&result, &judged, train.len()));
        }
        if judged.verdict.pass {
            let gain = judged.verdict.objective_before - judged.verdict.objective_after;
            let steps = result.steps;
            let kind = if fleet.is_some() { "fleet" } else { "adapted" };
            let committed = self.commit(round_total, result, judged, episode.is_none(), kind)?;
            Ok(if committed {
                RoundOutcome::Committed { gain, steps }
            } else {
                RoundOutcome::RolledBack
            })
        } else {
            drop(judged.session);
            self.rollback(round_total, &judged.verdict)?;
            Ok(RoundOutcome::RolledBack)
        }
    }
}
