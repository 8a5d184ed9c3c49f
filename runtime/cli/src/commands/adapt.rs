//! `fieldtune adapt`: adapts a model to unlabeled frames and writes the adapted model folder;
//! [`run_adapt`] is also the demo's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use fieldtune_adapt::{
    adapt, batches, AdaptConfig, AdaptData, BatchMaker, EvalReport, ModelDir, StepReport,
};
use fieldtune_engine::Engine;
use fieldtune_frames::Dataset;

use super::{engine, eval_model, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs, RecipeArgs};

pub const ADAPT_ABOUT: &str = "Adapt a model to unlabeled frames of a new domain, anchored by a few labeled \
examples of the source domain. Writes --out/model.onnx (the adapted weights as initializers), \
--out/model.toml, --out/checkpoint.safetensors and --out/adapt.json (settings, loss history, accuracy). \
The folder is replaced whole (old or new, never a mix); it may not be the model's folder, hold \
the inputs, or hold other files.\n\n\
Recipes (--recipe):\n  uda-im  UDA, identity weak view, mild RandAugment, + information maximisation + anchor CE, 600 steps (default)\n  \
uda     textbook UDA: 2 px shifted weak view, TSA\n  tent    entropy minimisation, no anchors\n  \
fixmatch hard pseudo-labels (confidence > 0.95) for the strong view + anchor CE\n  \
cotta   CoTTA: mean teacher, augmentation-averaged targets, soft CE, stochastic restore; no anchors\n  \
rotation test-time training: rotation prediction with a linear head (not saved); no anchors\n\n\
--objective, --train, --batchnorm and --batch change a recipe from the command line; a .onnx file \
works as --model: read as the model.toml beside it says, else with --mean/--std (or --raw-input \
for a model that takes pixels scaled to 0..1).\n\n\
Every setting can be overridden in a TOML file (--config); --print-config shows them all.";

#[derive(Args)]
pub struct AdaptArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// Labeled anchors of the source domain: one sub-folder per class.
    #[arg(long)]
    labeled: Option<PathBuf>,
    /// Unlabeled frames of the target domain (flat, or class folders whose names are ignored
    /// for training).
    #[arg(long)]
    unlabeled: PathBuf,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    /// Labeled images to score before and after (and every eval_every steps).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Print the resolved settings as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Also write every step's batch (x_labeled, y_labeled, x_weak, x_strong) to
    /// DIR/step-NNNNN.safetensors, e.g. to feed a reference trainer the very same batches.
    #[arg(long, value_name = "DIR")]
    dump_batches: Option<PathBuf>,
    #[command(flatten)]
    recipe: RecipeArgs,
}

pub fn run(a: AdaptArgs, engine_args: &EngineArgs) -> Result<()> {
    let cfg = a.recipe.resolve()?;
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let m = open_model(&a.model, &a.norm)?;
    let e = engine(engine_args)?;
    run_adapt(
        e.as_ref(),
        &m,
        RunPaths {
            labeled: a.labeled.as_deref(),
            unlabeled: &a.unlabeled,
            eval: a.eval.as_deref(),
            out: &a.out,
            dump_batches: a.dump_batches.as_deref(),
        },
        &cfg,
    )
    .map(|_| ())
}

pub(crate) type EvalPair = (Option<EvalReport>, Option<EvalReport>);

/// The folders one adaptation run reads and writes.
pub(crate) struct RunPaths<'a> {
    pub(crate) labeled: Option<&'a Path>,
    pub(crate) unlabeled: &'a Path,
    pub(crate) eval: Option<&'a Path>,
    pub(crate) out: &'a Path,
    /// Where to write each step's batch, if anywhere.
    pub(crate) dump_batches: Option<&'a Path>,
}

pub(crate) fn run_adapt(
    e: &dyn Engine,
    m: &ModelDir,
    paths: RunPaths<'_>,
    cfg: &AdaptConfig,
) -> Result<EvalPair> {
    let RunPaths {
        labeled,
        unlabeled,
        eval,
        out,
        dump_batches,
    } = paths;
    // The folder is replaced whole: it may not be, or hold, anything this run reads.
    let inputs: Vec<&Path> = [Some(m.dir.as_path()), labeled, Some(unlabeled), eval]
        .into_iter()
        .flatten()
        .collect();
    fieldtune_adapt::fsutil::refuse_overwrite(out, &inputs)?;
    let (lab_imgs, labels) = match labeled {
        Some(d) => load_labeled(d, m)
            .with_context(|| format!("loading labeled anchors from {}", d.display()))?,
        None if cfg.batch_labeled > 0 => bail!(
            "recipe '{}' trains on labeled anchors: give --labeled DIR (or use --recipe tent)",
            cfg.recipe
        ),
        None => (Vec::new(), Vec::new()),
    };
    let ds = Dataset::unlabeled(unlabeled, Some(&m.config.classes))?;
    let unl = ds
        .load_all(&m.config)
        .with_context(|| format!("loading unlabeled frames from {}", unlabeled.display()))?;
    let evalset = match eval {
        Some(d) => Some(
            load_labeled(d, m)
                .with_context(|| format!("loading the eval set from {}", d.display()))?,
        ),
        None => None,
    };
    println!(
        "data: {} labeled anchors (using at most {} per class), {} unlabeled frames{}",
        lab_imgs.len(),
        cfg.max_labeled_per_class,
        unl.len(),
        evalset
            .as_ref()
            .map(|(i, _)| format!(", {} eval images", i.len()))
            .unwrap_or_default()
    );
    let before = match &evalset {
        Some((i, l)) => {
            let r = eval_model(e, m, None, i, l, cfg.eval_batch)?;
            println!(
                "before: accuracy {:.4}, mean confidence {:.4}",
                r.accuracy(),
                r.mean_confidence
            );
            Some(r)
        }
        None => None,
    };
    let bar = indicatif::ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} adapt [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let log_every = cfg.log_every.max(1);
    let mut observer = |r: &StepReport| {
        bar.inc(1);
        let loss = r.metric("loss").unwrap_or(f32::NAN);
        bar.set_message(format!(
            "loss {loss:.4} mask {:.2}",
            r.metric("mask_rate").unwrap_or(0.0)
        ));
        if r.step.is_multiple_of(log_every) {
            let terms: Vec<String> = r
                .metrics
                .iter()
                .map(|(n, v)| format!("{n}={v:.4}"))
                .collect();
            let acc = r
                .eval
                .as_ref()
                .map(|e| format!(" accuracy={:.4}", e.accuracy()))
                .unwrap_or_default();
            bar.suspend(|| tracing::info!("step {}: {}{acc}", r.step, terms.join(" ")));
        }
    };
    let data = AdaptData {
        labeled: &lab_imgs,
        labels: &labels,
        unlabeled: &unl,
        eval: evalset.as_ref().map(|(i, l)| (i.as_slice(), l.as_slice())),
    };
    if let Some(dir) = dump_batches {
        batches::dump(BatchMaker::new(&m.config, cfg, &data)?, cfg.steps, dir)?;
        println!("batches: {} steps written to {}", cfg.steps, dir.display());
    }
    let outcome = adapt(e, m, cfg, &data, &mut observer)?;
    bar.finish_and_clear();
    println!(
        "adapted: {} steps in {:.1} s ({:.1} ms/step) on {} ({} train-step nodes)",
        cfg.steps,
        outcome.seconds,
        1000.0 * outcome.seconds / cfg.steps as f64,
        outcome.execution_provider,
        outcome.train_step_nodes
    );
    let after = match &evalset {
        Some((i, l)) => {
            let r = eval_model(e, m, Some(&outcome.params), i, l, cfg.eval_batch)?;
            println!(
                "after:  accuracy {:.4}, mean confidence {:.4}",
                r.accuracy(),
                r.mean_confidence
            );
            Some(r)
        }
        None => None,
    };
    let meta = HashMap::from([
        ("recipe".to_string(), cfg.recipe.clone()),
        ("steps".to_string(), cfg.steps.to_string()),
        ("seed".to_string(), cfg.seed.to_string()),
        ("engine".to_string(), e.describe()),
    ]);
    let summary = serde_json::json!({
        "settings": serde_json::to_value(cfg)?,
        "engine": e.describe(),
        "execution_provider": outcome.execution_provider,
        "seconds": outcome.seconds,
        "accuracy_before": before.as_ref().map(|r| r.accuracy()),
        "accuracy_after": after.as_ref().map(|r| r.accuracy()),
        "history": outcome.history.iter().map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("step".into(), r.step.into());
            for (n, v) in &r.metrics { o.insert(n.clone(), serde_json::json!(v)); }
            if let Some(e) = &r.eval { o.insert("accuracy".into(), e.accuracy().into()); }
            serde_json::Value::Object(o)
        }).collect::<Vec<_>>(),
    });
    let summary = serde_json::to_string_pretty(&summary)?;
    m.write_adapted(
        out,
        &outcome.params,
        &meta,
        &[("adapt.json", summary.as_bytes())],
    )?;
    println!(
        "wrote {} (model.onnx, model.toml, checkpoint.safetensors, adapt.json)",
        out.display()
    );
    Ok((before, after))
}
