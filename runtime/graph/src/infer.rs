//! Static shape and type inference, one rule per op, with constant folding of the small
//! integer subgraphs exporters emit for shapes (Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape). Train-step graphs have a static batch, so every tensor gets a concrete shape.

use fieldtune_tensor::{Tensor, TensorData};

use crate::error::{GraphError, Result};
use crate::ir::{tensor_from_proto, Elem, Node};

/// What the compiler knows of a tensor: element type, concrete shape and, for small
/// constants, the value.
#[derive(Clone, Debug)]
pub struct Value {
    pub elem: Elem,
    pub shape: Vec<usize>,
    pub konst: Option<Tensor>,
}

impl Value {
    pub fn new(elem: Elem, shape: Vec<usize>) -> Value {
        Value {
            elem,
            shape,
            konst: None,
        }
    }

    pub fn konst(t: Tensor) -> Value {
        let elem = match t.dtype() {
            fieldtune_tensor::DType::F32 => Elem::F32,
            fieldtune_tensor::DType::I64 => Elem::I64,
        };
        Value {
            elem,
            shape: t.shape().to_vec(),
            konst: Some(t),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The value as i64s, when it is a known integer constant.
    pub fn ints(&self) -> Option<&[i64]> {
        self.konst.as_ref().and_then(|t| t.as_i64())
    }
}

/// Largest result of a folded op; bigger ones stay as nodes.
const FOLD_LIMIT: usize = 1 << 16;

/// Normalises a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Explicit pads [begin..., end...] for a windowed op (Conv, pools) over spatial dims,
/// resolving `auto_pad`.
pub fn window_pads(
    node: &Node,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dil: &[usize],
) -> Result<Vec<usize>> {
    let n = spatial.len();
    let auto = node.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" | "" => {
            let pads = node.ints("pads").unwrap_or_else(|| vec![0; 2 * n]);
            if pads.len() != 2 * n || pads.iter().any(|&p| p < 0) {
                return Err(GraphError::node(
                    node,
                    format!("pads {pads:?} do not fit {n} spatial dims"),
                ));
            }
            Ok(pads.iter().map(|&p| p as usize).collect())
        }
        "VALID" => Ok(vec![0; 2 * n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * n];
            for i in 0..n {
                let out = spatial[i].div_ceil(strides[i]);
                let eff = (kernel[i] - 1) * dil[i] + 1;
                let total = ((out - 1) * strides[i] + eff).saturating_sub(spatial[i]);
                let small = total / 2;
                let (b, e) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                pads[i] = b;
                pads[i + n] = e;
            }
            Ok(pads)
        }
        other => Err(GraphError::node(
            node,
            format!("auto_pad '{other}' is not an ONNX value"),
        )),
    }
}

/// Kernel, strides, dilations and explicit pads of a 2-D windowed op.
#[derive(Clone, Debug)]
pub struct Window {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
}

impl Window {
    /// Reads the window attributes; `kernel` comes from the weight for Conv.
    pub fn of(node: &Node, spatial: &[usize], kernel: Vec<usize>) -> Result<Window> {
        let n = spatial.len();
        let get = |name: &str| -> Result<Vec<usize>> {
            match node.ints(name) {
                None => Ok(vec![1; n]),
                Some(v) if v.len() == n && v.iter().all(|&x| x >= 1) => {
                    Ok(v.iter().map(|&x| x as usize).collect())
                }
                Some(v) => Err(GraphError::node(
                    node,
                    format!("{name} {v:?} do not fit {n} spatial dims"),
                )),
            }
        };
        let strides = get("strides")?;
        let dilations = get("dilations")?;
        if kernel.len() != n {
            return Err(GraphError::node(
                node,
                format!("kernel {kernel:?} does not fit {n} spatial dims"),
            ));
        }
        let pads = window_pads(node, spatial, &kernel, &strides, &dilations)?;
        Ok(Window {
            kernel,
            strides,
            dilations,
            pads,
        })
    }

    /// The span of input cells one window covers along spatial axis `i`: `(k - 1) * d + 1`.
    pub fn extent(&self, i: usize) -> usize {
        (self.kernel[i] - 1) * self.dilations[i] + 1
    }

    /// Output spatial size (floor mode).
    pub fn output(&self, node: &Node, spatial: &[usize]) -> Result<Vec<usize>> {
        let n = spatial.len();
        (0..n)
            .map(|i| {
                let padded = spatial[i] + self.pads[i] + self.pads[i + n];
                let eff = self.extent(i);
                if padded < eff {
                    return Err(GraphError::node(
                        node,
                        format!("window {eff} is larger than the padded input {padded}"),
                    ));
                }
                Ok((padded - eff) / self.strides[i] + 1)
            })
            .collect()
    }
}

fn elem_of_cast(node: &Node) -> Result<Elem> {
    let to = node.int("to", 0) as i32;
    // Casts to other integer or float types are treated as their f32/i64 family; engines see
    // the real attribute, the compiler only needs to know what is differentiable.
    match to {
        1 | 10 | 11 | 16 => Ok(Elem::F32),
        2..=7 | 12 | 13 => Ok(Elem::I64),
        9 => Ok(Elem::Bool),
        _ => Err(GraphError::node(
            node,
            format!("cast to ONNX type {to} is not supported"),
        )),
    }
}

/// The part sizes of a Split along an axis of length `len`: from the `split` input (opset
/// 13+) or attribute, or equal parts (`num_outputs`, opset 18, or the output count).
pub fn split_sizes(node: &Node, ins: &[Option<&Value>], len: usize) -> Result<Vec<usize>> {
    let given = ins
        .get(1)
        .copied()
        .flatten()
        .map(|v| {
            v.ints()
                .map(<[i64]>::to_vec)
                .ok_or_else(|| GraphError::node(node, "split sizes must be constant"))
        })
        .transpose()?
        .or_else(|| node.ints("split"));
    let sizes: Vec<usize> = match given {
        Some(v) => v.iter().map(|&x| x.max(0) as usize).collect(),
        None => {
            let k = node.int("num_outputs", node.outputs.len() as i64).max(1) as usize;
            let chunk = len.div_ceil(k);
            (0..k)
                .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return Err(GraphError::node(
            node,
            format!("split sizes {sizes:?} do not add up to {len}"),
        ));
    }
    Ok(sizes)
}

/// Infers the outputs of `node` given its inputs (`None` for absent optional inputs).
pub fn infer(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let req = |i: usize| -> Result<&Value> {
        ins.get(i)
            .copied()
            .flatten()
            .ok_or_else(|| GraphError::node(node, format!("input {i} is required")))
    };
    let err = |r: String| GraphError::node(node, r);
    let same = |v: &Value| Value::new(v.elem, v.shape.clone());
    let op = node.op.as_str();
    let out = match op {
        "Relu" | "Exp" | "Log" | "Neg" | "Sqrt" | "Abs" | "Sigmoid" | "Tanh" | "Reciprocal"
        | "Identity" | "Softmax" | "LogSoftmax" | "Not" | "Floor" | "Ceil" | "Dropout" | "Clip"
        | "LeakyRelu" | "HardSigmoid" | "HardSwish" => {
            let x = req(0)?;
            if op == "Identity" {
                if let Some(k) = &x.konst {
                    return Ok(vec![Value::konst(k.clone())]);
                }
            }
            if op == "Dropout" {
                // Inference-mode dropout: identity (train mode is not compiled yet).
                if node.outputs.len() > 1 {
                    return Err(err("Dropout's mask output is not supported".into()));
                }
            }
            vec![same(x)]
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mod" => {
            if ins.len() < 2 && op != "Sum" && op != "Max" && op != "Min" {
                return Err(err("needs two inputs".into()));
            }
            let mut shape = req(0)?.shape.clone();
            for i in 1..ins.len() {
                shape = broadcast(&shape, &req(i)?.shape).ok_or_else(|| {
                    err(format!(
                        "shapes {:?} and {:?} do not broadcast",
                        shape,
                        req(i).map(|v| v.shape.clone()).unwrap_or_default()
                    ))
                })?;
            }
            let a = req(0)?;
            let mut v = Value::new(a.elem, shape.clone());
            if ins.len() == 2 && a.elem == Elem::I64 && v.numel() <= FOLD_LIMIT {
                if let (Some(x), Some(y)) = (a.ints(), req(1)?.ints()) {
                    v.konst = fold_binary_i64(op, x, &a.shape, y, &req(1)?.shape, &shape);
                }
            }
            vec![v]
        }
        "Greater" | "Less" | "Equal" | "GreaterOrEqual" | "LessOrEqual" | "And" | "Or" => {
            let shape = broadcast(&req(0)?.shape, &req(1)?.shape)
                .ok_or_else(|| err("shapes do not broadcast".into()))?;
            vec![Value::new(Elem::Bool, shape)]
        }
        "Where" => {
            let c = req(2)?.shape.clone();
            let s = broadcast(&req(0)?.shape, &req(1)?.shape)
                .and_then(|s| broadcast(&s, &c))
                .ok_or_else(|| err("shapes do not broadcast".into()))?;
            vec![Value::new(req(1)?.elem, s)]
        }
        "Cast" => {
            let x = req(0)?;
            let to = elem_of_cast(node)?;
            let mut v = Value::new(to, x.shape.clone());
            if let Some(k) = &x.konst {
                v.konst = match (k.data(), to) {
                    (TensorData::I64(d), Elem::F32) => {
                        Tensor::f32(x.shape.clone(), d.iter().map(|&i| i as f32).collect()).ok()
                    }
                    (TensorData::F32(d), Elem::I64) => {
                        Tensor::i64(x.shape.clone(), d.iter().map(|&f| f as i64).collect()).ok()
                    }
                    (TensorData::I64(_), Elem::I64) | (TensorData::F32(_), Elem::F32) => {
                        Some(k.clone())
                    }
                    _ => None,
                };
            }
            vec![v]
        }
        "Constant" => {
            let t = if let Some(a) = node.attr("value") {
                let tp =
                    a.t.as_ref()
                        .ok_or_else(|| err("value attribute holds no tensor".into()))?;
                tensor_from_proto(tp)?
            } else if let Some(a) = node.attr("value_float") {
                Tensor::scalar_f32(a.f)
            } else if let Some(a) = node.attr("value_floats") {
                Tensor::f32(vec![a.floats.len()], a.floats.clone())
                    .map_err(|e| err(e.to_string()))?
            } else if let Some(a) = node.attr("value_int") {
                Tensor::i64(vec![], vec![a.i]).map_err(|e| err(e.to_string()))?
            } else if let Some(a) = node.attr("value_ints") {
                Tensor::i64(vec![a.ints.len()], a.ints.clone()).map_err(|e| err(e.to_string()))?
            } else {
                return Err(err("no supported value attribute".into()));
            };
            vec![Value::konst(t)]
        }
        "Shape" => {
            let x = req(0)?;
            let r = x.shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let s = clamp(node.int("start", 0));
            let e = clamp(node.int("end", r));
            let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            vec![Value::konst(
                Tensor::i64(vec![dims.len()], dims).expect("1-D"),
            )]
        }
        "Size" => vec![Value::konst(
            Tensor::i64(vec![], vec![req(0)?.numel() as i64]).expect("scalar"),
        )],
        "ConstantOfShape" => {
            let shape: Vec<usize> = req(0)?
                .ints()
                .ok_or_else(|| err("shape input must be a constant".into()))?
                .iter()
                .map(|&d| d as usize)
                .collect();
            let val = match node.attr("value").and_then(|a| a.t.as_ref()) {
                Some(tp) => tensor_from_proto(tp)?,
                None => Tensor::f32(vec![1], vec![0.0]).expect("1 elem"),
            };
            let n: usize = shape.iter().product();
            let k = match val.data() {
                TensorData::F32(v) => {
                    Tensor::f32(shape.clone(), vec![v.first().copied().unwrap_or(0.0); n])
                }
                TensorData::I64(v) => {
                    Tensor::i64(shape.clone(), vec![v.first().copied().unwrap_or(0); n])
                }
            }
            .map_err(|e| err(e.to_string()))?;
            let mut v = Value::konst(k);
            if n > FOLD_LIMIT {
                v.konst = None;
            }
            vec![v]
        }
        "Reshape" => {
            let x = req(0)?;
            let spec = req(1)?.ints().ok_or_else(|| err("target shape must be known at compile time (fieldtune folds Shape chains for a static batch)".into()))?;
            let shape = reshape_target(&x.shape, spec, node.int("allowzero", 0) != 0)
                .ok_or_else(|| err(format!("cannot reshape {:?} to {:?}", x.shape, spec)))?;
            vec![reshaped(x, shape)]
        }
        "Flatten" => {
            let x = req(0)?;
            let axis = node.int("axis", 1);
            let r = x.shape.len();
            let a = if axis < 0 { axis + r as i64 } else { axis };
            if !(0..=r as i64).contains(&a) {
                return Err(err(format!("axis {axis} out of range for rank {r}")));
            }
            let a = a as usize;
            let shape = vec![x.shape[..a].iter().product(), x.shape[a..].iter().product()];
            vec![reshaped(x, shape)]
        }
        "Unsqueeze" | "Squeeze" => {
            let x = req(0)?;
            let axes: Option<Vec<i64>> = match ins.get(1).copied().flatten() {
                Some(a) => Some(
                    a.ints()
                        .ok_or_else(|| err("axes must be a constant".into()))?
                        .to_vec(),
                ),
                None => node.ints("axes"),
            };
            let shape = if op == "Unsqueeze" {
                let axes = axes.ok_or_else(|| err("axes are required".into()))?;
                let r = x.shape.len() + axes.len();
                let mut ax: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, r).ok_or_else(|| err(format!("axis {a} out of range"))))
                    .collect::<Result<_>>()?;
                ax.sort_unstable();
                let mut s = x.shape.clone();
                for a in ax {
                    s.insert(a, 1);
                }
                s
            } else {
                let r = x.shape.len();
                match axes {
                    Some(axes) => {
                        let ax: Vec<usize> = axes
                            .iter()
                            .map(|&a| {
                                norm_axis(a, r).ok_or_else(|| err(format!("axis {a} out of range")))
                            })
                            .collect::<Result<_>>()?;
                        if ax.iter().any(|&a| x.shape[a] != 1) {
                            return Err(err(format!(
                                "cannot squeeze axes {axes:?} of {:?}",
                                x.shape
                            )));
                        }
                        x.shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !ax.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                    None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
                }
            };
            vec![reshaped(x, shape)]
        }
        "Transpose" => {
            let x = req(0)?;
            let r = x.shape.len();
            let perm: Vec<usize> = match node.ints("perm") {
                Some(p) => p.iter().map(|&a| a as usize).collect(),
                None => (0..r).rev().collect(),
            };
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..r).collect::<Vec<_>>() {
                return Err(err(format!(
                    "perm {perm:?} is not a permutation of rank {r}"
                )));
            }
            vec![Value::new(
                x.elem,
                perm.iter().map(|&p| x.shape[p]).collect(),
            )]
        }
        "Concat" => {
            let first = req(0)?;
            let r = first.shape.len();
            let axis =
                norm_axis(node.int("axis", 0), r).ok_or_else(|| err("axis out of range".into()))?;
            let mut shape = first.shape.clone();
            shape[axis] = 0;
            let mut all = Vec::new();
            for i in 0..ins.len() {
                let v = req(i)?;
                if v.shape.len() != r || (0..r).any(|d| d != axis && v.shape[d] != first.shape[d]) {
                    return Err(err(format!(
                        "input {i} has shape {:?}, input 0 has {:?}",
                        v.shape, first.shape
                    )));
                }
                shape[axis] += v.shape[axis];
                all.push(v);
            }
            let mut v = Value::new(first.elem, shape.clone());
            if r == 1 && all.iter().all(|a| a.ints().is_some()) {
                let d: Vec<i64> = all
                    .iter()
                    .flat_map(|a| a.ints().unwrap_or(&[]).iter().copied())
                    .collect();
                v.konst = Tensor::i64(shape, d).ok();
            }
            vec![v]
        }
        "Gather" => {
            let x = req(0)?;
            let idx = req(1)?;
            let r = x.shape.len();
            let axis =
                norm_axis(node.int("axis", 0), r).ok_or_else(|| err("axis out of range".into()))?;
            let mut shape = x.shape[..axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[axis + 1..]);
            let mut v = Value::new(x.elem, shape.clone());
            if let (Some(d), Some(i), 1) = (x.ints(), idx.ints(), r) {
                let n = d.len() as i64;
                let picked: Option<Vec<i64>> = i
                    .iter()
                    .map(|&k| d.get((if k < 0 { k + n } else { k }) as usize).copied())
                    .collect();
                v.konst = picked.and_then(|p| Tensor::i64(shape, p).ok());
            }
            vec![v]
        }
        "Slice" => {
            let x = req(0)?;
            let r = x.shape.len();
            let get = |i: usize| -> Result<Option<Vec<i64>>> {
                match ins.get(i).copied().flatten() {
                    None => Ok(None),
                    Some(v) => Ok(Some(
                        v.ints()
                            .ok_or_else(|| err(format!("slice input {i} must be a constant")))?
                            .to_vec(),
                    )),
                }
            };
            let starts = get(1)?.ok_or_else(|| err("starts are required".into()))?;
            let ends = get(2)?.ok_or_else(|| err("ends are required".into()))?;
            let axes = get(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = get(4)?.unwrap_or_else(|| vec![1; starts.len()]);
            let sl = SliceSpec::resolve(&x.shape, &starts, &ends, &axes, &steps).ok_or_else(|| err(format!("slice {starts:?}..{ends:?} axes {axes:?} steps {steps:?} does not fit {:?}", x.shape)))?;
            let shape = sl.out_shape(&x.shape);
            let mut v = Value::new(x.elem, shape.clone());
            if let (Some(d), 1) = (x.ints(), r) {
                let (s, st) = (sl.start[0] as i64, sl.step[0]);
                let picked: Vec<i64> = (0..shape[0] as i64)
                    .map(|k| d[(s + k * st) as usize])
                    .collect();
                v.konst = Tensor::i64(shape, picked).ok();
            }
            vec![v]
        }
        "Resize" => {
            let x = req(0)?;
            let plan = ResizePlan::of(node, ins)?;
            vec![Value::new(x.elem, plan.output)]
        }
        "Expand" => {
            let x = req(0)?;
            let s: Vec<usize> = req(1)?
                .ints()
                .ok_or_else(|| err("shape must be a constant".into()))?
                .iter()
                .map(|&d| d as usize)
                .collect();
            let shape = broadcast(&x.shape, &s)
                .ok_or_else(|| err(format!("cannot expand {:?} to {:?}", x.shape, s)))?;
            vec![Value::new(x.elem, shape)]
        }
        "Pad" => {
            let x = req(0)?;
            let pads = req(1)?
                .ints()
                .ok_or_else(|| err("pads must be a constant".into()))?;
            let r = x.shape.len();
            if pads.len() != 2 * r {
                return Err(err(format!("pads {pads:?} do not fit rank {r}")));
            }
            let shape = (0..r)
                .map(|i| (x.shape[i] as i64 + pads[i] + pads[i + r]).max(0) as usize)
                .collect();
            vec![Value::new(x.elem, shape)]
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ArgMax" | "ArgMin" => {
            let x = req(0)?;
            let r = x.shape.len();
            let keep = node.int("keepdims", 1) != 0;
            let axes = reduce_axes(node, ins, r)?;
            let mut shape = Vec::new();
            for (i, &d) in x.shape.iter().enumerate() {
                if axes.contains(&i) {
                    if keep {
                        shape.push(1);
                    }
                } else {
                    shape.push(d);
                }
            }
            let elem = if op.starts_with("Arg") {
                Elem::I64
            } else {
                x.elem
            };
            vec![Value::new(elem, shape)]
        }
        "Gemm" => {
            let a = req(0)?;
            let b = req(1)?;
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(err(format!(
                    "Gemm needs 2-D inputs, got {:?} and {:?}",
                    a.shape, b.shape
                )));
            }
            let (m, ka) = if node.int("transA", 0) != 0 {
                (a.shape[1], a.shape[0])
            } else {
                (a.shape[0], a.shape[1])
            };
            let (kb, n) = if node.int("transB", 0) != 0 {
                (b.shape[1], b.shape[0])
            } else {
                (b.shape[0], b.shape[1])
            };
            if ka != kb {
                return Err(err(format!(
                    "inner dims differ: A {:?} B {:?}",
                    a.shape, b.shape
                )));
            }
            if let Some(c) = ins.get(2).copied().flatten() {
                if broadcast(&c.shape, &[m, n]).as_deref() != Some(&[m, n][..]) {
                    return Err(err(format!(
                        "C {:?} does not broadcast to [{m}, {n}]",
                        c.shape
                    )));
                }
            }
            vec![Value::new(Elem::F32, vec![m, n])]
        }
        "MatMul" => {
            let a = req(0)?;
            let b = req(1)?;
            if a.shape.len() < 2 || b.shape.len() < 2 {
                return Err(err("MatMul with a 1-D operand is not supported".into()));
            }
            let (ra, rb) = (a.shape.len(), b.shape.len());
            if a.shape[ra - 1] != b.shape[rb - 2] {
                return Err(err(format!(
                    "inner dims differ: {:?} x {:?}",
                    a.shape, b.shape
                )));
            }
            let mut shape = broadcast(&a.shape[..ra - 2], &b.shape[..rb - 2])
                .ok_or_else(|| err("batch dims do not broadcast".into()))?;
            shape.push(a.shape[ra - 2]);
            shape.push(b.shape[rb - 1]);
            vec![Value::new(Elem::F32, shape)]
        }
        "Conv" | "ConvTranspose" => {
            let x = req(0)?;
            let w = req(1)?;
            if x.shape.len() != 4 || w.shape.len() != 4 {
                return Err(err(format!(
                    "only 2-D convolutions (4-D tensors) are supported, got X {:?} W {:?}",
                    x.shape, w.shape
                )));
            }
            let group = node.int("group", 1).max(1) as usize;
            let kernel = w.shape[2..].to_vec();
            let win = Window::of(node, &x.shape[2..], kernel)?;
            if op == "Conv" {
                if x.shape[1] != w.shape[1] * group || w.shape[0] % group != 0 {
                    return Err(err(format!(
                        "X {:?} and W {:?} do not fit group {group}",
                        x.shape, w.shape
                    )));
                }
                let sp = win.output(node, &x.shape[2..])?;
                vec![Value::new(
                    Elem::F32,
                    vec![x.shape[0], w.shape[0], sp[0], sp[1]],
                )]
            } else {
                if x.shape[1] != w.shape[0] {
                    return Err(err(format!(
                        "X {:?} and W {:?} channel mismatch",
                        x.shape, w.shape
                    )));
                }
                let op_pad = node.ints("output_padding").unwrap_or_else(|| vec![0, 0]);
                if node.ints("output_shape").is_some() {
                    return Err(err(
                        "output_shape is not supported; give pads and output_padding".into(),
                    ));
                }
                let sp: Vec<usize> = (0..2)
                    .map(|i| {
                        let full = win.strides[i] * (x.shape[2 + i] - 1)
                            + op_pad[i] as usize
                            + win.extent(i);
                        full - win.pads[i] - win.pads[i + 2]
                    })
                    .collect();
                vec![Value::new(
                    Elem::F32,
                    vec![x.shape[0], w.shape[1] * group, sp[0], sp[1]],
                )]
            }
        }
        "MaxPool" | "AveragePool" => {
            let x = req(0)?;
            if x.shape.len() != 4 {
                return Err(err(format!(
                    "only 2-D pooling is supported, got {:?}",
                    x.shape
                )));
            }
            if node.int("ceil_mode", 0) != 0 {
                return Err(err("ceil_mode=1 is not supported".into()));
            }
            if node.outputs.len() > 1 && (op != "MaxPool" || node.int("storage_order", 0) != 0) {
                return Err(err(
                    "only MaxPool's row-major Indices output is supported".into()
                ));
            }
            let kernel: Vec<usize> = node
                .ints("kernel_shape")
                .ok_or_else(|| err("kernel_shape is required".into()))?
                .iter()
                .map(|&k| k as usize)
                .collect();
            let win = Window::of(node, &x.shape[2..], kernel)?;
            let sp = win.output(node, &x.shape[2..])?;
            let shape = vec![x.shape[0], x.shape[1], sp[0], sp[1]];
            let mut outs = vec![Value::new(x.elem, shape.clone())];
            if node.outputs.len() > 1 {
                outs.push(Value::new(Elem::I64, shape));
            }
            outs
        }
        "ScatterElements" => {
            let (x, i, u) = (req(0)?, req(1)?, req(2)?);
            let r = x.shape.len();
            norm_axis(node.int("axis", 0), r).ok_or_else(|| err("axis out of range".into()))?;
            if i.elem != Elem::I64 || u.elem != x.elem || i.shape != u.shape || i.shape.len() != r {
                return Err(err(format!(
                    "indices {:?} (int64) and updates {:?} (the data's type) must have one shape of the data's rank {r}",
                    i.shape, u.shape
                )));
            }
            vec![same(x)]
        }
        "BatchNormalization" => {
            let x = req(0)?;
            if node.outputs.len() > 1 {
                return Err(err(
                    "training-mode outputs (running statistics) are not supported; export in eval mode".into(),
                ));
            }
            let c = x.shape.get(1).copied().unwrap_or(0);
            for i in 1..5 {
                if req(i)?.shape != [c] {
                    return Err(err(format!(
                        "input {i} has shape {:?}, expected [{c}] (the channels of {:?})",
                        req(i)?.shape,
                        x.shape
                    )));
                }
            }
            vec![same(x)]
        }
        "Split" => {
            let x = req(0)?;
            let axis = norm_axis(node.int("axis", 0), x.shape.len())
                .ok_or_else(|| err("axis out of range".into()))?;
            let parts = split_sizes(node, ins, x.shape[axis])?;
            parts
                .into_iter()
                .map(|p| {
                    let mut sh = x.shape.clone();
                    sh[axis] = p;
                    Value::new(x.elem, sh)
                })
                .collect()
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = req(0)?;
            let mut s = x.shape.clone();
            for d in s.iter_mut().skip(2) {
                *d = 1;
            }
            vec![Value::new(x.elem, s)]
        }
        _ => {
            return Err(GraphError::NoShapeRule {
                node: node.name.clone(),
                op: op.into(),
            })
        }
    };
    if out.len() < node.outputs.len() {
        return Err(err(format!(
            "has {} outputs; fieldtune knows {}",
            node.outputs.len(),
            out.len()
        )));
    }
    Ok(out)
}

/// A 2-D Resize over the last two axes of an `[N, C, H, W]` tensor with static scales or
/// sizes (`nearest` or `linear`): both modes are a linear map per axis, `Y = A_h X A_w^T`
/// on every (n, c) plane, with the interpolation matrices of [`ResizePlan::matrix`].
#[derive(Clone, Debug)]
pub struct ResizePlan {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    /// Scale per spatial axis as the coordinate transform uses it (the `scales` input, or
    /// output / input length when `sizes` is given).
    pub scales: [f32; 2],
    pub linear: bool,
    pub coord: String,
    pub nearest: String,
}

impl ResizePlan {
    /// Reads a Resize node (opset 10 `X, scales`; opset 11+ `X, roi, scales, sizes`).
    pub fn of(node: &Node, ins: &[Option<&Value>]) -> Result<ResizePlan> {
        let err = |r: String| GraphError::node(node, r);
        let x = ins
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| err("input 0 is required".into()))?;
        let r = x.shape.len();
        if r != 4 {
            return Err(err(format!(
                "only 2-D Resize of [N, C, H, W] tensors is supported, got {:?}",
                x.shape
            )));
        }
        let mode = node.string("mode").unwrap_or_else(|| "nearest".into());
        if mode != "nearest" && mode != "linear" {
            return Err(err(format!(
                "mode '{mode}' is not supported (nearest, linear)"
            )));
        }
        let coord = node
            .string("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into());
        if ![
            "half_pixel",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
        ]
        .contains(&coord.as_str())
        {
            return Err(err(format!(
                "coordinate_transformation_mode '{coord}' is not supported (half_pixel, pytorch_half_pixel, align_corners, asymmetric)"
            )));
        }
        let nearest = node
            .string("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into());
        if !["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"].contains(&nearest.as_str())
        {
            return Err(err(format!(
                "nearest_mode '{nearest}' is not an ONNX value"
            )));
        }
        if node.int("exclude_outside", 0) != 0
            || node.int("antialias", 0) != 0
            || node.ints("axes").is_some()
            || node
                .string("keep_aspect_ratio_policy")
                .is_some_and(|p| p != "stretch")
        {
            return Err(err(
                "exclude_outside, antialias, axes and keep_aspect_ratio_policy are not supported"
                    .into(),
            ));
        }
        let (scales_ix, sizes_ix) = if node.inputs.len() == 2 {
            (1, usize::MAX)
        } else {
            (2, 3)
        };
        let present = |i: usize| ins.get(i).copied().flatten().filter(|v| v.numel() > 0);
        let output: Vec<usize>;
        let scales: [f32; 2];
        if let Some(v) = present(scales_ix) {
            let s = v
                .konst
                .as_ref()
                .and_then(|t| t.as_f32())
                .ok_or_else(|| err("scales must be a float constant at compile time".into()))?;
            if s.len() != r {
                return Err(err(format!("scales {s:?} do not fit rank {r}")));
            }
            output = x
                .shape
                .iter()
                .zip(s)
                .map(|(&d, &f)| (d as f32 * f).floor().max(0.0) as usize)
                .collect();
            if s[..2] != [1.0, 1.0] {
                return Err(err(format!(
                    "scales {s:?} resize the batch or channel axis"
                )));
            }
            scales = [s[2], s[3]];
        } else if let Some(v) = present(sizes_ix) {
            let s = v
                .ints()
                .ok_or_else(|| err("sizes must be an integer constant at compile time".into()))?;
            if s.len() != r || s.iter().any(|&d| d < 1) {
                return Err(err(format!("sizes {s:?} do not fit rank {r}")));
            }
            output = s.iter().map(|&d| d as usize).collect();
            scales = [
                output[2] as f32 / x.shape[2] as f32,
                output[3] as f32 / x.shape[3] as f32,
            ];
        } else {
            return Err(err("needs constant scales or sizes".into()));
        }
        if output[..2] != x.shape[..2] || output[2] == 0 || output[3] == 0 {
            return Err(err(format!(
                "output shape {output:?} from input {:?} is not a 2-D resize",
                x.shape
            )));
        }
        Ok(ResizePlan {
            input: x.shape.clone(),
            output,
            scales,
            linear: mode == "linear",
            coord,
            nearest,
        })
    }

    /// The interpolation matrix `[out, in]` (row-major) of spatial axis `a` (0: H, 1: W),
    /// as ONNX defines it (coordinates in f32 like the engines; outside samples take the
    /// edge value).
    pub fn matrix(&self, a: usize) -> Vec<f32> {
        let (n_in, n_out, scale) = (self.input[2 + a], self.output[2 + a], self.scales[a]);
        let mut m = vec![0f32; n_out * n_in];
        let last = n_in as f32 - 1.0;
        for i in 0..n_out {
            let xo = i as f32;
            let x = match self.coord.as_str() {
                "asymmetric" => xo / scale,
                "align_corners" if n_out == 1 => 0.0,
                "align_corners" => xo * last / (n_out as f32 - 1.0),
                "pytorch_half_pixel" if n_out == 1 => 0.0,
                _ => (xo + 0.5) / scale - 0.5,
            };
            let row = &mut m[i * n_in..(i + 1) * n_in];
            if self.linear {
                let x = x.clamp(0.0, last);
                let i0 = x.floor();
                let lam = x - i0;
                let i0 = i0 as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                row[i0] += 1.0 - lam;
                row[i1] += lam;
            } else {
                let f = x.floor();
                let frac = x - f;
                let k = match self.nearest.as_str() {
                    "floor" => f,
                    "ceil" => x.ceil(),
                    "round_prefer_ceil" if frac >= 0.5 => f + 1.0,
                    "round_prefer_floor" if frac > 0.5 => f + 1.0,
                    _ => f,
                };
                row[k.clamp(0.0, last) as usize] = 1.0;
            }
        }
        m
    }

    /// `Some(s)` when axis `a` repeats every input cell `s` times in a row (integer nearest
    /// upsampling): its gradient sums groups of `s`.
    pub fn replication(&self, a: usize) -> Option<usize> {
        let (n_in, n_out) = (self.input[2 + a], self.output[2 + a]);
        if self.linear || n_out % n_in != 0 {
            return None;
        }
        let s = n_out / n_in;
        let m = self.matrix(a);
        (0..n_out).all(|i| m[i * n_in + i / s] == 1.0).then_some(s)
    }
}

/// Reduction axes (attribute or, from opset 13/18, input), normalised; empty means all.
pub fn reduce_axes(node: &Node, ins: &[Option<&Value>], rank: usize) -> Result<Vec<usize>> {
    let err = |r: String| GraphError::node(node, r);
    let axes: Option<Vec<i64>> = if node.op.starts_with("Arg") {
        Some(vec![node.int("axis", 0)])
    } else {
        match ins.get(1).copied().flatten() {
            Some(a) => Some(
                a.ints()
                    .ok_or_else(|| err("axes must be a constant".into()))?
                    .to_vec(),
            ),
            None => node.ints("axes"),
        }
    };
    match axes {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&x| {
                norm_axis(x, rank)
                    .ok_or_else(|| err(format!("axis {x} out of range for rank {rank}")))
            })
            .collect(),
        _ if node.int("noop_with_empty_axes", 0) != 0 => {
            Err(err("noop_with_empty_axes is not supported".into()))
        }
        _ => Ok((0..rank).collect()),
    }
}

fn reshaped(x: &Value, shape: Vec<usize>) -> Value {
    let mut v = Value::new(x.elem, shape.clone());
    v.konst = x.konst.clone().and_then(|k| k.reshaped(shape).ok());
    v
}

/// Resolves an ONNX Reshape target (0 copies a dim unless allowzero, -1 infers one).
pub fn reshape_target(from: &[usize], spec: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = from.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*from.get(i)?),
            s if s >= 0 => out.push(s as usize),
            _ => return None,
        }
    }
    if let Some(i) = infer {
        let rest: usize = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, &d)| d)
            .product();
        if rest == 0 || !total.is_multiple_of(rest) {
            return None;
        }
        out[i] = total / rest;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

/// A resolved static slice: per-axis start, step and count.
#[derive(Clone, Debug)]
pub struct SliceSpec {
    pub start: Vec<usize>,
    pub step: Vec<i64>,
    pub count: Vec<usize>,
}

impl SliceSpec {
    /// Resolves ONNX Slice semantics (negative indices, clamping, steps) for a static shape.
    pub fn resolve(
        shape: &[usize],
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: &[i64],
    ) -> Option<SliceSpec> {
        let r = shape.len();
        let mut spec = SliceSpec {
            start: vec![0; r],
            step: vec![1; r],
            count: shape.to_vec(),
        };
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return None;
        }
        for k in 0..starts.len() {
            let a = norm_axis(axes[k], r)?;
            let dim = shape[a] as i64;
            let step = steps[k];
            if step == 0 {
                return None;
            }
            let fix = |v: i64| if v < 0 { v + dim } else { v };
            let (s, e) = if step > 0 {
                (fix(starts[k]).clamp(0, dim), fix(ends[k]).clamp(0, dim))
            } else {
                (
                    fix(starts[k]).clamp(0, dim - 1),
                    fix(ends[k]).clamp(-1, dim - 1),
                )
            };
            let count = if step > 0 {
                (e - s + step - 1).max(0) / step
            } else {
                (s - e - step - 1).max(0) / (-step)
            };
            spec.start[a] = s.max(0) as usize;
            spec.step[a] = step;
            spec.count[a] = count as usize;
        }
        Some(spec)
    }

    pub fn out_shape(&self, _shape: &[usize]) -> Vec<usize> {
        self.count.clone()
    }
}

fn fold_binary_i64(
    op: &str,
    a: &[i64],
    sa: &[usize],
    b: &[i64],
    sb: &[usize],
    out: &[usize],
) -> Option<Tensor> {
    let n: usize = out.iter().product();
    let idx = |flat: usize, s: &[usize]| -> usize {
        // Map an output index to a broadcast input index.
        let mut rem = flat;
        let mut res = 0;
        let mut stride = 1;
        for d in (0..out.len()).rev() {
            let coord = rem % out[d];
            rem /= out[d];
            let off = out.len() - s.len();
            if d >= off {
                let sd = s[d - off];
                res += (if sd == 1 { 0 } else { coord }) * stride;
                stride *= sd;
            }
        }
        res
    };
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = (a[idx(i, sa)], b[idx(i, sb)]);
        v.push(match op {
            "Add" => x.checked_add(y)?,
            "Sub" => x.checked_sub(y)?,
            "Mul" => x.checked_mul(y)?,
            "Div" if y != 0 => x / y,
            _ => return None,
        });
    }
    Tensor::i64(out.to_vec(), v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;
    use crate::ir::{attr, Elem};

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[4, 1, 3], &[2, 1]), Some(vec![4, 2, 3]));
        assert_eq!(broadcast(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast(&[3], &[4]), None);
    }

    #[test]
    fn reshape_targets_resolve_zero_and_minus_one() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false),
            Some(vec![2, 12])
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[-1, 4], false),
            Some(vec![6, 4])
        );
        assert_eq!(reshape_target(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshape_target(&[2, 3], &[-1, -1], false), None);
    }

    #[test]
    fn slices_clamp_and_step() {
        let s = SliceSpec::resolve(&[10], &[-3], &[i64::MAX], &[0], &[1]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (7, 3));
        let s = SliceSpec::resolve(&[10], &[1], &[8], &[0], &[3]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (1, 3));
        let s = SliceSpec::resolve(&[10], &[-1], &[-11], &[0], &[-1]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (9, 10));
    }

    #[test]
    fn an_exporter_shape_chain_folds_to_a_constant_reshape() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[8, 4, 3, 3]).unwrap();
        let shape = b.op("Shape", &[&x], vec![]).unwrap();
        let zero = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![0]).unwrap());
        let n = b
            .op("Gather", &[&shape, &zero], vec![attr::int("axis", 0)])
            .unwrap();
        let ax = b.ints(&[0]);
        let n1 = b.op("Unsqueeze", &[&n, &ax], vec![]).unwrap();
        let m1 = b.ints(&[-1]);
        let target = b
            .op("Concat", &[&n1, &m1], vec![attr::int("axis", 0)])
            .unwrap();
        let y = b.op("Reshape", &[&x, &target], vec![]).unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![8, 36]);
        assert_eq!(b.value(&target).unwrap().ints(), Some(&[8i64, -1][..]));
        b.output(&y).unwrap();
        let g = b.finish("t");
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Reshape"], "the shape chain folds away");
    }

    #[test]
    fn conv_and_pool_shapes_resolve_auto_pad() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[1, 3, 11, 11]).unwrap();
        let w = b.input("w", Elem::F32, &[8, 3, 3, 3]).unwrap();
        let y = b
            .op(
                "Conv",
                &[&x, &w],
                vec![
                    attr::string("auto_pad", "SAME_UPPER"),
                    attr::ints("strides", &[2, 2]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![1, 8, 6, 6]);
        let p = b
            .op(
                "MaxPool",
                &[&y],
                vec![
                    attr::ints("kernel_shape", &[3, 3]),
                    attr::ints("strides", &[2, 2]),
                    attr::ints("pads", &[1, 1, 1, 1]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&p).unwrap(), vec![1, 8, 3, 3]);
        let w2 = b.input("w2", Elem::F32, &[8, 2, 3, 3]).unwrap();
        let err = b.op("Conv", &[&x, &w2], vec![]).unwrap_err().to_string();
        assert!(err.contains("Conv") && err.contains("group"), "{err}");
    }
}
