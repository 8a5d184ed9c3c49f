//! Elementwise arithmetic, comparisons and logic, Where, Identity and Cast.

use fieldtune_tensor::{Tensor, TensorData};

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Elem, Node};

use super::entry::{def, dy, only, req, rule, rule_all, unbroadcast, Grad, Grads, OpDef};
use super::value::{broadcast, broadcast_index, fold_binary_i64, Value, FOLD_LIMIT};

pub const OPS: &[OpDef] = &[
    def("Identity", identity, true, rule(pass)),
    def("Cast", cast, true, rule(pass)),
    def("Exp", same, false, rule(exp)),
    def("Log", same, false, rule(log)),
    def("Neg", same, false, rule(neg)),
    def("Sqrt", same, false, rule(sqrt)),
    def("Abs", same, false, rule(abs)),
    def("Reciprocal", same, false, rule(reciprocal)),
    def("Erf", same, false, rule(erf)),
    def("Floor", same, false, Grad::Never),
    def("Ceil", same, false, Grad::Never),
    def("Not", same, false, Grad::Never),
    def("Add", nary, true, rule_all(add_sub_sum)),
    def("Sub", nary, true, rule_all(add_sub_sum)),
    def("Sum", nary, false, rule_all(add_sub_sum)),
    def("Mul", nary, true, rule_all(mul)),
    def("Div", nary, true, rule_all(div)),
    def("Pow", nary, false, rule_all(pow)),
    def("Max", nary, false, rule_all(max_min)),
    def("Min", nary, false, rule_all(max_min)),
    def("Mod", nary, true, Grad::NoRule),
    def("Greater", compare, false, Grad::Never),
    def("Less", compare, false, Grad::Never),
    def("Equal", compare, false, Grad::Never),
    def("GreaterOrEqual", compare, false, Grad::Never),
    def("LessOrEqual", compare, false, Grad::Never),
    def("And", compare, false, Grad::Never),
    def("Or", compare, false, Grad::Never),
    def(
        "Where",
        where_,
        true,
        Grad::Rule {
            inputs: |_| vec![1, 2],
            vjp: where_grad,
        },
    ),
];

/// Output like input 0 (type and shape).
pub fn same(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    Ok(vec![Value::new(x.elem, x.shape.clone())])
}

fn identity(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    if let Some(k) = &x.konst {
        return Ok(vec![Value::konst(k.clone())]);
    }
    same(node, ins)
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

fn cast(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
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
            (TensorData::I64(_), Elem::I64) | (TensorData::F32(_), Elem::F32) => Some(k.clone()),
            _ => None,
        };
    }
    Ok(vec![v])
}

/// Broadcasting arithmetic over two (Sum, Max, Min: one or more) inputs; small i64
/// constants fold.
fn nary(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let op = node.op.as_str();
    let err = |r: String| GraphError::node(node, r);
    if ins.len() < 2 && op != "Sum" && op != "Max" && op != "Min" {
        return Err(err("needs two inputs".into()));
    }
    let mut shape = req(node, ins, 0)?.shape.clone();
    for i in 1..ins.len() {
        let v = req(node, ins, i)?;
        shape = broadcast(&shape, &v.shape).ok_or_else(|| {
            err(format!(
                "shapes {:?} and {:?} do not broadcast",
                shape, v.shape
            ))
        })?;
    }
    let a = req(node, ins, 0)?;
    let mut v = Value::new(a.elem, shape.clone());
    // Integer Mod folds in its default (fmod=0, Python-style) form only.
    let foldable = !(op == "Mod" && node.int("fmod", 0) != 0);
    if foldable && ins.len() == 2 && a.elem == Elem::I64 && v.numel() <= FOLD_LIMIT {
        let c = req(node, ins, 1)?;
        if let (Some(x), Some(y)) = (a.ints(), c.ints()) {
            v.konst = fold_binary_i64(op, x, &a.shape, y, &c.shape, &shape);
        }
    }
    Ok(vec![v])
}

/// Comparisons (and logic) give bools. Over constant i64 inputs the result is carried as a
/// 0/1 constant for a folding Where (exporters spell `expand(n, -1, -1)` as
/// `Where(Equal(shape, -1), 1, shape)`); the comparison itself never folds, so no bool
/// initializer is written.
fn compare(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (a, c) = (req(node, ins, 0)?, req(node, ins, 1)?);
    let shape = broadcast(&a.shape, &c.shape)
        .ok_or_else(|| GraphError::node(node, "shapes do not broadcast"))?;
    let mut v = Value::new(Elem::Bool, shape);
    if a.elem == Elem::I64 && v.numel() <= FOLD_LIMIT {
        if let (Some(x), Some(y)) = (a.ints(), c.ints()) {
            v.konst = fold_binary_i64(&node.op, x, &a.shape, y, &c.shape, &v.shape);
        }
    }
    Ok(vec![v])
}

/// Where; folds over a constant condition and constant i64 branches (shape chains).
fn where_(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (cond, x, y) = (req(node, ins, 0)?, req(node, ins, 1)?, req(node, ins, 2)?);
    let s = broadcast(&cond.shape, &x.shape)
        .and_then(|s| broadcast(&s, &y.shape))
        .ok_or_else(|| GraphError::node(node, "shapes do not broadcast"))?;
    let mut v = Value::new(x.elem, s);
    if x.elem == Elem::I64 && v.numel() <= FOLD_LIMIT {
        if let (Some(k), Some(a), Some(b)) = (cond.ints(), x.ints(), y.ints()) {
            let out = &v.shape;
            let vals = (0..v.numel())
                .map(|i| {
                    if k[broadcast_index(i, &cond.shape, out)] != 0 {
                        a[broadcast_index(i, &x.shape, out)]
                    } else {
                        b[broadcast_index(i, &y.shape, out)]
                    }
                })
                .collect();
            v.konst = Tensor::i64(out.clone(), vals).ok();
        }
    }
    Ok(vec![v])
}

/// Identity, Cast (float to float) and inference-mode Dropout pass the gradient through.
pub fn pass(_: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    Ok(only(n, dy(n, gy)?))
}

fn exp(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    Ok(only(n, b.op("Mul", &[&dy, &n.outputs[0]], vec![])?))
}

fn log(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    Ok(only(n, b.op("Div", &[&dy, &n.inputs[0]], vec![])?))
}

fn neg(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    Ok(only(n, b.op("Neg", &[&dy], vec![])?))
}

fn sqrt(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let half = b.scalar(0.5);
    let h = b.op("Mul", &[&dy, &half], vec![])?;
    Ok(only(n, b.op("Div", &[&h, &n.outputs[0]], vec![])?))
}

/// |x|: the sign of x times the gradient (at exactly 0 PyTorch gives 0 and this gives dy).
fn abs(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let zero = b.scalar(0.0);
    let neg = b.op("Less", &[&n.inputs[0], &zero], vec![])?;
    let ndy = b.op("Neg", &[&dy], vec![])?;
    Ok(only(n, b.op("Where", &[&neg, &ndy, &dy], vec![])?))
}

/// 1/x: -dy * y^2.
fn reciprocal(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let y = &n.outputs[0];
    let y2 = b.op("Mul", &[y, y], vec![])?;
    let t = b.op("Mul", &[&dy, &y2], vec![])?;
    Ok(only(n, b.op("Neg", &[&t], vec![])?))
}

/// erf(x): dy * 2/sqrt(pi) * exp(-x^2) (the exact GELU exports use it).
fn erf(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let x = &n.inputs[0];
    let x2 = b.op("Mul", &[x, x], vec![])?;
    let nx2 = b.op("Neg", &[&x2], vec![])?;
    let e = b.op("Exp", &[&nx2], vec![])?;
    let c = b.scalar(std::f32::consts::FRAC_2_SQRT_PI);
    let d = b.op("Mul", &[&e, &c], vec![])?;
    Ok(only(n, b.op("Mul", &[&dy, &d], vec![])?))
}

/// a^e: dy * e * a^(e-1) into a, dy * y * ln(a) into e (defined for a > 0; an exponent that
/// is a constant, as in every exported norm and GELU, takes no gradient).
fn pow(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (a, e) = (n.inputs[0].clone(), n.inputs[1].clone());
    let mut out = vec![None; n.inputs.len()];
    let one = b.scalar(1.0);
    let em1 = b.op("Sub", &[&e, &one], vec![])?;
    let p = b.op("Pow", &[&a, &em1], vec![])?;
    let d = b.op("Mul", &[&e, &p], vec![])?;
    let ga = b.op("Mul", &[&dy, &d], vec![])?;
    out[0] = Some(unbroadcast(b, &ga, &b.shape(&a)?)?);
    let ln = b.op("Log", &[&a], vec![])?;
    let yl = b.op("Mul", &[&n.outputs[0], &ln], vec![])?;
    let ge = b.op("Mul", &[&dy, &yl], vec![])?;
    out[1] = Some(unbroadcast(b, &ge, &b.shape(&e)?)?);
    Ok(out)
}

/// Max / Min of two inputs: the gradient goes to the input that was picked, the first on a
/// tie (PyTorch's `maximum`/`minimum` split a tie in halves).
fn max_min(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    if n.inputs.len() != 2 {
        return Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: format!("{} of {} inputs", n.op, n.inputs.len()),
        });
    }
    let (a, c) = (n.inputs[0].clone(), n.inputs[1].clone());
    let cmp = if n.op == "Max" {
        "GreaterOrEqual"
    } else {
        "LessOrEqual"
    };
    let first = b.op(cmp, &[&a, &c], vec![])?;
    let zero = b.scalar(0.0);
    let ga = b.op("Where", &[&first, &dy, &zero], vec![])?;
    let gc = b.op("Where", &[&first, &zero, &dy], vec![])?;
    Ok(vec![
        Some(unbroadcast(b, &ga, &b.shape(&a)?)?),
        Some(unbroadcast(b, &gc, &b.shape(&c)?)?),
    ])
}

fn add_sub_sum(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let mut out = vec![None; n.inputs.len()];
    for (i, (slot, input)) in out.iter_mut().zip(&n.inputs).enumerate() {
        let s = b.shape(input)?;
        let g = if n.op == "Sub" && i == 1 {
            b.op("Neg", &[&dy], vec![])?
        } else {
            dy.clone()
        };
        *slot = Some(unbroadcast(b, &g, &s)?);
    }
    Ok(out)
}

fn mul(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (a, c) = (n.inputs[0].clone(), n.inputs[1].clone());
    let mut out = vec![None; n.inputs.len()];
    let ga = b.op("Mul", &[&dy, &c], vec![])?;
    out[0] = Some(unbroadcast(b, &ga, &b.shape(&a)?)?);
    let gc = b.op("Mul", &[&dy, &a], vec![])?;
    out[1] = Some(unbroadcast(b, &gc, &b.shape(&c)?)?);
    Ok(out)
}

fn div(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (a, c) = (n.inputs[0].clone(), n.inputs[1].clone());
    let mut out = vec![None; n.inputs.len()];
    let ga = b.op("Div", &[&dy, &c], vec![])?;
    out[0] = Some(unbroadcast(b, &ga, &b.shape(&a)?)?);
    let yc = b.op("Div", &[&n.outputs[0], &c], vec![])?;
    let t = b.op("Mul", &[&dy, &yc], vec![])?;
    let gc = b.op("Neg", &[&t], vec![])?;
    out[1] = Some(unbroadcast(b, &gc, &b.shape(&c)?)?);
    Ok(out)
}

fn where_grad(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let mut out = vec![None; n.inputs.len()];
    let cond = n.inputs[0].clone();
    let zero = b.scalar(0.0);
    let ga = b.op("Where", &[&cond, &dy, &zero], vec![])?;
    out[1] = Some(unbroadcast(b, &ga, &b.shape(&n.inputs[1])?)?);
    let gb = b.op("Where", &[&cond, &zero, &dy], vec![])?;
    out[2] = Some(unbroadcast(b, &gb, &b.shape(&n.inputs[2])?)?);
    Ok(out)
}
