//! The ONNX Runtime backend (through `ort`, library loaded at run time).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ort::ep::{self, ExecutionProvider as _, ExecutionProviderDispatch};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtRawSession, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::discovery::{self, OrtRuntime};
use crate::{
    catch_panic, order_inputs, DType, Engine, EngineError, EngineKind, ExecutionProvider, IoInfo,
    ResidentSession, Session, StatefulSession, Tensor, TensorData,
};

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
    fn to_ort(self) -> GraphOptimizationLevel {
        match self {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Options of [`OrtEngine`].
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
    /// on a train step the pattern keeps the whole activation plan reserved (MobileNetV2,
    /// 8/8/8 UDA step: 2,571 MiB peak with it, 1,579 MiB without, at the same speed).
    pub memory_pattern: bool,
}

/// ONNX Runtime as an [`Engine`].
pub struct OrtEngine {
    runtime: Arc<OrtRuntime>,
    opts: OrtOptions,
    providers: Vec<ExecutionProvider>,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("library", &self.runtime.info.location)
            .field("version", &self.runtime.info.version)
            .field("providers", &self.providers)
            .finish()
    }
}

/// Execution providers compiled into the loaded ONNX Runtime, as far as fieldtune can ask:
/// CPU, CUDA and TensorRT through `GetAvailableProviders`, plus the providers of the
/// devices ONNX Runtime discovered.
pub(crate) fn available_providers(rt: &OrtRuntime) -> Vec<String> {
    let mut out = vec!["CPUExecutionProvider".to_string()];
    if ep::CUDA::is_available().unwrap_or(false) {
        out.push("CUDAExecutionProvider".to_string());
    }
    if ep::TensorRT::is_available().unwrap_or(false) {
        out.push("TensorrtExecutionProvider".to_string());
    }
    for dev in rt.env.devices() {
        if let Ok(name) = dev.ep() {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

fn provider_available(p: &ExecutionProvider) -> Result<bool, String> {
    let r = match p {
        ExecutionProvider::Cpu => Ok(true),
        ExecutionProvider::Cuda { .. } => ep::CUDA::is_available(),
        ExecutionProvider::TensorRt { .. } => ep::TensorRT::is_available(),
    };
    r.map_err(|e| ort_msg(&e))
}

fn dispatch(p: &ExecutionProvider, cpu_arena: bool) -> ExecutionProviderDispatch {
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

impl OrtEngine {
    /// Finds and loads ONNX Runtime (once per process) and checks that every requested
    /// execution provider is compiled into it.
    pub fn new(opts: OrtOptions) -> Result<Self, EngineError> {
        let runtime = discovery::ort_runtime(opts.lib.as_deref())?;
        let providers = if opts.providers.is_empty() {
            vec![ExecutionProvider::Cpu]
        } else {
            opts.providers.clone()
        };
        for p in &providers {
            let ok = provider_available(p).map_err(|message| EngineError::ExecutionProvider {
                provider: p.ort_name().to_string(),
                model: None,
                message,
            })?;
            if !ok {
                return Err(EngineError::ExecutionProvider {
                    provider: p.ort_name().to_string(),
                    model: None,
                    message: format!(
                        "not compiled into ONNX Runtime {} at {} (available: {}); for CUDA/TensorRT run scripts/install-ort.sh --gpu",
                        runtime.info.version,
                        runtime.info.location.path.display(),
                        available_providers(&runtime).join(", ")
                    ),
                });
            }
        }
        Ok(OrtEngine {
            runtime,
            opts,
            providers,
        })
    }

    /// The loaded library, its version and how it was found.
    pub fn runtime_info(&self) -> &discovery::OrtRuntimeInfo {
        &self.runtime.info
    }

    /// Execution providers the loaded library has.
    pub fn available_providers(&self) -> Vec<String> {
        available_providers(&self.runtime)
    }

    fn build_session(&self, model: &[u8], label: &str) -> Result<OrtSession, EngineError> {
        let load_err = |message: String| EngineError::ModelLoad {
            model: label.to_string(),
            engine: EngineKind::Ort,
            message,
        };
        let mut b = OrtRawSession::builder(&self.runtime.env).map_err(|e| load_err(ort_msg(&e)))?;
        b = b
            .with_optimization_level(self.opts.graph_optimization.to_ort())
            .map_err(|e| load_err(ort_msg(&e)))?;
        if let Some(n) = self.opts.intra_threads {
            b = b.with_intra_threads(n).map_err(|e| load_err(ort_msg(&e)))?;
        }
        b = b
            .with_memory_pattern(self.opts.memory_pattern)
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
        for p in &self.providers {
            b = b
                .with_execution_providers([dispatch(p, !self.opts.no_cpu_arena)])
                .map_err(|e| EngineError::ExecutionProvider {
                    provider: p.ort_name().to_string(),
                    model: Some(label.to_string()),
                    message: ort_msg(&e),
                })?;
        }
        let session = b
            .commit_from_memory(model)
            .map_err(|e| load_err(ort_msg(&e)))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| io_info(o.name(), o.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| io_info(o.name(), o.dtype()))
            .collect();
        let names: Vec<&str> = self
            .providers
            .iter()
            .map(ExecutionProvider::ort_name)
            .collect();
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
            provider: self.providers[0].ort_name().to_string(),
            providers: names.into_iter().map(str::to_string).collect(),
            cuda_device: match self.providers[0] {
                ExecutionProvider::Cuda { device } | ExecutionProvider::TensorRt { device, .. } => {
                    Some(device)
                }
                ExecutionProvider::Cpu => None,
            },
        })
    }
}

impl Engine for OrtEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self
            .providers
            .iter()
            .map(ExecutionProvider::ort_name)
            .collect();
        format!(
            "ONNX Runtime {} from {} ({}), providers {}",
            self.runtime.info.version,
            self.runtime.info.location.path.display(),
            self.runtime.info.location.source,
            names.join(" > ")
        )
    }

    fn load(&self, model: &[u8], label: &str) -> Result<Box<dyn Session>, EngineError> {
        let s = catch_panic(
            || self.build_session(model, label),
            |message| EngineError::ModelLoad {
                model: label.to_string(),
                engine: EngineKind::Ort,
                message,
            },
        )?;
        Ok(Box::new(s))
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

/// A model loaded into ONNX Runtime.
pub struct OrtSession {
    session: OrtRawSession,
    label: String,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    provider: String,
    providers: Vec<String>,
    /// CUDA device of the first provider (CUDA or TensorRT): resident state lives there.
    cuda_device: Option<i32>,
}

impl OrtSession {
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

    fn run_inner(
        &mut self,
        given: &[(&str, &Tensor)],
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let ordered = order_inputs(&self.label, &self.inputs, given)?;
        let mut feeds: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(ordered.len());
        for (info, t) in self.inputs.iter().zip(&ordered) {
            let shape = t.shape().to_vec();
            let v: SessionInputValue<'_> = match t.data() {
                TensorData::F32(d) => TensorRef::from_array_view((shape, d.as_slice()))
                    .map_err(|e| self.run_err(format!("input '{}': {e}", info.name)))?
                    .into(),
                TensorData::I64(d) => TensorRef::from_array_view((shape, d.as_slice()))
                    .map_err(|e| self.run_err(format!("input '{}': {e}", info.name)))?
                    .into(),
            };
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

/// Copies an ONNX Runtime output to a host [`Tensor`], widening small integer and bool types
/// to i64 and double to f32.
fn to_tensor(model: &str, name: &str, v: &DynValue) -> Result<Tensor, EngineError> {
    let run_err = |message: String| EngineError::Run {
        model: model.to_string(),
        engine: EngineKind::Ort,
        message: format!("output '{name}': {message}"),
    };
    // A value in device memory (resident state on a GPU) is copied to the host first.
    if let Ok(t) = v.view().downcast::<ort::value::DynTensorValueType>() {
        if !t.memory_info().is_cpu_accessible() {
            let host = t
                .to(ort::memory::AllocationDevice::CPU, 0)
                .map_err(|e| run_err(format!("copy to host: {}", ort_msg(&e))))?;
            return to_tensor(model, name, &host.into_dyn());
        }
    }
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(EngineError::UnsupportedDType {
            model: model.to_string(),
            tensor: name.to_string(),
            dtype: "non-tensor".to_string(),
        });
    };
    macro_rules! ext {
        ($t:ty) => {
            v.try_extract_tensor::<$t>()
                .map_err(|e| run_err(ort_msg(&e)))?
        };
    }
    macro_rules! ints {
        ($t:ty) => {{
            let (s, d) = ext!($t);
            (
                shape_of(s),
                TensorData::I64(d.iter().map(|&x| x as i64).collect()),
            )
        }};
    }
    use TensorElementType as T;
    let (shape, data) = match ty {
        T::Float32 => {
            let (s, d) = ext!(f32);
            (shape_of(s), TensorData::F32(d.to_vec()))
        }
        T::Float64 => {
            let (s, d) = ext!(f64);
            (
                shape_of(s),
                TensorData::F32(d.iter().map(|&x| x as f32).collect()),
            )
        }
        T::Int64 => {
            let (s, d) = ext!(i64);
            (shape_of(s), TensorData::I64(d.to_vec()))
        }
        T::Int32 => ints!(i32),
        T::Int16 => ints!(i16),
        T::Int8 => ints!(i8),
        T::Uint8 => ints!(u8),
        T::Uint16 => ints!(u16),
        T::Uint32 => ints!(u32),
        T::Uint64 => ints!(u64),
        T::Bool => {
            let (s, d) = ext!(bool);
            (
                shape_of(s),
                TensorData::I64(d.iter().map(|&x| i64::from(x)).collect()),
            )
        }
        other => {
            return Err(EngineError::UnsupportedDType {
                model: model.to_string(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Tensor::new(shape, data).map_err(|e| run_err(ort_msg(&e)))
}

/// ONNX Runtime's messages end in a newline.
fn ort_msg(e: &impl std::fmt::Display) -> String {
    e.to_string().trim_end().to_string()
}

fn shape_of(s: &[i64]) -> Vec<usize> {
    s.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
}

impl Session for OrtSession {
    fn label(&self) -> &str {
        &self.label
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn execution_provider(&self) -> &str {
        &self.provider
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        let label = self.label.clone();
        catch_panic(
            || self.run_inner(inputs),
            |message| EngineError::Run {
                model: label,
                engine: EngineKind::Ort,
                message,
            },
        )
    }

    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError> {
        if std::env::var_os("FIELDTUNE_ORT_HOST_STATE").is_some() {
            // Host-copy state (the reference the IoBinding path is tested against).
            return Ok(Box::new(StatefulSession::new(self, initial_state, loops)?));
        }
        crate::stateful::check_resident(self.as_ref(), &initial_state, &loops)?;
        Ok(Box::new(OrtResident::new(*self, initial_state, loops)?))
    }
}

/// Resident state held as ONNX Runtime values and fed through an `IoBinding`: step k's
/// looped outputs become step k+1's inputs without a copy to or from host tensors (in CPU
/// memory here, in device memory on a GPU provider). A step copies in only its batch and
/// copies out only the fetched metrics.
pub struct OrtResident {
    session: OrtSession,
    binding: ort::session::IoBinding,
    state: HashMap<String, DynValue>,
    loops: Vec<(String, String)>,
    /// Where fetched outputs go: host memory.
    outputs_mem: ort::memory::MemoryInfo<'static>,
    /// Where looped outputs (the next step's state) go: the provider's device memory.
    state_mem: ort::memory::MemoryInfo<'static>,
}

impl OrtResident {
    fn new(
        session: OrtSession,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Self, EngineError> {
        let label = session.label.clone();
        let err = |m: String| EngineError::Run {
            model: label.clone(),
            engine: EngineKind::Ort,
            message: m,
        };
        let binding = session
            .session
            .create_binding()
            .map_err(|e| err(format!("IoBinding: {}", ort_msg(&e))))?;
        // Outputs where the session's allocator puts them (host memory for the CPU provider).
        let outputs_mem = ort::memory::MemoryInfo::new(
            ort::memory::AllocationDevice::CPU,
            0,
            ort::memory::AllocatorType::Device,
            ort::memory::MemoryType::Default,
        )
        .map_err(|e| err(format!("memory info: {}", ort_msg(&e))))?;
        let state_mem = match session.cuda_device {
            Some(device) => ort::memory::MemoryInfo::new(
                ort::memory::AllocationDevice::CUDA,
                device,
                ort::memory::AllocatorType::Device,
                ort::memory::MemoryType::Default,
            ),
            None => ort::memory::MemoryInfo::new(
                ort::memory::AllocationDevice::CPU,
                0,
                ort::memory::AllocatorType::Device,
                ort::memory::MemoryType::Default,
            ),
        }
        .map_err(|e| err(format!("memory info: {}", ort_msg(&e))))?;
        let mut r = OrtResident {
            session,
            binding,
            state: HashMap::new(),
            loops,
            outputs_mem,
            state_mem,
        };
        for (name, t) in initial_state {
            r.set_value(&name, &t)?;
        }
        Ok(r)
    }

    fn err(&self, message: String) -> EngineError {
        EngineError::Run {
            model: self.session.label.clone(),
            engine: EngineKind::Ort,
            message,
        }
    }

    /// An owned ONNX Runtime value holding a copy of `t`.
    fn value_of(&self, name: &str, t: &Tensor) -> Result<DynValue, EngineError> {
        let shape = t.shape().to_vec();
        let v: DynValue = match t.data() {
            TensorData::F32(d) => ort::value::Tensor::from_array((shape, d.clone()))
                .map_err(|e| self.err(format!("input '{name}': {}", ort_msg(&e))))?
                .into_dyn(),
            TensorData::I64(d) => ort::value::Tensor::from_array((shape, d.clone()))
                .map_err(|e| self.err(format!("input '{name}': {}", ort_msg(&e))))?
                .into_dyn(),
        };
        Ok(v)
    }

    fn set_value(&mut self, name: &str, t: &Tensor) -> Result<(), EngineError> {
        let v = self.value_of(name, t)?;
        self.binding
            .bind_input(name, &v)
            .map_err(|e| self.err(format!("binding '{name}': {}", ort_msg(&e))))?;
        self.state.insert(name.to_string(), v);
        Ok(())
    }

    fn step_inner(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        let model = self.session.label.clone();
        for (name, t) in feeds {
            if self.state.contains_key(*name) {
                return Err(EngineError::State {
                    model,
                    tensor: name.to_string(),
                    message: "is resident state and cannot also be fed".into(),
                });
            }
            let info = self
                .session
                .inputs
                .iter()
                .find(|i| i.name == *name)
                .ok_or_else(|| self.err(format!("'{name}' is not an input of the model")))?;
            crate::check_tensor(&model, info, t)?;
            let v = self.value_of(name, t)?;
            self.binding
                .bind_input(*name, &v)
                .map_err(|e| self.err(format!("binding '{name}': {}", ort_msg(&e))))?;
        }
        let mut wanted: Vec<&str> = fetch.to_vec();
        for (out, _) in &self.loops {
            if !wanted.contains(&out.as_str()) {
                wanted.push(out);
            }
        }
        for name in &wanted {
            if !self.session.outputs.iter().any(|o| o.name == *name) {
                return Err(crate::unknown_output(&model, &self.session.outputs, name));
            }
            // Fresh output buffers every step: a looped output becomes resident input state,
            // so the next run must not write into it. Fetched outputs come to the host; state
            // stays in the provider's memory.
            let mem = if fetch.contains(name) {
                &self.outputs_mem
            } else {
                &self.state_mem
            };
            self.binding
                .bind_output_to_device(*name, mem)
                .map_err(|e| self.err(format!("binding output '{name}': {}", ort_msg(&e))))?;
        }
        let mut outs = self
            .session
            .session
            .run_binding(&self.binding)
            .map_err(|e| EngineError::Run {
                model: model.clone(),
                engine: EngineKind::Ort,
                message: ort_msg(&e),
            })?;
        let missing = |name: &str| EngineError::Run {
            model: model.clone(),
            engine: EngineKind::Ort,
            message: format!("output '{name}' missing from the results"),
        };
        let mut fetched = Vec::with_capacity(fetch.len());
        for name in fetch {
            let v = outs.get(name).ok_or_else(|| missing(name))?;
            fetched.push(to_tensor(&model, name, v)?);
        }
        let mut next: Vec<(String, DynValue)> = Vec::with_capacity(self.loops.len());
        for (out, inp) in &self.loops {
            let v = outs.remove(out).ok_or_else(|| missing(out))?;
            next.push((inp.clone(), v));
        }
        drop(outs);
        // Feeds stay bound until rebound; unbind nothing, but never keep a batch resident.
        if !accept(&fetched) {
            return Ok((fetched, false));
        }
        for (inp, v) in next {
            self.binding
                .bind_input(inp.as_str(), &v)
                .map_err(|e| self.err(format!("binding '{inp}': {}", ort_msg(&e))))?;
            self.state.insert(inp, v);
        }
        Ok((fetched, true))
    }
}

impl ResidentSession for OrtResident {
    fn label(&self) -> &str {
        &self.session.label
    }

    fn execution_provider(&self) -> &str {
        &self.session.provider
    }

    fn state_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state.keys().cloned().collect();
        v.sort();
        v
    }

    fn step(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError> {
        Ok(self.step_if(feeds, fetch, &|_| true)?.0)
    }

    fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        let label = self.session.label.clone();
        catch_panic(
            || self.step_inner(feeds, fetch, accept),
            |message| EngineError::Run {
                model: label,
                engine: EngineKind::Ort,
                message,
            },
        )
    }

    fn read_state(&self, name: &str) -> Result<Option<Tensor>, EngineError> {
        match self.state.get(name) {
            Some(v) => Ok(Some(to_tensor(&self.session.label, name, v)?)),
            None => Ok(None),
        }
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError> {
        let old = self.read_state(name)?.ok_or_else(|| EngineError::State {
            model: self.session.label.clone(),
            tensor: name.to_string(),
            message: "is not resident state".into(),
        })?;
        crate::stateful::check_replacement(&self.session.label, name, &old, &value)?;
        self.set_value(name, &value)
    }

    fn export_state(self: Box<Self>) -> Result<HashMap<String, Tensor>, EngineError> {
        self.state
            .iter()
            .map(|(n, v)| Ok((n.clone(), to_tensor(&self.session.label, n, v)?)))
            .collect()
    }
}
