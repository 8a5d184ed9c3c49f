//! Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Elem, Node};

use super::conv::{output_padding, window_attrs, ConvWindow};
use super::entry::{def, dy, only, req, rule, vec_i64, Grad, Grads, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[
    def("MaxPool", pool, false, rule(maxpool_back)),
    def("AveragePool", pool, false, rule(avgpool_back)),
    def(
        "GlobalAveragePool",
        global_pool,
        false,
        rule(global_average_back),
    ),
    def("GlobalMaxPool", global_pool, false, Grad::NoRule),
];

/// MaxPool (with its optional row-major Indices output; floor or ceil mode) and AveragePool
/// (floor mode), 2-D.
fn pool(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    if x.shape.len() != 4 {
        return Err(err(format!(
            "only 2-D pooling is supported, got {:?}",
            x.shape
        )));
    }
    let ceil = node.int("ceil_mode", 0) != 0;
    if ceil && node.op != "MaxPool" {
        return Err(err(
            "ceil_mode=1 is supported for MaxPool only (export AveragePool with ceil_mode=False)"
                .into(),
        ));
    }
    if node.outputs.len() > 1 && (node.op != "MaxPool" || node.int("storage_order", 0) != 0) {
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
    let win = ConvWindow::of(node, &x.shape[2..], kernel)?;
    let sp = win.output_in_mode(node, &x.shape[2..], ceil)?;
    let shape = vec![x.shape[0], x.shape[1], sp[0], sp[1]];
    let mut outs = vec![Value::new(x.elem, shape.clone())];
    if node.outputs.len() > 1 {
        outs.push(Value::new(Elem::I64, shape));
    }
    Ok(outs)
}

fn global_pool(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    if x.shape.len() < 3 {
        return Err(GraphError::node(
            node,
            format!("input of shape {:?}; N x C x spatial expected", x.shape),
        ));
    }
    let mut s = x.shape.clone();
    for d in s.iter_mut().skip(2) {
        *d = 1;
    }
    Ok(vec![Value::new(x.elem, s)])
}

/// GlobalAveragePool: the output's gradient over the plane's cell count, spread back.
fn global_average_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    let count: usize = xs[2..].iter().product();
    let c = b.scalar(1.0 / count as f32);
    let g = b.op("Mul", &[&dy, &c], vec![])?;
    let shape = b.ints(&vec_i64(&xs));
    Ok(only(n, b.op("Expand", &[&g, &shape], vec![])?))
}

/// MaxPool: each output's gradient goes to the input cell its window picked, read from the
/// forward node's own Indices output (added to it here) and scattered back with one
/// ScatterElements per (n, c) plane (summing where windows overlap); tuned targets use the
/// fieldtune-domain `MaxPoolGrad` (one pass, the same sums). Both engines pick the first
/// maximum of a window, as PyTorch does. ONNX Runtime's indices count across the whole
/// tensor, tract's within the plane: the plane-local index is their remainder by H*W.
fn maxpool_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = &dy(n, gy)?;
    let x = n.inputs[0].clone();
    let y = n.outputs[0].clone();
    let xs = b.shape(&x)?;
    let ys = b.shape(&y)?;
    if n.int("storage_order", 0) != 0 {
        return Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: "MaxPool (storage_order=1)".into(),
        });
    }
    let kernel: Vec<usize> = n
        .ints("kernel_shape")
        .unwrap_or_default()
        .iter()
        .map(|&k| k as usize)
        .collect();
    let win = ConvWindow::of(n, &xs[2..], kernel)?;
    let overlap = (0..2).any(|a| win.strides[a] < win.extent(a));
    let idx = match n.outputs.get(1).filter(|o| !o.is_empty()) {
        Some(i) => i.clone(),
        None => b.add_output(&y, "maxpool_indices", Value::new(Elem::I64, ys.clone()))?,
    };
    if b.fieldtune_ops() {
        let g = b.fused("MaxPoolGrad", &[dy, &idx, &x], (None, 1), vec![])?;
        return Ok(only(n, g[0].clone()));
    }
    let (nb, c, plane) = (xs[0], xs[1], xs[2] * xs[3]);
    let hw = b.ints(&[plane as i64]);
    let local = b.op("Mod", &[&idx, &hw], vec![])?;
    let local = b.reshape(&local, &[nb, c, ys[2] * ys[3]])?;
    let upd = b.reshape(dy, &[nb, c, ys[2] * ys[3]])?;
    let zero = b.scalar(0.0);
    let shape = b.ints(&[nb as i64, c as i64, plane as i64]);
    let zeros = b.op("Expand", &[&zero, &shape], vec![])?;
    let mut at = vec![attr::int("axis", 2)];
    if overlap {
        at.push(attr::string("reduction", "add"));
    }
    let g = b.op("ScatterElements", &[&zeros, &local, &upd], at)?;
    Ok(only(n, b.reshape(&g, &xs)?))
}

/// AveragePool (2-D, floor mode): each output's gradient, divided by its window's count
/// (the kernel size, or only the cells inside the input when pads are excluded), is
/// scattered back with a depthwise ConvTranspose of ones.
fn avgpool_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = &dy(n, gy)?;
    let x = n.inputs[0].clone();
    let xs = b.shape(&x)?;
    let ys = b.shape(dy)?;
    if xs.len() != 4 {
        return Err(GraphError::node(
            n,
            "only 2-D AveragePool has a gradient rule",
        ));
    }
    if n.int("ceil_mode", 0) != 0 {
        return Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: "AveragePool (ceil_mode)".into(),
        });
    }
    let kernel: Vec<usize> = n
        .ints("kernel_shape")
        .unwrap_or_default()
        .iter()
        .map(|&k| k as usize)
        .collect();
    let win = ConvWindow::of(n, &xs[2..], kernel)?;
    let (c, kh, kw) = (xs[1], win.kernel[0], win.kernel[1]);
    let include_pad = n.int("count_include_pad", 0) != 0;
    let padded = win.pads.iter().any(|&p| p > 0);
    let scaled = if include_pad || !padded {
        let s = b.scalar(1.0 / (kh * kw) as f32);
        b.op("Mul", &[dy, &s], vec![])?
    } else {
        // Count of input cells in each output's window.
        let (oh, ow) = (ys[2], ys[3]);
        let mut inv = vec![0f32; oh * ow];
        for i in 0..oh {
            for j in 0..ow {
                let cnt = |o: usize, k: usize, d: usize, s: usize, p: usize, len: usize| {
                    (0..k)
                        .filter(|&t| {
                            let pos = (o * s + t * d) as i64 - p as i64;
                            pos >= 0 && pos < len as i64
                        })
                        .count()
                };
                let ch = cnt(i, kh, win.dilations[0], win.strides[0], win.pads[0], xs[2]);
                let cw = cnt(j, kw, win.dilations[1], win.strides[1], win.pads[1], xs[3]);
                inv[i * ow + j] = 1.0 / (ch * cw).max(1) as f32;
            }
        }
        let w = b.constant(Tensor::f32(vec![1, 1, oh, ow], inv).expect("sized"));
        b.op("Mul", &[dy, &w], vec![])?
    };
    let ones = b.constant(Tensor::f32(vec![c, 1, kh, kw], vec![1.0; c * kh * kw]).expect("sized"));
    let opad = output_padding(&win, &xs[2..], &ys[2..]);
    let mut at = window_attrs(&win);
    at.push(attr::int("group", c as i64));
    at.push(attr::ints("output_padding", &opad));
    at.push(attr::ints("kernel_shape", &[kh as i64, kw as i64]));
    Ok(only(n, b.op("ConvTranspose", &[&scaled, &ones], at)?))
}
