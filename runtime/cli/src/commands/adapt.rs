//! `fieldtune adapt`: adapts a model to unlabeled frames and writes the adapted model folder;
//! [`run_adapt`] is also the demo's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use fieldtune_adapt::{
    adapt, batches, AdaptConfig, AdaptData, BatchMaker, EvalReport, ModelDir, OnCollapse,
    StepReport,
};
use fieldtune_engine::Engine;
use fieldtune_frames::Dataset;
use fieldtune_graph::TargetChoice;

use super::{engine, eval_model, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs, RecipeArgs};

pub const ADAPT_ABOUT: &str = "Adapt a model to unlabeled frames of a new domain, anchored by a few labeled \
examples of the source domain. Writes --out/model.onnx (the adapted weights as initializers), \
--out/model.toml, --out/checkpoint.safetensors and --out/adapt.json (settings, loss history, accuracy). \
An existing --out that is not empty is refused unless --force; it is then replaced whole (old or new, \
never a mix), and may not be the model's folder, hold the inputs, or hold other files.\n\n\
Recipes (--recipe):\n  uda-im  UDA, identity weak view, mild RandAugment, + information maximisation + anchor CE, 600 steps (default)\n  \
uda     textbook UDA: 2 px shifted weak view, TSA\n  tent    entropy minimisation, no anchors\n  \
fixmatch hard pseudo-labels (confidence > 0.95) for the strong view + anchor CE\n  \
cotta   CoTTA: mean teacher, augmentation-averaged targets, soft CE, stochastic restore; no anchors\n  \
rotation test-time training: rotation prediction with a linear head (not saved); no anchors\n  \
jigsaw  test-time training: a linear head (not saved) tells which of 4 permutations of the 2x2 tiles \
a frame shows; for models whose logits are too unsure for consistency; no anchors\n  \
corruption test-time training: a linear head (not saved) tells which of noise, blur, contrast, \
quantisation, pixelation or none a frame got; for corrupted target domains; no anchors\n  \
inpaint test-time training: a decoder head (not saved) on the last feature map reconstructs \
the masked 4x4 patches of each frame; for frames whose local structure still identifies them; no anchors\n  \
colorize test-time training, RGB models: a decoder head (not saved) predicts each frame's chroma \
from its luma; for colour shifts and camera changes; refused on grayscale models; no anchors\n  \
feature-consistency  weak and strong views agree in the classifier's input (cosine) + anchor CE; \
when the UDA confidence mask keeps few frames\n\n\
--objective, --train, --batchnorm and --batch change a recipe from the command line; a .onnx file \
works as --model: read as the model.toml beside it says, else with --mean/--std (or --raw-input \
for a model that takes pixels scaled to 0..1).\n\n\
Every setting can be overridden in a TOML file (--config); --print-config shows them all.";

#[derive(Args)]
pub struct AdaptArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long, required_unless_present = "print_config")]
    model: Option<PathBuf>,
    #[command(flatten)]
    norm: NormArgs,
    /// Labeled anchors of the source domain: one sub-folder per class.
    #[arg(long)]
    labeled: Option<PathBuf>,
    /// Unlabeled frames of the target domain (flat, or class folders whose names are ignored
    /// for training).
    #[arg(long, required_unless_present = "print_config")]
    unlabeled: Option<PathBuf>,
    /// Output model folder. An existing folder that is not empty is refused unless --force.
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Replace an existing --out folder (one holding only model-folder files: model.onnx,
    /// model.toml, checkpoint.safetensors, adapt.json; anything else is never replaced).
    #[arg(long)]
    force: bool,
    /// Labeled images to score before and after (and every eval_every steps).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Print the resolved settings (recipe, --config, flags) as commented TOML and exit; no
    /// other flag is needed: `fieldtune adapt --recipe tent --print-config > my.toml`.
    #[arg(long)]
    print_config: bool,
    /// Also write every step's batch (x_labeled, y_labeled, x_weak, x_strong) to
    /// DIR/step-NNNNN.safetensors, e.g. to feed a reference trainer the very same batches.
    #[arg(long, value_name = "DIR")]
    dump_batches: Option<PathBuf>,
    /// Stop when the predictions collapse (the entropy of the mean prediction on a fixed
    /// sample of the unlabeled frames more than 0.2 nats below the source model's: the field
    /// gate's check), and write the weights of the last check that passed. Default for
    /// entropy-only objectives (tent); others warn and go on. A mean confidence saturating at
    /// 0.999 is warned about, never stopped for. Config: [collapse] on_collapse = "auto" |
    /// "stop" | "warn", every, frames.
    #[arg(long, overrides_with = "no_stop_on_collapse")]
    stop_on_collapse: bool,
    /// Only warn when the predictions collapse, also for entropy-only objectives.
    #[arg(long, overrides_with = "stop_on_collapse")]
    no_stop_on_collapse: bool,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// The train step's graph: portable (standard ops only), tuned (one-pass fieldtune-domain
    /// kernels where the engine registers them: ONNX Runtime on CPU, tract; CUDA and TensorRT
    /// keep standard ops) or auto (tuned where registered, else portable). Default: [adapt]
    /// target, else FIELDTUNE_TARGET, else portable.
    #[arg(long, value_name = "TARGET", value_parser = TargetChoice::parse)]
    target: Option<TargetChoice>,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(a: AdaptArgs, engine_args: &EngineArgs) -> Result<()> {
    let mut cfg = a.recipe.resolve()?;
    if a.target.is_some() {
        cfg.target = a.target;
    }
    if a.stop_on_collapse {
        cfg.collapse.on_collapse = OnCollapse::Stop;
    }
    if a.no_stop_on_collapse {
        cfg.collapse.on_collapse = OnCollapse::Warn;
    }
    if a.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let (Some(model), Some(unlabeled), Some(out)) = (&a.model, &a.unlabeled, &a.out) else {
        bail!("--model, --unlabeled and --out are required (clap checks them)");
    };
    let m = open_model(model, &a.norm)?;
    let e = engine(engine_args)?;
    run_adapt(
        e.as_ref(),
        &m,
        RunPaths {
            labeled: a.labeled.as_deref(),
            unlabeled,
            eval: a.eval.as_deref(),
            out,
            force: a.force,
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
    /// Replace `out` when it exists and is not empty.
    pub(crate) force: bool,
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
        force,
        dump_batches,
    } = paths;
    // The folder is replaced whole: it may not be, or hold, anything this run reads.
    let inputs: Vec<&Path> = [Some(m.dir.as_path()), labeled, Some(unlabeled), eval]
        .into_iter()
        .flatten()
        .collect();
    fieldtune_adapt::fsutil::refuse_overwrite(out, &inputs)?;
    fieldtune_adapt::fsutil::refuse_non_empty(out, force)?;
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
        if let Some(n) = r.collapse.as_ref().and_then(|c| c.saturation.as_ref()) {
            bar.suspend(|| {
                tracing::warn!(
                    "step {}: {n} (a warning: not collapse while the predictions still spread over the classes)",
                    r.step
                )
            });
        }
        if let Some(c) = r.collapse.as_ref().filter(|c| !c.reasons.is_empty()) {
            bar.suspend(|| {
                tracing::warn!(
                    "step {}: {}{}",
                    c.step,
                    c.reasons.join("; "),
                    if cfg.stops_on_collapse() {
                        "; stopping (--no-stop-on-collapse goes on)"
                    } else {
                        "; going on (--stop-on-collapse stops)"
                    }
                )
            });
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
    let steps = outcome.history.len();
    println!(
        "adapted: {} steps in {:.1} s ({:.1} ms/step) on {} ({} train-step nodes, target {})",
        steps,
        outcome.seconds,
        1000.0 * outcome.seconds / steps.max(1) as f64,
        outcome.execution_provider,
        outcome.train_step_nodes,
        outcome.target
    );
    let c = &outcome.collapse;
    match (c.first_collapse_step, c.kept_weights_of_step) {
        (Some(k), Some(kept)) => println!(
            "collapse: predictions collapsed at step {k} of {}; stopped, and the weights written are those of {}",
            cfg.steps,
            if kept == 0 {
                "the source model (no step passed a check)".to_string()
            } else {
                format!("step {kept}, the last that passed a check")
            }
        ),
        (Some(k), None) => println!(
            "collapse: predictions collapsed at step {k} (warned; the run went on: --stop-on-collapse stops)"
        ),
        (None, _) if c.frames > 0 => println!(
            "collapse: none ({} checks on {} unlabeled frames)",
            c.checks.len() - 1,
            c.frames
        ),
        _ => {}
    }
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
        ("steps".to_string(), steps.to_string()),
        ("seed".to_string(), cfg.seed.to_string()),
        ("engine".to_string(), e.describe()),
    ]);
    let summary = serde_json::json!({
        "settings": serde_json::to_value(cfg)?,
        "engine": e.describe(),
        "execution_provider": outcome.execution_provider,
        "train_step_target": outcome.target.name(),
        "seconds": outcome.seconds,
        "accuracy_before": before.as_ref().map(|r| r.accuracy()),
        "accuracy_after": after.as_ref().map(|r| r.accuracy()),
        "collapse": &outcome.collapse,
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
