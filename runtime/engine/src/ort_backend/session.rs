//! One model loaded into ONNX Runtime: building the session (options, providers, profiling)
//! and running it with borrowed inputs.

use ort::session::{Session as OrtRawSession, SessionInputValue};
use ort::value::{TensorElementType, ValueType};

use crate::discovery::OrtRuntime;
use crate::{order_inputs, DType, EngineError, EngineKind, ExecutionProvider, IoInfo, Tensor};

use super::options::{dispatch, OrtOptions};
use super::values::{input_ref, ort_msg, to_tensor};

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
                .with_execution_providers([dispatch(p, !opts.no_cpu_arena)])
                .map_err(|e| EngineError::ExecutionProvider {
                    provider: p.ort_name().to_string(),
                    model: Some(label.to_string()),
                    message: ort_msg(&e),
                })?;
        }
        let session = b
            .commit_from_memory(model)
            .map_err(|e| load_err(ort_msg(&e)))?;
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
        })
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
