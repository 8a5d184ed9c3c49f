//! `fieldtune bench`: arguments and printing; the measuring is in fieldtune_adapt::bench.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use fieldtune_adapt::bench::{bench, BenchConfig};

use super::{engine, open_model};
use crate::args::{EngineArgs, NormArgs, RecipeArgs};

pub const BENCH_ABOUT: &str = "Time one model on one engine: the compiled train step of the recipe \
(parameters and optimizer state resident, fixed random batches; images per step = labeled + weak + \
strong), inference latency at batch 1 and throughput at --infer-batch, and this process's peak memory \
after the train steps. One engine per process, so peak memory is that engine's.\n\n\
scripts/bench/bench_speed.py runs it for ONNX Runtime and tract beside the PyTorch reference and prints \
the ratios (docs/BENCHMARKS.md).";

#[derive(Args)]
pub struct BenchArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// Timed train steps (after --warmup untimed ones); also the number of throughput runs.
    #[arg(long, default_value_t = 20)]
    timed_steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Inference runs at batch 1.
    #[arg(long, default_value_t = 100)]
    latency_runs: usize,
    /// Batch of the inference throughput runs.
    #[arg(long, default_value_t = 64)]
    infer_batch: usize,
    /// Time inference only (no train step): for TensorRT, which builds an engine per graph.
    #[arg(long)]
    skip_train: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(a: BenchArgs, engine_args: &EngineArgs) -> Result<()> {
    let cfg = a.recipe.resolve()?;
    let m = open_model(&a.model, &a.norm)?;
    let e = engine(engine_args)?;
    let r = bench(
        e.as_ref(),
        &m,
        &cfg,
        &BenchConfig {
            steps: a.timed_steps.max(1),
            warmup: a.warmup,
            latency_runs: a.latency_runs.max(1),
            infer_batch: a.infer_batch.max(1),
            skip_train: a.skip_train,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "model {} on {} ({})",
        a.model.display(),
        r.engine,
        r.execution_provider
    );
    if a.skip_train {
        println!(
            "train step: skipped (--skip-train; {} nodes, {:.3} GFLOP)",
            r.train_step_nodes, r.train_step_gflop
        );
    } else {
        println!(
        "train step ({} labeled / {} weak / {} strong, {} nodes, {:.3} GFLOP): median {:.1} ms, p90 {:.1} ms = {:.0} images/s, {:.1} GFLOP/s",
        r.batch_labeled,
        r.batch_unlabeled,
        r.batch_unlabeled,
        r.train_step_nodes,
        r.train_step_gflop,
        r.train_step_ms_median,
        r.train_step_ms_p90,
        r.train_images_per_s,
        r.train_gflop_per_s
    );
        println!(
            "compile + load: {:.0} ms; peak memory after training: {:.0} MiB",
            r.compile_and_load_ms, r.peak_rss_train_mib
        );
    }
    println!(
        "inference: batch 1 median {:.2} ms, p99 {:.2} ms; batch {} {:.0} images/s",
        r.infer_b1_ms_median, r.infer_b1_ms_p99, r.infer_batch, r.infer_images_per_s
    );
    Ok(())
}
