//! The fieldtune-domain ops of tuned train steps (`crate::target`): shape rules only. They
//! are emitted by `lower` and by gradient rules, never read from a model; the one-pass kernels
//! behind them are `fieldtune-kernels`, registered by the engines that run them.
//!
//! - `BatchNormTrain(x, scale, bias, running_mean, running_var) -> (y, mean, inv_std,
//!   new_running_mean, new_running_var)`, attributes `epsilon`, `momentum` (ONNX's
//!   convention); its gradient is the declared `CustomVjp::BatchNormTrainFused`.
//! - `BatchNormTrainGrad(dy, x, scale, mean, inv_std) -> (dx, dscale, dbias)`.
//! - `ClipGrad(dy, y) -> dx`, attributes `min`, `max` (absent: unbounded on that side).
//! - `MaxPoolGrad(dy, indices, x) -> dx`: a 2-D MaxPool's gradient from its Indices output
//!   (either engine's convention: the index's remainder by H*W is the plane-local cell), dx
//!   shaped like x (x is read for its shape only).
//! - `DepthwiseConvWgrad(x, dy) -> dW`: the weight gradient of a 2-D depthwise convolution
//!   (group = C in = C out), attributes `kernel_shape`, `strides`, `dilations`, `pads` as the
//!   forward Conv's; dW is `[C, 1, KH, KW]`.

use crate::error::{GraphError, Result};
use crate::ir::{Elem, Node};

use super::conv::ConvWindow;
use super::entry::{def, req, Grad, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[
    def("BatchNormTrain", batch_norm_train, false, Grad::NoRule),
    def(
        "BatchNormTrainGrad",
        batch_norm_train_grad,
        false,
        Grad::Never,
    ),
    def("ClipGrad", clip_grad, false, Grad::Never),
    def("MaxPoolGrad", max_pool_grad, false, Grad::Never),
    def(
        "DepthwiseConvWgrad",
        depthwise_conv_wgrad,
        false,
        Grad::Never,
    ),
];

/// x's channels, after checking that the inputs from `first_channel_input` on are [C].
fn channels(node: &Node, ins: &[Option<&Value>], x: usize, first: usize) -> Result<usize> {
    let xs = &req(node, ins, x)?.shape;
    if xs.len() < 2 {
        return Err(GraphError::node(
            node,
            format!("input of rank {} (need N, C, ...)", xs.len()),
        ));
    }
    let c = xs[1];
    for i in first..ins.len() {
        if req(node, ins, i)?.shape != [c] {
            return Err(GraphError::node(
                node,
                format!(
                    "input {i} has shape {:?}, expected [{c}]",
                    req(node, ins, i)?.shape
                ),
            ));
        }
    }
    Ok(c)
}

fn batch_norm_train(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let c = channels(node, ins, 0, 1)?;
    let x = req(node, ins, 0)?;
    let mut outs = vec![Value::new(Elem::F32, x.shape.clone())];
    outs.extend((0..4).map(|_| Value::new(Elem::F32, vec![c])));
    Ok(outs)
}

fn batch_norm_train_grad(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let c = channels(node, ins, 1, 2)?;
    let (dy, x) = (req(node, ins, 0)?, req(node, ins, 1)?);
    if dy.shape != x.shape {
        return Err(GraphError::node(
            node,
            format!("dy has shape {:?}, x {:?}", dy.shape, x.shape),
        ));
    }
    Ok(vec![
        Value::new(Elem::F32, x.shape.clone()),
        Value::new(Elem::F32, vec![c]),
        Value::new(Elem::F32, vec![c]),
    ])
}

fn clip_grad(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (dy, y) = (req(node, ins, 0)?, req(node, ins, 1)?);
    if dy.shape != y.shape {
        return Err(GraphError::node(
            node,
            format!("dy has shape {:?}, y {:?}", dy.shape, y.shape),
        ));
    }
    Ok(vec![Value::new(Elem::F32, y.shape.clone())])
}

fn max_pool_grad(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (dy, idx, x) = (req(node, ins, 0)?, req(node, ins, 1)?, req(node, ins, 2)?);
    let err = |r: String| Err(GraphError::node(node, r));
    if x.shape.len() != 4 || dy.shape.len() != 4 || dy.shape[..2] != x.shape[..2] {
        return err(format!(
            "dy has shape {:?}, x {:?} (need [N, C, H, W] for both, same N and C)",
            dy.shape, x.shape
        ));
    }
    if idx.shape != dy.shape || idx.elem != Elem::I64 {
        return err(format!(
            "indices are {:?} {:?}, expected int64 shaped like dy {:?}",
            idx.elem, idx.shape, dy.shape
        ));
    }
    Ok(vec![Value::new(Elem::F32, x.shape.clone())])
}

/// dW `[C, 1, KH, KW]` of x `[N, C, H, W]`, after checking that dy is the forward Conv's
/// output size for x and the window.
fn depthwise_conv_wgrad(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (x, dy) = (req(node, ins, 0)?, req(node, ins, 1)?);
    let err = |r: String| Err(GraphError::node(node, r));
    if x.shape.len() != 4 || dy.shape.len() != 4 || dy.shape[..2] != x.shape[..2] {
        return err(format!(
            "dy has shape {:?}, x {:?} (need [N, C, H, W] for both, same N and C)",
            dy.shape, x.shape
        ));
    }
    let kernel: Vec<usize> = match node.ints("kernel_shape") {
        Some(k) if k.len() == 2 && k.iter().all(|&v| v >= 1) => {
            k.iter().map(|&v| v as usize).collect()
        }
        k => {
            return err(format!(
                "kernel_shape {k:?}: expected 2 sizes of at least 1"
            ))
        }
    };
    let win = ConvWindow::of(node, &x.shape[2..], kernel.clone())?;
    let out = win.output(node, &x.shape[2..])?;
    if out != dy.shape[2..] {
        return err(format!(
            "dy has shape {:?}, but the window over x {:?} gives {out:?}",
            dy.shape, x.shape
        ));
    }
    Ok(vec![Value::new(
        Elem::F32,
        vec![x.shape[1], 1, kernel[0], kernel[1]],
    )])
}
