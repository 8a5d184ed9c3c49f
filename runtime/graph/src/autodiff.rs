//! Reverse-mode differentiation of a graph held in a [`Builder`]: one vector-Jacobian rule
//! per op, each emitting standard ai.onnx ops. Shape-only subgraphs and stop-gradient
//! tensors get no gradient nodes; an op on the path from a parameter to the loss without a
//! rule is refused by name and node before anything is emitted.

use std::collections::{HashMap, HashSet};

use fieldtune_tensor::Tensor;

use crate::builder::{Builder, CustomVjp};
use crate::error::{GraphError, Result};
use crate::infer::{norm_axis, reduce_axes, ResizePlan, SliceSpec, Value, Window};
use crate::ir::{attr, Elem, Node};

/// Ops whose outputs never carry gradients (integer, boolean or piecewise-constant results).
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "ArgMax",
    "ArgMin",
    "Greater",
    "Less",
    "Equal",
    "GreaterOrEqual",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "ConstantOfShape",
    "Constant",
    "Floor",
    "Ceil",
];

/// The inputs of `node` that gradients flow into, or `None` when the op has no rule.
pub fn grad_inputs(node: &Node) -> Option<Vec<usize>> {
    let n = node.inputs.len();
    let all = || (0..n).filter(|&i| node.input(i).is_some()).collect();
    Some(match node.op.as_str() {
        "Relu" | "Exp" | "Log" | "Neg" | "Sqrt" | "Sigmoid" | "Tanh" | "Identity" | "Softmax"
        | "LogSoftmax" | "Flatten" | "Transpose" | "Reshape" | "Unsqueeze" | "Squeeze"
        | "Expand" | "Slice" | "Pad" | "ReduceSum" | "ReduceMean" | "MaxPool" | "Dropout"
        | "Cast" | "Clip" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "GlobalAveragePool"
        | "AveragePool" | "Split" | "Resize" => vec![0],
        "Add" | "Sub" | "Mul" | "Div" | "MatMul" | "Gemm" | "Conv" | "Concat" | "Sum" => all(),
        "Where" => vec![1, 2],
        _ => return None,
    })
}

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
        if NON_DIFFERENTIABLE.contains(&n.op.as_str()) {
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
        if n.op == "Cast" && b.value(&n.inputs[0]).map(|v| v.elem) != Some(Elem::F32) {
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
        let gx = rule(b, n, &gy)?;
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

/// Sums a gradient of shape `from` down to the broadcast operand shape `to`.
pub fn unbroadcast(b: &mut Builder, g: &str, to: &[usize]) -> Result<String> {
    let from = b.shape(g)?;
    if from == to {
        return Ok(g.into());
    }
    let off = from.len() - to.len();
    let axes: Vec<i64> = (0..from.len())
        .filter(|&i| i < off || (to[i - off] == 1 && from[i] != 1))
        .map(|i| i as i64)
        .collect();
    let r = if axes.is_empty() {
        g.to_string()
    } else {
        b.reduce("ReduceSum", g, &axes, true)?
    };
    b.reshape(&r, to)
}

fn vec_i64(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// The vector-Jacobian product of one node: gradients for its inputs given its outputs'.
fn rule(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Result<Vec<Option<String>>> {
    if n.op == "Split" {
        return split_rule(b, n, gy);
    }
    let dy = gy[0]
        .clone()
        .ok_or_else(|| GraphError::node(n, "only the first output may carry a gradient"))?;
    let x = n.inputs[0].clone();
    let y = n.outputs[0].clone();
    let xs = b.shape(&x)?;
    let mut out: Vec<Option<String>> = vec![None; n.inputs.len()];
    match n.op.as_str() {
        "Identity" | "Dropout" | "Cast" => out[0] = Some(dy),
        "Relu" => {
            let zero = b.scalar(0.0);
            let pos = b.op("Greater", &[&y, &zero], vec![])?;
            out[0] = Some(b.op("Where", &[&pos, &dy, &zero], vec![])?);
        }
        "Clip" => {
            // PyTorch's hardtanh/relu6: the gradient passes where min < x < max, read off the
            // output (min < y < max exactly there), as PyTorch's in-place ReLU6 does: the input
            // (a BatchNorm's output) need not stay alive for the backward pass.
            let mut bound = |i: usize, name: &str| -> Option<String> {
                match n.input(i) {
                    Some(t) => Some(t.to_string()),
                    None => n.attr(name).map(|a| b.scalar(a.f)),
                }
            };
            let (lo, hi) = (bound(1, "min"), bound(2, "max"));
            let mut mask: Option<String> = None;
            if let Some(lo) = lo {
                mask = Some(b.op("Greater", &[&y, &lo], vec![])?);
            }
            if let Some(hi) = hi {
                let m = b.op("Less", &[&y, &hi], vec![])?;
                mask = Some(match mask {
                    Some(p) => b.op("And", &[&p, &m], vec![])?,
                    None => m,
                });
            }
            out[0] = Some(match mask {
                Some(m) => {
                    let zero = b.scalar(0.0);
                    b.op("Where", &[&m, &dy, &zero], vec![])?
                }
                None => dy,
            });
        }
        "LeakyRelu" => {
            let a = n.float("alpha", 0.01);
            let alpha = b.scalar(a);
            let zero = b.scalar(0.0);
            // With a positive slope, y > 0 exactly where x > 0: the output serves.
            let sign_of = if a > 0.0 { &y } else { &x };
            let pos = b.op("Greater", &[sign_of, &zero], vec![])?;
            let neg = b.op("Mul", &[&dy, &alpha], vec![])?;
            out[0] = Some(b.op("Where", &[&pos, &dy, &neg], vec![])?);
        }
        "HardSigmoid" => {
            // y = clip(alpha * x + beta, 0, 1): slope alpha strictly inside.
            let (al, be) = (n.float("alpha", 0.2), n.float("beta", 0.5));
            let (a, bb) = (b.scalar(al), b.scalar(be));
            let ax = b.op("Mul", &[&x, &a], vec![])?;
            let u = b.op("Add", &[&ax, &bb], vec![])?;
            let (zero, one) = (b.scalar(0.0), b.scalar(1.0));
            let gt = b.op("Greater", &[&u, &zero], vec![])?;
            let lt = b.op("Less", &[&u, &one], vec![])?;
            let inside = b.op("And", &[&gt, &lt], vec![])?;
            let g = b.op("Mul", &[&dy, &a], vec![])?;
            out[0] = Some(b.op("Where", &[&inside, &g, &zero], vec![])?);
        }
        "HardSwish" => {
            // y = x * clip(x / 6 + 1/2, 0, 1); PyTorch's backward: 0 below -3, x / 3 + 1/2
            // up to 3 (inclusive), 1 above.
            let (m3, p3) = (b.scalar(-3.0), b.scalar(3.0));
            let (third, half, zero) = (b.scalar(1.0 / 3.0), b.scalar(0.5), b.scalar(0.0));
            let xt = b.op("Mul", &[&x, &third], vec![])?;
            let slope = b.op("Add", &[&xt, &half], vec![])?;
            let mid = b.op("Mul", &[&dy, &slope], vec![])?;
            let le3 = b.op("LessOrEqual", &[&x, &p3], vec![])?;
            let upper = b.op("Where", &[&le3, &mid, &dy], vec![])?;
            let lo = b.op("Less", &[&x, &m3], vec![])?;
            out[0] = Some(b.op("Where", &[&lo, &zero, &upper], vec![])?);
        }
        "GlobalAveragePool" => {
            let count: usize = xs[2..].iter().product();
            let c = b.scalar(1.0 / count as f32);
            let g = b.op("Mul", &[&dy, &c], vec![])?;
            let shape = b.ints(&vec_i64(&xs));
            out[0] = Some(b.op("Expand", &[&g, &shape], vec![])?);
        }
        "AveragePool" => out[0] = Some(avgpool_rule(b, n, &dy)?),
        "Exp" => out[0] = Some(b.op("Mul", &[&dy, &y], vec![])?),
        "Log" => out[0] = Some(b.op("Div", &[&dy, &x], vec![])?),
        "Neg" => out[0] = Some(b.op("Neg", &[&dy], vec![])?),
        "Sqrt" => {
            let half = b.scalar(0.5);
            let h = b.op("Mul", &[&dy, &half], vec![])?;
            out[0] = Some(b.op("Div", &[&h, &y], vec![])?);
        }
        "Sigmoid" => {
            let one = b.scalar(1.0);
            let om = b.op("Sub", &[&one, &y], vec![])?;
            let d = b.op("Mul", &[&y, &om], vec![])?;
            out[0] = Some(b.op("Mul", &[&dy, &d], vec![])?);
        }
        "Tanh" => {
            let one = b.scalar(1.0);
            let y2 = b.op("Mul", &[&y, &y], vec![])?;
            let d = b.op("Sub", &[&one, &y2], vec![])?;
            out[0] = Some(b.op("Mul", &[&dy, &d], vec![])?);
        }
        "Softmax" | "LogSoftmax" => {
            let axis = n.int("axis", -1);
            let a = norm_axis(axis, xs.len())
                .ok_or_else(|| GraphError::node(n, "axis out of range"))?
                as i64;
            if n.op == "Softmax" {
                let p = b.op("Mul", &[&dy, &y], vec![])?;
                let s = b.reduce("ReduceSum", &p, &[a], true)?;
                let d = b.op("Sub", &[&dy, &s], vec![])?;
                out[0] = Some(b.op("Mul", &[&y, &d], vec![])?);
            } else {
                let s = b.reduce("ReduceSum", &dy, &[a], true)?;
                let p = b.op("Exp", &[&y], vec![])?;
                let ps = b.op("Mul", &[&p, &s], vec![])?;
                out[0] = Some(b.op("Sub", &[&dy, &ps], vec![])?);
            }
        }
        "Flatten" | "Reshape" | "Unsqueeze" | "Squeeze" => out[0] = Some(b.reshape(&dy, &xs)?),
        "Transpose" => {
            let perm: Vec<i64> = n
                .ints("perm")
                .unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
            let mut inv = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            out[0] = Some(b.op("Transpose", &[&dy], vec![attr::ints("perm", &inv)])?);
        }
        "Expand" => out[0] = Some(unbroadcast(b, &dy, &xs)?),
        "ReduceSum" | "ReduceMean" => {
            let ins: Vec<Option<&crate::infer::Value>> =
                n.inputs.iter().map(|i| b.value(i)).collect();
            let axes = reduce_axes(n, &ins, xs.len())?;
            let kept: Vec<usize> = xs
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            let g = b.reshape(&dy, &kept)?;
            let g = if n.op == "ReduceMean" {
                let count: usize = axes.iter().map(|&a| xs[a]).product();
                let c = b.scalar(1.0 / count as f32);
                b.op("Mul", &[&g, &c], vec![])?
            } else {
                g
            };
            let shape = b.ints(&vec_i64(&xs));
            out[0] = Some(if kept == xs {
                g
            } else {
                b.op("Expand", &[&g, &shape], vec![])?
            });
        }
        "Add" | "Sub" | "Sum" => {
            for (i, (slot, input)) in out.iter_mut().zip(&n.inputs).enumerate() {
                let s = b.shape(input)?;
                let g = if n.op == "Sub" && i == 1 {
                    b.op("Neg", &[&dy], vec![])?
                } else {
                    dy.clone()
                };
                *slot = Some(unbroadcast(b, &g, &s)?);
            }
        }
        "Mul" => {
            let (a, c) = (n.inputs[0].clone(), n.inputs[1].clone());
            let ga = b.op("Mul", &[&dy, &c], vec![])?;
            out[0] = Some(unbroadcast(b, &ga, &b.shape(&a)?)?);
            let gc = b.op("Mul", &[&dy, &a], vec![])?;
            out[1] = Some(unbroadcast(b, &gc, &b.shape(&c)?)?);
        }
        "Div" => {
            let (a, c) = (n.inputs[0].clone(), n.inputs[1].clone());
            let ga = b.op("Div", &[&dy, &c], vec![])?;
            out[0] = Some(unbroadcast(b, &ga, &b.shape(&a)?)?);
            let yc = b.op("Div", &[&y, &c], vec![])?;
            let t = b.op("Mul", &[&dy, &yc], vec![])?;
            let gc = b.op("Neg", &[&t], vec![])?;
            out[1] = Some(unbroadcast(b, &gc, &b.shape(&c)?)?);
        }
        "Where" => {
            let cond = n.inputs[0].clone();
            let zero = b.scalar(0.0);
            let ga = b.op("Where", &[&cond, &dy, &zero], vec![])?;
            out[1] = Some(unbroadcast(b, &ga, &b.shape(&n.inputs[1])?)?);
            let gb = b.op("Where", &[&cond, &zero, &dy], vec![])?;
            out[2] = Some(unbroadcast(b, &gb, &b.shape(&n.inputs[2])?)?);
        }
        "Concat" => {
            let axis = norm_axis(n.int("axis", 0), xs.len())
                .ok_or_else(|| GraphError::node(n, "axis out of range"))?;
            let mut start = 0usize;
            for (slot, input) in out.iter_mut().zip(&n.inputs) {
                let s = b.shape(input)?;
                let (st, en, ax) = (
                    b.ints(&[start as i64]),
                    b.ints(&[(start + s[axis]) as i64]),
                    b.ints(&[axis as i64]),
                );
                *slot = Some(b.op("Slice", &[&dy, &st, &en, &ax], vec![])?);
                start += s[axis];
            }
        }
        "Slice" => {
            let get = |i: usize| {
                n.input(i)
                    .and_then(|t| b.value(t))
                    .and_then(|v| v.ints().map(<[i64]>::to_vec))
            };
            let starts = get(1).ok_or_else(|| GraphError::node(n, "starts must be constant"))?;
            let ends = get(2).ok_or_else(|| GraphError::node(n, "ends must be constant"))?;
            let axes = get(3).unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = get(4).unwrap_or_else(|| vec![1; starts.len()]);
            let sl = SliceSpec::resolve(&xs, &starts, &ends, &axes, &steps)
                .ok_or_else(|| GraphError::node(n, "bad slice"))?;
            if sl.step.iter().any(|&s| s != 1) {
                return Err(GraphError::NoGradRule {
                    node: n.name.clone(),
                    op: "Slice (step != 1)".into(),
                });
            }
            let r = xs.len();
            let mut pads = vec![0i64; 2 * r];
            for d in 0..r {
                pads[d] = sl.start[d] as i64;
                pads[d + r] = (xs[d] - sl.start[d] - sl.count[d]) as i64;
            }
            let p = b.ints(&pads);
            out[0] = Some(b.op("Pad", &[&dy, &p], vec![])?);
        }
        "Pad" => {
            let mode = n.string("mode").unwrap_or_else(|| "constant".into());
            if mode != "constant" {
                return Err(GraphError::NoGradRule {
                    node: n.name.clone(),
                    op: format!("Pad (mode {mode})"),
                });
            }
            let pads = n
                .input(1)
                .and_then(|t| b.value(t))
                .and_then(|v| v.ints().map(<[i64]>::to_vec))
                .ok_or_else(|| GraphError::node(n, "pads must be constant"))?;
            let r = xs.len();
            let starts: Vec<i64> = (0..r).map(|d| pads[d]).collect();
            let ends: Vec<i64> = (0..r).map(|d| pads[d] + xs[d] as i64).collect();
            let axes: Vec<i64> = (0..r as i64).collect();
            let (s, e, a) = (b.ints(&starts), b.ints(&ends), b.ints(&axes));
            out[0] = Some(b.op("Slice", &[&dy, &s, &e, &a], vec![])?);
        }
        "Gemm" => {
            let (a, w) = (n.inputs[0].clone(), n.inputs[1].clone());
            let (ta, tb) = (n.int("transA", 0), n.int("transB", 0));
            let (alpha, beta) = (n.float("alpha", 1.0), n.float("beta", 1.0));
            let al = attr::float("alpha", alpha);
            out[0] = Some(if ta == 0 {
                b.op(
                    "Gemm",
                    &[&dy, &w],
                    vec![al.clone(), attr::int("transB", 1 - tb)],
                )?
            } else {
                b.op(
                    "Gemm",
                    &[&w, &dy],
                    vec![al.clone(), attr::int("transA", tb), attr::int("transB", 1)],
                )?
            });
            out[1] = Some(if tb == 0 {
                b.op("Gemm", &[&a, &dy], vec![al, attr::int("transA", 1 - ta)])?
            } else {
                b.op(
                    "Gemm",
                    &[&dy, &a],
                    vec![al, attr::int("transA", 1), attr::int("transB", ta)],
                )?
            });
            if let Some(c) = n.input(2) {
                let g = if beta == 1.0 {
                    dy.clone()
                } else {
                    let s = b.scalar(beta);
                    b.op("Mul", &[&dy, &s], vec![])?
                };
                out[2] = Some(unbroadcast(b, &g, &b.shape(c)?)?);
            }
        }
        "MatMul" => {
            let (a, w) = (n.inputs[0].clone(), n.inputs[1].clone());
            let swap = |r: usize| -> Vec<i64> {
                let mut p: Vec<i64> = (0..r as i64).collect();
                p.swap(r - 1, r - 2);
                p
            };
            let (sa, sw) = (b.shape(&a)?, b.shape(&w)?);
            let wt = b.op(
                "Transpose",
                &[&w],
                vec![attr::ints("perm", &swap(sw.len()))],
            )?;
            let ga = b.op("MatMul", &[&dy, &wt], vec![])?;
            out[0] = Some(unbroadcast(b, &ga, &sa)?);
            let at = b.op(
                "Transpose",
                &[&a],
                vec![attr::ints("perm", &swap(sa.len()))],
            )?;
            let gw = b.op("MatMul", &[&at, &dy], vec![])?;
            out[1] = Some(unbroadcast(b, &gw, &sw)?);
        }
        "Conv" => conv_rule(b, n, &dy, &mut out)?,
        "MaxPool" => out[0] = Some(maxpool_rule(b, n, &dy)?),
        "Resize" => out[0] = Some(resize_rule(b, n, &dy)?),
        _ => {
            return Err(GraphError::NoGradRule {
                node: n.name.clone(),
                op: n.op.clone(),
            })
        }
    }
    Ok(out)
}

/// The tensors a declared VJP gives gradients to.
fn custom_inputs(vjp: &CustomVjp) -> [&str; 3] {
    match vjp {
        CustomVjp::BatchNormTrain { x, scale, bias, .. } => [x, scale, bias],
    }
}

/// Gradients of a subgraph with a declared VJP, as (tensor, gradient) pairs.
fn custom_rule(b: &mut Builder, vjp: &CustomVjp, dy: &str) -> Result<Vec<(String, String)>> {
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

/// Split: the input gradient is the outputs' gradients concatenated (zeros for outputs
/// that carry none).
fn split_rule(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Result<Vec<Option<String>>> {
    let xs = b.shape(&n.inputs[0])?;
    let axis = norm_axis(n.int("axis", 0), xs.len())
        .ok_or_else(|| GraphError::node(n, "axis out of range"))?;
    let mut parts = Vec::with_capacity(n.outputs.len());
    for (o, g) in n.outputs.iter().zip(gy) {
        parts.push(match g {
            Some(g) => g.clone(),
            None => {
                let s = b.shape(o)?;
                b.constant(Tensor::zeros_f32(s))
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let mut out = vec![None; n.inputs.len()];
    out[0] = Some(if refs.len() == 1 {
        parts[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", axis as i64)])?
    });
    Ok(out)
}

/// AveragePool (2-D, floor mode): each output's gradient, divided by its window's count
/// (the kernel size, or only the cells inside the input when pads are excluded), is
/// scattered back with a depthwise ConvTranspose of ones.
fn avgpool_rule(b: &mut Builder, n: &Node, dy: &str) -> Result<String> {
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
    let win = Window::of(n, &xs[2..], kernel)?;
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
    b.op("ConvTranspose", &[&scaled, &ones], at)
}

/// Output padding that makes a ConvTranspose over `out` reproduce the input size `input`.
fn output_padding(win: &Window, input: &[usize], out: &[usize]) -> Vec<i64> {
    (0..2)
        .map(|i| {
            let base = win.strides[i] * (out[i] - 1) + win.extent(i);
            input[i] as i64 + win.pads[i] as i64 + win.pads[i + 2] as i64 - base as i64
        })
        .collect()
}

fn window_attrs(win: &Window) -> Vec<crate::proto::AttributeProto> {
    vec![
        attr::ints("strides", &vec_i64(&win.strides)),
        attr::ints("dilations", &vec_i64(&win.dilations)),
        attr::ints("pads", &vec_i64(&win.pads)),
    ]
}

/// Conv: dX is a ConvTranspose of dY with the same weights (1x1: a MatMul by W^T; depthwise
/// at stride 1: a depthwise Conv with the flipped kernel); dW is a batched MatMul (1x1
/// and ungrouped: im2col columns) or a Conv of the regrouped input over the transposed
/// output gradient (grouped, depthwise included); dB sums dY over batch and space.
fn conv_rule(b: &mut Builder, n: &Node, dy: &str, out: &mut [Option<String>]) -> Result<()> {
    let (x, w) = (n.inputs[0].clone(), n.inputs[1].clone());
    let (xs, ws, ys) = (b.shape(&x)?, b.shape(&w)?, b.shape(dy)?);
    let group = n.int("group", 1).max(1) as usize;
    let win = Window::of(n, &xs[2..], ws[2..].to_vec())?;
    let (nb, cg, m) = (xs[0], ws[1], ws[0]);
    let unit_steps = win.strides.iter().chain(&win.dilations).all(|&s| s == 1);
    let pointwise =
        group == 1 && ws[2] == 1 && ws[3] == 1 && unit_steps && win.pads.iter().all(|&p| p == 0);
    let depthwise_same = group == xs[1]
        && m == group
        && cg == 1
        && unit_steps
        && (0..4).all(|i| win.pads[i] < ws[2 + i % 2]);
    out[0] = Some(if pointwise {
        // dX[n] = W^T dY[n]: one broadcast MatMul (ConvTranspose adds a col2im pass).
        let hw = xs[2] * xs[3];
        let w2 = b.reshape(&w, &[m, cg])?;
        let wt = b.op("Transpose", &[&w2], vec![attr::ints("perm", &[1, 0])])?;
        let d3 = b.reshape(dy, &[nb, m, hw])?;
        let g = b.op("MatMul", &[&wt, &d3], vec![])?;
        b.reshape(&g, &xs)?
    } else if depthwise_same {
        // Stride 1: dX is the depthwise Conv of dY with the spatially flipped kernel and the
        // complementary pads, which runs on the engines' fast depthwise kernels.
        depthwise_input_grad_conv(b, dy, &w, &ws, &win)?
    } else {
        let opad = output_padding(&win, &xs[2..], &ys[2..]);
        let mut at = window_attrs(&win);
        at.push(attr::int("group", group as i64));
        at.push(attr::ints("output_padding", &opad));
        at.push(attr::ints("kernel_shape", &vec_i64(&ws[2..])));
        b.op("ConvTranspose", &[dy, &w], at)?
    });

    if pointwise {
        // 1x1 convolution: dW[m, c] = sum over batch and pixels of dY[n, m, p] * X[n, c, p],
        // one batched MatMul (a convolution with an image-sized kernel is a slow GEMV).
        let hw = xs[2] * xs[3];
        let x3 = b.reshape(&x, &[nb, cg, hw])?;
        let xt = b.op("Transpose", &[&x3], vec![attr::ints("perm", &[0, 2, 1])])?;
        let d3 = b.reshape(dy, &[nb, m, hw])?;
        let p = b.op("MatMul", &[&d3, &xt], vec![])?;
        let gw = b.reduce("ReduceSum", &p, &[0], false)?;
        out[1] = Some(b.reshape(&gw, &ws)?);
        if n.input(2).is_some() {
            out[2] = Some(b.reduce("ReduceSum", dy, &[0, 2, 3], false)?);
        }
        return Ok(());
    }
    // Depthwise layers too take the regrouped Conv: per-tap sums (`depthwise_weight_grad_taps`)
    // win in isolation at stride 1 but not in a whole MobileNetV2 step, where they cost
    // tract 820 MiB of peak memory (docs/BENCHMARKS.md section 3).
    out[1] = Some(if group == 1 {
        conv_weight_grad_im2col(b, &x, dy, &xs, &ws, &ys, &win)?
    } else {
        grouped_weight_grad_conv(b, &x, dy, &xs, &ws, &ys, &win, group)?
    });
    if n.input(2).is_some() {
        out[2] = Some(b.reduce("ReduceSum", dy, &[0, 2, 3], false)?);
    }
    Ok(())
}

/// Input gradient of a stride-1, dilation-1 depthwise convolution whose pads are smaller than
/// its kernel: a depthwise Conv of dY with the kernel flipped in both spatial axes (one MatMul
/// of the [C, kh*kw] weights by the reversal permutation) and pads `k - 1 - p` per side.
fn depthwise_input_grad_conv(
    b: &mut Builder,
    dy: &str,
    w: &str,
    ws: &[usize],
    win: &Window,
) -> Result<String> {
    let (c, kh, kw) = (ws[0], ws[2], ws[3]);
    let kk = kh * kw;
    let mut rev = vec![0f32; kk * kk];
    for i in 0..kk {
        rev[i * kk + (kk - 1 - i)] = 1.0;
    }
    let rev = b.constant(Tensor::f32(vec![kk, kk], rev).expect("sized"));
    let w2 = b.reshape(w, &[c, kk])?;
    let flipped = b.op("MatMul", &[&w2, &rev], vec![])?;
    let flipped = b.reshape(&flipped, ws)?;
    let p = &win.pads;
    let pads = [kh - 1 - p[0], kw - 1 - p[1], kh - 1 - p[2], kw - 1 - p[3]];
    b.op(
        "Conv",
        &[dy, &flipped],
        vec![
            attr::int("group", c as i64),
            attr::ints("pads", &vec_i64(&pads)),
            attr::ints("kernel_shape", &[kh as i64, kw as i64]),
        ],
    )
}

/// Weight gradient of a grouped convolution as one Conv of the regrouped input over the
/// transposed output gradient (strides and dilations swapped).
#[allow(clippy::too_many_arguments)]
pub fn grouped_weight_grad_conv(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &Window,
    group: usize,
) -> Result<String> {
    let (nb, cg, m) = (xs[0], ws[1], ws[0]);
    let mg = m / group;
    let (xin, wgt) = if group == 1 {
        let xt = b.op("Transpose", &[x], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
        let dyt = b.op("Transpose", &[dy], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
        (xt, dyt)
    } else {
        let x5 = b.reshape(x, &[nb, group, cg, xs[2], xs[3]])?;
        let xt = b.op(
            "Transpose",
            &[&x5],
            vec![attr::ints("perm", &[2, 1, 0, 3, 4])],
        )?;
        let xin = b.reshape(&xt, &[cg, group * nb, xs[2], xs[3]])?;
        let d5 = b.reshape(dy, &[nb, group, mg, ys[2], ys[3]])?;
        let dt = b.op(
            "Transpose",
            &[&d5],
            vec![attr::ints("perm", &[1, 2, 0, 3, 4])],
        )?;
        let wgt = b.reshape(&dt, &[m, nb, ys[2], ys[3]])?;
        (xin, wgt)
    };
    let gw = b.op(
        "Conv",
        &[&xin, &wgt],
        vec![
            attr::ints("strides", &vec_i64(&win.dilations)),
            attr::ints("dilations", &vec_i64(&win.strides)),
            attr::ints("pads", &vec_i64(&win.pads)),
            attr::int("group", group as i64),
            attr::ints("kernel_shape", &[ys[2] as i64, ys[3] as i64]),
        ],
    )?;
    let gwt = b.op("Transpose", &[&gw], vec![attr::ints("perm", &[1, 0, 2, 3])])?;
    let full = b.shape(&gwt)?;
    Ok(if full[2] != ws[2] || full[3] != ws[3] {
        let (s, e, a) = (
            b.ints(&[0, 0]),
            b.ints(&[ws[2] as i64, ws[3] as i64]),
            b.ints(&[2, 3]),
        );
        b.op("Slice", &[&gwt, &s, &e, &a], vec![])?
    } else {
        gwt
    })
}

/// The input cells that kernel offset `(i, j)` meets at every output position of a 2-D
/// window op: a strided slice of the (already padded) input `xp`, shaped like the output.
fn window_tap(
    b: &mut Builder,
    xp: &str,
    win: &Window,
    (i, j): (usize, usize),
    out: &[usize],
) -> Result<String> {
    let s0 = (i * win.dilations[0]) as i64;
    let s1 = (j * win.dilations[1]) as i64;
    let e0 = s0 + ((out[0] - 1) * win.strides[0]) as i64 + 1;
    let e1 = s1 + ((out[1] - 1) * win.strides[1]) as i64 + 1;
    let (st, en, ax, sp) = (
        b.ints(&[s0, s1]),
        b.ints(&[e0, e1]),
        b.ints(&[2, 3]),
        b.ints(&[win.strides[0] as i64, win.strides[1] as i64]),
    );
    b.op("Slice", &[xp, &st, &en, &ax, &sp], vec![])
}

/// Weight gradient of a depthwise convolution (one filter per channel) tap by tap: for
/// kernel offset `(i, j)`, `dW[c, 0, i, j]` = sum over batch and pixels of `dY` times the
/// strided slice of the padded input that offset meets. Not used by the train step (see
/// `conv_rule`); kept as the measured alternative of `cargo bench --bench rule_bench`.
pub fn depthwise_weight_grad_taps(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &Window,
) -> Result<String> {
    let xp = zero_pad(b, x, &win.pads)?;
    let mut taps = Vec::with_capacity(ws[2] * ws[3]);
    for i in 0..ws[2] {
        for j in 0..ws[3] {
            let sl = window_tap(b, &xp, win, (i, j), &ys[2..])?;
            let p = b.op("Mul", &[&sl, dy], vec![])?;
            // [1, C, 1, 1]
            taps.push(b.reduce("ReduceSum", &p, &[0, 2, 3], true)?);
        }
    }
    let refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let cat = if refs.len() == 1 {
        taps[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", 2)])?
    };
    debug_assert_eq!(xs[1], ws[0]);
    b.reshape(&cat, ws)
}

/// `x` zero-padded by 2-D window pads `[top, left, bottom, right]` (itself when all are 0).
fn zero_pad(b: &mut Builder, x: &str, pd: &[usize]) -> Result<String> {
    if pd.iter().all(|&v| v == 0) {
        return Ok(x.to_string());
    }
    let pads = b.ints(&[
        0,
        0,
        pd[0] as i64,
        pd[1] as i64,
        0,
        0,
        pd[2] as i64,
        pd[3] as i64,
    ]);
    b.op("Pad", &[x, &pads], vec![])
}

/// Weight gradient of an ungrouped convolution as one batched MatMul over im2col columns:
/// for each kernel offset a strided slice of the padded input ([N, C, OH*OW]), stacked along
/// the channels, then dW[m, (k, c)] = sum over batch and pixels of dY[n, m, p] * cols[n, (k, c), p].
fn conv_weight_grad_im2col(
    b: &mut Builder,
    x: &str,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    win: &Window,
) -> Result<String> {
    let (nb, c, m) = (xs[0], xs[1], ws[0]);
    let (kh, kw) = (ws[2], ws[3]);
    let p = ys[2] * ys[3];
    let xp = if win.pads.iter().any(|&v| v > 0) {
        let pd = &win.pads;
        let pads = b.ints(&[
            0,
            0,
            pd[0] as i64,
            pd[1] as i64,
            0,
            0,
            pd[2] as i64,
            pd[3] as i64,
        ]);
        b.op("Pad", &[x, &pads], vec![])?
    } else {
        x.to_string()
    };
    let mut cols = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let sl = window_tap(b, &xp, win, (i, j), &ys[2..])?;
            cols.push(b.reshape(&sl, &[nb, c, p])?);
        }
    }
    let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    let cols = if refs.len() == 1 {
        cols[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", 1)])?
    };
    let kk = kh * kw;
    let ct = b.op("Transpose", &[&cols], vec![attr::ints("perm", &[0, 2, 1])])?;
    let d3 = b.reshape(dy, &[nb, m, p])?;
    let prod = b.op("MatMul", &[&d3, &ct], vec![])?;
    let sum = b.reduce("ReduceSum", &prod, &[0], false)?;
    let r = b.reshape(&sum, &[m, kk, c])?;
    let r = b.op("Transpose", &[&r], vec![attr::ints("perm", &[0, 2, 1])])?;
    b.reshape(&r, ws)
}

/// MaxPool: each output's gradient goes to the input cell its window picked, read from the
/// forward node's own Indices output (added to it here) and scattered back with one
/// ScatterElements per (n, c) plane (summing where windows overlap). Both engines pick the
/// first maximum of a window, as PyTorch does. ONNX Runtime's indices count across the
/// whole tensor, tract's within the plane: the plane-local index is their remainder by H*W.
fn maxpool_rule(b: &mut Builder, n: &Node, dy: &str) -> Result<String> {
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
    let win = Window::of(n, &xs[2..], kernel)?;
    let overlap = (0..2).any(|a| win.strides[a] < win.extent(a));
    let idx = match n.outputs.get(1).filter(|o| !o.is_empty()) {
        Some(i) => i.clone(),
        None => b.add_output(&y, "maxpool_indices", Value::new(Elem::I64, ys.clone()))?,
    };
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
    b.reshape(&g, &xs)
}

/// Resize (2-D, nearest or linear): `Y = A_h X A_w^T` per (n, c) plane with constant
/// interpolation matrices, so `dX = A_h^T dY A_w`, one MatMul per resized axis; an axis
/// that repeats each cell `s` times (integer nearest upsampling) sums groups of `s` instead.
fn resize_rule(b: &mut Builder, n: &Node, dy: &str) -> Result<String> {
    let ins: Vec<Option<&crate::infer::Value>> = n
        .inputs
        .iter()
        .map(|i| if i.is_empty() { None } else { b.value(i) })
        .collect();
    let plan = ResizePlan::of(n, &ins)?;
    let (xs, ys) = (plan.input.clone(), plan.output.clone());
    let (nb, c) = (xs[0], xs[1]);
    // Along W: [N, C, Ho, Wo] -> [N, C, Ho, Wi].
    let g = if xs[3] == ys[3] && plan.matrix(1) == identity(xs[3]) {
        dy.to_string()
    } else if let Some(s) = plan.replication(1) {
        let r = b.reshape(dy, &[nb, c, ys[2], xs[3], s])?;
        b.reduce("ReduceSum", &r, &[4], false)?
    } else {
        let a = plan.matrix(1);
        let a = b.constant(Tensor::f32(vec![ys[3], xs[3]], a).expect("sized"));
        b.op("MatMul", &[dy, &a], vec![])?
    };
    // Along H: [N, C, Ho, Wi] -> [N, C, Hi, Wi].
    if xs[2] == ys[2] && plan.matrix(0) == identity(xs[2]) {
        return Ok(g);
    }
    if let Some(s) = plan.replication(0) {
        let r = b.reshape(&g, &[nb, c, xs[2], s, xs[3]])?;
        return b.reduce("ReduceSum", &r, &[3], false);
    }
    let a = plan.matrix(0);
    let (ho, hi) = (ys[2], xs[2]);
    let mut at = vec![0f32; hi * ho];
    for i in 0..ho {
        for j in 0..hi {
            at[j * ho + i] = a[i * hi + j];
        }
    }
    let at = b.constant(Tensor::f32(vec![hi, ho], at).expect("sized"));
    b.op("MatMul", &[&at, &g], vec![])
}

fn identity(n: usize) -> Vec<f32> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}
