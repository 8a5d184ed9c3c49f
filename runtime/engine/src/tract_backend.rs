//! The tract backend (pure Rust, CPU).
//!
//! The ONNX model is parsed once into tract's inference model. Runnable plans are compiled per
//! concrete set of input shapes and cached: inference graphs have a symbolic batch, so each new
//! batch size compiles once; train-step graphs are fully static and compile at load.

use std::collections::{HashMap, HashSet};

use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::pb;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable,
    IntoTValue, TValue, TVec, Tensor as TractTensor, TractResult, TypedModel, TypedSimpleState,
};
// tract's `tract_ndarray` is the crate the tensor currency uses (0.17): these array types are
// the ones `fieldtune_tensor::Tensor` holds.
use tract_onnx::prelude::tract_ndarray as ndarray;

use crate::{
    catch_panic, onnx_elem_name, order_inputs, DType, Engine, EngineError, EngineKind, IoInfo,
    ResidentSession, Session, StatefulSession, Tensor, TensorData,
};

/// The tract version this crate is built against.
pub const TRACT_VERSION: &str = "0.23.9";

/// How many compiled plans (distinct input shape sets) a session keeps.
const PLAN_CACHE: usize = 8;

/// tract as an [`Engine`].
#[derive(Clone, Debug, Default)]
pub struct TractEngine {
    /// Threads of the pool its sessions run matrix products and large elementwise ops on;
    /// `None` runs them on the calling thread.
    pool: Option<(usize, Executor)>,
}

impl TractEngine {
    /// A single-threaded tract engine; it needs nothing from the system.
    pub fn new() -> Self {
        TractEngine { pool: None }
    }

    /// A tract engine whose sessions run on a pool of `threads` threads (shared by all its
    /// sessions); 0 means one per core, 1 is [`TractEngine::new`].
    pub fn with_threads(threads: usize) -> Self {
        let n = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = (n > 1).then(|| (n, Executor::multithread_with_name(n, "fieldtune-tract")));
        TractEngine { pool }
    }

    /// Threads its sessions use.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |(n, _)| *n)
    }
}

fn load_err(label: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::ModelLoad {
        model: label.to_string(),
        engine: EngineKind::Tract,
        message: format!("{message:#}"),
    }
}

fn io_from_value_info(v: &pb::ValueInfoProto) -> IoInfo {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value as Ty;
    let mut info = IoInfo {
        name: v.name.clone(),
        dtype: DType::F32,
        onnx_type: "unknown".to_string(),
        shape: vec![],
    };
    if let Some(Ty::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        let (name, dtype) = onnx_elem_name(t.elem_type);
        info.onnx_type = name.to_string();
        info.dtype = dtype;
        if let Some(shape) = &t.shape {
            info.shape = shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(n)) if n >= 0 => usize::try_from(n).ok(),
                    _ => None,
                })
                .collect();
        }
    }
    info
}

impl TractEngine {
    fn build(&self, model: &[u8], label: &str) -> Result<TractSession, EngineError> {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        crate::fieldtune_ops::tract::register(&mut onnx);
        let proto = onnx
            .proto_model_for_read(&mut &model[..])
            .map_err(|e| load_err(label, format!("not a valid ONNX protobuf: {e:#}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| load_err(label, "the model has no graph"))?;
        let initializers: HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<IoInfo> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(io_from_value_info)
            .collect();
        let outputs: Vec<IoInfo> = graph.output.iter().map(io_from_value_info).collect();
        crate::check_input_sizes(label, EngineKind::Tract, &inputs)?;
        let model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| load_err(label, e))?;
        let unimplemented: Vec<String> = model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .filter(|n| n.starts_with("Unimplemented("))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unimplemented.is_empty() {
            return Err(load_err(
                label,
                format!(
                    "operators tract does not support: {}",
                    unimplemented.join(", ")
                ),
            ));
        }
        let mut session = TractSession {
            model,
            label: label.to_string(),
            inputs,
            outputs,
            plans: Vec::new(),
            pool: self.pool.as_ref().map(|(_, e)| e.clone()),
            profile: Profile::from_env(label),
        };
        // Fully static graphs (train steps) compile now, so errors show at load time.
        if session.inputs.iter().all(IoInfo::is_static)
            && session.inputs.iter().all(IoInfo::is_native)
        {
            let shapes: Vec<Vec<usize>> = session
                .inputs
                .iter()
                .map(|i| i.shape.iter().map(|d| d.unwrap_or(0)).collect())
                .collect();
            let dts: Vec<DType> = session.inputs.iter().map(|i| i.dtype).collect();
            let state = session
                .compile(&shapes, &dts)
                .map_err(|e| load_err(label, e))?;
            session.plans.push((shapes, state));
        }
        Ok(session)
    }
}

impl Engine for TractEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn describe(&self) -> String {
        match self.threads() {
            1 => format!("tract {TRACT_VERSION} (CPU)"),
            n => format!("tract {TRACT_VERSION} (CPU, {n} threads)"),
        }
    }

    fn runs_fieldtune_ops(&self) -> bool {
        true
    }

    fn load(&self, model: &[u8], label: &str) -> Result<Box<dyn Session>, EngineError> {
        let s = catch_panic(|| self.build(model, label), |m| load_err(label, m))?;
        Ok(Box::new(s))
    }
}

/// A model loaded into tract.
pub struct TractSession {
    model: InferenceModel,
    label: String,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    /// Compiled plans by input shapes, most recently used last.
    plans: Vec<(Vec<Vec<usize>>, TypedSimpleState)>,
    /// The engine's thread pool, if any.
    pool: Option<Executor>,
    /// Per-node timing, when `FIELDTUNE_TRACT_PROFILE` is set.
    profile: Option<Profile>,
}

/// Per-node run time of a session's plans (`FIELDTUNE_TRACT_PROFILE=PREFIX`), written when the
/// session ends to `PREFIX.<label>.json` in the event format of ONNX Runtime's profiler (one
/// event per node with its total time and run count), so `scripts/bench/ort_profile.py` sums both.
struct Profile {
    path: std::path::PathBuf,
    /// Node name -> (op name, total microseconds, runs).
    nodes: HashMap<String, (String, f64, u64)>,
}

impl Profile {
    fn from_env(label: &str) -> Option<Profile> {
        let prefix = std::env::var_os("FIELDTUNE_TRACT_PROFILE")?;
        let mut path = std::path::PathBuf::from(prefix).into_os_string();
        path.push(format!(".{}.json", label.replace(['/', ' '], "_")));
        Some(Profile {
            path: path.into(),
            nodes: HashMap::new(),
        })
    }

    fn write(&self) -> std::io::Result<()> {
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort();
        let events: Vec<String> = names
            .iter()
            .map(|n| {
                let (op, us, runs) = &self.nodes[*n];
                format!(
                    r#"{{"cat":"Node","name":"{}_kernel_time","dur":{:.1},"args":{{"op_name":"{}","runs":{}}}}}"#,
                    n.replace(['"', '\\'], "_"),
                    us,
                    op.replace(['"', '\\'], "_"),
                    runs
                )
            })
            .collect();
        std::fs::write(&self.path, format!("[\n{}\n]\n", events.join(",\n")))
    }
}

impl Drop for TractSession {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            match p.write() {
                Ok(()) => tracing::info!("tract profile written to {}", p.path.display()),
                Err(e) => tracing::warn!("tract profile {}: {e}", p.path.display()),
            }
        }
    }
}

fn datum(dt: DType) -> DatumType {
    match dt {
        DType::F32 => DatumType::F32,
        DType::I64 => DatumType::I64,
    }
}

/// tract's `into_optimized`, and where its plan would evaluate a removed node, the same
/// without the `PushSliceUp` declutter pass.
///
/// That pass pushes the slices of a Split up through the ops that feed it. The flat optimizer
/// of a train step (one Concat of every gradient, one chain of elementwise ops over the flat
/// vector, one Split back into the parameters) is that shape, and in tract 0.23.9 the pass
/// leaves a node it removed (a `Dummy`) in the plan of bottleneck networks' steps (ResNet-50
/// and deeper, ResNeXt, RegNet: "eval() called on a Dummy op"). Models that optimise cleanly
/// keep tract's full pass list.
fn optimized(m: TypedModel) -> TractResult<TypedModel> {
    use tract_onnx::tract_core::ops::dummy::Dummy;
    use tract_onnx::tract_core::optim::Optimizer;
    let full = m.clone().into_optimized()?;
    let order = full.eval_order()?;
    if !order.iter().any(|&n| full.node(n).op_is::<Dummy>()) {
        return Ok(full);
    }
    tracing::debug!("tract plan evaluates a removed node; optimising without PushSliceUp");
    let mut m = m;
    let mut declutter = Optimizer::declutter();
    declutter
        .passes
        .retain(|p| !format!("{p:?}").starts_with("PushSliceUp"));
    declutter.optimize(&mut m)?;
    m.optimize()?;
    Ok(m)
}

impl TractSession {
    /// Number of compiled plans held (one per distinct set of input shapes seen).
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    fn compile(
        &self,
        shapes: &[Vec<usize>],
        dts: &[DType],
    ) -> tract_onnx::prelude::TractResult<TypedSimpleState> {
        let mut m = self.model.clone();
        for (i, (shape, dt)) in shapes.iter().zip(dts).enumerate() {
            m = m.with_input_fact(i, InferenceFact::dt_shape(datum(*dt), shape.as_slice()))?;
        }
        let plan = optimized(m.into_typed()?)?.into_runnable()?;
        plan.spawn()
    }

    fn run_inner(
        &mut self,
        given: &[(&str, &Tensor)],
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        let ordered = order_inputs(&self.label, &self.inputs, given)?;
        let shapes: Vec<Vec<usize>> = ordered.iter().map(|t| t.shape().to_vec()).collect();
        let run_err = |message: String| EngineError::Run {
            model: self.label.clone(),
            engine: EngineKind::Tract,
            message,
        };
        let ix = match self.plans.iter().position(|(k, _)| *k == shapes) {
            Some(ix) => ix,
            None => {
                let dts: Vec<DType> = ordered.iter().map(|t| t.dtype()).collect();
                let state = self.compile(&shapes, &dts).map_err(|e| {
                    run_err(format!("compiling for input shapes {shapes:?}: {e:#}"))
                })?;
                if self.plans.len() >= PLAN_CACHE {
                    self.plans.remove(0);
                }
                self.plans.push((shapes, state));
                self.plans.len() - 1
            }
        };
        // Most recently used last.
        let entry = self.plans.remove(ix);
        self.plans.push(entry);

        let mut values: TVec<TValue> = TVec::new();
        for t in &ordered {
            values.push(
                to_tract(t)
                    .map_err(|e| run_err(format!("{e:#}")))?
                    .into_tvalue(),
            );
        }
        let label = self.label.clone();
        let state = &mut self.plans.last_mut().expect("just pushed").1;
        let outs = match &mut self.profile {
            None => state.run(values),
            Some(p) => state.run_plan_with_eval(values, |ctx, st, node, input| {
                let t = std::time::Instant::now();
                let r = tract_onnx::tract_core::plan::eval(ctx, st, node, input);
                let e = p
                    .nodes
                    .entry(node.name.clone())
                    .or_insert_with(|| (node.op().name().to_string(), 0.0, 0));
                e.1 += t.elapsed().as_secs_f64() * 1e6;
                e.2 += 1;
                r
            }),
        }
        .map_err(|e| EngineError::Run {
            model: label.clone(),
            engine: EngineKind::Tract,
            message: format!("{e:#}"),
        })?;
        if outs.len() != self.outputs.len() {
            return Err(EngineError::Run {
                model: label,
                engine: EngineKind::Tract,
                message: format!(
                    "expected {} outputs, got {}",
                    self.outputs.len(),
                    outs.len()
                ),
            });
        }
        self.outputs
            .iter()
            .zip(outs)
            .map(|(info, v)| Ok((info.name.clone(), to_tensor(&label, &info.name, &v)?)))
            .collect()
    }
}

/// One copy into a tract tensor. It stays: a tract plan takes owned values, the session
/// borrows its inputs, and tract keeps every tensor in a buffer of its own aligned for its
/// kernels (its `From<ArrayD<T>>` copies into one as well), so a borrowed array cannot be
/// handed over in place.
fn to_tract(t: &Tensor) -> TractResult<TractTensor> {
    match t.data() {
        TensorData::F32(a) => TractTensor::from_shape(a.shape(), slice(a)),
        TensorData::I64(a) => TractTensor::from_shape(a.shape(), slice(a)),
    }
}

fn slice<T>(a: &ndarray::ArrayD<T>) -> &[T] {
    a.as_slice().expect("tensor arrays are in standard layout")
}

/// Copies a tract value to a host [`Tensor`]: floats as f32, integers and bools as i64. tract
/// and fieldtune share ndarray 0.17, so the value is read through a `tract_ndarray` view and
/// copied once into an owned array (tract's aligned buffer cannot become an `ndarray` buffer);
/// other element types are cast first.
fn to_tensor(model: &str, name: &str, v: &TractTensor) -> Result<Tensor, EngineError> {
    let err = |message: String| EngineError::Run {
        model: model.to_string(),
        engine: EngineKind::Tract,
        message: format!("output '{name}': {message}"),
    };
    let dt = v.datum_type();
    let t = if dt == DatumType::F32 {
        Tensor::from(owned::<f32>(v).map_err(|e| err(format!("{e:#}")))?)
    } else if dt.is_float() {
        let c = v.cast_to::<f32>().map_err(|e| err(format!("{e:#}")))?;
        Tensor::from(owned::<f32>(&c).map_err(|e| err(format!("{e:#}")))?)
    } else {
        let c = v
            .cast_to::<i64>()
            .map_err(|_| EngineError::UnsupportedDType {
                model: model.to_string(),
                tensor: name.to_string(),
                dtype: format!("{dt:?}"),
            })?;
        Tensor::from(owned::<i64>(&c).map_err(|e| err(format!("{e:#}")))?)
    };
    Ok(t)
}

/// An owned copy of a plain tract tensor as an `ndarray` array.
fn owned<T: tract_onnx::prelude::Datum>(v: &TractTensor) -> TractResult<ndarray::ArrayD<T>> {
    Ok(v.to_plain_array_view::<T>()?.to_owned())
}

impl Session for TractSession {
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
        "tract-cpu"
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        let label = self.label.clone();
        catch_panic(
            || match self.pool.clone() {
                Some(pool) => multithread_tract_scope(pool, || self.run_inner(inputs)),
                None => self.run_inner(inputs),
            },
            |message| EngineError::Run {
                model: label,
                engine: EngineKind::Tract,
                message,
            },
        )
    }

    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError> {
        Ok(Box::new(StatefulSession::new(self, initial_state, loops)?))
    }
}
