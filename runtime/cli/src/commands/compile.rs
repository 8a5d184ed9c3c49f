//! `fieldtune compile`: writes the train-step graph fieldtune compiles for a model, and
//! prints what it holds.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fieldtune_graph::ir::Dim;
use fieldtune_graph::{Target, TrainSpec, TuneReport};

use crate::args::{NormArgs, RecipeArgs};

#[derive(Args)]
pub struct CompileArgs {
    /// Model folder (model.onnx + model.toml), or a .onnx file: read as the model.toml
    /// beside it says; without one, input shape from the graph, classes 0..K-1, and
    /// --mean/--std or --raw-input.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// Where to write the train-step ONNX.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// The engine the graph is tuned for: portable (standard ops only, runs anywhere),
    /// ort-cpu or tract (one-pass fieldtune-domain kernels that engine registers), ort-cuda
    /// (standard ops). A tuned target also reports what it replaced.
    #[arg(long, default_value = "portable", value_parser = Target::parse)]
    target: Target,
}

pub fn run(a: CompileArgs) -> Result<()> {
    // The train step does not depend on the normalisation: a bare .onnx needs none here.
    let norm = match a.norm.normalisation() {
        fieldtune_adapt::Normalisation::Model => fieldtune_adapt::Normalisation::Unused,
        n => n,
    };
    let m = fieldtune_adapt::ModelDir::open_path(&a.model, norm)
        .with_context(|| format!("opening model {}", a.model.display()))?;
    let cfg = a.recipe.resolve()?;
    let (onnx, toml) = (a.model.join("model.onnx"), a.model.join("model.toml"));
    fieldtune_adapt::fsutil::refuse_overwrite(&a.out, &[&a.model, &onnx, &toml, &m.dir])?;
    let portable = fieldtune_adapt::train_spec(&m, &cfg);
    let step = m.compile_step(&TrainSpec {
        target: a.target,
        ..portable.clone()
    })?;
    let bytes = fieldtune_graph::encode_model(&step.to_model());
    fieldtune_adapt::fsutil::atomic_write(&a.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, target {})",
        a.out.display(),
        bytes.len(),
        a.target
    );
    if a.target != Target::Portable {
        let reference = m.compile_step(&portable)?;
        println!("{}", TuneReport::of(&reference.graph, &step.graph));
    }
    println!(
        "nodes: {}; {:.3} GFLOP per step (multiply-adds of Conv, ConvTranspose, Gemm, MatMul, DepthwiseConvWgrad)",
        step.graph.nodes.len(),
        step.flops as f64 / 1e9
    );
    println!(
        "trainable parameters ({:?}): {} tensors, {} values",
        cfg.trainable,
        step.params.len(),
        step.params.iter().map(|p| p.1.len()).sum::<usize>()
    );
    let frozen = match step.frozen.len() {
        0 => "none".to_string(),
        n if n <= 8 => step.frozen.join(", "),
        n => format!("{n} tensors ({}, ...)", step.frozen[..4].join(", ")),
    };
    println!(
        "optimizer state: {} tensors; BatchNorm {:?}, {} running statistics updated; frozen: {frozen}",
        step.state.len(),
        cfg.batchnorm,
        step.buffers.len()
    );
    let looped: HashSet<String> = step.loops().into_iter().map(|(_, input)| input).collect();
    let per_step: Vec<String> = step
        .graph
        .inputs
        .iter()
        .filter(|i| !looped.contains(&i.name))
        .map(|i| {
            let dims: Vec<String> = i
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_string(),
                    Dim::Symbolic(s) => s.clone(),
                })
                .collect();
            format!("{} [{}]", i.name, dims.join(", "))
        })
        .collect();
    println!("inputs per step: {}", per_step.join(", "));
    println!("looped inputs (new.<name> -> <name>): {}", looped.len());
    println!("metrics: {}", step.metrics.join(", "));
    if cfg.rotation.is_some()
        || cfg.jigsaw.is_some()
        || cfg.corruption.is_some()
        || cfg.inpaint.is_some()
        || cfg.colorize.is_some()
        || cfg.feature_consistency.is_some()
    {
        print_pretext_cost(&m, &cfg, &step);
    }
    Ok(())
}

/// What the pretext tasks and feature consistency cost: the heads' parameters (trained, not
/// saved) and the FLOPs they add, the step's against the same step compiled without them.
fn print_pretext_cost(
    m: &fieldtune_adapt::ModelDir,
    cfg: &fieldtune_adapt::AdaptConfig,
    step: &fieldtune_graph::TrainStep,
) {
    let heads: Vec<&(String, fieldtune_tensor::Tensor)> = step
        .params
        .iter()
        .filter(|p| fieldtune_graph::is_head_param(&p.0))
        .collect();
    let mut base = cfg.clone();
    base.rotation = None;
    base.jigsaw = None;
    base.corruption = None;
    base.inpaint = None;
    base.colorize = None;
    base.feature_consistency = None;
    let added = match m.compile_step(&fieldtune_adapt::train_spec(m, &base)) {
        Ok(b) => format!(
            "{:.3} GFLOP per step",
            step.flops.saturating_sub(b.flops) as f64 / 1e9
        ),
        Err(_) => "the whole step (nothing else trains)".to_string(),
    };
    let shapes: Vec<String> = heads
        .iter()
        .map(|p| format!("{} {:?}", p.0, p.1.shape()))
        .collect();
    let shapes = if shapes.is_empty() {
        String::new()
    } else {
        format!(" ({})", shapes.join(", "))
    };
    println!(
        "pretext heads (trained, not saved): {} tensors, {} values{shapes}; pretext tasks and feature consistency add {added}",
        heads.len(),
        heads.iter().map(|p| p.1.len()).sum::<usize>(),
    );
}
