//! The engines of the two roles as the round thread holds them: [`Serving`] builds the
//! sessions handed to the inference loop (the primary, behind the `[fault]` wrapper, and the
//! fallback's session of the same weights); [`Training`] builds the round's trainer (behind
//! the train-step fault wrapper) and remembers a `train_fallback` switch.

use std::sync::Arc;

use fieldtune_adapt::{AdaptConfig, ModelDir};
use fieldtune_engine::{Engine, EngineError, EngineKind, Session};
use fieldtune_frames::Image8;

use super::fault::{FaultEngine, InferenceFaults, TrainFaults};
use super::live::LiveModel;
use super::options::RunOptions;
use crate::config::EnginePlan;
use crate::error::{FieldError, Result};
use crate::round::RoundTrainer;

/// Loads the primary inference session; with a GPU provider in the plan, a session that
/// did not get one is an error, not a silent move to the CPU.
pub(crate) fn load_primary(
    engine: &dyn Engine,
    plan: &EnginePlan,
    bytes: &[u8],
    label: &str,
) -> Result<Box<dyn Session>> {
    let s = engine.load(bytes, label)?;
    let got = s.execution_provider();
    if engine.kind() == EngineKind::Ort && plan.inference.wants_gpu() && got.starts_with("CPU") {
        return Err(FieldError::Engine(EngineError::ExecutionProvider {
            provider: got.to_string(),
            model: Some(s.label().to_string()),
            message: format!(
                "the plan asks for {} but the session got {got}",
                plan.inference
            ),
        }));
    }
    Ok(s)
}

/// How the sessions handed to the inference loop are built beside the primary: the
/// fallback engine's session of the same weights, and the fault wrapper of `[fault]`.
pub(crate) struct Serving {
    pub plan: EnginePlan,
    /// The primary inference engine, as the config spells it (`ort:cpu`, `tract`).
    pub primary_name: String,
    pub fallback_engine: Option<Arc<dyn Engine>>,
    pub faults: Option<InferenceFaults>,
}

/// The round's train engine: `[fault] train_error_rounds`, and `train_fallback` once used.
pub(crate) struct Training {
    pub faults: Option<TrainFaults>,
    pub opts: RunOptions,
    /// The engine now training, as the plan spells it.
    pub spec: String,
    pub switched: bool,
}

impl Training {
    pub fn trainer(
        &self,
        engine: &dyn Engine,
        model: ModelDir,
        adapt: AdaptConfig,
        anchors: Vec<Image8>,
        labels: Vec<usize>,
    ) -> Result<RoundTrainer> {
        match &self.faults {
            Some(f) => RoundTrainer::new(
                &FaultEngine {
                    inner: engine,
                    faults: f.clone(),
                },
                model,
                adapt,
                anchors,
                labels,
            ),
            None => RoundTrainer::new(engine, model, adapt, anchors, labels),
        }
    }
}

impl Serving {
    /// The sessions to serve the weights in `bytes` (the primary already built); `label`
    /// names the fallback's session in errors.
    pub fn live_model(
        &self,
        session: Box<dyn Session>,
        bytes: &[u8],
        version: u64,
        label: &str,
    ) -> LiveModel {
        let fallback = self.fallback_engine.as_ref().and_then(|e| {
            e.load(bytes, label)
                .map_err(|err| {
                    tracing::error!("version {version}: no fallback session: {err}");
                })
                .ok()
        });
        let session = match &self.faults {
            Some(f) => f.wrap(session),
            None => session,
        };
        LiveModel {
            session,
            fallback,
            version,
        }
    }
}
