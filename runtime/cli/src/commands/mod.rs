//! One module per command: its arguments (as a clap `Args` struct) and a `run` that does it.
//! The helpers below are what several commands share.

pub mod adapt;
pub mod bench;
pub mod compile;
pub mod demo;
mod demo_rgb;
pub mod doctor;
pub mod eval;
pub mod fleet;
pub mod report;
pub mod run;
pub mod tta;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fieldtune_adapt::{evaluate, EvalReport, ModelDir};
use fieldtune_engine::{
    select_engine, Engine, EnginePreference, ExecutionProvider, GraphOptimization, OrtOptions,
};
use fieldtune_frames::{Dataset, Image8};

use crate::args::{EngineArgs, EngineChoice, GraphOpt, NormArgs};

/// The engine the global engine settings ask for; prints which one it is and why.
pub(crate) fn engine(args: &EngineArgs) -> Result<Box<dyn Engine>> {
    let pref = match args.choice() {
        EngineChoice::Auto => EnginePreference::Auto,
        EngineChoice::Ort => EnginePreference::Ort,
        EngineChoice::Tract => EnginePreference::Tract,
    };
    let opts = OrtOptions {
        lib: args.ort_lib.clone(),
        intra_threads: args.threads,
        providers: ExecutionProvider::parse_chain(
            args.ep.as_deref().unwrap_or("cpu"),
            args.trt_cache.as_deref(),
        )
        .map_err(anyhow::Error::msg)
        .context("--ep")?,
        graph_optimization: match args.graph_opt.unwrap_or(GraphOpt::All) {
            GraphOpt::Disable => GraphOptimization::Disable,
            GraphOpt::Basic => GraphOptimization::Basic,
            GraphOpt::Extended => GraphOptimization::Extended,
            GraphOpt::All => GraphOptimization::All,
        },
        no_cpu_arena: args.no_arena,
        memory_pattern: args.mem_pattern,
        no_intra_spinning: args.no_spin,
        gpu: Default::default(),
    };
    let e = select_engine(pref, opts).context("selecting the engine")?;
    let why = match (args.choice(), e.kind()) {
        (EngineChoice::Auto, fieldtune_engine::EngineKind::Tract) => {
            " (ONNX Runtime not found: run scripts/install-ort.sh, or pass --ort-lib; `fieldtune doctor` lists where it looked)"
        }
        (EngineChoice::Auto, _) => " (auto: ONNX Runtime found)",
        _ => " (requested)",
    };
    println!("engine: {}{why}", e.describe());
    Ok(e)
}

/// Opens a model folder or bare .onnx, naming the path on failure.
pub(crate) fn open_model(path: &Path, norm: &NormArgs) -> Result<ModelDir> {
    ModelDir::open_path(path, norm.normalisation())
        .with_context(|| format!("opening model {}", path.display()))
}

/// Every image of a labeled folder (one sub-folder per class) with its class index.
pub(crate) fn load_labeled(dir: &Path, m: &ModelDir) -> Result<(Vec<Image8>, Vec<usize>)> {
    let ds = Dataset::labeled(dir, &m.config.classes)?;
    let images = ds.load_all(&m.config)?;
    let labels = ds
        .labels()
        .into_iter()
        .map(|l| l.expect("labeled dataset"))
        .collect();
    Ok((images, labels))
}

/// Scores `m` (with `params` in place of its weights, if given) on labeled images.
pub(crate) fn eval_model(
    e: &dyn Engine,
    m: &ModelDir,
    params: Option<&HashMap<String, fieldtune_tensor::Tensor>>,
    images: &[Image8],
    labels: &[usize],
    batch: usize,
) -> Result<EvalReport> {
    let bytes = match params {
        Some(p) => m.with_params(p)?,
        None => m.bytes.clone(),
    };
    let mut s = e.load(&bytes, &m.label(""))?;
    Ok(evaluate(s.as_mut(), &m.config, images, labels, batch)?)
}

/// The fieldtune checkout: the current folder or an ancestor (of it or of the executable)
/// holding every path of `markers` (files or folders, relative to the checkout).
pub(crate) fn find_checkout(markers: &[&str]) -> Option<PathBuf> {
    let mut starts = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.into_iter().find_map(|s| {
        s.ancestors()
            .find(|dir| markers.iter().all(|m| dir.join(m).exists()))
            .map(Path::to_path_buf)
    })
}
