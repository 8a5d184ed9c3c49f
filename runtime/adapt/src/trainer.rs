//! The adaptation loop: compile the train step once, keep parameters and optimizer state
//! resident in the session, and per step sample batches, augment them and run one step.

use std::collections::HashMap;
use std::time::Instant;

use fieldtune_augment::{augment_batch, Augment};
use fieldtune_engine::{Engine, ResidentSession};
use fieldtune_frames::{to_tensor, Image8};
use fieldtune_graph::{compile_train_step, encode_model, inputs, TrainSpec};
use fieldtune_tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
    /// Wall time of this step (batch preparation included).
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
    pub params: HashMap<String, Tensor>,
    pub history: Vec<StepReport>,
    /// Nodes in the compiled train-step graph.
    pub train_step_nodes: usize,
    pub execution_provider: String,
    pub seconds: f64,
}

/// Draws indices epoch by epoch (a fresh permutation when one runs out).
pub struct EpochSampler {
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl EpochSampler {
    pub fn new(len: usize, seed: u64) -> EpochSampler {
        let mut s = EpochSampler {
            order: (0..len).collect(),
            pos: len,
            rng: ChaCha8Rng::seed_from_u64(seed),
        };
        s.reshuffle();
        s
    }

    fn reshuffle(&mut self) {
        self.order.shuffle(&mut self.rng);
        self.pos = 0;
    }

    pub fn next(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == self.order.len() {
                self.reshuffle();
            }
            out.push(self.order[self.pos]);
            self.pos += 1;
        }
        out
    }
}

/// Mixes a run seed, a step and a stream into one augmentation seed.
fn mix(seed: u64, step: u64, stream: u64) -> u64 {
    let mut z = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keeps the first `max` examples of each class (input order).
pub fn cap_per_class(labels: &[usize], max: usize) -> Vec<usize> {
    let mut seen: HashMap<usize, usize> = HashMap::new();
    (0..labels.len())
        .filter(|&i| {
            let c = seen.entry(labels[i]).or_default();
            *c += 1;
            *c <= max
        })
        .collect()
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
    }
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
    let k = model.config.classes.len();
    if let Some(&bad) = data.labels.iter().find(|&&l| l >= k) {
        return Err(AdaptError::Mismatch {
            what: "labels".into(),
            reason: format!("label {bad} but the model has {k} classes"),
        });
    }
    let keep = cap_per_class(data.labels, cfg.max_labeled_per_class);
    if cfg.batch_labeled > 0 && keep.is_empty() {
        return Err(AdaptError::Mismatch {
            what: "labeled anchors".into(),
            reason: "the recipe needs labeled anchors and none were given".into(),
        });
    }
    if data.unlabeled.is_empty() {
        return Err(AdaptError::Mismatch {
            what: "unlabeled frames".into(),
            reason: "none were given".into(),
        });
    }
    let step = compile_train_step(&model.model, &train_spec(model, cfg))?;
    let bytes = encode_model(&step.to_model());
    let session = engine.load(&bytes, "train-step")?;
    let execution_provider = session.execution_provider().to_string();
    let init: HashMap<String, Tensor> = step.params.iter().chain(&step.state).cloned().collect();
    let mut resident: Box<dyn ResidentSession> = session.into_resident(init, step.loops())?;
    tracing::info!(
        nodes = step.graph.nodes.len(),
        params = step.params.len(),
        frozen = step.frozen.len(),
        ep = %execution_provider,
        "compiled train step"
    );

    let weak: Box<dyn Augment> = cfg.weak.build()?;
    let strong: Box<dyn Augment> = cfg.strong.build()?;
    let mut lab_sampler = EpochSampler::new(keep.len(), mix(cfg.seed, 0, 1));
    let mut unl_sampler = EpochSampler::new(data.unlabeled.len(), mix(cfg.seed, 0, 2));
    let metric_names: Vec<&str> = step.metrics.iter().map(String::as_str).collect();
    let mut history = Vec::with_capacity(cfg.steps);
    for k in 1..=cfg.steps {
        let ts = Instant::now();
        let s = k as u64;
        let mut feeds: Vec<(&str, Tensor)> = Vec::with_capacity(6);
        if cfg.batch_labeled > 0 {
            let idx: Vec<usize> = lab_sampler
                .next(cfg.batch_labeled)
                .into_iter()
                .map(|i| keep[i])
                .collect();
            let imgs: Vec<&Image8> = idx.iter().map(|&i| &data.labeled[i]).collect();
            let views = augment_batch(weak.as_ref(), &imgs, mix(cfg.seed, s, 3));
            let refs: Vec<&Image8> = views.iter().collect();
            feeds.push((inputs::X_LABELED, to_tensor(&refs, &model.config)?));
            let y = Tensor::i64(
                vec![idx.len()],
                idx.iter().map(|&i| data.labels[i] as i64).collect(),
            )
            .expect("sized");
            feeds.push((inputs::Y_LABELED, y));
        }
        let idx = unl_sampler.next(cfg.batch_unlabeled);
        let imgs: Vec<&Image8> = idx.iter().map(|&i| &data.unlabeled[i]).collect();
        let wv = augment_batch(weak.as_ref(), &imgs, mix(cfg.seed, s, 4));
        let sv = augment_batch(strong.as_ref(), &imgs, mix(cfg.seed, s, 5));
        feeds.push((
            inputs::X_WEAK,
            to_tensor(&wv.iter().collect::<Vec<_>>(), &model.config)?,
        ));
        feeds.push((
            inputs::X_STRONG,
            to_tensor(&sv.iter().collect::<Vec<_>>(), &model.config)?,
        ));
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
                let params = step
                    .params
                    .iter()
                    .map(|(n, _)| Ok((n.clone(), resident.read_state(n)?.expect("resident"))))
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
        observer(&report);
        history.push(report);
    }
    let names: Vec<String> = step.params.iter().map(|(n, _)| n.clone()).collect();
    let mut all = resident.export_state()?;
    let params: HashMap<String, Tensor> = names
        .into_iter()
        .map(|n| {
            let t = all.remove(&n).expect("parameter is resident");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_covers_each_epoch_once() {
        let mut s = EpochSampler::new(10, 3);
        let mut a = s.next(10);
        a.sort_unstable();
        assert_eq!(a, (0..10).collect::<Vec<_>>());
        assert_eq!(s.next(25).len(), 25);
    }

    #[test]
    fn cap_keeps_first_per_class() {
        assert_eq!(
            cap_per_class(&[0, 0, 1, 0, 1, 1, 2], 2),
            vec![0, 1, 2, 4, 6]
        );
    }
}
