//! ONNX Runtime session options and execution providers: what [`OrtOptions`] asks for and
//! how each provider is checked and registered.

use std::path::PathBuf;

use ort::ep::{
    self, ArbitrarilyConfigurableExecutionProvider as _, ExecutionProvider as _,
    ExecutionProviderDispatch,
};
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
    /// Intra-op threads sleep when they run out of work instead of spinning
    /// (`session.intra_op.allow_spinning = 0`). Off by default (ONNX Runtime spins): on an
    /// idle host spinning saves the wake-up between ops, on a loaded one (other processes on
    /// the same cores) the spinning threads take the cores the work needs (docs/BENCHMARKS.md
    /// §3 measures both).
    pub no_intra_spinning: bool,
    /// Options of the CUDA and TensorRT providers; CPU sessions ignore them.
    pub gpu: GpuOptions,
}

/// Options of the GPU providers ([`provider_settings`] turns them into ONNX Runtime's
/// provider option keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// The CUDA provider's memory arena limit in bytes (`gpu_mem_limit`, with
    /// `arena_extend_strategy = kSameAsRequested` so that the arena does not round a request
    /// past the limit); `None`: the library's default (no limit). It bounds the arena only:
    /// cuDNN/cuBLAS workspaces and TensorRT's own engine memory come on top.
    pub cuda_mem_limit: Option<usize>,
    /// TensorRT builds FP16 engines (`trt_fp16_enable`).
    pub trt_fp16: bool,
    /// Weight-stripped, refittable TensorRT engines (needs
    /// [`OrtFeature::TrtWeightStrippedEngine`](crate::OrtFeature) and an engine cache).
    pub trt_refit: Option<TrtRefit>,
}

/// Where a weight-stripped TensorRT engine takes its weights from: each load writes the model
/// to `onnx_dir/model_file` and builds the session from that file, so that ONNX Runtime's
/// TensorRT provider refits the cached stripped engine from it
/// (`trt_onnx_model_folder_path`; the provider looks the file up by the session's model file
/// name, which also keys its engine cache: one name per graph, whatever the weights).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrtRefit {
    /// The folder handed to `trt_onnx_model_folder_path`.
    pub onnx_dir: PathBuf,
    /// The model's file name in it (e.g. `mnist-cnn.onnx`).
    pub model_file: String,
}

impl GpuOptions {
    /// `gpu_memory_mb` of a config (MiB; 0: no limit) as a CUDA arena limit.
    pub fn with_cuda_mem_limit_mb(mut self, mb: u64) -> Self {
        self.cuda_mem_limit = (mb > 0).then(|| (mb as usize).saturating_mul(1 << 20));
        self
    }
}

/// The ONNX Runtime provider options fieldtune sets for `p` (key, value), in the order they
/// are applied; CPU options go through `ort`'s CPU builder and are not listed. A pure
/// function, so the settings a GPU session would get are tested without a GPU.
pub fn provider_settings(p: &ExecutionProvider, gpu: &GpuOptions) -> Vec<(&'static str, String)> {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    match p {
        ExecutionProvider::Cpu => Vec::new(),
        ExecutionProvider::Cuda { device } => {
            let mut v = vec![("device_id", device.to_string())];
            if let Some(limit) = gpu.cuda_mem_limit {
                v.push(("gpu_mem_limit", limit.to_string()));
                v.push(("arena_extend_strategy", "kSameAsRequested".to_string()));
            }
            v
        }
        ExecutionProvider::TensorRt {
            device,
            engine_cache,
        } => {
            let mut v = vec![("device_id", device.to_string())];
            if let Some(dir) = engine_cache {
                let dir = dir.display().to_string();
                v.push(("trt_engine_cache_enable", flag(true)));
                v.push(("trt_engine_cache_path", dir.clone()));
                v.push(("trt_timing_cache_enable", flag(true)));
                v.push(("trt_timing_cache_path", dir));
            }
            if gpu.trt_fp16 {
                v.push(("trt_fp16_enable", flag(true)));
            }
            // A stripped engine without a cache would be rebuilt and refitted at every load:
            // refit only with a cache.
            if let (Some(r), Some(_)) = (&gpu.trt_refit, engine_cache) {
                v.push(("trt_weight_stripped_engine_enable", flag(true)));
                v.push((
                    "trt_onnx_model_folder_path",
                    r.onnx_dir.display().to_string(),
                ));
            }
            v
        }
    }
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

pub(super) fn dispatch(
    p: &ExecutionProvider,
    cpu_arena: bool,
    gpu: &GpuOptions,
) -> ExecutionProviderDispatch {
    let settings = provider_settings(p, gpu);
    match p {
        ExecutionProvider::Cpu => ep::CPU::default().with_arena_allocator(cpu_arena).build(),
        ExecutionProvider::Cuda { .. } => settings
            .into_iter()
            .fold(ep::CUDA::default(), |e, (k, v)| {
                e.with_arbitrary_config(k, v)
            })
            .build(),
        ExecutionProvider::TensorRt { .. } => settings
            .into_iter()
            .fold(ep::TensorRT::default(), |e, (k, v)| {
                e.with_arbitrary_config(k, v)
            })
            .build(),
    }
    .error_on_failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(&'static str, String)]) -> Vec<&'static str> {
        v.iter().map(|(k, _)| *k).collect()
    }

    fn get<'a>(v: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        v.iter().find(|(k, _)| *k == key).map(|(_, x)| x.as_str())
    }

    #[test]
    fn gpu_memory_reaches_the_cuda_arena_limit() {
        let gpu = GpuOptions::default().with_cuda_mem_limit_mb(512);
        let s = provider_settings(&ExecutionProvider::Cuda { device: 1 }, &gpu);
        assert_eq!(get(&s, "device_id"), Some("1"));
        assert_eq!(get(&s, "gpu_mem_limit"), Some("536870912"));
        assert_eq!(get(&s, "arena_extend_strategy"), Some("kSameAsRequested"));
        // 0 MiB: no limit, the library's default.
        let none = GpuOptions::default().with_cuda_mem_limit_mb(0);
        assert_eq!(none.cuda_mem_limit, None);
        let s = provider_settings(&ExecutionProvider::Cuda { device: 0 }, &none);
        assert_eq!(keys(&s), ["device_id"]);
        // CPU sessions take none of it; TensorRT has no arena limit of its own.
        assert!(provider_settings(&ExecutionProvider::Cpu, &gpu).is_empty());
        let trt = ExecutionProvider::TensorRt {
            device: 0,
            engine_cache: None,
        };
        assert_eq!(get(&provider_settings(&trt, &gpu), "gpu_mem_limit"), None);
    }

    #[test]
    fn tensorrt_refit_and_fp16_options() {
        let cache = ExecutionProvider::TensorRt {
            device: 0,
            engine_cache: Some("/var/cache/trt".into()),
        };
        let gpu = GpuOptions {
            trt_fp16: true,
            trt_refit: Some(TrtRefit {
                onnx_dir: "/var/cache/trt/onnx".into(),
                model_file: "m.onnx".into(),
            }),
            ..Default::default()
        };
        let s = provider_settings(&cache, &gpu);
        assert_eq!(get(&s, "trt_engine_cache_enable"), Some("1"));
        assert_eq!(get(&s, "trt_engine_cache_path"), Some("/var/cache/trt"));
        assert_eq!(get(&s, "trt_fp16_enable"), Some("1"));
        assert_eq!(get(&s, "trt_weight_stripped_engine_enable"), Some("1"));
        assert_eq!(
            get(&s, "trt_onnx_model_folder_path"),
            Some("/var/cache/trt/onnx")
        );
        // Without a cache there is nothing to refit: no stripped engines.
        let no_cache = ExecutionProvider::TensorRt {
            device: 0,
            engine_cache: None,
        };
        let s = provider_settings(&no_cache, &gpu);
        assert_eq!(get(&s, "trt_weight_stripped_engine_enable"), None);
        assert_eq!(get(&s, "trt_engine_cache_enable"), None);
        // Defaults: FP32 engines, not stripped.
        let s = provider_settings(&cache, &GpuOptions::default());
        assert_eq!(get(&s, "trt_fp16_enable"), None);
        assert_eq!(get(&s, "trt_weight_stripped_engine_enable"), None);
    }
}
