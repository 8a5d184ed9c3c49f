//! `fieldtune eval`: accuracy and confusion matrix of a model on a labeled image folder.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use fieldtune_adapt::EvalReport;

use super::{engine, eval_model, load_labeled, open_model};
use crate::args::{EngineArgs, NormArgs};

#[derive(Args)]
pub struct EvalArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// Labeled images: one sub-folder per class.
    #[arg(long)]
    data: PathBuf,
    /// Images per inference batch.
    #[arg(long, default_value_t = 250, value_parser = crate::args::batch_parser())]
    batch: usize,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(a: EvalArgs, engine_args: &EngineArgs) -> Result<()> {
    let m = open_model(&a.model, &a.norm)?;
    let (images, labels) = load_labeled(&a.data, &m)?;
    let e = engine(engine_args)?;
    let report = eval_model(e.as_ref(), &m, None, &images, &labels, a.batch)?;
    print_eval(&a.data, &report);
    Ok(())
}

fn print_eval(data: &Path, r: &EvalReport) {
    println!("images: {} ({})", r.count, data.display());
    println!("accuracy: {:.4}", r.accuracy());
    println!("mean confidence: {:.4}", r.mean_confidence);
    println!("confusion matrix:\n{}", r.confusion_table());
}
