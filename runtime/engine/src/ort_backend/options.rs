//! ONNX Runtime session options and execution providers: what [`OrtOptions`] asks for and
//! how each provider is checked and registered.

use std::path::PathBuf;

use ort::ep::{self, ExecutionProvider as _, ExecutionProviderDispatch};
use ort::session::builder::GraphOptimizationLevel;

use crate::discovery::OrtRuntime;
use crate::ExecutionProvider;

use super::values::ort_msg;

/// How much ONNX Runtime rewrites the graph before running it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GraphOptimization {
    /// No rewriting.
    Disable,
    /// Constant folding, redundant node removal.
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout optimizations (ORT's default).
    #[default]
    All,
}

impl GraphOptimization {
    pub(super) fn to_ort(self) -> GraphOptimizationLevel {
        match self {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Options of [`OrtEngine`](crate::OrtEngine).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrtOptions {
    /// An explicit library (the CLI's `--ort-lib`): a file or a directory holding it.
    pub lib: Option<PathBuf>,
    /// Execution providers in priority order; empty means CPU only. Each must register or
    /// loading fails.
    pub providers: Vec<ExecutionProvider>,
    /// Threads inside one operator; `None` lets ONNX Runtime decide (one per physical core).
    pub intra_threads: Option<usize>,
    /// Graph optimization level.
    pub graph_optimization: GraphOptimization,
    /// Turn off the CPU provider's memory arena (ONNX Runtime's default keeps it on: faster
    /// steady-state allocation, but freed activations stay reserved by the process).
    pub no_cpu_arena: bool,
    /// Turn on ONNX Runtime's memory pattern: after the first run, one block sized for every
    /// intermediate tensor's planned slot. Off by default (ONNX Runtime's default is on):
    /// on a train step the pattern keeps the whole activation plan reserved, a higher peak at
    /// the same speed (figures in docs/BENCHMARKS.md).
    pub memory_pattern: bool,
}

/// Execution providers compiled into the loaded ONNX Runtime that fieldtune can use: CPU,
/// CUDA and TensorRT, through `GetAvailableProviders` (in every supported version; the
/// device enumeration of ONNX Runtime 1.22+ is not used, so that older libraries load).
pub(crate) fn available_providers(_rt: &OrtRuntime) -> Vec<String> {
    let mut out = vec!["CPUExecutionProvider".to_string()];
    if ep::CUDA::is_available().unwrap_or(false) {
        out.push("CUDAExecutionProvider".to_string());
    }
    if ep::TensorRT::is_available().unwrap_or(false) {
        out.push("TensorrtExecutionProvider".to_string());
    }
    out
}

pub(super) fn provider_available(p: &ExecutionProvider) -> Result<bool, String> {
    let r = match p {
        ExecutionProvider::Cpu => Ok(true),
        ExecutionProvider::Cuda { .. } => ep::CUDA::is_available(),
        ExecutionProvider::TensorRt { .. } => ep::TensorRT::is_available(),
    };
    r.map_err(|e| ort_msg(&e))
}

pub(super) fn dispatch(p: &ExecutionProvider, cpu_arena: bool) -> ExecutionProviderDispatch {
    match p {
        ExecutionProvider::Cpu => ep::CPU::default().with_arena_allocator(cpu_arena).build(),
        ExecutionProvider::Cuda { device } => ep::CUDA::default().with_device_id(*device).build(),
        ExecutionProvider::TensorRt {
            device,
            engine_cache,
        } => {
            let mut trt = ep::TensorRT::default().with_device_id(*device);
            if let Some(dir) = engine_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            trt.build()
        }
    }
    .error_on_failure()
}
