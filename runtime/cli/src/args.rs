//! Argument groups that several commands share: the engine settings (their own `--help`
//! heading, on the commands that run an engine), input normalisation for a bare .onnx, and the recipe settings with their resolution into an
//! [`AdaptConfig`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use fieldtune_adapt::{AdaptConfig, Normalisation, RECIPES};
use fieldtune_graph::{BatchNormMode, MeanTeacher, Trainable, UdaLoss};

/// Upper bound of `--threads` (and of the run config's thread counts).
pub(crate) const MAX_THREADS: usize = fieldtune_field::config::bounds::MAX_THREADS;

/// `--threads`: 1..=[`MAX_THREADS`], checked when parsed.
fn threads_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_THREADS as u64)
}

/// A batch size: 1..=`fieldtune_adapt::recipe::bounds::MAX_BATCH`, checked when parsed.
pub(crate) fn batch_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new()
        .range(1..=fieldtune_adapt::recipe::bounds::MAX_BATCH as u64)
}

/// The engine settings, under their own `--help` heading, on the commands that run an engine
/// (and before the command: `fieldtune --engine tract run ...`; a value after the command
/// wins, see [`EngineArgs::over`]).
#[derive(Args, Clone, Default)]
#[command(next_help_heading = "Engine")]
pub(crate) struct EngineArgs {
    /// Which engine runs the graphs: ONNX Runtime when its library is found, else tract
    /// (default: auto).
    #[arg(long, value_enum)]
    pub(crate) engine: Option<EngineChoice>,
    /// ONNX Runtime library (libonnxruntime.so or its folder). Otherwise: ORT_DYLIB_PATH,
    /// .ort/lib (scripts/install-ort.sh), Python's onnxruntime package, the system.
    #[arg(long, value_name = "PATH")]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Threads per operator: ONNX Runtime's intra-op threads, or the size of tract's thread pool
    /// for matrix products and large elementwise ops (default: one per core).
    #[arg(long, value_name = "N", value_parser = threads_parser())]
    pub(crate) threads: Option<usize>,
    /// ONNX Runtime execution providers in priority order: cpu, cuda[:N], tensorrt[:N]
    /// (e.g. `tensorrt,cuda`; default: cpu). Each must register or the command fails; nodes a
    /// provider cannot run go to the next one. Run `fieldtune doctor` to see what the library
    /// has. (`fieldtune run` takes these settings from its config's [engine] section.)
    #[arg(long, value_name = "CHAIN")]
    pub(crate) ep: Option<String>,
    /// Folder for TensorRT's engine and timing caches (the first run builds engines, which
    /// takes minutes on a Jetson; later runs load them).
    #[arg(long, value_name = "DIR")]
    pub(crate) trt_cache: Option<PathBuf>,
    /// ONNX Runtime graph optimization level (default: all).
    #[arg(long, value_enum)]
    pub(crate) graph_opt: Option<GraphOpt>,
    /// Turn off ONNX Runtime's CPU memory arena (lower resident memory, slower allocation).
    #[arg(long)]
    pub(crate) no_arena: bool,
    /// Turn on ONNX Runtime's memory pattern (one pre-planned block for all intermediate
    /// tensors; off by default: it makes a train step hold every activation's slot at once).
    #[arg(long)]
    pub(crate) mem_pattern: bool,
    /// ONNX Runtime's intra-op threads sleep between ops instead of spinning
    /// (`session.intra_op.allow_spinning = 0`): faster on a host whose cores other processes
    /// share, slower wake-ups on an idle one.
    #[arg(long)]
    pub(crate) no_spin: bool,
}

impl EngineArgs {
    /// These settings (given after the command) over `before` (given before it).
    pub(crate) fn over(&self, before: &EngineArgs) -> EngineArgs {
        EngineArgs {
            engine: self.engine.or(before.engine),
            ort_lib: self.ort_lib.clone().or_else(|| before.ort_lib.clone()),
            threads: self.threads.or(before.threads),
            ep: self.ep.clone().or_else(|| before.ep.clone()),
            trt_cache: self.trt_cache.clone().or_else(|| before.trt_cache.clone()),
            graph_opt: self.graph_opt.or(before.graph_opt),
            no_arena: self.no_arena || before.no_arena,
            mem_pattern: self.mem_pattern || before.mem_pattern,
            no_spin: self.no_spin || before.no_spin,
        }
    }

    /// Whether any setting was given.
    pub(crate) fn any(&self) -> bool {
        self.engine.is_some()
            || self.ort_lib.is_some()
            || self.threads.is_some()
            || self.ep.is_some()
            || self.trt_cache.is_some()
            || self.graph_opt.is_some()
            || self.no_arena
            || self.mem_pattern
            || self.no_spin
    }

    /// `--engine`, default auto.
    pub(crate) fn choice(&self) -> EngineChoice {
        self.engine.unwrap_or(EngineChoice::Auto)
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum GraphOpt {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum EngineChoice {
    Auto,
    Ort,
    Tract,
}

#[derive(Args)]
pub(crate) struct RecipeArgs {
    /// Named starting point for the settings.
    #[arg(long, default_value = "uda-im", value_parser = recipe_names())]
    recipe: String,
    /// TOML file overriding any setting (its own `recipe` key wins over --recipe).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed for sampling and augmentation.
    #[arg(long)]
    seed: Option<u64>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Labeled anchors per step.
    #[arg(long)]
    batch_labeled: Option<usize>,
    /// Unlabeled frames per step.
    #[arg(long)]
    batch_unlabeled: Option<usize>,
    /// Batch size in one number: N unlabeled frames and N/2 labeled anchors per step (when the
    /// recipe uses anchors). --batch-labeled / --batch-unlabeled win over it.
    #[arg(long, value_name = "N", value_parser = batch_parser())]
    batch: Option<usize>,
    /// What trains: all, bn (BatchNorm scale and bias, TENT-style; on a model whose BatchNorm
    /// was folded into the convolutions at export, the same as affine), affine (a per-channel
    /// scale and shift inserted after each Conv that no BatchNorm follows, folded back into the
    /// Conv weights when the model is written), head (the last block), last:K (the last K
    /// blocks; a block is a parameter name up to its first numeric part, e.g. features.17), or
    /// comma-separated name globs (e.g. 'fc*,*.bias').
    #[arg(long, value_name = "SELECTION", value_parser = parse_trainable)]
    train: Option<Trainable>,
    /// The unlabeled objective, replacing the recipe's loss terms: uda (masked, sharpened KL
    /// consistency + anchor CE), tent (prediction entropy only; no anchors), fixmatch (hard
    /// pseudo-labels above 0.95 on the strong view + anchor CE), teacher (uda with targets
    /// from a mean teacher, EMA 0.999, updated inside the train step; the teacher is the
    /// adapted model), cotta (CoTTA: mean teacher, EMA 0.999, whose targets are averaged over
    /// 4 mildly augmented views where its confidence is below 0.9, soft cross-entropy on the
    /// unaugmented frames, stochastic restore of 1% of the weights to the source model per
    /// step; no anchors), rotation (test-time training: predict the rotation, 0/90/180/270
    /// degrees, of each frame with a linear head on the classifier's input; square images;
    /// no anchors; the head is not saved), jigsaw (test-time training: predict which of 4
    /// permutations of its 2x2 tiles a frame shows; even sides; no anchors; head not saved),
    /// corruption (test-time training: predict which of 5 corruptions, noise, blur, contrast,
    /// quantisation, pixelation, or none a frame got; no anchors; head not saved), inpaint
    /// (test-time training: a decoder head on the last feature map reconstructs masked 4x4
    /// patches; no anchors; head not saved), colorize (test-time training, RGB models: a
    /// decoder head predicts each frame's chroma from its luma; no anchors; head not saved),
    /// feature-consistency (weak and strong views agree in the classifier's input, cosine,
    /// + anchor CE; for models whose logits are too unsure for the UDA mask).
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// BatchNorm while adapting: train (batch statistics, running statistics updated) or
    /// frozen (running statistics).
    #[arg(long, value_enum)]
    batchnorm: Option<BnArg>,
}

/// Input normalisation: for a bare .onnx without a model.toml beside it (then one of these
/// is required), or to override model.toml's.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct NormArgs {
    /// Per-channel mean subtracted after scaling pixels to 0..1 (one value, or one per
    /// channel, comma-separated). Overrides model.toml's.
    #[arg(long, value_delimiter = ',', requires = "std")]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by (with --mean).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
    /// The model takes pixels scaled to 0..1 as they are (mean 0, std 1). A bare .onnx
    /// without model.toml needs this or --mean/--std.
    #[arg(long, conflicts_with_all = ["mean", "std"])]
    raw_input: bool,
}

impl NormArgs {
    /// The normalisation these flags ask for (none given: model.toml's).
    pub(crate) fn normalisation(&self) -> Normalisation {
        match (self.mean.clone(), self.std.clone()) {
            (Some(mean), Some(std)) => Normalisation::Given { mean, std },
            _ if self.raw_input => Normalisation::Raw,
            _ => Normalisation::Model,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Objective {
    Uda,
    Tent,
    Fixmatch,
    Teacher,
    Cotta,
    Rotation,
    Jigsaw,
    Corruption,
    Inpaint,
    Colorize,
    FeatureConsistency,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BnArg {
    Train,
    Frozen,
}

fn parse_trainable(s: &str) -> std::result::Result<Trainable, String> {
    Trainable::parse(s)
}

fn recipe_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(RECIPES.iter().map(|r| r.0))
}

impl RecipeArgs {
    pub(crate) fn resolve(&self) -> Result<AdaptConfig> {
        let mut cfg = match &self.config {
            Some(p) => AdaptConfig::load(p)?,
            None => AdaptConfig::preset(&self.recipe)?,
        };
        if let Some(v) = self.steps {
            cfg.steps = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(o) = self.objective {
            let ce = if matches!(
                o,
                Objective::Tent
                    | Objective::Cotta
                    | Objective::Rotation
                    | Objective::Jigsaw
                    | Objective::Corruption
                    | Objective::Inpaint
                    | Objective::Colorize
            ) {
                0.0
            } else {
                1.0
            };
            let consistency = matches!(o, Objective::Uda | Objective::Teacher);
            cfg.loss = UdaLoss {
                ce_weight: ce,
                consistency_weight: if consistency { 1.0 } else { 0.0 },
                entropy_weight: match o {
                    Objective::Tent => 1.0,
                    Objective::Uda | Objective::Teacher => cfg.loss.entropy_weight,
                    Objective::Fixmatch
                    | Objective::Cotta
                    | Objective::Rotation
                    | Objective::Jigsaw
                    | Objective::Corruption
                    | Objective::Inpaint
                    | Objective::Colorize
                    | Objective::FeatureConsistency => 0.0,
                },
                diversity_weight: if consistency {
                    cfg.loss.diversity_weight
                } else {
                    0.0
                },
                pseudo_label_weight: if matches!(o, Objective::Fixmatch) {
                    1.0
                } else {
                    0.0
                },
                ..cfg.loss.clone()
            };
            if ce == 0.0 {
                cfg.batch_labeled = 0;
            }
            cfg.teacher = matches!(o, Objective::Teacher | Objective::Cotta)
                .then_some(MeanTeacher { ema: 0.999 });
            /// The objective's own section when `on` (its settings kept, else the defaults);
            /// off for the other objectives.
            fn only<T: Default>(on: bool, section: Option<T>) -> Option<T> {
                on.then(|| section.unwrap_or_default())
            }
            cfg.cotta = only(matches!(o, Objective::Cotta), cfg.cotta.take());
            cfg.rotation = only(matches!(o, Objective::Rotation), cfg.rotation.take());
            cfg.jigsaw = only(matches!(o, Objective::Jigsaw), cfg.jigsaw.take());
            cfg.corruption = only(matches!(o, Objective::Corruption), cfg.corruption.take());
            cfg.inpaint = only(matches!(o, Objective::Inpaint), cfg.inpaint.take());
            cfg.colorize = only(matches!(o, Objective::Colorize), cfg.colorize.take());
            cfg.feature_consistency = only(
                matches!(o, Objective::FeatureConsistency),
                cfg.feature_consistency.take(),
            );
            if matches!(o, Objective::Cotta) {
                // CoTTA's student sees the frames themselves.
                cfg.strong = fieldtune_adapt::recipe::AugmentConfig::Identity;
            }
        }
        if let Some(n) = self.batch {
            cfg.batch_unlabeled = n;
            if cfg.batch_labeled > 0 {
                cfg.batch_labeled = (n / 2).max(1);
            }
        }
        if let Some(v) = self.batch_labeled {
            cfg.batch_labeled = v;
        }
        if let Some(v) = self.batch_unlabeled {
            cfg.batch_unlabeled = v;
        }
        if let Some(t) = &self.train {
            cfg.trainable = t.clone();
        }
        if let Some(b) = self.batchnorm {
            cfg.batchnorm = match b {
                BnArg::Train => BatchNormMode::Train,
                BnArg::Frozen => BatchNormMode::Frozen,
            };
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
