//! `fieldtune demo`: adapts the shipped MNIST CNN to OpenCV digits and reports accuracy
//! before and after.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fieldtune_adapt::AdaptConfig;

use super::adapt::{run_adapt, RunPaths};
use super::{engine, open_model};
use crate::args::{EngineArgs, NormArgs};

#[derive(Args)]
pub struct DemoArgs {
    /// Optimizer steps (default: the uda-im recipe's).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the adapted model (replaced on every run: it may hold only a model
    /// folder's files).
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(args: DemoArgs, engine_args: &EngineArgs) -> Result<()> {
    let root = find_repo().context("the demo needs the shipped model and data (models/mnist-cnn, data/opencv-digits): run it from the fieldtune checkout")?;
    let model = root.join("models/mnist-cnn");
    let target = root.join("data/opencv-digits");
    println!(
        "demo: adapting {} from MNIST anchors to OpenCV digits ({})",
        model.display(),
        target.display()
    );
    let e = engine(engine_args)?;
    let mut cfg = AdaptConfig::preset("uda-im")?;
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    cfg.seed = args.seed;
    let m = open_model(&model, &NormArgs::default())?;
    let anchors = model.join("anchors");
    let (before, after) = run_adapt(
        e.as_ref(),
        &m,
        RunPaths {
            labeled: Some(&anchors),
            unlabeled: &target,
            eval: Some(&target),
            out: &args.out,
            // The demo replaces its own output folder on every run.
            force: true,
            dump_batches: None,
        },
        &cfg,
    )?;
    let (b, a) = (
        before.expect("eval set given"),
        after.expect("eval set given"),
    );
    println!(
        "accuracy on OpenCV digits: before {:.4} -> after {:.4} ({:+.2} points)",
        b.accuracy(),
        a.accuracy(),
        100.0 * (a.accuracy() - b.accuracy())
    );
    Ok(())
}

/// The fieldtune checkout: the current folder or an ancestor (of it or of the executable)
/// holding models/mnist-cnn.
fn find_repo() -> Option<PathBuf> {
    let mut starts = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for s in starts {
        for dir in s.ancestors() {
            if dir.join("models/mnist-cnn/model.onnx").is_file()
                && dir.join("data/opencv-digits").is_dir()
            {
                return Some(dir.to_path_buf());
            }
        }
    }
    None
}
