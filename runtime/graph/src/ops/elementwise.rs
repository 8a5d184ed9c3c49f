//! Elementwise arithmetic, comparisons and logic, Where, Identity and Cast.

use fieldtune_tensor::{Tensor, TensorData};

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Elem, Node};

use super::entry::{def, dy, only, req, rule, rule_all, unbroadcast, Grad, Grads, OpDef};
use super::value::{broadcast, fold_binary_i64, Value, FOLD_LIMIT};

pub const OPS: &[OpDef] = &[
    def("Identity", identity, true, rule(pass)),
    def("Cast", cast, true, rule(pass)),
    def("Exp", same, false, rule(exp)),
    def("Log", same, false, rule(log)),
    def("Neg", same, false, rule(neg)),
    def("Sqrt", same, false, rule(sqrt)),
    def("Abs", same, false, Grad::NoRule),
    def("Reciprocal", same, false, Grad::NoRule),
    def("Floor", same, false, Grad::Never),
    def("Ceil", same, false, Grad::Never),
    def("Not", same, false, Grad::Never),
    def("Add", nary, true, rule_all(add_sub_sum)),
    def("Sub", nary, true, rule_all(add_sub_sum)),
    def("Sum", nary, false, rule_all(add_sub_sum)),
    def("Mul", nary, true, rule_all(mul)),
    def("Div", nary, true, rule_all(div)),
    def("Pow", nary, false, Grad::NoRule),
    def("Max", nary, false, Grad::NoRule),
    def("Min", nary, false, Grad::NoRule),
    def("Mod", nary, false, Grad::NoRule),
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
        false,
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
    if ins.len() == 2 && a.elem == Elem::I64 && v.numel() <= FOLD_LIMIT {
        let c = req(node, ins, 1)?;
        if let (Some(x), Some(y)) = (a.ints(), c.ints()) {
            v.konst = fold_binary_i64(op, x, &a.shape, y, &c.shape, &shape);
        }
    }
    Ok(vec![v])
}

fn compare(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let shape = broadcast(&req(node, ins, 0)?.shape, &req(node, ins, 1)?.shape)
        .ok_or_else(|| GraphError::node(node, "shapes do not broadcast"))?;
    Ok(vec![Value::new(Elem::Bool, shape)])
}

fn where_(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let c = req(node, ins, 2)?.shape.clone();
    let s = broadcast(&req(node, ins, 0)?.shape, &req(node, ins, 1)?.shape)
        .and_then(|s| broadcast(&s, &c))
        .ok_or_else(|| GraphError::node(node, "shapes do not broadcast"))?;
    Ok(vec![Value::new(req(node, ins, 1)?.elem, s)])
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
