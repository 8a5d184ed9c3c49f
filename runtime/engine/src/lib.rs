//! fieldtune-engine: runs ONNX graphs (inference models and compiled train-step graphs) on
//! ONNX Runtime (CPU, CUDA, TensorRT execution providers) or on tract (pure Rust CPU).
//!
//! - [`select_engine`] picks an [`Engine`]: ONNX Runtime when its library can be found and
//!   loaded (see [`discovery`] for the search order), otherwise tract, with one log line saying
//!   which and why.
//! - [`Engine::load`] turns model bytes into a [`Session`]; sessions validate every input
//!   (names, element types, static dims) before running.
//! - [`StatefulSession`] (behind the [`ResidentSession`] seam) keeps training state such as
//!   parameters and optimizer moments between steps: step k's outputs become step k+1's inputs.
//! - [`doctor_report`] tells what is available on this machine.
//!
//! Tensors cross the seam as [`Tensor`]s, which hold `ndarray` arrays of the version `ort` and
//! tract use: ONNX Runtime reads inputs in place and takes owned resident state without a copy;
//! outputs are copied once out of the engine's buffers; tract copies each input into its own
//! aligned tensors (see `ort_backend/values.rs` and `tract_backend.rs`).
//!
//! The engine knows nothing of losses, frames or boards.

#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

pub use fieldtune_tensor::{DType, Tensor, TensorData};

pub mod discovery;
mod doctor;
mod error;
pub mod fieldtune_ops;
mod ort_backend;
mod ort_version;
mod stateful;
mod tract_backend;

pub use discovery::{search_ort, OrtAttempt, OrtLocation, OrtRuntimeInfo, OrtSearch, OrtSource};
pub use doctor::{doctor_report, CandidateStatus, CpuFeatures, DoctorReport};
pub use error::EngineError;
pub use ort_backend::trt_cache::{self, TrtBuild, TrtPath};
pub use ort_backend::{
    provider_settings, GpuOptions, GraphOptimization, OrtEngine, OrtOptions, OrtSession, TrtRefit,
};
pub use ort_version::{ort_lacks, OrtFeature, OrtVersion, ORT_MIN_VERSION, ORT_OLDEST_TESTED};
pub use stateful::{ResidentSession, StatefulSession};
pub use tract_backend::{TractEngine, TractSession, TRACT_VERSION};

/// Which inference engine runs a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// ONNX Runtime through the `ort` crate (dynamically loaded).
    Ort,
    /// tract, pure Rust, CPU only.
    Tract,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Ort => "ONNX Runtime",
            EngineKind::Tract => "tract",
        })
    }
}

/// The user's engine choice (`--engine auto|ort|tract`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EnginePreference {
    /// ONNX Runtime when its library loads, else tract.
    #[default]
    Auto,
    /// ONNX Runtime or an error.
    Ort,
    /// tract.
    Tract,
}

/// An ONNX Runtime execution provider, registered in the order given. A provider that cannot
/// be registered is an error, never a silent fallback.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExecutionProvider {
    /// The default CPU provider.
    Cpu,
    /// NVIDIA CUDA on the given device.
    Cuda {
        /// CUDA device ordinal.
        device: i32,
    },
    /// NVIDIA TensorRT on the given device, optionally caching built engines in a directory.
    TensorRt {
        /// CUDA device ordinal.
        device: i32,
        /// Directory for serialized TensorRT engines (building them takes minutes on Jetson).
        engine_cache: Option<PathBuf>,
    },
}

impl ExecutionProvider {
    /// ONNX Runtime's name for this provider.
    pub fn ort_name(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda { .. } => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt { .. } => "TensorrtExecutionProvider",
        }
    }
}

impl ExecutionProvider {
    /// Parses a command-line chain `cpu|cuda[:N]|tensorrt[:N][,..]` (priority order);
    /// TensorRT providers get `engine_cache`.
    pub fn parse_chain(
        s: &str,
        engine_cache: Option<&std::path::Path>,
    ) -> Result<Vec<ExecutionProvider>, String> {
        s.split(',')
            .map(|item| {
                let item = item.trim();
                let (name, dev) = match item.split_once(':') {
                    Some((n, d)) => (
                        n,
                        d.parse::<i32>()
                            .map_err(|_| format!("'{item}': the device after ':' must be a number"))?,
                    ),
                    None => (item, 0),
                };
                match name {
                    "cpu" => Ok(ExecutionProvider::Cpu),
                    "cuda" => Ok(ExecutionProvider::Cuda { device: dev }),
                    "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt {
                        device: dev,
                        engine_cache: engine_cache.map(|p| p.to_path_buf()),
                    }),
                    _ => Err(format!(
                        "unknown execution provider '{item}' (expected cpu, cuda[:N] or tensorrt[:N])"
                    )),
                }
            })
            .collect()
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Cpu => f.write_str("cpu"),
            ExecutionProvider::Cuda { device } => write!(f, "cuda:{device}"),
            ExecutionProvider::TensorRt { device, .. } => write!(f, "tensorrt:{device}"),
        }
    }
}

/// Name, element type and shape of a model input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoInfo {
    /// The ONNX value name.
    pub name: String,
    /// The element type it is exchanged as ([`Tensor`] carries f32 and i64; outputs of other
    /// float types arrive as f32, of integer and bool types as i64).
    pub dtype: DType,
    /// The ONNX element type as declared (`float`, `int64`, `bool`, `double`, ...).
    pub onnx_type: String,
    /// Declared dims; `None` for dynamic (symbolic or unknown) dims.
    pub shape: Vec<Option<usize>>,
}

impl IoInfo {
    /// Whether values of this tensor cross the API without conversion (f32 or i64).
    pub fn is_native(&self) -> bool {
        matches!(self.onnx_type.as_str(), "float" | "int64")
    }

    /// Whether every dim is static.
    pub fn is_static(&self) -> bool {
        self.shape.iter().all(Option::is_some)
    }
}

/// The most elements a model's input may declare (dynamic dims counted as 1): 2^28, 1 GiB of
/// f32. A model declaring more (e.g. a 60000x60000 image) is refused when loaded, before an
/// engine plans or allocates for it.
pub const MAX_INPUT_ELEMENTS: u128 = 1 << 28;

/// Refuses inputs above [`MAX_INPUT_ELEMENTS`], naming the model and the input.
pub(crate) fn check_input_sizes(
    label: &str,
    engine: EngineKind,
    inputs: &[IoInfo],
) -> Result<(), EngineError> {
    for i in inputs {
        let n = i
            .shape
            .iter()
            .fold(1u128, |n, d| n.saturating_mul(d.unwrap_or(1) as u128));
        if n > MAX_INPUT_ELEMENTS {
            return Err(EngineError::ModelLoad {
                model: label.to_string(),
                engine,
                message: format!(
                    "input '{}' declares {} ({n} elements); inputs are bounded to {MAX_INPUT_ELEMENTS} (2^28) elements",
                    i.name,
                    error::fmt_dims(&i.shape)
                ),
            });
        }
    }
    Ok(())
}

/// The exchange dtype and the name used in [`IoInfo::onnx_type`] for an ONNX element type code.
pub(crate) fn onnx_elem_name(code: i32) -> (&'static str, DType) {
    match code {
        1 => ("float", DType::F32),
        2 => ("uint8", DType::I64),
        3 => ("int8", DType::I64),
        4 => ("uint16", DType::I64),
        5 => ("int16", DType::I64),
        6 => ("int32", DType::I64),
        7 => ("int64", DType::I64),
        8 => ("string", DType::I64),
        9 => ("bool", DType::I64),
        10 => ("float16", DType::F32),
        11 => ("double", DType::F32),
        12 => ("uint32", DType::I64),
        13 => ("uint64", DType::I64),
        16 => ("bfloat16", DType::F32),
        _ => ("unsupported", DType::F32),
    }
}

/// A place that can compile ONNX model bytes into runnable [`Session`]s.
pub trait Engine: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;
    /// One line for logs: engine, version, library and providers.
    fn describe(&self) -> String;
    /// Compiles `model` (ONNX protobuf bytes); `label` names it in errors and logs.
    fn load(&self, model: &[u8], label: &str) -> Result<Box<dyn Session>, EngineError>;

    /// Whether sessions of this engine run the fieldtune-domain ops of tuned train steps
    /// (`fieldtune_ops`): ONNX Runtime on its CPU provider. Graphs for other engines and
    /// providers keep standard ops.
    fn runs_fieldtune_ops(&self) -> bool {
        false
    }

    /// How the engines of the last session loaded on the TensorRT provider came to be
    /// (built, refitted, cached), taken once; `None` for other engines and providers.
    fn take_trt_build(&self) -> Option<TrtBuild> {
        None
    }

    /// Reads an ONNX file and loads it, labelled with the file name.
    fn load_file(&self, path: &std::path::Path) -> Result<Box<dyn Session>, EngineError> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::ModelFile {
            path: path.to_path_buf(),
            source,
        })?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.load(&bytes, &label)
    }
}

/// A compiled model, ready to run. Not shared between threads: one session per thread.
pub trait Session: Send {
    /// The label given at load time.
    fn label(&self) -> &str;
    /// Graph inputs the caller must feed (initializers excluded), in graph order.
    fn inputs(&self) -> &[IoInfo];
    /// Graph outputs, in graph order.
    fn outputs(&self) -> &[IoInfo];
    /// The execution provider this graph really got, e.g. `CPUExecutionProvider`,
    /// `CUDAExecutionProvider` or `tract-cpu`.
    fn execution_provider(&self) -> &str;
    /// Runs the graph on named inputs (every input exactly once) and returns every output,
    /// named, in graph order. Inputs are validated first.
    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError>;

    /// Runs and returns only the outputs named in `fetch`, in that order.
    fn run_fetch(
        &mut self,
        inputs: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError> {
        for name in fetch {
            if !self.outputs().iter().any(|o| o.name == *name) {
                return Err(unknown_output(self.label(), self.outputs(), name));
            }
        }
        let all = self.run(inputs)?;
        pick_outputs(self.label(), self.outputs(), all, fetch)
    }

    /// Turns this session into one that keeps `initial_state` resident between steps, feeding
    /// each `(output, input)` loop's output back as the input's next value. Backends that copy
    /// return a [`StatefulSession`]; a GPU backend may keep the state in device memory.
    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError>;
}

/// Takes the outputs named in `fetch` (in that order) out of a full result.
pub(crate) fn pick_outputs(
    model: &str,
    declared: &[IoInfo],
    all: Vec<(String, Tensor)>,
    fetch: &[&str],
) -> Result<Vec<Tensor>, EngineError> {
    let mut all: HashMap<String, Tensor> = all.into_iter().collect();
    let mut out: Vec<Tensor> = Vec::with_capacity(fetch.len());
    for (i, name) in fetch.iter().enumerate() {
        let t = match all.remove(*name) {
            Some(t) => t,
            // Fetched twice: copy the first.
            None => match fetch[..i].iter().position(|n| n == name) {
                Some(j) => out[j].clone(),
                None => return Err(unknown_output(model, declared, name)),
            },
        };
        out.push(t);
    }
    Ok(out)
}

pub(crate) fn unknown_output(model: &str, outputs: &[IoInfo], name: &str) -> EngineError {
    EngineError::UnknownOutput {
        model: model.to_string(),
        tensor: name.to_string(),
        expected: outputs.iter().map(|o| o.name.clone()).collect(),
    }
}

/// Checks one tensor against a declared input.
pub(crate) fn check_tensor(model: &str, info: &IoInfo, t: &Tensor) -> Result<(), EngineError> {
    if !info.is_native() {
        return Err(EngineError::UnsupportedDType {
            model: model.to_string(),
            tensor: info.name.clone(),
            dtype: info.onnx_type.clone(),
        });
    }
    if t.dtype() != info.dtype {
        return Err(EngineError::DTypeMismatch {
            model: model.to_string(),
            tensor: info.name.clone(),
            expected: info.dtype,
            got: t.dtype(),
        });
    }
    let shape = t.shape();
    let ok = shape.len() == info.shape.len()
        && info
            .shape
            .iter()
            .zip(shape)
            .all(|(d, &g)| d.is_none_or(|d| d == g));
    if !ok {
        return Err(EngineError::ShapeMismatch {
            model: model.to_string(),
            tensor: info.name.clone(),
            expected: info.shape.clone(),
            got: shape.to_vec(),
        });
    }
    Ok(())
}

/// Validates named inputs against the declared ones and returns them in declared order.
pub(crate) fn order_inputs<'a>(
    model: &str,
    declared: &[IoInfo],
    given: &[(&str, &'a Tensor)],
) -> Result<Vec<&'a Tensor>, EngineError> {
    let mut slots: Vec<Option<&'a Tensor>> = vec![None; declared.len()];
    let mut seen = HashSet::new();
    for (name, t) in given {
        if !seen.insert(*name) {
            return Err(EngineError::DuplicateInput {
                model: model.to_string(),
                tensor: name.to_string(),
            });
        }
        let Some(ix) = declared.iter().position(|d| d.name == *name) else {
            return Err(EngineError::UnknownInput {
                model: model.to_string(),
                tensor: name.to_string(),
                expected: declared.iter().map(|d| d.name.clone()).collect(),
            });
        };
        check_tensor(model, &declared[ix], t)?;
        slots[ix] = Some(t);
    }
    slots
        .into_iter()
        .zip(declared)
        .map(|(s, d)| {
            s.ok_or_else(|| EngineError::MissingInput {
                model: model.to_string(),
                tensor: d.name.clone(),
                shape: d.shape.clone(),
            })
        })
        .collect()
}

/// Runs `f`, turning a panic inside an engine into an error (engines must not take the
/// process down on a bad model).
pub(crate) fn catch_panic<T>(
    f: impl FnOnce() -> Result<T, EngineError>,
    on_panic: impl FnOnce(String) -> EngineError,
) -> Result<T, EngineError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(on_panic(format!("engine panicked: {msg}")))
        }
    }
}

/// Picks the engine: `Ort` and `Tract` as asked; `Auto` = ONNX Runtime when its library loads,
/// else tract. Logs which engine runs and why at `debug` (callers print their own line, once);
/// an ONNX Runtime that is found but fails to load is a `warn`.
///
/// With `Auto`, a library named explicitly (`ort_opts.lib` or `ORT_DYLIB_PATH`) that fails to
/// load is an error, not a fallback, and so is a requested execution provider that the loaded
/// ONNX Runtime lacks. tract takes its thread count from `ort_opts.intra_threads` too (unset or
/// 0: one per core, as ONNX Runtime).
pub fn select_engine(
    pref: EnginePreference,
    ort_opts: OrtOptions,
) -> Result<Box<dyn Engine>, EngineError> {
    let tract_threads = ort_opts.intra_threads.unwrap_or(0);
    match pref {
        EnginePreference::Tract => {
            let e = TractEngine::with_threads(tract_threads);
            tracing::debug!("engine: {} (requested)", e.describe());
            Ok(Box::new(e))
        }
        EnginePreference::Ort => {
            let e = OrtEngine::new(ort_opts)?;
            tracing::debug!("engine: {} (requested)", e.describe());
            Ok(Box::new(e))
        }
        EnginePreference::Auto => {
            let explicit = ort_opts.lib.is_some()
                || std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty());
            match OrtEngine::new(ort_opts) {
                Ok(e) => {
                    tracing::debug!("engine: {} (found ONNX Runtime)", e.describe());
                    Ok(Box::new(e))
                }
                Err(EngineError::OrtNotFound { searched }) => {
                    let e = TractEngine::with_threads(tract_threads);
                    tracing::debug!(
                        "ONNX Runtime not found (looked in: {}); using {}",
                        searched.join(", "),
                        e.describe()
                    );
                    Ok(Box::new(e))
                }
                Err(EngineError::OrtLoad { path, message }) if !explicit => {
                    let e = TractEngine::with_threads(tract_threads);
                    tracing::warn!(
                        "ONNX Runtime at {} could not be loaded ({message}); using {}",
                        path.display(),
                        e.describe()
                    );
                    Ok(Box::new(e))
                }
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionProvider;

    #[test]
    fn provider_chains() {
        let cache = std::path::Path::new("/tmp/trt");
        assert_eq!(
            ExecutionProvider::parse_chain("tensorrt:1,cuda,cpu", Some(cache)),
            Ok(vec![
                ExecutionProvider::TensorRt {
                    device: 1,
                    engine_cache: Some(cache.to_path_buf())
                },
                ExecutionProvider::Cuda { device: 0 },
                ExecutionProvider::Cpu,
            ])
        );
        assert!(ExecutionProvider::parse_chain("cuda:x", None).is_err());
        assert!(ExecutionProvider::parse_chain("rocm", None)
            .unwrap_err()
            .contains("rocm"));
    }
}
