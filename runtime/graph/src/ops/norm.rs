//! BatchNormalization: its inference-form shape (training forms are lowered by `lower`
//! before differentiation) and the declared VJP of the lowered batch-statistics form.

use crate::builder::{Builder, CustomVjp};
use crate::error::{GraphError, Result};
use crate::ir::Node;

use super::entry::{def, req, Grad, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[def("BatchNormalization", batch_norm, false, Grad::NoRule)];

fn batch_norm(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    if node.outputs.len() > 1 {
        return Err(err(
            "training-mode outputs (running statistics) are not supported; export in eval mode"
                .into(),
        ));
    }
    let c = x.shape.get(1).copied().unwrap_or(0);
    for i in 1..5 {
        if req(node, ins, i)?.shape != [c] {
            return Err(err(format!(
                "input {i} has shape {:?}, expected [{c}] (the channels of {:?})",
                req(node, ins, i)?.shape,
                x.shape
            )));
        }
    }
    Ok(vec![Value::new(x.elem, x.shape.clone())])
}

/// The tensors a declared VJP gives gradients to.
pub fn custom_inputs(vjp: &CustomVjp) -> [&str; 3] {
    match vjp {
        CustomVjp::BatchNormTrain { x, scale, bias, .. } => [x, scale, bias],
    }
}

/// Gradients of a subgraph with a declared VJP, as (tensor, gradient) pairs.
pub fn custom_rule(b: &mut Builder, vjp: &CustomVjp, dy: &str) -> Result<Vec<(String, String)>> {
    match vjp {
        CustomVjp::BatchNormTrain {
            x,
            scale,
            bias,
            xhat,
            inv_std,
            scale_b,
            axes,
            count,
        } => {
            let c = b.shape(scale)?;
            let dbias = b.reduce("ReduceSum", dy, axes, true)?;
            let gx = b.op("Mul", &[dy, xhat], vec![])?;
            let dscale = b.reduce("ReduceSum", &gx, axes, true)?;
            let inv_n = b.scalar(1.0 / *count as f32);
            let mb = b.op("Mul", &[&dbias, &inv_n], vec![])?;
            let ms = b.op("Mul", &[&dscale, &inv_n], vec![])?;
            let t = b.op("Mul", &[xhat, &ms], vec![])?;
            let u = b.op("Sub", &[dy, &mb], vec![])?;
            let u = b.op("Sub", &[&u, &t], vec![])?;
            let k = b.op("Mul", &[scale_b, inv_std], vec![])?;
            let dx = b.op("Mul", &[&u, &k], vec![])?;
            let dscale = b.reshape(&dscale, &c)?;
            let dbias = b.reshape(&dbias, &c)?;
            Ok(vec![
                (x.clone(), dx),
                (scale.clone(), dscale),
                (bias.clone(), dbias),
            ])
        }
    }
}
