//! The round thread's [`RoundSupervisor`]: the commit protocol. A trigger (manual, schedule,
//! or a request of the inference loop) passes the cooldown, replay and temperature checks;
//! the round trains on a replay snapshot; the gate judges its weights against the live ones
//! on held-out probe frames and the anchors; a pass is checkpointed, then handed to the
//! inference loop; a failure is rolled back, and `max_failures` in a row reset the live model
//! to the source weights.
//!
//! A drift trigger, with `[recovery]` on, opens an episode instead ([`crate::recovery`]): its
//! rounds train on post-trigger frames and follow each other while they gain.

mod episode;
mod failures;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fieldtune_adapt::{checkpoint, AdaptConfig, ModelDir};
use fieldtune_engine::{Engine, Session};
use fieldtune_frames::Image8;
use fieldtune_tensor::Tensor;
use serde_json::json;

use super::fault::TrainFaults;
use super::live::{Handover, LiveModel};
use super::options::RunOptions;
use super::roles::{load_primary, Serving, Training};
use super::state::RunState;
use super::summary::mib;
use crate::budget::{lower_thread_priority, Budget, BudgetVerdict};
use crate::config::{Role, RunConfig};
use crate::error::{FieldError, Result};
use crate::events::{
    CheckpointQuarantined, Committed, EngineFallback, EventLog, FieldEvent, GatedRound, Paused,
    Resumed, RolledBack, RoundEnded, RoundStarted, StoppedRound, TriggerIgnored, TrtEngine,
};
use crate::gate::{decide, probe, GateInput, GateVerdict};
use crate::recovery::{EpisodeRound, Recovery, RoundOutcome, SettleReason};
use crate::replay::ReplayBuffer;
use crate::round::{all_finite, Cut, RoundControl, RoundPlan, RoundResult, RoundTrainer};
use crate::store::{unix_ms, CheckpointMeta, Store};
use crate::trigger::{Reason, Schedule};

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

/// What the round thread starts from. [`SupervisorSetup::start`], on that thread, lowers its
/// priority, compiles the train step, opens the checkpoint store and loads the weights to
/// serve.
pub(crate) struct SupervisorSetup {
    pub cfg: RunConfig,
    pub opts: RunOptions,
    pub state: Arc<RunState>,
    pub handover: Arc<Handover>,
    pub events: Arc<EventLog>,
    pub replay: Arc<Mutex<ReplayBuffer>>,
    pub infer_engine: Arc<dyn Engine>,
    pub model: ModelDir,
    pub adapt: AdaptConfig,
    /// Labeled anchors: images and class ids.
    pub anchors: (Vec<Image8>, Vec<usize>),
    /// Sessions the inference loop replaced, dropped here.
    pub retired: mpsc::Receiver<Box<dyn Session>>,
    pub serving: Serving,
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

impl SupervisorSetup {
    /// Builds the supervisor; also returns the session to serve first and its checkpoint.
    pub fn start(self) -> Result<(RoundSupervisor, LiveModel, CheckpointMeta)> {
        let SupervisorSetup {
            cfg,
            opts,
            state,
            handover,
            events,
            replay,
            infer_engine,
            model,
            adapt,
            anchors,
            retired,
            mut serving,
        } = self;
        let mut infer_engine = infer_engine;
        if !lower_thread_priority(cfg.budget.nice) {
            tracing::warn!(
                "could not lower the round thread's priority (nice {})",
                cfg.budget.nice
            );
        }
        let train_engine = opts
            .resolve(
                &serving.plan.train,
                &cfg.budget.board,
                serving.plan.trt_cache.as_deref(),
                &serving.plan.gpu_options(Role::Train, ""),
                cfg.engine.train_threads,
            )
            .map_err(|e| FieldError::Config {
                path: opts.config_path.clone(),
                key: Some("engine.train".into()),
                reason: format!("{}: {e}", serving.plan.train),
            })?;
        tracing::info!(
            "train engine: {} ({})",
            train_engine.engine.describe(),
            train_engine.why
        );
        let train_engine = train_engine.engine;
        let training = Training {
            faults: TrainFaults::new(&cfg.fault),
            opts: opts.clone(),
            spec: serving.plan.train.to_string(),
            switched: false,
        };
        let trainer = training.trainer(
            train_engine.as_ref(),
            model.clone(),
            adapt,
            anchors.0,
            anchors.1,
        )?;
        let model_sha = checkpoint::sha256_hex(&model.bytes);
        let (store, resumed, report) =
            Store::open(&cfg.state_dir, &model_sha, trainer.source_weights())?;
        for (from, to, why) in &report.quarantined {
            events.emit(FieldEvent::CheckpointQuarantined(CheckpointQuarantined {
                file: from.display().to_string(),
                moved_to: to.display().to_string(),
                reason: why.clone(),
            }));
        }
        let bytes = model.with_params(&resumed.params)?;
        let live_session = match load_primary(
            infer_engine.as_ref(),
            &serving.plan,
            &bytes,
            &model.label("live"),
        ) {
            Ok(s) => s,
            Err(e) => match serving.fallback_engine.take() {
                Some(fb) => {
                    tracing::warn!("the inference engine cannot serve ({e}); serving on tract");
                    events.emit(FieldEvent::EngineFallback(EngineFallback {
                        role: "inference".into(),
                        from: serving.plan.inference.to_string(),
                        to: "tract".into(),
                        reason: e.to_string(),
                        frame: None,
                        round: None,
                    }));
                    infer_engine = fb;
                    serving.faults = None;
                    serving.primary_name = "tract".into();
                    infer_engine.load(&bytes, &model.label("live"))?
                }
                None => return Err(e),
            },
        };
        note_trt(infer_engine.as_ref(), &events, resumed.meta.version);
        let mut reference = infer_engine.load(&bytes, &model.label("gate reference"))?;
        let anchor_accuracy = anchor_accuracy(reference.as_mut(), &trainer)?;
        tracing::info!(
            "resumed from {} (version {}, {}); anchor accuracy {:.4}; {}",
            resumed.path.display(),
            resumed.meta.version,
            resumed.meta.kind,
            anchor_accuracy,
            trainer.describe()
        );
        let budget = Budget::new(cfg.budget.clone());
        let recovery = Recovery::new(&cfg.recovery);
        let supervisor = RoundSupervisor {
            base_round: resumed.meta.round,
            live: Live {
                weights: resumed.params,
                meta: resumed.meta.clone(),
                reference,
                anchor_accuracy,
            },
            cfg,
            state,
            handover,
            events,
            replay,
            infer_engine,
            retired,
            serving,
            training,
            trainer,
            store,
            budget,
            failures: 0,
            rounds: 0,
            hot: false,
            recovery,
            last_round_end_frame: 0,
            last_skip_log: Instant::now() - Duration::from_secs(60),
        };
        let live = supervisor.serving.live_model(
            live_session,
            &bytes,
            resumed.meta.version,
            &supervisor.trainer.model().label("live, fallback"),
        );
        Ok((supervisor, live, resumed.meta))
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
            let outcome = self.round(reason, no, episode)?;
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
    /// and probes on the frames since its trigger.
    fn round(
        &mut self,
        reason: Reason,
        no: RoundNo,
        episode: Option<EpisodeRound>,
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
        let result =
            self.trainer
                .run_round(&self.live.weights, &train, no.here, poison, plan, &mut ctl);
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
        if judged.verdict.pass {
            let gain = judged.verdict.objective_before - judged.verdict.objective_after;
            let steps = result.steps;
            let committed = self.commit(round_total, result, judged, episode.is_none())?;
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

    /// The gate, off the hot path: the candidate's session is built here and, if it passes,
    /// becomes the live one.
    fn gate(&mut self, result: &RoundResult, probe_set: &[Image8]) -> Result<Judged> {
        let weights_finite = all_finite(&result.weights);
        let bytes = self.trainer.model().with_params(&result.weights)?;
        let mut session = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("candidate"))?;
        note_trt(
            self.infer_engine.as_ref(),
            &self.events,
            self.live.meta.version + 1,
        );
        let mcfg = &self.trainer.model().config;
        let (a_imgs, a_labels) = self.trainer.anchors();
        let cand_anchor = probe(session.as_mut(), mcfg, a_imgs, 250)?;
        let before = probe(self.live.reference.as_mut(), mcfg, probe_set, 250)?;
        let after = probe(session.as_mut(), mcfg, probe_set, 250)?;
        let input = GateInput {
            anchor_accuracy_before: self.live.anchor_accuracy,
            anchor_accuracy_after: accuracy(&cand_anchor.classes, a_labels),
            before,
            after,
            non_finite_step: result.non_finite.clone(),
            weights_finite,
            anchor_outputs_finite: cand_anchor.finite,
        };
        Ok(Judged {
            verdict: decide(&self.cfg.gate, &input),
            input,
            session,
            bytes,
        })
    }

    /// A passed round: checkpoint first (the live model is always one a restart comes back
    /// to), then hand the candidate's session to the inference loop; `rebaseline`: the drift
    /// detector measures a new baseline (not within an episode, which does so when it
    /// settles). False when the checkpoint could not be written (the live model stays).
    fn commit(
        &mut self,
        round_total: u64,
        result: RoundResult,
        judged: Judged,
        rebaseline: bool,
    ) -> Result<bool> {
        let Judged {
            verdict,
            session,
            bytes,
            ..
        } = judged;
        let gate_json = serde_json::to_value(&verdict).unwrap_or_default();
        let train: serde_json::Map<String, serde_json::Value> = result
            .metrics
            .iter()
            .map(|(n, v)| (n.clone(), json!(v)))
            .collect();
        let meta = CheckpointMeta {
            version: self.live.meta.version + 1,
            round: round_total,
            step: self.live.meta.step + result.steps as u64,
            kind: "adapted".into(),
            model_sha256: self.live.meta.model_sha256.clone(),
            metrics: json!({"gate": gate_json, "train": train}),
            unix_ms: unix_ms(),
        };
        let path = match self.store.commit(&result.weights, &meta) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "round {round_total}: checkpoint not written ({e}); the live model stays"
                );
                self.state.rollbacks.fetch_add(1, Ordering::Relaxed);
                self.failures += 1;
                self.events.emit(FieldEvent::RolledBack(RolledBack {
                    round: round_total,
                    reasons: vec![format!("checkpoint: {e}")],
                    no_gain_only: None,
                    failures_in_a_row: self.failures,
                    version: None,
                }));
                return Ok(false);
            }
        };
        let reference = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("gate reference"))?;
        self.swap(session, &bytes, meta.version, rebaseline);
        super::bound_trt_cache(&self.serving.plan);
        self.state.commits.fetch_add(1, Ordering::Relaxed);
        self.failures = 0;
        tracing::info!(
            "round {round_total} committed: version {}, anchor accuracy {:.4} -> {:.4}, objective {:.4} -> {:.4}",
            meta.version, verdict.anchor_accuracy_before, verdict.anchor_accuracy_after, verdict.objective_before, verdict.objective_after
        );
        self.events.emit(FieldEvent::Committed(Committed {
            round: round_total,
            version: meta.version,
            step: meta.step,
            checkpoint: path.display().to_string(),
            anchor_accuracy: verdict.anchor_accuracy_after,
        }));
        self.live = Live {
            weights: result.weights,
            meta,
            reference,
            anchor_accuracy: verdict.anchor_accuracy_after,
        };
        Ok(true)
    }

    /// Hands `session` (weights of `version`, already checkpointed) to the inference loop.
    /// With a fallback engine, its session of the same weights goes along. `rebaseline`: the
    /// drift detector measures a new baseline on them.
    fn swap(&self, session: Box<dyn Session>, bytes: &[u8], version: u64, rebaseline: bool) {
        self.handover.offer(self.serving.live_model(
            session,
            bytes,
            version,
            &self.trainer.model().label("live, fallback"),
        ));
        if rebaseline {
            self.handover.rebaseline();
        }
        self.state.version.store(version, Ordering::Relaxed);
    }

    /// A round the gate refused: discarded; it counts toward the reset unless the only
    /// failed check was a small lack of gain.
    fn rollback(&mut self, round_total: u64, verdict: &GateVerdict) -> Result<()> {
        self.state.rollbacks.fetch_add(1, Ordering::Relaxed);
        if !verdict.no_gain_only {
            self.failures += 1;
        }
        tracing::warn!(
            "round {round_total} rolled back: {}",
            verdict.reasons.join("; ")
        );
        self.events.emit(FieldEvent::RolledBack(RolledBack {
            round: round_total,
            reasons: verdict.reasons.clone(),
            no_gain_only: Some(verdict.no_gain_only),
            failures_in_a_row: self.failures,
            version: Some(self.live.meta.version),
        }));
        self.reset_if_failing(round_total)
    }
}
