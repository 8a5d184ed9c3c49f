//! Adaptation settings: a named recipe (preset) plus overrides from a TOML file or flags.
//! `fieldtune adapt --print-config` prints every key with its value.

use std::path::Path;

pub use fieldtune_augment::{AugmentConfig, RandAugment, WeakAugment};
use fieldtune_graph::loss::MAX_PERMUTATIONS;
use fieldtune_graph::{
    BatchNormMode, Colorize, CorruptionTask, Cotta, FeatureConsistency, Inpaint, Jigsaw,
    MeanTeacher, Optimizer, Rotation, TargetChoice, Trainable, UdaLoss,
};
use serde::{Deserialize, Serialize};

use crate::error::{AdaptError, Result};

/// Upper bounds of the size-like settings, checked by [`AdaptConfig::validate`] (and by the
/// command line's numbers); docs/RELIABILITY.md lists them. They refuse values that could only
/// be typing mistakes before they size an allocation or a thread pool.
pub mod bounds {
    /// `steps`.
    pub const MAX_STEPS: usize = 10_000_000;
    /// `batch_labeled`, `batch_unlabeled`, `eval_batch`, `fieldtune tta --batch`.
    pub const MAX_BATCH: usize = 4096;
    /// `augment_threads`.
    pub const MAX_AUGMENT_THREADS: usize = 64;
    /// `cotta.views`.
    pub const MAX_VIEWS: usize = 64;
    /// `collapse.frames`.
    pub const MAX_PROBE_FRAMES: usize = 65_536;
}

/// The default augmentation of CoTTA's teacher views: mild RandAugment (one op, magnitude
/// at most 0.2, no cutout).
pub fn default_teacher_augment() -> AugmentConfig {
    AugmentConfig::RandAugment(RandAugment {
        n: 1,
        max_magnitude: 0.2,
        cutout: 0.0,
    })
}

/// How the learning rate moves over the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout.
    Constant,
    /// Half a cosine from `lr` at step 1 to 0 after the last step.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// The learning rate of 1-based `step` of `steps`.
    pub fn at(self, lr: f32, step: usize, steps: usize) -> f32 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let p = (step - 1) as f64 / steps.max(1) as f64;
                (lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())) as f32
            }
        }
    }
}

/// What `adapt` does when a collapse check fails (fieldtune_adapt::collapse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnCollapse {
    /// `stop` for entropy-only objectives (tent), else `warn`.
    #[default]
    Auto,
    /// Warn, stop, and write the weights of the last check that passed (the source weights
    /// when none did).
    Stop,
    /// Warn and go on.
    Warn,
}

/// `[collapse]`: `adapt` watches its predictions for collapse onto a few classes with the
/// field gate's definition (fieldtune_adapt::collapse): a fixed sample of the unlabeled
/// frames is predicted before the first step and every `every` steps (and after the last);
/// a marginal entropy more than 0.2 nats below the source model's is collapse (a mean
/// confidence saturating at 0.999 is only warned about). `fieldtune run` ignores this
/// section (its gate decides).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollapseWatch {
    /// Steps between checks (0: no checks).
    pub every: usize,
    /// Unlabeled frames predicted at each check, evenly spread over the set.
    pub frames: usize,
    /// `auto`, `stop` or `warn`.
    pub on_collapse: OnCollapse,
}

impl Default for CollapseWatch {
    fn default() -> Self {
        CollapseWatch {
            every: 25,
            frames: 256,
            on_collapse: OnCollapse::Auto,
        }
    }
}

/// Everything `adapt` needs to know besides the model and the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptConfig {
    /// The preset these settings started from.
    pub recipe: String,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Learning-rate schedule over the steps.
    pub lr_schedule: LrSchedule,
    /// Seed of sampling and augmentation.
    pub seed: u64,
    /// Labeled anchors per step (0: no labeled term).
    pub batch_labeled: usize,
    /// Unlabeled frames per step; each is seen in a weak and a strong view.
    pub batch_unlabeled: usize,
    /// At most this many labeled anchors per class are used (the first ones, by file name).
    pub max_labeled_per_class: usize,
    /// Weak view (also applied to labeled anchors). The identity suits shift-sensitive models.
    pub weak: AugmentConfig,
    /// Strong view.
    pub strong: AugmentConfig,
    /// Threads that build the strong views of a batch. Batches are prepared one step ahead on
    /// their own thread either way; the views do not depend on this count.
    pub augment_threads: usize,
    pub loss: UdaLoss,
    pub optimizer: Optimizer,
    pub trainable: Trainable,
    /// BatchNormalization while adapting: `train` (batch statistics; running statistics
    /// updated and saved with the model) or `frozen` (running statistics).
    pub batchnorm: BatchNormMode,
    /// The train step's graph (`--target`): `portable` (standard ops), `tuned` or `auto`
    /// (one-pass fieldtune-domain kernels where the engine that trains registers them: ONNX
    /// Runtime on CPU, tract). Unset: `FIELDTUNE_TARGET`, else portable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetChoice>,
    /// A mean teacher (`[teacher] ema = 0.999`): the weak-view targets come from an EMA of the
    /// student, updated inside the train step; the adapted model written is the teacher.
    pub teacher: Option<MeanTeacher>,
    /// Dropout in training form in the gradient pass (masks drawn inside the train step from
    /// `seed` and the step number). Default false: Dropout is the identity.
    #[serde(default)]
    pub dropout: bool,
    /// CoTTA (`[cotta] views = 4, confidence_threshold = 0.9, restore = 0.01, weight = 1.0`):
    /// the teacher (the mean teacher when `[teacher]` is set) also predicts on `views`
    /// augmented views of each unlabeled frame (`teacher_augment`); below the confidence
    /// threshold their mean softmax is the target of a soft cross-entropy on the strong view;
    /// after each step every parameter element returns to its source value with probability
    /// `restore`. Default off.
    #[serde(default)]
    pub cotta: Option<Cotta>,
    /// Augmentation of CoTTA's teacher views (default: RandAugment n = 1, magnitude 0.2, no
    /// cutout).
    #[serde(default = "default_teacher_augment")]
    pub teacher_augment: AugmentConfig,
    /// Rotation prediction (`[rotation] weight = 1.0`, optional `feature = "tensor"`, default
    /// the classifier's input): a 4-way head on the rotated unlabeled view; the head trains
    /// with the model and is not saved with the adapted model. Default off.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// Jigsaw puzzles (`[jigsaw] weight = 1.0, permutations = 4`, optional `feature`): the
    /// unlabeled weak view's 2x2 tiles rearranged by one of P permutations chosen from the
    /// seed, a P-way head predicts which; the head is not saved. Default off.
    #[serde(default)]
    pub jigsaw: Option<Jigsaw>,
    /// Corrupted-image classification (`[corruption] weight = 1.0, corruptions = ["noise",
    /// "blur", "contrast", "quantise", "pixelate"]`, optional `feature`): a (K + 1)-way head
    /// tells which corruption, or none, each unlabeled frame got; not saved. Default off.
    #[serde(default)]
    pub corruption: Option<CorruptionTask>,
    /// Masked inpainting (`[inpaint] weight = 1.0, patch = 4, ratio = 0.5, loss = "l2"`,
    /// optional `feature`, a 4-D map): a decoder head reconstructs the masked patches of each
    /// unlabeled frame; not saved. Default off.
    #[serde(default)]
    pub inpaint: Option<Inpaint>,
    /// Colorization, RGB models only (`[colorize] weight = 1.0, loss = "l2"`, optional
    /// `feature`): a decoder head predicts the chroma of each unlabeled frame from its luma;
    /// not saved. Default off.
    #[serde(default)]
    pub colorize: Option<Colorize>,
    /// Feature consistency (`[feature_consistency] weight = 1.0, distance = "cosine"`,
    /// optional `feature`): the strong view's feature rows are pulled towards the weak
    /// view's; combinable with UDA's logit consistency by weight. Default off.
    #[serde(default)]
    pub feature_consistency: Option<FeatureConsistency>,
    /// Log the loss terms every this many steps.
    pub log_every: usize,
    /// Evaluate on the eval set every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Batch size of evaluation passes.
    pub eval_batch: usize,
    /// Collapse watch (`[collapse]`).
    #[serde(default)]
    pub collapse: CollapseWatch,
}

impl AdaptConfig {
    /// Reads a TOML file: its `recipe` key (default "uda-im") picks the preset, and every other
    /// key overrides that preset's value. Unknown keys are errors naming the file.
    pub fn load(path: &Path) -> Result<AdaptConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| AdaptError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<AdaptConfig> {
        let bad = |reason: String| AdaptError::Config {
            path: path.into(),
            reason,
        };
        let file: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let recipe = file
            .get("recipe")
            .and_then(|v| v.as_str())
            .unwrap_or("uda-im")
            .to_string();
        let base = toml::Table::try_from(Self::preset(&recipe)?).map_err(|e| bad(e.to_string()))?;
        let merged = merge(base, file);
        let cfg: AdaptConfig = merged
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: &str| AdaptError::Config {
            path: "settings".into(),
            reason: format!("`{key}`: {reason}"),
        };
        use bounds::*;
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(key, &format!("is {v}; must be {lo}..={hi}")))
            }
        };
        range("steps", self.steps, 1, MAX_STEPS)?;
        range("batch_unlabeled", self.batch_unlabeled, 1, MAX_BATCH)?;
        range("batch_labeled", self.batch_labeled, 0, MAX_BATCH)?;
        range("eval_batch", self.eval_batch, 1, MAX_BATCH)?;
        range("collapse.every", self.collapse.every, 0, MAX_STEPS)?;
        range("collapse.frames", self.collapse.frames, 1, MAX_PROBE_FRAMES)?;
        range(
            "augment_threads",
            self.augment_threads,
            1,
            MAX_AUGMENT_THREADS,
        )?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad("lr", "must be a positive number"));
        }
        if let Some(t) = self.teacher {
            if !(t.ema > 0.0 && t.ema < 1.0) {
                return Err(bad("teacher.ema", "must be between 0 and 1 (exclusive)"));
            }
        }
        if self.loss.ce_weight != 0.0 && self.batch_labeled == 0 {
            return Err(bad("batch_labeled", "is 0 but loss.ce_weight is not"));
        }
        if !(self.loss.sharpen_temperature.is_finite() && self.loss.sharpen_temperature > 0.0) {
            return Err(bad("loss.sharpen_temperature", "must be positive"));
        }
        if !(self.loss.proximal_mu.is_finite() && self.loss.proximal_mu >= 0.0) {
            return Err(bad("loss.proximal_mu", "must be 0 or a positive number"));
        }
        if let Some(c) = &self.cotta {
            range("cotta.views", c.views, 1, MAX_VIEWS)?;
            if !(0.0..1.0).contains(&c.restore) {
                return Err(bad("cotta.restore", "must be in [0, 1)"));
            }
            if !(c.weight.is_finite() && c.weight >= 0.0) {
                return Err(bad("cotta.weight", "must be a non-negative number"));
            }
            self.teacher_augment.build()?;
        }
        if let Some(r) = &self.rotation {
            if !(r.weight.is_finite() && r.weight > 0.0) {
                return Err(bad("rotation.weight", "must be a positive number"));
            }
        }
        if let Some(j) = &self.jigsaw {
            if !(j.weight.is_finite() && j.weight > 0.0) {
                return Err(bad("jigsaw.weight", "must be a positive number"));
            }
            range("jigsaw.permutations", j.permutations, 2, MAX_PERMUTATIONS)?;
        }
        if let Some(c) = &self.corruption {
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(bad("corruption.weight", "must be a positive number"));
            }
            if c.corruptions.is_empty() {
                return Err(bad("corruption.corruptions", "must name at least one"));
            }
        }
        if let Some(i) = &self.inpaint {
            if !(i.weight.is_finite() && i.weight > 0.0) {
                return Err(bad("inpaint.weight", "must be a positive number"));
            }
            if !(i.ratio > 0.0 && i.ratio <= 1.0) {
                return Err(bad("inpaint.ratio", "must be in (0, 1]"));
            }
            range("inpaint.patch", i.patch, 1, 4096)?;
        }
        if let Some(c) = &self.colorize {
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(bad("colorize.weight", "must be a positive number"));
            }
        }
        if let Some(f) = &self.feature_consistency {
            if !(f.weight.is_finite() && f.weight > 0.0) {
                return Err(bad(
                    "feature_consistency.weight",
                    "must be a positive number",
                ));
            }
        }
        self.weak.build()?;
        self.strong.build()?;
        Ok(())
    }

    /// Only entropy terms train: no anchors, no consistency, no diversity, no pseudo-labels,
    /// no teacher targets, no pretext head, no feature consistency (TENT). Such an objective rewards collapse.
    pub fn entropy_only(&self) -> bool {
        let l = &self.loss;
        l.entropy_weight != 0.0
            && l.ce_weight == 0.0
            && l.consistency_weight == 0.0
            && l.diversity_weight == 0.0
            && l.pseudo_label_weight == 0.0
            && self.cotta.is_none()
            && self.rotation.is_none()
            && self.jigsaw.is_none()
            && self.corruption.is_none()
            && self.inpaint.is_none()
            && self.colorize.is_none()
            && self.feature_consistency.is_none()
    }

    /// Whether a failed collapse check stops the run (`collapse.on_collapse`; `auto`: for
    /// entropy-only objectives).
    pub fn stops_on_collapse(&self) -> bool {
        match self.collapse.on_collapse {
            OnCollapse::Stop => true,
            OnCollapse::Warn => false,
            OnCollapse::Auto => self.entropy_only(),
        }
    }

    /// The settings as commented TOML: every key with its value and a comment, floats as the
    /// shortest text of their f32; [`AdaptConfig::from_toml`] reads it back unchanged.
    pub fn to_toml(&self) -> String {
        crate::recipe_toml::commented(&toml::to_string(self).unwrap_or_default())
    }
}

fn merge(mut base: toml::Table, over: toml::Table) -> toml::Table {
    for (k, v) in over {
        match (base.remove(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                // A table that names another `kind` replaces the preset's table whole.
                let same_kind = o.get("kind").is_none() || o.get("kind") == b.get("kind");
                base.insert(
                    k,
                    toml::Value::Table(if same_kind { merge(b, o) } else { o }),
                );
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RECIPES;
    use fieldtune_graph::Tsa;

    #[test]
    fn file_overrides_its_recipe() {
        let c = AdaptConfig::from_toml(
            "recipe = \"uda\"\nsteps = 7\n[loss]\nconsistency_weight = 2.0\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert_eq!(c.steps, 7);
        assert_eq!(c.loss.consistency_weight, 2.0);
        assert_eq!(
            c.loss.tsa,
            Tsa::Linear,
            "untouched keys keep the recipe's values"
        );
        assert_eq!(
            c.weak,
            AugmentConfig::Weak(WeakAugment {
                max_shift: 2,
                flip_horizontal: false
            })
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = AdaptConfig::from_toml("stepz = 3\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml") && e.contains("stepz"), "{e}");
        let e = AdaptConfig::from_toml("lr = -1.0\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr`"), "{e}");
        let e = AdaptConfig::from_toml("recipe = \"magic\"\n", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown recipe"), "{e}");
    }

    #[test]
    fn size_settings_beyond_their_bound_name_the_key() {
        for (key, value) in [
            ("steps", "100000000"),
            ("batch_unlabeled", "100000000"),
            ("batch_labeled", "100000000"),
            ("eval_batch", "0"),
            ("augment_threads", "100000"),
        ] {
            let text = format!("recipe = \"uda-im\"\n{key} = {value}\n");
            let e = AdaptConfig::from_toml(&text, Path::new("r.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("r.toml"), "{key}: {e}");
        }
        let mut c = AdaptConfig::preset("cotta").unwrap();
        c.cotta.as_mut().unwrap().views = 1 << 40;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cotta.views"));
    }

    #[test]
    fn cosine_schedule_starts_at_lr_and_decays_to_near_zero() {
        let s = LrSchedule::Cosine;
        assert_eq!(s.at(1e-3, 1, 100), 1e-3);
        assert!((s.at(1e-3, 51, 100) - 5e-4).abs() < 1e-9);
        assert!(s.at(1e-3, 100, 100) < 1e-6);
        assert_eq!(LrSchedule::Constant.at(1e-3, 77, 100), 1e-3);
    }

    #[test]
    fn every_preset_validates_and_round_trips() {
        for (name, _) in RECIPES {
            let c = AdaptConfig::preset(name).unwrap();
            c.validate().unwrap();
            let back = AdaptConfig::from_toml(&c.to_toml(), Path::new("x.toml")).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn collapse_stops_by_default_only_entropy_only_objectives() {
        for (name, _) in RECIPES {
            let c = AdaptConfig::preset(name).unwrap();
            assert_eq!(c.stops_on_collapse(), *name == "tent", "{name}");
            for (on, stops) in [(OnCollapse::Stop, true), (OnCollapse::Warn, false)] {
                let mut c = c.clone();
                c.collapse.on_collapse = on;
                assert_eq!(c.stops_on_collapse(), stops, "{name} {on:?}");
            }
        }
        let e = AdaptConfig::from_toml("[collapse]\nframes = 0\n", Path::new("c.toml"))
            .expect_err("0 frames");
        assert!(e.to_string().contains("collapse.frames"), "{e}");
        let c = AdaptConfig::from_toml("[collapse]\non_collapse = \"stop\"\n", Path::new("c.toml"))
            .unwrap();
        assert_eq!(
            (c.collapse.on_collapse, c.collapse.every),
            (OnCollapse::Stop, 25)
        );
    }

    #[test]
    fn every_recipe_prints_commented_round_toml_that_reads_back_the_same() {
        for (name, _) in RECIPES {
            let mut c = AdaptConfig::preset(name).unwrap();
            c.trainable = fieldtune_graph::Trainable::Names(vec!["fc*".into(), "*.bias".into()]);
            let text = c.to_toml();
            let back = AdaptConfig::from_toml(&text, Path::new("x.toml")).unwrap();
            assert_eq!(back, c, "{name}:\n{text}");
            for line in text
                .lines()
                .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            {
                assert!(
                    line.contains(" # "),
                    "{name}: a key without a comment: {line}"
                );
                let value = line.split_once(" = ").unwrap().1;
                // No float noise: no run of 6 zeros or nines after a decimal point.
                assert!(
                    !value.contains("000000") || value.contains("0.00000001"),
                    "{name}: {line}"
                );
                assert!(!value.contains("99999"), "{name}: {line}");
            }
        }
        let tent = AdaptConfig::preset("tent").unwrap().to_toml();
        assert!(tent.contains("lr = 0.0003 "), "{tent}");
        assert!(tent.contains("# [teacher] ema = 0.999"), "{tent}");
        let last = AdaptConfig {
            trainable: fieldtune_graph::Trainable::Last(2),
            ..AdaptConfig::preset("uda-im").unwrap()
        };
        let text = last.to_toml();
        assert_eq!(
            AdaptConfig::from_toml(&text, Path::new("x.toml")).unwrap(),
            last
        );
    }
}
