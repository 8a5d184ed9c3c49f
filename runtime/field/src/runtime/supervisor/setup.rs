//! The round thread's start: [`SupervisorSetup::start`] lowers its priority, picks the train
//! engine, compiles the train step, opens the checkpoint store, loads the weights to serve and
//! measures their anchor accuracy.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fieldtune_adapt::{checkpoint, AdaptConfig, ModelDir};
use fieldtune_engine::{Engine, Session};
use fieldtune_frames::Image8;

use super::{anchor_accuracy, note_trt, Live, RoundSupervisor};
use crate::budget::{lower_thread_priority, Budget};
use crate::config::{Role, RunConfig};
use crate::error::{FieldError, Result};
use crate::events::{CheckpointQuarantined, EngineFallback, EventLog, FieldEvent};
use crate::recovery::Recovery;
use crate::replay::ReplayBuffer;
use crate::runtime::fault::TrainFaults;
use crate::runtime::fleet::FleetJob;
use crate::runtime::live::{Handover, LiveModel};
use crate::runtime::options::RunOptions;
use crate::runtime::roles::{load_primary, Serving, Training};
use crate::runtime::state::RunState;
use crate::store::{CheckpointMeta, Store};

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
    /// Messages of the fleet node thread, with `[fleet]`.
    pub fleet: Option<mpsc::Receiver<FleetJob>>,
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
            fleet,
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
            train_engine,
            fleet,
            fleet_out: None,
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
