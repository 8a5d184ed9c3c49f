//! Activations (ReLU and its clipped, leaky and hard forms, sigmoid, tanh), softmax and
//! inference-mode Dropout.

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Node};

use super::elementwise::{pass, same};
use super::entry::{def, dy, only, req, rule, Grads, OpDef};
use super::value::{norm_axis, Value};

pub const OPS: &[OpDef] = &[
    def("Relu", same, false, rule(relu)),
    def("Sigmoid", same, false, rule(sigmoid)),
    def("Tanh", same, false, rule(tanh)),
    def("Clip", same, false, rule(clip)),
    def("LeakyRelu", same, false, rule(leaky_relu)),
    def("HardSigmoid", same, false, rule(hard_sigmoid)),
    def("HardSwish", same, false, rule(hard_swish)),
    def("Softmax", same, false, rule(softmax)),
    def("LogSoftmax", same, false, rule(softmax)),
    def("Dropout", dropout, false, rule(pass)),
];

/// Inference-mode dropout: identity (train mode is lowered by `random::dropout`).
fn dropout(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    req(node, ins, 0)?;
    if node.outputs.len() > 1 {
        return Err(GraphError::node(
            node,
            "Dropout's mask output is not supported",
        ));
    }
    same(node, ins)
}

fn relu(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    if b.fieldtune_ops() {
        return clip_grad(b, n, &dy, Some(0.0), None);
    }
    let zero = b.scalar(0.0);
    let pos = b.op("Greater", &[&n.outputs[0], &zero], vec![])?;
    Ok(only(n, b.op("Where", &[&pos, &dy, &zero], vec![])?))
}

/// The fieldtune-domain `ClipGrad` (tuned targets): `dy` where `lo < y < hi`, else 0.
fn clip_grad(b: &mut Builder, n: &Node, dy: &str, lo: Option<f32>, hi: Option<f32>) -> Grads {
    let mut attrs = Vec::new();
    if let Some(l) = lo {
        attrs.push(attr::float("min", l));
    }
    if let Some(h) = hi {
        attrs.push(attr::float("max", h));
    }
    let y = n.outputs[0].as_str();
    let g = b.fused("ClipGrad", &[dy, y], (None, 1), attrs)?;
    Ok(only(n, g[0].clone()))
}

fn sigmoid(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let y = &n.outputs[0];
    let one = b.scalar(1.0);
    let om = b.op("Sub", &[&one, y], vec![])?;
    let d = b.op("Mul", &[y, &om], vec![])?;
    Ok(only(n, b.op("Mul", &[&dy, &d], vec![])?))
}

fn tanh(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let y = &n.outputs[0];
    let one = b.scalar(1.0);
    let y2 = b.op("Mul", &[y, y], vec![])?;
    let d = b.op("Sub", &[&one, &y2], vec![])?;
    Ok(only(n, b.op("Mul", &[&dy, &d], vec![])?))
}

/// PyTorch's hardtanh/relu6: the gradient passes where min < x < max, read off the output
/// (min < y < max exactly there), as PyTorch's in-place ReLU6 does: the input (a
/// BatchNorm's output) need not stay alive for the backward pass.
fn clip(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let y = &n.outputs[0];
    let mut bound = |i: usize, name: &str| -> Option<String> {
        match n.input(i) {
            Some(t) => Some(t.to_string()),
            None => n.attr(name).map(|a| b.scalar(a.f)),
        }
    };
    let (lo, hi) = (bound(1, "min"), bound(2, "max"));
    // Constant bounds (the rule for ReLU6 and hardtanh) take the one-pass kernel.
    let konst = |t: &Option<String>| match t {
        None => Some(None),
        Some(t) => b
            .value(t)
            .and_then(|v| v.konst.as_ref())
            .and_then(|k| k.as_f32().filter(|s| s.len() == 1).map(|s| Some(s[0]))),
    };
    if b.fieldtune_ops() {
        if let (Some(l), Some(h)) = (konst(&lo), konst(&hi)) {
            return clip_grad(b, n, &dy, l, h);
        }
    }
    let mut mask: Option<String> = None;
    if let Some(lo) = lo {
        mask = Some(b.op("Greater", &[y, &lo], vec![])?);
    }
    if let Some(hi) = hi {
        let m = b.op("Less", &[y, &hi], vec![])?;
        mask = Some(match mask {
            Some(p) => b.op("And", &[&p, &m], vec![])?,
            None => m,
        });
    }
    Ok(only(
        n,
        match mask {
            Some(m) => {
                let zero = b.scalar(0.0);
                b.op("Where", &[&m, &dy, &zero], vec![])?
            }
            None => dy,
        },
    ))
}

fn leaky_relu(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let a = n.float("alpha", 0.01);
    let alpha = b.scalar(a);
    let zero = b.scalar(0.0);
    // With a positive slope, y > 0 exactly where x > 0: the output serves.
    let sign_of = if a > 0.0 { &n.outputs[0] } else { &n.inputs[0] };
    let pos = b.op("Greater", &[sign_of, &zero], vec![])?;
    let neg = b.op("Mul", &[&dy, &alpha], vec![])?;
    Ok(only(n, b.op("Where", &[&pos, &dy, &neg], vec![])?))
}

/// y = clip(alpha * x + beta, 0, 1): slope alpha strictly inside.
fn hard_sigmoid(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (al, be) = (n.float("alpha", 0.2), n.float("beta", 0.5));
    let (a, bb) = (b.scalar(al), b.scalar(be));
    let ax = b.op("Mul", &[&n.inputs[0], &a], vec![])?;
    let u = b.op("Add", &[&ax, &bb], vec![])?;
    let (zero, one) = (b.scalar(0.0), b.scalar(1.0));
    let gt = b.op("Greater", &[&u, &zero], vec![])?;
    let lt = b.op("Less", &[&u, &one], vec![])?;
    let inside = b.op("And", &[&gt, &lt], vec![])?;
    let g = b.op("Mul", &[&dy, &a], vec![])?;
    Ok(only(n, b.op("Where", &[&inside, &g, &zero], vec![])?))
}

/// y = x * clip(x / 6 + 1/2, 0, 1); PyTorch's backward: 0 below -3, x / 3 + 1/2 up to 3
/// (inclusive), 1 above.
fn hard_swish(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let x = &n.inputs[0];
    let (m3, p3) = (b.scalar(-3.0), b.scalar(3.0));
    let (third, half, zero) = (b.scalar(1.0 / 3.0), b.scalar(0.5), b.scalar(0.0));
    let xt = b.op("Mul", &[x, &third], vec![])?;
    let slope = b.op("Add", &[&xt, &half], vec![])?;
    let mid = b.op("Mul", &[&dy, &slope], vec![])?;
    let le3 = b.op("LessOrEqual", &[x, &p3], vec![])?;
    let upper = b.op("Where", &[&le3, &mid, &dy], vec![])?;
    let lo = b.op("Less", &[x, &m3], vec![])?;
    Ok(only(n, b.op("Where", &[&lo, &zero, &upper], vec![])?))
}

fn softmax(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let y = &n.outputs[0];
    let xs = b.shape(&n.inputs[0])?;
    let a = norm_axis(n.int("axis", -1), xs.len())
        .ok_or_else(|| GraphError::node(n, "axis out of range"))? as i64;
    Ok(only(
        n,
        if n.op == "Softmax" {
            let p = b.op("Mul", &[&dy, y], vec![])?;
            let s = b.reduce("ReduceSum", &p, &[a], true)?;
            let d = b.op("Sub", &[&dy, &s], vec![])?;
            b.op("Mul", &[y, &d], vec![])?
        } else {
            let s = b.reduce("ReduceSum", &dy, &[a], true)?;
            let p = b.op("Exp", &[y], vec![])?;
            let ps = b.op("Mul", &[&p, &s], vec![])?;
            b.op("Sub", &[&dy, &ps], vec![])?
        },
    ))
}
