//! Online test-time adaptation (TTA) over a sequence of domains, e.g. the corruptions of
//! Fashion-MNIST-C one after another.
//!
//! Protocol, per domain (its images in a seeded order, cut into batches of `batch`): for each
//! batch, predict it with the current weights (scored against its labels), then take one train
//! step on that same batch. `reset` restores the source weights and a fresh optimizer state
//! (and mean teacher) at the start of every domain; `continual` never does. Methods:
//! - `source`: the model as shipped (BatchNorm with its running statistics);
//! - `bn`: BatchNorm with the statistics of the test batch, no parameter update;
//! - `tent`, `uda`, `fixmatch`, `teacher`: a compiled train step (see [`Method::preset`]);
//!   predictions use the statistics of the test batch and the current weights (the mean
//!   teacher's for `teacher`).
//!
//! Each step's batch is a pure function of (seed, domain index, step), the same for `reset`
//! and `continual`, and can be written to disk ([`TtaOptions::dump`]) to feed a reference
//! trainer the very same batches (scripts/reference/torch_tta.py). A dump also holds what the
//! reference needs to reproduce a pretext task's step exactly: the heads' initial values and
//! the jigsaw's permutations (`heads.safetensors`); the settings (settings.json) hold the seed
//! of the in-graph random streams, whose step number is the train step's (1 at the start of
//! every domain in `reset`, counting on across domains in `continual`). A `reset` puts the
//! pretext heads back to their initial values too, with the model's weights and the optimizer
//! state; `continual` keeps training them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use fieldtune_augment::{augment_batch_par, Augment, AugmentConfig, RandAugment};
use fieldtune_engine::{Engine, Session};
use fieldtune_frames::{to_tensor, Image8, ModelConfig};
use fieldtune_graph::{
    encode_model, inputs, is_head_param, jigsaw_permutations, predict_graph, BatchNormMode,
    MeanTeacher, Trainable,
};
use fieldtune_tensor::{st, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::batches::{cap_per_class, mix, EpochSampler, TeacherViews};
use crate::error::{AdaptError, Result};
use crate::fsutil::atomic_write;
use crate::model_dir::ModelDir;
use crate::recipe::{AdaptConfig, LrSchedule};
use crate::session::TrainSession;

/// A test-time adaptation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Source,
    Bn,
    Tent,
    Uda,
    Fixmatch,
    Teacher,
    Cotta,
}

impl Method {
    pub const ALL: [Method; 7] = [
        Method::Source,
        Method::Bn,
        Method::Tent,
        Method::Uda,
        Method::Fixmatch,
        Method::Teacher,
        Method::Cotta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Source => "source",
            Method::Bn => "bn",
            Method::Tent => "tent",
            Method::Uda => "uda",
            Method::Fixmatch => "fixmatch",
            Method::Teacher => "teacher",
            Method::Cotta => "cotta",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The train-step settings of a method (`None`: source and bn train nothing). All train
    /// the BatchNorm scales and biases only, with Adam (lr 1e-3, constant) and batch
    /// statistics; their unlabeled batch is the test batch (size set by the caller).
    /// - tent: entropy of the test batch's predictions (Wang et al. 2021; Adam 1e-3 as in
    ///   TENT's CIFAR setting). Both views are the identity: the concatenated [x, x] pass has
    ///   the statistics of x, so the step is TENT's.
    /// - uda: UDA with an identity weak view and a mild strong view (RandAugment, 2 ops,
    ///   magnitude <= 0.3), confidence mask 0.9, T 0.4, + information maximisation (entropy
    ///   and class diversity, weight 1 each) + cross-entropy on 16 labeled anchors.
    /// - fixmatch: hard pseudo-labels of the identity view above 0.95 for the strong view +
    ///   anchor cross-entropy.
    /// - teacher: `uda` with its weak-view targets, and the predictions, from a mean teacher
    ///   (EMA 0.99 of the student, updated inside the train step).
    /// - cotta: CoTTA (Wang et al. 2022) as `fieldtune adapt --recipe cotta` has it: soft
    ///   cross-entropy of the unaugmented batch against the mean teacher's prediction,
    ///   averaged over 4 augmented views where the teacher's confidence is below 0.9,
    ///   stochastic restore of 1% of the trained weights to the source per step, no anchors;
    ///   the teacher's EMA is the `teacher` method's 0.99 (8 steps per domain here).
    pub fn preset(self) -> Option<AdaptConfig> {
        let mild = AugmentConfig::RandAugment(RandAugment {
            n: 2,
            max_magnitude: 0.3,
            cutout: 0.0,
        });
        let tta = |mut c: AdaptConfig| {
            c.lr = 1e-3;
            c.lr_schedule = LrSchedule::Constant;
            c.trainable = Trainable::Bn;
            c.batchnorm = BatchNormMode::Train;
            c.weak = AugmentConfig::Identity;
            c.max_labeled_per_class = 100;
            if c.batch_labeled > 0 {
                c.batch_labeled = 16;
            }
            c
        };
        let preset = |n: &str| AdaptConfig::preset(n).expect("built-in recipe");
        Some(match self {
            Method::Source | Method::Bn => return None,
            Method::Tent => {
                let mut c = tta(preset("tent"));
                c.strong = AugmentConfig::Identity;
                c.recipe = "tent".into();
                c
            }
            Method::Uda | Method::Teacher => {
                let mut c = tta(preset("uda-im"));
                c.strong = mild;
                if self == Method::Teacher {
                    c.teacher = Some(MeanTeacher { ema: 0.99 });
                }
                c
            }
            Method::Fixmatch => {
                let mut c = tta(preset("fixmatch"));
                c.strong = mild;
                c
            }
            Method::Cotta => {
                let mut c = tta(preset("cotta"));
                c.teacher = Some(MeanTeacher { ema: 0.99 });
                c
            }
        })
    }
}

/// Whether domains start from the source weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    /// Every domain starts from the source weights and a fresh optimizer state.
    Reset,
    /// One domain after another with no reset.
    Continual,
}

impl Setting {
    pub fn name(self) -> &'static str {
        match self {
            Setting::Reset => "reset",
            Setting::Continual => "continual",
        }
    }
}

/// One test domain: labeled images (the labels only score predictions).
pub struct Domain {
    pub name: String,
    pub images: Vec<Image8>,
    pub labels: Vec<usize>,
}

/// What one run needs besides the model, the method and the domains.
pub struct TtaOptions<'a> {
    /// The row's name in the results (the method's name, or another for a variant of its
    /// settings, e.g. `tent:jigsaw`).
    pub name: &'a str,
    /// Images per test batch (and per train step's unlabeled batch).
    pub batch: usize,
    /// Seed of the stream order, the anchor sampling and the augmentation.
    pub seed: u64,
    /// Labeled anchors of the source domain (recipes with a labeled term).
    pub anchors: &'a [Image8],
    pub anchor_labels: &'a [usize],
    /// Write every step's batch to `DIR/<NN>-<domain>/step-<KKKKK>.safetensors`.
    pub dump: Option<&'a Path>,
}

/// What happened on one domain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DomainResult {
    pub domain: String,
    /// Images scored (whole batches only).
    pub count: usize,
    pub errors: usize,
    /// Error rate in percent.
    pub error: f64,
    /// How many images were predicted as each class (a collapse shows as one large count).
    pub predicted: Vec<usize>,
    /// Mean train-step loss over the domain (trained methods).
    pub mean_loss: Option<f64>,
    pub seconds: f64,
}

/// A run of one method in one setting over all domains.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TtaRun {
    /// The row's name ([`TtaOptions::name`]).
    pub name: String,
    pub method: Method,
    pub setting: Setting,
    pub seed: u64,
    pub batch: usize,
    /// Mean of the per-domain error rates, in percent.
    pub mean_error: f64,
    pub domains: Vec<DomainResult>,
    pub seconds: f64,
    pub execution_provider: String,
    /// The train-step settings (trained methods).
    pub settings: Option<AdaptConfig>,
}

/// The seeded order in which a domain's images arrive.
pub fn stream_order(len: usize, seed: u64, domain: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, domain as u64, 7)));
    order
}

/// Builds the batches of one domain, in order.
struct DomainBatches<'a> {
    model: &'a ModelConfig,
    domain: &'a Domain,
    order: Vec<usize>,
    batch: usize,
    batch_labeled: usize,
    anchors: &'a [Image8],
    anchor_labels: &'a [usize],
    keep: &'a [usize],
    sampler: EpochSampler,
    weak: Option<Box<dyn Augment>>,
    strong: Option<Box<dyn Augment>>,
    /// CoTTA's augmented teacher views.
    teacher_aug: Option<TeacherViews>,
    threads: usize,
    /// Seed of this domain's augmentation streams.
    seed: u64,
}

/// One step: the test batch (and its labels) and the train step's feeds.
struct StepBatch {
    x_test: Tensor,
    y_test: Vec<usize>,
    feeds: Vec<(&'static str, Tensor)>,
}

impl DomainBatches<'_> {
    fn steps(&self) -> usize {
        self.order.len() / self.batch
    }

    fn get(&mut self, k: usize) -> Result<StepBatch> {
        let idx = &self.order[k * self.batch..(k + 1) * self.batch];
        let imgs: Vec<&Image8> = idx.iter().map(|&i| &self.domain.images[i]).collect();
        let x_test = to_tensor(&imgs, self.model)?;
        let y_test = idx.iter().map(|&i| self.domain.labels[i]).collect();
        let mut feeds = Vec::new();
        let s = k as u64 + 1;
        if let (Some(weak), Some(strong)) = (&self.weak, &self.strong) {
            if self.batch_labeled > 0 {
                let li: Vec<usize> = self
                    .sampler
                    .next(self.batch_labeled)
                    .into_iter()
                    .map(|i| self.keep[i])
                    .collect();
                let limgs: Vec<&Image8> = li.iter().map(|&i| &self.anchors[i]).collect();
                let views = augment_batch_par(weak.as_ref(), &limgs, mix(self.seed, s, 3), 1);
                feeds.push((inputs::X_LABELED, self.tensor(&views)?));
                let y = li.iter().map(|&i| self.anchor_labels[i] as i64).collect();
                feeds.push((
                    inputs::Y_LABELED,
                    Tensor::i64(vec![li.len()], y).expect("sized"),
                ));
            }
            let wv = augment_batch_par(weak.as_ref(), &imgs, mix(self.seed, s, 4), 1);
            let sv = augment_batch_par(strong.as_ref(), &imgs, mix(self.seed, s, 5), self.threads);
            feeds.push((inputs::X_WEAK, self.tensor(&wv)?));
            feeds.push((inputs::X_STRONG, self.tensor(&sv)?));
            if let Some(t) = &self.teacher_aug {
                let all = t.make(&imgs, self.seed, s, self.threads);
                feeds.push((inputs::X_TEACHER_AUG, self.tensor(&all)?));
            }
        }
        Ok(StepBatch {
            x_test,
            y_test,
            feeds,
        })
    }

    fn tensor(&self, views: &[Image8]) -> Result<Tensor> {
        Ok(to_tensor(&views.iter().collect::<Vec<_>>(), self.model)?)
    }
}

/// Writes one step's batch for a reference trainer.
fn dump_step(dir: &Path, domain: usize, name: &str, k: usize, b: &StepBatch) -> Result<()> {
    let d = dir.join(format!("{domain:02}-{name}"));
    std::fs::create_dir_all(&d).map_err(|source| AdaptError::Io {
        path: d.clone(),
        source,
    })?;
    let mut tensors: BTreeMap<String, Tensor> = b
        .feeds
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    tensors.insert("x_test".into(), b.x_test.clone());
    let y = b.y_test.iter().map(|&v| v as i64).collect();
    tensors.insert(
        "y_test".into(),
        Tensor::i64(vec![b.y_test.len()], y).expect("sized"),
    );
    let meta = HashMap::from([
        ("domain".to_string(), name.to_string()),
        ("step".to_string(), (k + 1).to_string()),
    ]);
    atomic_write(
        &d.join(format!("step-{:05}.safetensors", k + 1)),
        &st::to_bytes(&tensors, &meta),
    )
}

/// Writes `DIR/heads.safetensors` for a reference trainer when the train step has pretext
/// heads: their initial values (what a `reset` goes back to) and, with a jigsaw task, its
/// permutations as `jigsaw.permutations` `[P, 4]` (int64).
fn dump_heads(dir: &Path, session: &TrainSession, cfg: &AdaptConfig) -> Result<()> {
    let mut tensors: BTreeMap<String, Tensor> = session
        .source_weights()
        .iter()
        .filter(|(n, _)| is_head_param(n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    if let Some(j) = &cfg.jigsaw {
        let perms = jigsaw_permutations(cfg.seed, j.permutations);
        let flat = perms.iter().flatten().map(|&t| t as i64).collect();
        let t = Tensor::i64(vec![perms.len(), 4], flat).expect("sized");
        tensors.insert("jigsaw.permutations".into(), t);
    }
    if tensors.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| AdaptError::Io {
        path: dir.into(),
        source,
    })?;
    atomic_write(
        &dir.join("heads.safetensors"),
        &st::to_bytes(&tensors, &HashMap::new()),
    )
}

/// Argmax of each row of `[n, k]` logits.
fn argmax_rows(logits: &Tensor, k: usize, what: &str) -> Result<Vec<usize>> {
    let v = logits.as_f32().ok_or_else(|| AdaptError::Mismatch {
        what: what.into(),
        reason: "logits are not float32".into(),
    })?;
    if v.is_empty() || v.len() % k != 0 {
        return Err(AdaptError::Mismatch {
            what: what.into(),
            reason: format!("shape {:?}, expected [batch, {k}]", logits.shape()),
        });
    }
    Ok(v.chunks(k)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |a, (i, &x)| if x > a.1 { (i, x) } else { a },
                )
                .0
        })
        .collect())
}

/// Runs `method` in `setting` over `domains`. `cfg` overrides the method's preset (its
/// `batch_unlabeled` is set to `opts.batch`). `progress` is called after every batch.
#[allow(clippy::too_many_arguments)]
pub fn run(
    engine: &dyn Engine,
    model: &ModelDir,
    method: Method,
    cfg: Option<&AdaptConfig>,
    setting: Setting,
    domains: &[Domain],
    opts: &TtaOptions<'_>,
    progress: &mut dyn FnMut(),
) -> Result<TtaRun> {
    let t0 = Instant::now();
    let bad = |reason: String| AdaptError::Config {
        path: "tta".into(),
        reason,
    };
    if opts.batch == 0 {
        return Err(bad("the batch size must be at least 1".into()));
    }
    let k = model.config.classes.len();
    let cfg = match (method.preset(), cfg) {
        (None, _) => None,
        (Some(p), over) => {
            let mut c = over.cloned().unwrap_or(p);
            c.batch_unlabeled = opts.batch;
            c.validate()?;
            Some(c)
        }
    };
    // The train step and its resident state (trained methods).
    let mut trainer = None;
    let mut keep = Vec::new();
    if let Some(c) = &cfg {
        if c.batch_labeled > 0 {
            if let Some(&l) = opts.anchor_labels.iter().find(|&&l| l >= k) {
                return Err(AdaptError::Mismatch {
                    what: "anchor labels".into(),
                    reason: format!("label {l} but the model has {k} classes"),
                });
            }
            keep = cap_per_class(opts.anchor_labels, c.max_labeled_per_class);
            if keep.is_empty() {
                return Err(AdaptError::Mismatch {
                    what: "labeled anchors".into(),
                    reason: format!(
                        "method '{}' needs labeled anchors and none were given",
                        method.name()
                    ),
                });
            }
        }
        let session = TrainSession::compile(engine, model, c, "tta train-step")?;
        if let Some(dir) = opts.dump {
            dump_heads(dir, &session, c)?;
        }
        trainer = Some(session);
    }
    // The prediction graph: the model's weights that train are fed from the resident state
    // (a pretext head, `[rotation]` or `[jigsaw]` in a method's settings, trains but does
    // not predict).
    let fed: HashSet<String> = trainer
        .as_ref()
        .map(|s| {
            s.params()
                .iter()
                .filter(|n| !is_head_param(n))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut predictor: Box<dyn Session> = if method == Method::Source {
        engine.load(&model.bytes, "tta predict (source)")?
    } else {
        let g = predict_graph(
            &model.model,
            &model.config.input,
            &model.config.output,
            opts.batch,
            true,
            &fed,
        )?;
        engine.load(
            &encode_model(&g.to_model("fieldtune tta")),
            "tta predict (batch statistics)",
        )?
    };
    let execution_provider = predictor.execution_provider().to_string();

    let mut results = Vec::with_capacity(domains.len());
    let mut step_no = 0usize;
    for (di, domain) in domains.iter().enumerate() {
        let td = Instant::now();
        if domain.images.len() != domain.labels.len() {
            return Err(bad(format!(
                "domain '{}': images and labels differ in count",
                domain.name
            )));
        }
        if setting == Setting::Reset && di > 0 {
            if let Some(session) = trainer.as_mut() {
                session.reset()?;
            }
            step_no = 0;
        }
        let (weak, strong) = match &cfg {
            Some(c) => (Some(c.weak.build()?), Some(c.strong.build()?)),
            None => (None, None),
        };
        let teacher_aug = match &cfg {
            Some(c) => TeacherViews::from_config(c)?,
            None => None,
        };
        let mut batches = DomainBatches {
            model: &model.config,
            domain,
            order: stream_order(domain.images.len(), opts.seed, di),
            batch: opts.batch,
            batch_labeled: cfg.as_ref().map_or(0, |c| c.batch_labeled),
            anchors: opts.anchors,
            anchor_labels: opts.anchor_labels,
            keep: &keep,
            sampler: EpochSampler::new(keep.len(), mix(opts.seed, di as u64, 1)),
            weak,
            strong,
            teacher_aug,
            threads: cfg.as_ref().map_or(1, |c| c.augment_threads.max(1)),
            seed: mix(opts.seed, di as u64, 2),
        };
        let steps = batches.steps();
        if steps == 0 {
            return Err(bad(format!(
                "domain '{}' has {} images, fewer than one batch of {}",
                domain.name,
                domain.images.len(),
                opts.batch
            )));
        }
        if domain.images.len() % opts.batch != 0 {
            tracing::warn!(
                "domain '{}': the last {} images do not fill a batch of {} and are skipped",
                domain.name,
                domain.images.len() % opts.batch,
                opts.batch
            );
        }
        let (mut errors, mut count, mut loss_sum) = (0usize, 0usize, 0.0f64);
        let mut predicted = vec![0usize; k];
        for s in 0..steps {
            let b = batches.get(s)?;
            if let Some(dir) = opts.dump {
                dump_step(dir, di, &domain.name, s, &b)?;
            }
            // 1. Predict with the current weights.
            let mut feeds: Vec<(String, Tensor)> = Vec::new();
            if let Some(session) = &trainer {
                for name in &fed {
                    feeds.push((name.clone(), session.read(&session.model_source(name))?));
                }
            }
            let mut refs: Vec<(&str, &Tensor)> = vec![(model.config.input.as_str(), &b.x_test)];
            refs.extend(feeds.iter().map(|(n, t)| (n.as_str(), t)));
            let logits = predictor
                .run_fetch(&refs, &[model.config.output.as_str()])?
                .remove(0);
            let pred = argmax_rows(&logits, k, &model.config.output)?;
            for (p, y) in pred.iter().zip(&b.y_test) {
                errors += (p != y) as usize;
                predicted[*p] += 1;
            }
            count += pred.len();
            // 2. One train step on the same batch.
            if let (Some(session), Some(c)) = (trainer.as_mut(), &cfg) {
                step_no += 1;
                let f: Vec<(&str, &Tensor)> = b.feeds.iter().map(|(n, t)| (*n, t)).collect();
                let outcome = session.step(&f, c.lr, step_no)?;
                let loss = outcome.metrics.first().map_or(f32::NAN, |m| m.1);
                if !outcome.moved() {
                    return Err(AdaptError::NonFinite {
                        step: step_no,
                        term: format!("a loss term (domain '{}')", domain.name),
                        value: loss,
                    });
                }
                loss_sum += loss as f64;
            }
            progress();
        }
        let error = 100.0 * errors as f64 / count as f64;
        tracing::debug!(method = method.name(), domain = %domain.name, error, "domain done");
        results.push(DomainResult {
            domain: domain.name.clone(),
            count,
            errors,
            error,
            predicted,
            mean_loss: cfg.as_ref().map(|_| loss_sum / steps as f64),
            seconds: td.elapsed().as_secs_f64(),
        });
    }
    let mean_error = results.iter().map(|r| r.error).sum::<f64>() / results.len().max(1) as f64;
    Ok(TtaRun {
        name: opts.name.to_string(),
        method,
        setting,
        seed: opts.seed,
        batch: opts.batch,
        mean_error,
        domains: results,
        seconds: t0.elapsed().as_secs_f64(),
        execution_provider,
        settings: cfg,
    })
}

/// Writes `DIR/settings.json` describing a dump (row name, method, settings, domains), for
/// the reference.
pub fn write_dump_settings(
    dir: &Path,
    name: &str,
    method: Method,
    cfg: Option<&AdaptConfig>,
    batch: usize,
    seed: u64,
    domains: &[Domain],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| AdaptError::Io {
        path: dir.into(),
        source,
    })?;
    let mut cfg = cfg.cloned();
    if let Some(c) = cfg.as_mut() {
        c.batch_unlabeled = batch;
    }
    let v = serde_json::json!({
        "name": name,
        "method": method,
        "batch": batch,
        "seed": seed,
        "domains": domains.iter().enumerate().map(|(i, d)| format!("{i:02}-{}", d.name)).collect::<Vec<_>>(),
        "settings": cfg,
    });
    atomic_write(
        &dir.join("settings.json"),
        serde_json::to_string_pretty(&v).expect("json").as_bytes(),
    )
}

/// A method's settings with the keys of a TOML file over its preset (a file as
/// `fieldtune tta --print-config METHOD` writes it, or a part of one). A table naming another
/// `kind` (e.g. `[strong] kind = "identity"`) replaces the preset's table whole.
pub fn settings_from_file(method: Method, path: &Path) -> Result<AdaptConfig> {
    let bad = |reason: String| AdaptError::Config {
        path: path.into(),
        reason,
    };
    let preset = method.preset().ok_or_else(|| {
        bad(format!(
            "method '{}' trains nothing and takes no settings",
            method.name()
        ))
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| AdaptError::Io {
        path: path.into(),
        source,
    })?;
    let over: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut table = toml::Table::try_from(&preset).map_err(|e| bad(e.to_string()))?;
    for (k, v) in over {
        match (table.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o))
                if o.get("kind").is_none() || o.get("kind") == b.get("kind") =>
            {
                b.extend(o)
            }
            (_, v) => {
                table.insert(k, v);
            }
        }
    }
    let cfg: AdaptConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}
