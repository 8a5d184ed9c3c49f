//! BatchNormalization: its inference-form shape (training forms are lowered by `lower`
//! before differentiation) and the declared VJP of the lowered batch-statistics form.
//! LayerNormalization (transformers, ConvNeXt): shape rule and VJP.

use crate::builder::{Builder, CustomVjp};
use crate::error::{GraphError, Result};
use crate::ir::Node;

use super::entry::{def, dy, req, unbroadcast, Grad, Grads, OpDef};
use super::value::{broadcast, norm_axis, Value};

pub const OPS: &[OpDef] = &[
    def("BatchNormalization", batch_norm, false, Grad::NoRule),
    def(
        "LayerNormalization",
        layer_norm,
        false,
        Grad::Rule {
            inputs: super::entry::present,
            vjp: layer_norm_back,
        },
    ),
];

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
        CustomVjp::BatchNormTrain { x, scale, bias, .. }
        | CustomVjp::BatchNormTrainFused { x, scale, bias, .. } => [x, scale, bias],
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
        CustomVjp::BatchNormTrainFused {
            x,
            scale,
            bias,
            mean,
            inv_std,
        } => {
            let ins = [dy, x.as_str(), scale, mean, inv_std];
            let g = b.fused("BatchNormTrainGrad", &ins, (None, 3), vec![])?;
            Ok(vec![
                (x.clone(), g[0].clone()),
                (scale.clone(), g[1].clone()),
                (bias.clone(), g[2].clone()),
            ])
        }
    }
}

/// LayerNormalization (opset 17): Y like X, normalized over the axes from `axis` on; Scale
/// and B broadcast to those axes; the optional Mean and InvStdDev outputs keep the leading
/// axes and have 1 on the normalized ones.
fn layer_norm(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    let rank = x.shape.len();
    let axis = norm_axis(node.int("axis", -1), rank)
        .ok_or_else(|| err(format!("axis out of range for shape {:?}", x.shape)))?;
    let normalized = &x.shape[axis..];
    for i in 1..3 {
        let Some(p) = ins.get(i).copied().flatten() else {
            continue;
        };
        if broadcast(&p.shape, normalized).as_deref() != Some(normalized) {
            return Err(err(format!(
                "input {i} of shape {:?} does not broadcast to the normalized shape {normalized:?}",
                p.shape
            )));
        }
    }
    let mut outs = vec![Value::new(x.elem, x.shape.clone())];
    let stat: Vec<usize> = (0..rank)
        .map(|i| if i < axis { x.shape[i] } else { 1 })
        .collect();
    for _ in 1..node.outputs.len() {
        outs.push(Value::new(x.elem, stat.clone()));
    }
    Ok(outs)
}

/// LayerNormalization's VJP, statistics recomputed from X: with x̂ = (x - mean) * rstd over
/// the normalized axes and g = dy * scale,
/// dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)), dscale = Σ dy * x̂, dB = Σ dy
/// (sums over the axes that Scale and B broadcast along).
fn layer_norm_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let x = n.inputs[0].clone();
    let xs = b.shape(&x)?;
    let axis = norm_axis(n.int("axis", -1), xs.len())
        .ok_or_else(|| GraphError::node(n, "axis out of range"))?;
    let axes: Vec<i64> = (axis as i64..xs.len() as i64).collect();
    let eps = b.scalar(n.float("epsilon", 1e-5));
    let Standardized {
        inv_std: rstd,
        xhat,
        ..
    } = standardize(b, &x, &axes, &eps)?;
    let scale = n.inputs[1].clone();
    let g = b.op("Mul", &[&dy, &scale], vec![])?;
    let mg = b.reduce("ReduceMean", &g, &axes, true)?;
    let gx = b.op("Mul", &[&g, &xhat], vec![])?;
    let mgx = b.reduce("ReduceMean", &gx, &axes, true)?;
    let t = b.op("Mul", &[&xhat, &mgx], vec![])?;
    let u = b.op("Sub", &[&g, &mg], vec![])?;
    let v = b.op("Sub", &[&u, &t], vec![])?;
    let dx = b.op("Mul", &[&v, &rstd], vec![])?;
    let mut out = vec![None; n.inputs.len()];
    out[0] = Some(dx);
    let dyx = b.op("Mul", &[&dy, &xhat], vec![])?;
    out[1] = Some(unbroadcast(b, &dyx, &b.shape(&scale)?)?);
    if let Some(bias) = n.input(2) {
        let bias = bias.to_string();
        out[2] = Some(unbroadcast(b, &dy, &b.shape(&bias)?)?);
    }
    Ok(out)
}

/// `x` standardized over `axes`: its mean and (biased) variance there, kept as size-1 axes,
/// `1 / sqrt(var + eps)` and `(x - mean) / sqrt(var + eps)`.
pub struct Standardized {
    pub mean: String,
    pub var: String,
    pub inv_std: String,
    pub xhat: String,
}

/// Emits the statistics and the standardized tensor that batch-statistics BatchNorm
/// (`lower`) and LayerNormalization's VJP share; `eps` names a scalar.
pub fn standardize(b: &mut Builder, x: &str, axes: &[i64], eps: &str) -> Result<Standardized> {
    let mean = b.reduce("ReduceMean", x, axes, true)?;
    let xc = b.op("Sub", &[x, &mean], vec![])?;
    let sq = b.op("Mul", &[&xc, &xc], vec![])?;
    let var = b.reduce("ReduceMean", &sq, axes, true)?;
    let ve = b.op("Add", &[&var, eps], vec![])?;
    let sd = b.op("Sqrt", &[&ve], vec![])?;
    let one = b.scalar(1.0);
    let inv_std = b.op("Div", &[&one, &sd], vec![])?;
    let xhat = b.op("Mul", &[&xc, &inv_std], vec![])?;
    Ok(Standardized {
        mean,
        var,
        inv_std,
        xhat,
    })
}
