//! The adaptation loop: compile the train step once, keep parameters and optimizer state
//! resident in the session, and per step sample batches, augment them and run one step.

use std::collections::HashMap;
use std::time::Instant;

use fieldtune_engine::{Engine, ResidentSession};
use fieldtune_frames::Image8;
use fieldtune_graph::spec::{ROTATION_BIAS, ROTATION_WEIGHT};
use fieldtune_graph::{
    compile_train_step, encode_model, inputs, teacher_name, TrainSpec, TrainStep,
};
use fieldtune_tensor::Tensor;

use crate::batches::{prefetch, Batch, BatchMaker};
use crate::error::{AdaptError, Result};
use crate::eval::{evaluate, EvalReport};
use crate::model_dir::ModelDir;
use crate::recipe::AdaptConfig;

/// The images adaptation learns from, and optionally a labeled set to score progress.
pub struct AdaptData<'a> {
    pub labeled: &'a [Image8],
    pub labels: &'a [usize],
    pub unlabeled: &'a [Image8],
    pub eval: Option<(&'a [Image8], &'a [usize])>,
}

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

/// The compile-time spec of a config for this model.
pub fn train_spec(model: &ModelDir, cfg: &AdaptConfig) -> TrainSpec {
    TrainSpec {
        input: model.config.input.clone(),
        output: model.config.output.clone(),
        batch_labeled: cfg.batch_labeled,
        batch_unlabeled: cfg.batch_unlabeled,
        loss: cfg.loss.clone(),
        optimizer: cfg.optimizer.clone(),
        trainable: cfg.trainable.clone(),
        batchnorm: cfg.batchnorm,
        emit_gradients: false,
        teacher: cfg.teacher,
        dropout: cfg.dropout,
        seed: cfg.seed,
        cotta: cfg.cotta,
        rotation: cfg.rotation.clone(),
    }
}

/// The tensors of the adapted model, as (model name, resident name): the trained parameters
/// (their mean-teacher copies when the recipe has a teacher) and the updated buffers. The
/// rotation head is not part of the model and is dropped.
fn model_tensors(step: &TrainStep, cfg: &AdaptConfig) -> Vec<(String, String)> {
    let src = |n: &str| match cfg.teacher {
        Some(_) => teacher_name(n),
        None => n.to_string(),
    };
    step.params
        .iter()
        .filter(|(n, _)| n != ROTATION_WEIGHT && n != ROTATION_BIAS)
        .map(|(n, _)| (n.clone(), src(n)))
        .chain(step.buffers.iter().map(|(n, _)| (n.clone(), n.clone())))
        .collect()
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
    let mut s = engine.load(&bytes, "model.onnx (adapting)")?;
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
    let step = compile_train_step(&model.model, &train_spec(model, cfg))?;
    let bytes = encode_model(&step.to_model());
    let session = engine.load(&bytes, "train-step")?;
    let execution_provider = session.execution_provider().to_string();
    let init = step.resident_init();
    let mut resident: Box<dyn ResidentSession> = session.into_resident(init, step.loops())?;
    tracing::info!(
        nodes = step.graph.nodes.len(),
        params = step.params.len(),
        frozen = step.frozen.len(),
        ep = %execution_provider,
        "compiled train step"
    );

    let metric_names: Vec<&str> = step.metrics.iter().map(String::as_str).collect();
    let mut history = Vec::with_capacity(cfg.steps);
    prefetch(maker, cfg.steps, |batches| -> Result<()> {
        let mut ts = Instant::now();
        for batch in batches {
            let Batch { step: k, mut feeds } = batch?;
            feeds.push((
                inputs::LR,
                Tensor::scalar_f32(cfg.lr_schedule.at(cfg.lr, k, cfg.steps)),
            ));
            feeds.push((inputs::STEP, Tensor::scalar_f32(k as f32)));
            let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
            // A step whose loss terms are not all finite does not move the parameters.
            let finite = |v: &[Tensor]| {
                v.iter()
                    .all(|t| t.as_f32().is_some_and(|x| x.iter().all(|x| x.is_finite())))
            };
            let (vals, moved) = resident.step_if(&refs, &metric_names, &finite)?;
            let metrics: Vec<(String, f32)> = metric_names
                .iter()
                .map(|n| n.to_string())
                .zip(
                    vals.iter()
                        .map(|t| t.as_f32().map(|v| v[0]).unwrap_or(f32::NAN)),
                )
                .collect();
            if !moved {
                let (term, value) = metrics
                    .iter()
                    .find(|(_, v)| !v.is_finite())
                    .cloned()
                    .unwrap_or_else(|| ("a metric".into(), f32::NAN));
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
                    let params = model_tensors(&step, cfg)
                        .into_iter()
                        .map(|(n, src)| Ok((n, resident.read_state(&src)?.expect("resident"))))
                        .collect::<Result<HashMap<_, _>>>()?;
                    Some(evaluate_params(
                        engine,
                        model,
                        &params,
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
    // The adapted model: trained parameters and updated buffers (running statistics).
    let mut all = resident.export_state()?;
    let params: HashMap<String, Tensor> = model_tensors(&step, cfg)
        .into_iter()
        .map(|(n, src)| {
            let t = all.remove(&src).expect("parameter is resident");
            (n, t)
        })
        .collect();
    Ok(AdaptOutcome {
        params,
        history,
        train_step_nodes: step.graph.nodes.len(),
        execution_provider,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
