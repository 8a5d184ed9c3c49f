//! The offline adaptation loop around a [`TrainSession`]: per step sample batches, augment
//! them, run one step, and evaluate now and then.

use std::collections::HashMap;
use std::time::Instant;

use fieldtune_engine::Engine;
use fieldtune_frames::Image8;
use fieldtune_tensor::Tensor;

use crate::batches::{prefetch, AdaptData, Batch, BatchMaker};
use crate::error::{AdaptError, Result};
use crate::eval::{evaluate, EvalReport};
use crate::model_dir::ModelDir;
use crate::recipe::AdaptConfig;
use crate::session::{StepOutcome, TrainSession};

/// What one step reported.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: usize,
    pub metrics: Vec<(String, f32)>,
    /// Wall time since the previous step ended (waiting for this step's batch included).
    pub seconds: f64,
    /// Accuracy on the eval set, on steps where it was measured.
    pub eval: Option<EvalReport>,
}

impl StepReport {
    pub fn metric(&self, name: &str) -> Option<f32> {
        self.metrics.iter().find(|(n, _)| n == name).map(|m| m.1)
    }
}

/// The result of a run.
pub struct AdaptOutcome {
    /// The adapted model tensors: trained parameters and updated buffers.
    pub params: HashMap<String, Tensor>,
    pub history: Vec<StepReport>,
    /// Nodes in the compiled train-step graph.
    pub train_step_nodes: usize,
    pub execution_provider: String,
    pub seconds: f64,
}

/// Evaluates `params` on labeled images with a fresh inference session.
pub fn evaluate_params(
    engine: &dyn Engine,
    model: &ModelDir,
    params: &HashMap<String, Tensor>,
    images: &[Image8],
    labels: &[usize],
    batch: usize,
) -> Result<EvalReport> {
    let bytes = model.with_params(params)?;
    let mut s = engine.load(&bytes, &model.label("adapting"))?;
    evaluate(s.as_mut(), &model.config, images, labels, batch)
}

/// Runs `cfg.steps` steps of the configured objective. `observer` sees every step.
pub fn adapt(
    engine: &dyn Engine,
    model: &ModelDir,
    cfg: &AdaptConfig,
    data: &AdaptData<'_>,
    observer: &mut dyn FnMut(&StepReport),
) -> Result<AdaptOutcome> {
    cfg.validate()?;
    let t0 = Instant::now();
    let maker = BatchMaker::new(&model.config, cfg, data)?;
    let mut session = TrainSession::compile(engine, model, cfg, "train-step")?;
    tracing::info!(
        nodes = session.shape().nodes,
        params = session.params().len(),
        ep = %session.execution_provider(),
        "compiled train step"
    );

    let mut history = Vec::with_capacity(cfg.steps);
    prefetch(maker, cfg.steps, |batches| -> Result<()> {
        let mut ts = Instant::now();
        for batch in batches {
            let Batch { step: k, feeds } = batch?;
            let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
            let lr = cfg.lr_schedule.at(cfg.lr, k, cfg.steps);
            let StepOutcome {
                metrics,
                non_finite,
            } = session.step(&refs, lr, k)?;
            if let Some((term, value)) = non_finite {
                return Err(AdaptError::NonFinite {
                    step: k,
                    term,
                    value,
                });
            }
            let eval = match data.eval {
                Some((imgs, labels))
                    if cfg.eval_every > 0 && (k % cfg.eval_every == 0) && k != cfg.steps =>
                {
                    Some(evaluate_params(
                        engine,
                        model,
                        &session.model_weights()?,
                        imgs,
                        labels,
                        cfg.eval_batch,
                    )?)
                }
                _ => None,
            };
            let report = StepReport {
                step: k,
                metrics,
                seconds: ts.elapsed().as_secs_f64(),
                eval,
            };
            ts = Instant::now();
            observer(&report);
            history.push(report);
        }
        Ok(())
    })?;
    let train_step_nodes = session.shape().nodes;
    let execution_provider = session.execution_provider().to_string();
    // The adapted model: trained parameters and updated buffers (running statistics).
    let params = session.into_model_weights()?;
    Ok(AdaptOutcome {
        params,
        history,
        train_step_nodes,
        execution_provider,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
