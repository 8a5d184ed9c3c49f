//! Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ArgMax, ArgMin.

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Elem, Node};

use super::entry::{def, dy, only, req, rule, vec_i64, Grad, Grads, OpDef};
use super::value::{norm_axis, Value};

pub const OPS: &[OpDef] = &[
    def("ReduceSum", reduce, false, rule(sum_mean_back)),
    def("ReduceMean", reduce, false, rule(sum_mean_back)),
    def("ReduceMax", reduce, false, rule(extreme_back)),
    def("ReduceMin", reduce, false, rule(extreme_back)),
    def("ArgMax", reduce, false, Grad::Never),
    def("ArgMin", reduce, false, Grad::Never),
];

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

fn reduce(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
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
    let elem = if node.op.starts_with("Arg") {
        Elem::I64
    } else {
        x.elem
    };
    Ok(vec![Value::new(elem, shape)])
}

/// The reduced axes of node `n` over its input shape `xs`, and the shape with those axes
/// kept as 1.
fn kept_shape(b: &Builder, n: &Node, xs: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
    let ins: Vec<Option<&Value>> = n.inputs.iter().map(|i| b.value(i)).collect();
    let axes = reduce_axes(n, &ins, xs.len())?;
    let kept = xs
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    Ok((axes, kept))
}

/// ReduceSum, ReduceMean: the output's gradient spread back over the reduced axes (divided
/// by their size for the mean).
fn sum_mean_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    let (axes, kept) = kept_shape(b, n, &xs)?;
    let g = b.reshape(&dy, &kept)?;
    let g = if n.op == "ReduceMean" {
        let count: usize = axes.iter().map(|&a| xs[a]).product();
        let c = b.scalar(1.0 / count as f32);
        b.op("Mul", &[&g, &c], vec![])?
    } else {
        g
    };
    let shape = b.ints(&vec_i64(&xs));
    Ok(only(
        n,
        if kept == xs {
            g
        } else {
            b.op("Expand", &[&g, &shape], vec![])?
        },
    ))
}

/// ReduceMax, ReduceMin: the output's gradient goes to the input cells equal to the extreme,
/// split evenly where several tie, as PyTorch's `amax`/`amin` (and full `max()`/`min()`)
/// do; `max(dim)` would give it all to the index it returns.
fn extreme_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (x, y) = (&n.inputs[0], &n.outputs[0]);
    let xs = b.shape(x)?;
    let (axes, kept) = kept_shape(b, n, &xs)?;
    let yk = b.reshape(y, &kept)?;
    let hit = b.op("Equal", &[x, &yk], vec![])?;
    let (one, zero) = (b.scalar(1.0), b.scalar(0.0));
    let mask = b.op("Where", &[&hit, &one, &zero], vec![])?;
    let count = b.reduce("ReduceSum", &mask, &vec_i64(&axes), true)?;
    let g = b.reshape(&dy, &kept)?;
    let share = b.op("Div", &[&g, &count], vec![])?;
    Ok(only(n, b.op("Mul", &[&mask, &share], vec![])?))
}
