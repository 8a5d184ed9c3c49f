//! One model loaded into ONNX Runtime: building the session (options, providers, profiling)
//! and running it with borrowed inputs.

use std::sync::atomic::{AtomicBool, Ordering};

use ort::session::{Session as OrtRawSession, SessionInputValue};
use ort::value::{TensorElementType, ValueType};

use crate::discovery::OrtRuntime;
use crate::{order_inputs, DType, EngineError, EngineKind, ExecutionProvider, IoInfo, Tensor};

use super::options::{dispatch, OrtOptions};
use super::trt_cache::{self, CacheSnapshot, TrtBuild};
use super::values::{input_ref, ort_msg, to_tensor};

/// One TensorRT session load at a time in this process: writing the refit model, removing
/// the refitted engines and building the session go together.
static TRT_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Set once a session carrying the fieldtune op domain has been built in this process.
static DOMAIN_REGISTERED: AtomicBool = AtomicBool::new(false);
/// Held by the session builds that run before [`DOMAIN_REGISTERED`] is set.
static DOMAIN_FIRST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `commit` (a session build carrying the fieldtune op domain) so that no two builds
/// race on the first registration of the domain.
///
/// ONNX Runtime adds a custom-op domain to ONNX's process-wide domain map when the first
/// session carrying it is built, with an unlocked check-then-insert: two sessions built at
/// once in a fresh process can both insert, and the second fails with "Trying to add a
/// domain to DomainToVersion map, but the domain is already exist". Builds are serialised
/// until one has succeeded; after that they run freely.
fn commit_registering_domain<T, E>(commit: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    if DOMAIN_REGISTERED.load(Ordering::Acquire) {
        return commit();
    }
    let _first = DOMAIN_FIRST.lock().unwrap_or_else(|p| p.into_inner());
    let built = commit();
    if built.is_ok() {
        DOMAIN_REGISTERED.store(true, Ordering::Release);
    }
    built
}

/// A model loaded into ONNX Runtime.
pub struct OrtSession {
    pub(super) session: OrtRawSession,
    pub(super) label: String,
    pub(super) inputs: Vec<IoInfo>,
    pub(super) outputs: Vec<IoInfo>,
    pub(super) provider: String,
    pub(super) providers: Vec<String>,
    /// CUDA device of the first provider (CUDA or TensorRT): resident state lives there.
    pub(super) cuda_device: Option<i32>,
    /// With the TensorRT provider and an engine cache: how its engines came to be.
    pub(super) trt_build: Option<TrtBuild>,
}

impl OrtSession {
    /// Builds a session with `opts` and `providers` (in priority order) on the loaded library.
    pub(super) fn build(
        runtime: &OrtRuntime,
        opts: &OrtOptions,
        providers: &[ExecutionProvider],
        model: &[u8],
        label: &str,
    ) -> Result<OrtSession, EngineError> {
        let load_err = |message: String| EngineError::ModelLoad {
            model: label.to_string(),
            engine: EngineKind::Ort,
            message,
        };
        let mut b = OrtRawSession::builder(&runtime.env).map_err(|e| load_err(ort_msg(&e)))?;
        b = b
            .with_optimization_level(opts.graph_optimization.to_ort())
            .map_err(|e| load_err(ort_msg(&e)))?;
        if let Some(n) = opts.intra_threads {
            b = b.with_intra_threads(n).map_err(|e| load_err(ort_msg(&e)))?;
        }
        b = b
            .with_memory_pattern(opts.memory_pattern)
            .map_err(|e| load_err(ort_msg(&e)))?;
        if opts.no_intra_spinning {
            b = b
                .with_intra_op_spinning(false)
                .map_err(|e| load_err(ort_msg(&e)))?;
        }
        // The fieldtune-domain ops of tuned train steps (CPU kernels; graphs for GPU
        // providers keep standard ops, so registering them costs those sessions nothing).
        // Their kernels split their work for the session's intra-op threads (ONNX Runtime's
        // default: one per core).
        let threads = opts
            .intra_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let ops = crate::fieldtune_ops::ort::domain(threads).map_err(|e| load_err(ort_msg(&e)))?;
        b = b.with_operators(ops).map_err(|e| load_err(ort_msg(&e)))?;
        // Per-op profiling (ONNX Runtime writes PREFIX_<date>.json when the session ends):
        // `FIELDTUNE_ORT_PROFILE=PREFIX`; scripts/bench/ort_profile.py sums it by op type.
        if let Some(prefix) = std::env::var_os("FIELDTUNE_ORT_PROFILE") {
            b = b
                .with_profiling(
                    std::path::PathBuf::from(prefix).with_extension(label.replace(['/', ' '], "_")),
                )
                .map_err(|e| load_err(ort_msg(&e)))?;
        }
        for p in providers {
            b = b
                .with_execution_providers([dispatch(p, !opts.no_cpu_arena, &opts.gpu)])
                .map_err(|e| EngineError::ExecutionProvider {
                    provider: p.ort_name().to_string(),
                    model: Some(label.to_string()),
                    message: ort_msg(&e),
                })?;
        }
        let trt_cache = providers.iter().find_map(|p| match p {
            ExecutionProvider::TensorRt {
                engine_cache: Some(dir),
                ..
            } => Some(dir.clone()),
            _ => None,
        });
        let (session, trt_build) = match trt_cache {
            None => (
                commit_registering_domain(|| b.commit_from_memory(model))
                    .map_err(|e| load_err(ort_msg(&e)))?,
                None,
            ),
            Some(cache) => {
                let _one = TRT_LOAD.lock().unwrap_or_else(|p| p.into_inner());
                let refit = opts.gpu.trt_refit.as_ref();
                let fs_err = |what: &str, e: std::io::Error| load_err(format!("{what}: {e}"));
                let before = CacheSnapshot::take(&cache);
                let t0 = std::time::Instant::now();
                let session = match refit {
                    // The provider refits the stripped engine from the file the session was
                    // made from (looked up by name in `trt_onnx_model_folder_path`).
                    Some(r) => {
                        let file = r.onnx_dir.join(&r.model_file);
                        trt_cache::write_model(&file, model)
                            .map_err(|e| fs_err(&format!("writing {}", file.display()), e))?;
                        trt_cache::remove_refitted(&cache).map_err(|e| {
                            fs_err(
                                &format!("clearing refitted engines in {}", cache.display()),
                                e,
                            )
                        })?;
                        commit_registering_domain(|| b.commit_from_file(&file))
                    }
                    None => commit_registering_domain(|| b.commit_from_memory(model)),
                }
                .map_err(|e| load_err(ort_msg(&e)))?;
                let after = CacheSnapshot::take(&cache);
                let build = TrtBuild {
                    label: label.to_string(),
                    path: trt_cache::classify(&before, &after, refit.is_some()),
                    ms: t0.elapsed().as_secs_f64() * 1e3,
                    refit: refit.is_some(),
                };
                tracing::info!(
                    model = label,
                    "TensorRT engine: {} in {:.0} ms (cache {})",
                    build.path,
                    build.ms,
                    cache.display()
                );
                (session, Some(build))
            }
        };
        let inputs: Vec<IoInfo> = session
            .inputs()
            .iter()
            .map(|o| io_info(o.name(), o.dtype()))
            .collect();
        crate::check_input_sizes(label, EngineKind::Ort, &inputs)?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| io_info(o.name(), o.dtype()))
            .collect();
        let names: Vec<&str> = providers.iter().map(ExecutionProvider::ort_name).collect();
        tracing::debug!(
            model = label,
            "ONNX Runtime session with {}",
            names.join(" > ")
        );
        Ok(OrtSession {
            session,
            label: label.to_string(),
            inputs,
            outputs,
            provider: providers[0].ort_name().to_string(),
            providers: names.into_iter().map(str::to_string).collect(),
            cuda_device: match providers[0] {
                ExecutionProvider::Cuda { device } | ExecutionProvider::TensorRt { device, .. } => {
                    Some(device)
                }
                ExecutionProvider::Cpu => None,
            },
            trt_build,
        })
    }

    /// With the TensorRT provider and an engine cache: whether its engines were built,
    /// refitted or loaded, and how long the load took.
    pub fn trt_build(&self) -> Option<&TrtBuild> {
        self.trt_build.as_ref()
    }

    /// Every execution provider registered for this session, in priority order (ONNX Runtime
    /// places nodes a provider cannot run on the next one, CPU last).
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    fn run_err(&self, message: String) -> EngineError {
        EngineError::Run {
            model: self.label.clone(),
            engine: EngineKind::Ort,
            message,
        }
    }

    /// Runs with inputs borrowed in place (no copy in); outputs are copied to host tensors.
    pub(super) fn run_inner(
        &mut self,
        given: &[(&str, &Tensor)],
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let ordered = order_inputs(&self.label, &self.inputs, given)?;
        let mut feeds: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(ordered.len());
        for (info, t) in self.inputs.iter().zip(&ordered) {
            let v =
                input_ref(t).map_err(|e| self.run_err(format!("input '{}': {e}", info.name)))?;
            feeds.push((info.name.as_str(), v));
        }
        let label = self.label.clone();
        let outs = self.session.run(feeds).map_err(|e| EngineError::Run {
            model: label.clone(),
            engine: EngineKind::Ort,
            message: ort_msg(&e),
        })?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for info in &self.outputs {
            let v = outs.get(&info.name).ok_or_else(|| EngineError::Run {
                model: label.clone(),
                engine: EngineKind::Ort,
                message: format!("output '{}' missing from the results", info.name),
            })?;
            result.push((info.name.clone(), to_tensor(&label, &info.name, v)?));
        }
        Ok(result)
    }
}

fn elem_name(ty: TensorElementType) -> (&'static str, DType) {
    use TensorElementType as T;
    let code = match ty {
        T::Float32 => 1,
        T::Uint8 => 2,
        T::Int8 => 3,
        T::Uint16 => 4,
        T::Int16 => 5,
        T::Int32 => 6,
        T::Int64 => 7,
        T::String => 8,
        T::Bool => 9,
        T::Float16 => 10,
        T::Float64 => 11,
        T::Uint32 => 12,
        T::Uint64 => 13,
        T::Bfloat16 => 16,
        _ => 0,
    };
    crate::onnx_elem_name(code)
}

fn io_info(name: &str, ty: &ValueType) -> IoInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let (onnx_type, dtype) = elem_name(*ty);
            IoInfo {
                name: name.to_string(),
                dtype,
                onnx_type: onnx_type.to_string(),
                shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
            }
        }
        ValueType::Sequence(_) => other_io(name, "sequence"),
        ValueType::Map { .. } => other_io(name, "map"),
        ValueType::Optional(_) => other_io(name, "optional"),
    }
}

fn other_io(name: &str, kind: &str) -> IoInfo {
    IoInfo {
        name: name.to_string(),
        dtype: DType::F32,
        onnx_type: kind.to_string(),
        shape: vec![],
    }
}
