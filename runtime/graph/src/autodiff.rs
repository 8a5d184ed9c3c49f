//! Reverse-mode differentiation of a graph held in a [`Builder`]. The vector-Jacobian rule
//! of each op, emitting standard ai.onnx ops, lives in the op table (`crate::ops`); this
//! module is the pass that drives them. Shape-only subgraphs and stop-gradient tensors get
//! no gradient nodes; an op on the path from a parameter to the loss without a rule is
//! refused by name and node before anything is emitted.

use std::collections::{HashMap, HashSet};

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Elem, Node};
use crate::ops::{self, custom_inputs, custom_rule, Grad};

pub use crate::ops::{
    depthwise_weight_grad_taps, grad_inputs, grouped_weight_grad_conv, unbroadcast,
};

/// Gradients of the scalar `loss` with respect to each tensor in `wrt`. A tensor the loss
/// does not depend on maps to `None`.
pub fn backward(
    b: &mut Builder,
    loss: &str,
    wrt: &[String],
) -> Result<HashMap<String, Option<String>>> {
    let nodes: Vec<Node> = b.nodes().to_vec();
    // Forward: which tensors depend on a differentiated input through differentiable edges.
    let mut needs: HashSet<String> = wrt.iter().cloned().collect();
    for n in &nodes {
        if ops::never_differentiable(&n.op) {
            continue;
        }
        let live = match grad_inputs(n) {
            Some(ix) => ix.iter().any(|&i| needs.contains(&n.inputs[i])),
            None => n.inputs.iter().any(|i| needs.contains(i)),
        };
        if live {
            for o in &n.outputs {
                let float = b.value(o).map(|v| v.elem == Elem::F32).unwrap_or(false);
                if float && !b.is_no_grad(o) {
                    needs.insert(o.clone());
                }
            }
        }
    }
    if !needs.contains(loss) {
        return Ok(wrt.iter().map(|w| (w.clone(), None)).collect());
    }
    // Backward: nodes on a path to the loss.
    let mut reach: HashSet<String> = HashSet::from([loss.to_string()]);
    let mut relevant = Vec::new();
    for n in nodes.iter().rev() {
        if !n
            .outputs
            .iter()
            .any(|o| reach.contains(o) && needs.contains(o))
        {
            continue;
        }
        if let Some(vjp) = n.outputs.first().and_then(|y| b.custom_vjp(y)) {
            // The subgraph's own nodes get no gradients: only its declared inputs do.
            for t in custom_inputs(vjp) {
                if needs.contains(t) {
                    reach.insert(t.to_string());
                }
            }
            relevant.push(n.clone());
            continue;
        }
        let Some(ix) = grad_inputs(n) else {
            return Err(GraphError::NoGradRule {
                node: n.name.clone(),
                op: n.op.clone(),
            });
        };
        // Gradients flow only into float tensors; a node with no float gradient input (a
        // Cast from an integer) passes none.
        let float = |t: &str| b.value(t).map(|v| v.elem) == Some(Elem::F32);
        let ix: Vec<usize> = ix.into_iter().filter(|&i| float(&n.inputs[i])).collect();
        if ix.is_empty() {
            continue;
        }
        for i in ix {
            if needs.contains(&n.inputs[i]) {
                reach.insert(n.inputs[i].clone());
            }
        }
        relevant.push(n.clone());
    }
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    let seed_shape = b.shape(loss)?;
    if seed_shape.iter().product::<usize>() != 1 {
        return Err(GraphError::Tensor {
            tensor: loss.into(),
            reason: format!("loss must be a scalar, has shape {seed_shape:?}"),
        });
    }
    let seed = b.constant(Tensor::f32(seed_shape, vec![1.0]).expect("scalar"));
    grads.insert(loss.into(), vec![seed]);
    for n in &relevant {
        let mut gy = Vec::with_capacity(n.outputs.len());
        for o in &n.outputs {
            gy.push(match grads.remove(o) {
                Some(parts) => Some(sum(b, parts)?),
                None => None,
            });
        }
        if gy.iter().all(Option::is_none) {
            continue;
        }
        if let Some(vjp) = n.outputs.first().and_then(|y| b.custom_vjp(y)).cloned() {
            let dy = gy[0].clone().expect("custom VJPs have one output");
            for (t, g) in custom_rule(b, &vjp, &dy)? {
                if needs.contains(&t) {
                    grads.entry(t).or_default().push(g);
                }
            }
            continue;
        }
        let gx = vjp(b, n, &gy)?;
        for (i, g) in gx.into_iter().enumerate() {
            if let Some(g) = g {
                if needs.contains(&n.inputs[i]) {
                    grads.entry(n.inputs[i].clone()).or_default().push(g);
                }
            }
        }
    }
    let mut out = HashMap::new();
    for w in wrt {
        let g = match grads.remove(w) {
            Some(parts) => Some(sum(b, parts)?),
            None => None,
        };
        out.insert(w.clone(), g);
    }
    Ok(out)
}

fn sum(b: &mut Builder, parts: Vec<String>) -> Result<String> {
    let mut it = parts.into_iter();
    let mut acc = it.next().expect("non-empty");
    for p in it {
        acc = b.op("Add", &[&acc, &p], vec![])?;
    }
    Ok(acc)
}

/// The vector-Jacobian product of one node, from its op's entry in the table.
fn vjp(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Result<Vec<Option<String>>> {
    match ops::lookup(&n.op).map(|d| &d.grad) {
        Some(Grad::Rule { vjp, .. }) => vjp(b, n, gy),
        _ => Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: n.op.clone(),
        }),
    }
}
