//! The offline adaptation loop around a [`TrainSession`]: per step sample batches, augment
//! them, run one step, evaluate now and then, and watch the predictions for collapse
//! ([`crate::collapse`], the field gate's definition).

use std::collections::HashMap;
use std::time::Instant;

use fieldtune_engine::Engine;
use fieldtune_frames::Image8;
use fieldtune_tensor::Tensor;

use serde::Serialize;

use crate::batches::{prefetch, AdaptData, Batch, BatchMaker};
use crate::collapse::{collapse_reasons, confidence_saturation, probe, ProbeStats};
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
    /// The collapse check, on steps where one ran.
    pub collapse: Option<CollapseCheck>,
}

/// One collapse check: the model on the probe frames at `step` (0: the source model).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollapseCheck {
    pub step: usize,
    pub marginal_entropy: f64,
    pub mean_entropy: f64,
    pub mean_confidence: f64,
    /// Why this is collapse (empty: it is not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// The mean confidence saturated at this check, for the first time in the run (a
    /// warning, not collapse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<String>,
}

impl CollapseCheck {
    fn new(step: usize, s: &ProbeStats, reasons: Vec<String>) -> Self {
        CollapseCheck {
            step,
            marginal_entropy: s.marginal_entropy,
            mean_entropy: s.mean_entropy,
            mean_confidence: s.mean_confidence,
            reasons,
            saturation: None,
        }
    }
}

/// What the collapse watch saw over a run (adapt.json's `collapse`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CollapseReport {
    /// Frames each check predicted (0: no checks ran).
    pub frames: usize,
    /// Whether a failed check stops the run (`collapse.on_collapse`).
    pub stop_on_collapse: bool,
    /// The source model (step 0), then every check.
    pub checks: Vec<CollapseCheck>,
    /// The step of the first failed check.
    pub first_collapse_step: Option<usize>,
    /// The step of the first check whose mean confidence had saturated.
    pub first_saturation_step: Option<usize>,
    /// The run stopped at the first failed check; the weights written are those of this
    /// step's check (0: the source weights).
    pub kept_weights_of_step: Option<usize>,
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
    /// The target the train step was compiled for.
    pub target: fieldtune_graph::Target,
    pub execution_provider: String,
    pub seconds: f64,
    pub collapse: CollapseReport,
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
        target = %session.shape().target,
        "compiled train step"
    );

    let mut watch = Watch::new(engine, model, cfg, data.unlabeled, &session)?;
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
            let collapse = watch.check(k, &session)?;
            let report = StepReport {
                step: k,
                metrics,
                seconds: ts.elapsed().as_secs_f64(),
                eval,
                collapse,
            };
            ts = Instant::now();
            observer(&report);
            history.push(report);
            if watch.stopped() {
                break;
            }
        }
        Ok(())
    })?;
    let train_step_nodes = session.shape().nodes;
    let target = session.shape().target;
    let execution_provider = session.execution_provider().to_string();
    // The adapted model: trained parameters and updated buffers (running statistics), or
    // those of the last check before a collapse that stopped the run.
    let (params, collapse) = watch.finish(session)?;
    Ok(AdaptOutcome {
        params,
        history,
        train_step_nodes,
        target,
        execution_provider,
        seconds: t0.elapsed().as_secs_f64(),
        collapse,
    })
}

/// The collapse watch of one run: the probe frames, the source model's figures on them, and
/// (when a collapse stops the run) the weights of the last check that passed.
struct Watch<'a> {
    engine: &'a dyn Engine,
    model: &'a ModelDir,
    every: usize,
    last_step: usize,
    batch: usize,
    frames: Vec<Image8>,
    source: ProbeStats,
    report: CollapseReport,
    /// (step, weights) of the last passing check, kept when a collapse stops the run.
    kept: Option<(usize, HashMap<String, Tensor>)>,
    stopped: bool,
}

impl<'a> Watch<'a> {
    fn new(
        engine: &'a dyn Engine,
        model: &'a ModelDir,
        cfg: &AdaptConfig,
        unlabeled: &[Image8],
        session: &TrainSession,
    ) -> Result<Watch<'a>> {
        let n = unlabeled.len();
        let k = if cfg.collapse.every == 0 {
            0
        } else {
            cfg.collapse.frames.min(n)
        };
        let frames: Vec<Image8> = (0..k).map(|i| unlabeled[i * n / k].clone()).collect();
        let stop = cfg.stops_on_collapse();
        let mut w = Watch {
            engine,
            model,
            every: cfg.collapse.every,
            last_step: cfg.steps,
            batch: cfg.eval_batch,
            frames,
            source: ProbeStats::default(),
            report: CollapseReport {
                frames: k,
                stop_on_collapse: stop,
                ..CollapseReport::default()
            },
            kept: None,
            stopped: false,
        };
        if k > 0 {
            let mut s = engine.load(&model.bytes, &model.label("collapse probe"))?;
            w.source = probe(s.as_mut(), &model.config, &w.frames, w.batch)?;
            w.report
                .checks
                .push(CollapseCheck::new(0, &w.source, Vec::new()));
            if stop {
                w.kept = Some((0, session.model_weights()?));
            }
        }
        Ok(w)
    }

    /// The check after step `k`, if one is due.
    fn check(&mut self, k: usize, session: &TrainSession) -> Result<Option<CollapseCheck>> {
        if self.frames.is_empty() || !(k.is_multiple_of(self.every) || k == self.last_step) {
            return Ok(None);
        }
        let weights = session.model_weights()?;
        let bytes = self.model.with_params(&weights)?;
        let mut s = self
            .engine
            .load(&bytes, &self.model.label("collapse probe"))?;
        let stats = probe(s.as_mut(), &self.model.config, &self.frames, self.batch)?;
        let mut check = CollapseCheck::new(k, &stats, collapse_reasons(&self.source, &stats));
        if self.report.first_saturation_step.is_none() {
            check.saturation =
                confidence_saturation(self.source.mean_confidence, stats.mean_confidence);
            if check.saturation.is_some() {
                self.report.first_saturation_step = Some(k);
            }
        }
        if check.reasons.is_empty() {
            if self.kept.is_some() {
                self.kept = Some((k, weights));
            }
        } else {
            self.report.first_collapse_step.get_or_insert(k);
            if self.report.stop_on_collapse {
                self.stopped = true;
                self.report.kept_weights_of_step = self.kept.as_ref().map(|(s, _)| *s);
            }
        }
        self.report.checks.push(check.clone());
        Ok(Some(check))
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    /// The weights to write and the report.
    fn finish(self, session: TrainSession) -> Result<(HashMap<String, Tensor>, CollapseReport)> {
        let params = match (self.stopped, self.kept) {
            (true, Some((_, w))) => w,
            _ => session.into_model_weights()?,
        };
        Ok((params, self.report))
    }
}
