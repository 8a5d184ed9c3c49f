//! Constants, shape queries and layout ops: Constant, Shape, Size, ConstantOfShape, Range,
//! Reshape, Flatten, Unsqueeze, Squeeze, Transpose, Expand.

use fieldtune_tensor::{Tensor, TensorData};

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, bool_from_proto, tensor_from_proto, Elem, Node};

use super::entry::{def, dy, only, req, rule, unbroadcast, Grad, Grads, OpDef};
use super::value::{broadcast, norm_axis, reshaped, Value, FOLD_LIMIT};

pub const OPS: &[OpDef] = &[
    def("Constant", constant, true, Grad::Never),
    def("Shape", shape, true, Grad::Never),
    def("Size", size, true, Grad::Never),
    def("ConstantOfShape", constant_of_shape, true, Grad::Never),
    def("Range", range, true, Grad::Never),
    def("Reshape", reshape, true, rule(reshape_back)),
    def("Flatten", flatten, true, rule(reshape_back)),
    def("Unsqueeze", unsqueeze_squeeze, true, rule(reshape_back)),
    def("Squeeze", unsqueeze_squeeze, true, rule(reshape_back)),
    def("Transpose", transpose, true, rule(transpose_back)),
    def("Expand", expand, false, rule(expand_back)),
];

fn constant(node: &Node, _: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let t = if let Some(a) = node.attr("value") {
        let tp =
            a.t.as_ref()
                .ok_or_else(|| err("value attribute holds no tensor".into()))?;
        if let Some(bits) = bool_from_proto(tp)? {
            // A bool constant (e.g. Dropout's training_mode): its 0/1 value for folding
            // comparisons downstream; the node itself stays (see the builder).
            let mut v = Value::konst(bits);
            v.elem = Elem::Bool;
            return Ok(vec![v]);
        }
        tensor_from_proto(tp)?
    } else if let Some(a) = node.attr("value_float") {
        Tensor::scalar_f32(a.f)
    } else if let Some(a) = node.attr("value_floats") {
        Tensor::f32(vec![a.floats.len()], a.floats.clone()).map_err(|e| err(e.to_string()))?
    } else if let Some(a) = node.attr("value_int") {
        Tensor::i64(vec![], vec![a.i]).map_err(|e| err(e.to_string()))?
    } else if let Some(a) = node.attr("value_ints") {
        Tensor::i64(vec![a.ints.len()], a.ints.clone()).map_err(|e| err(e.to_string()))?
    } else {
        return Err(err("no supported value attribute".into()));
    };
    Ok(vec![Value::konst(t)])
}

fn shape(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let r = x.shape.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = clamp(node.int("start", 0));
    let e = clamp(node.int("end", r));
    let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Ok(vec![Value::konst(
        Tensor::i64(vec![dims.len()], dims).expect("1-D"),
    )])
}

fn size(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    Ok(vec![Value::konst(
        Tensor::i64(vec![], vec![req(node, ins, 0)?.numel() as i64]).expect("scalar"),
    )])
}

fn constant_of_shape(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let spec = req(node, ins, 0)?
        .ints()
        .ok_or_else(|| err("shape input must be a constant".into()))?;
    let shape = dims_of(node, "shape", spec)?;
    let val = match node.attr("value").and_then(|a| a.t.as_ref()) {
        Some(tp) => tensor_from_proto(tp)?,
        None => Tensor::f32(vec![1], vec![0.0]).expect("1 elem"),
    };
    let n = numel(node, &shape)?;
    if n > FOLD_LIMIT {
        // Too large to fold: a plain value of that shape, never allocated here.
        let mut v = Value::konst(val);
        v.shape = shape;
        v.konst = None;
        return Ok(vec![v]);
    }
    let k = match val.data() {
        TensorData::F32(v) => {
            Tensor::f32(shape.clone(), vec![v.first().copied().unwrap_or(0.0); n])
        }
        TensorData::I64(v) => Tensor::i64(shape.clone(), vec![v.first().copied().unwrap_or(0); n]),
    }
    .map_err(|e| err(e.to_string()))?;
    Ok(vec![Value::konst(k)])
}

/// Range over constant integer scalars (exporters' `arange` in index and mask chains) folds;
/// a float range or non-constant bounds are refused by name.
fn range(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let scalar = |i: usize, what: &str| -> Result<i64> {
        match req(node, ins, i)?.ints() {
            Some([v]) => Ok(*v),
            _ => Err(err(format!(
                "Range's {what} must be a constant integer scalar (float or computed ranges are not supported)"
            ))),
        }
    };
    let (start, limit, delta) = (
        scalar(0, "start")?,
        scalar(1, "limit")?,
        scalar(2, "delta")?,
    );
    if delta == 0 {
        return Err(err("Range's delta is 0".into()));
    }
    // ONNX: max(ceil((limit - start) / delta), 0) elements.
    let span = i128::from(limit) - i128::from(start);
    let d = i128::from(delta);
    let n = ((span + d - d.signum()) / d).max(0);
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= FOLD_LIMIT)
        .ok_or_else(|| err(format!("Range gives {n} elements, more than {FOLD_LIMIT}")))?;
    let vals: Vec<i64> = (0..n as i64).map(|i| start + i * delta).collect();
    Ok(vec![Value::konst(
        Tensor::i64(vec![n], vals).map_err(|e| err(e.to_string()))?,
    )])
}

/// A shape given as i64 values (a shape input), each checked to be a dimension: at least 0
/// and within usize; errors name the node, the input and the dimension.
pub(crate) fn dims_of(node: &Node, what: &str, spec: &[i64]) -> Result<Vec<usize>> {
    spec.iter()
        .enumerate()
        .map(|(i, &d)| {
            usize::try_from(d).map_err(|_| {
                GraphError::node(
                    node,
                    format!("{what} {spec:?}: dimension {i} is {d}; a dimension is at least 0"),
                )
            })
        })
        .collect()
}

/// The element count of `shape`, refused naming the node when it overflows.
pub(crate) fn numel(node: &Node, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            GraphError::node(
                node,
                format!("shape {shape:?}: the product of its dimensions overflows"),
            )
        })
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
            s if s >= 0 => out.push(usize::try_from(s).ok()?),
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

fn reshape(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let spec = req(node, ins, 1)?.ints().ok_or_else(|| GraphError::node(node, "target shape must be known at compile time (fieldtune folds Shape chains for a static batch)"))?;
    let shape = reshape_target(&x.shape, spec, node.int("allowzero", 0) != 0).ok_or_else(|| {
        GraphError::node(node, format!("cannot reshape {:?} to {:?}", x.shape, spec))
    })?;
    Ok(vec![reshaped(x, shape)])
}

fn flatten(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let axis = node.int("axis", 1);
    let r = x.shape.len();
    let a = if axis < 0 { axis + r as i64 } else { axis };
    if !(0..=r as i64).contains(&a) {
        return Err(GraphError::node(
            node,
            format!("axis {axis} out of range for rank {r}"),
        ));
    }
    let a = a as usize;
    let shape = vec![x.shape[..a].iter().product(), x.shape[a..].iter().product()];
    Ok(vec![reshaped(x, shape)])
}

fn unsqueeze_squeeze(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    let axes: Option<Vec<i64>> = match ins.get(1).copied().flatten() {
        Some(a) => Some(
            a.ints()
                .ok_or_else(|| err("axes must be a constant".into()))?
                .to_vec(),
        ),
        None => node.ints("axes"),
    };
    let shape = if node.op == "Unsqueeze" {
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
                    .map(|&a| norm_axis(a, r).ok_or_else(|| err(format!("axis {a} out of range"))))
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
    Ok(vec![reshaped(x, shape)])
}

fn transpose(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let r = x.shape.len();
    let perm: Vec<usize> = match node.ints("perm") {
        Some(p) => p.iter().map(|&a| a as usize).collect(),
        None => (0..r).rev().collect(),
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..r).collect::<Vec<_>>() {
        return Err(GraphError::node(
            node,
            format!("perm {perm:?} is not a permutation of rank {r}"),
        ));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut v = Value::new(x.elem, shape.clone());
    // A constant i64 tensor (exporters transpose pad lists: Swin's window padding) folds.
    if let Some(k) = x.ints().filter(|k| k.len() <= FOLD_LIMIT) {
        let out_strides: Vec<usize> = (0..r)
            .map(|i| shape[i + 1..].iter().product::<usize>())
            .collect();
        let in_strides: Vec<usize> = (0..r)
            .map(|i| x.shape[i + 1..].iter().product::<usize>())
            .collect();
        let vals = (0..k.len())
            .map(|flat| {
                let src: usize = (0..r)
                    .map(|d| (flat / out_strides[d]) % shape[d] * in_strides[perm[d]])
                    .sum();
                k[src]
            })
            .collect();
        v.konst = Tensor::i64(shape, vals).ok();
    }
    Ok(vec![v])
}

fn expand(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let spec = req(node, ins, 1)?
        .ints()
        .ok_or_else(|| GraphError::node(node, "shape must be a constant"))?;
    let s = dims_of(node, "shape", spec)?;
    let shape = broadcast(&x.shape, &s)
        .ok_or_else(|| GraphError::node(node, format!("cannot expand {:?} to {:?}", x.shape, s)))?;
    Ok(vec![Value::new(x.elem, shape)])
}

/// Flatten, Reshape, Unsqueeze, Squeeze: the gradient takes the input's shape back.
fn reshape_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    Ok(only(n, b.reshape(&dy, &xs)?))
}

fn transpose_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    let perm: Vec<i64> = n
        .ints("perm")
        .unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(only(
        n,
        b.op("Transpose", &[&dy], vec![attr::ints("perm", &inv)])?,
    ))
}

fn expand_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    Ok(only(n, unbroadcast(b, &dy, &xs)?))
}
