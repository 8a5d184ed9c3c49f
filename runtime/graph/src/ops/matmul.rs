//! Matrix products: Gemm and MatMul (Einsum has its own module, `einsum`).

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Elem, Node};

use super::entry::{def, dy, req, rule_all, unbroadcast, Grads, OpDef};
use super::value::{broadcast, Value};

pub const OPS: &[OpDef] = &[
    def("Gemm", gemm, false, rule_all(gemm_back)),
    def("MatMul", matmul, false, rule_all(matmul_back)),
];

fn gemm(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let a = req(node, ins, 0)?;
    let b = req(node, ins, 1)?;
    if a.shape.len() != 2 || b.shape.len() != 2 {
        return Err(err(format!(
            "Gemm needs 2-D inputs, got {:?} and {:?}",
            a.shape, b.shape
        )));
    }
    let (m, ka) = if node.int("transA", 0) != 0 {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let (kb, n) = if node.int("transB", 0) != 0 {
        (b.shape[1], b.shape[0])
    } else {
        (b.shape[0], b.shape[1])
    };
    if ka != kb {
        return Err(err(format!(
            "inner dims differ: A {:?} B {:?}",
            a.shape, b.shape
        )));
    }
    if let Some(c) = ins.get(2).copied().flatten() {
        if broadcast(&c.shape, &[m, n]).as_deref() != Some(&[m, n][..]) {
            return Err(err(format!(
                "C {:?} does not broadcast to [{m}, {n}]",
                c.shape
            )));
        }
    }
    Ok(vec![Value::new(Elem::F32, vec![m, n])])
}

fn matmul(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let a = req(node, ins, 0)?;
    let b = req(node, ins, 1)?;
    if a.shape.len() < 2 || b.shape.len() < 2 {
        return Err(err("MatMul with a 1-D operand is not supported".into()));
    }
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if a.shape[ra - 1] != b.shape[rb - 2] {
        return Err(err(format!(
            "inner dims differ: {:?} x {:?}",
            a.shape, b.shape
        )));
    }
    let mut shape = broadcast(&a.shape[..ra - 2], &b.shape[..rb - 2])
        .ok_or_else(|| err("batch dims do not broadcast".into()))?;
    shape.push(a.shape[ra - 2]);
    shape.push(b.shape[rb - 1]);
    Ok(vec![Value::new(Elem::F32, shape)])
}

fn gemm_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let mut out = vec![None; n.inputs.len()];
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
    Ok(out)
}

fn matmul_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let mut out = vec![None; n.inputs.len()];
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
    Ok(out)
}
