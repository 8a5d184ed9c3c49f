//! Matrix products: Gemm, MatMul and two-operand Einsum.

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Elem, Node};

use super::entry::{def, dy, req, rule_all, unbroadcast, Grads, OpDef};
use super::value::{broadcast, Value};

pub const OPS: &[OpDef] = &[
    def("Gemm", gemm, false, rule_all(gemm_back)),
    def("MatMul", matmul, false, rule_all(matmul_back)),
    def("Einsum", einsum, false, rule_all(einsum_back)),
];

/// A two-operand Einsum equation with an explicit output, one letter per axis, no ellipsis
/// and no letter repeated within a term (what exporters emit for batched attention products,
/// e.g. MaxViT's `BGHID,BGHJD->BGHIJ`).
struct Equation {
    a: Vec<u8>,
    b: Vec<u8>,
    out: Vec<u8>,
}

impl Equation {
    fn parse(node: &Node) -> Result<Equation> {
        let err = |r: &str| GraphError::node(node, format!("Einsum: {r}"));
        let eq: String = node
            .string("equation")
            .ok_or_else(|| err("no equation"))?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let (ins, out) = eq
            .split_once("->")
            .ok_or_else(|| err(&format!("'{eq}' has no explicit output (->)")))?;
        let terms: Vec<&str> = ins.split(',').collect();
        let [a, b] = terms[..] else {
            return Err(err(&format!(
                "'{eq}' has {} operands; two are supported",
                terms.len()
            )));
        };
        let term = |t: &str| -> Result<Vec<u8>> {
            if !t.bytes().all(|c| c.is_ascii_alphabetic()) {
                return Err(err(&format!(
                    "'{eq}': only letters are supported (no ellipsis)"
                )));
            }
            let v = t.as_bytes().to_vec();
            if (1..v.len()).any(|i| v[..i].contains(&v[i])) {
                return Err(err(&format!(
                    "'{eq}': a letter repeated within a term (a diagonal) is not supported"
                )));
            }
            Ok(v)
        };
        let e = Equation {
            a: term(a)?,
            b: term(b)?,
            out: term(out)?,
        };
        if let Some(&c) = e.out.iter().find(|c| !e.a.contains(c) && !e.b.contains(c)) {
            return Err(err(&format!(
                "'{eq}': output letter '{}' is in no operand",
                c as char
            )));
        }
        Ok(e)
    }

    fn text(a: &[u8], b: &[u8], out: &[u8]) -> String {
        let s = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
        format!("{},{}->{}", s(a), s(b), s(out))
    }
}

fn einsum(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let e = Equation::parse(node)?;
    let (a, b) = (req(node, ins, 0)?, req(node, ins, 1)?);
    let mut size: std::collections::HashMap<u8, usize> = Default::default();
    for (term, v, which) in [(&e.a, a, "first"), (&e.b, b, "second")] {
        if term.len() != v.shape.len() {
            return Err(GraphError::node(
                node,
                format!(
                    "Einsum: the {which} operand has rank {}, its term '{}' names {} axes",
                    v.shape.len(),
                    String::from_utf8_lossy(term),
                    term.len()
                ),
            ));
        }
        for (&c, &d) in term.iter().zip(&v.shape) {
            match size.insert(c, d) {
                // Size-1 broadcasting of a letter is not supported: sizes must agree.
                Some(prev) if prev != d => {
                    return Err(GraphError::node(
                        node,
                        format!(
                            "Einsum: axis '{}' is {prev} in one operand and {d} in the other",
                            c as char
                        ),
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(vec![Value::new(
        Elem::F32,
        e.out.iter().map(|c| size[c]).collect(),
    )])
}

/// y = einsum(A,B->C): dA = einsum(C,B->A) and dB = einsum(C,A->B). Each operand letter must
/// appear in the other operand or the output (a letter summed out of one operand alone would
/// need a broadcast of the gradient; refused by name).
fn einsum_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let e = Equation::parse(n)?;
    let mut out = vec![None; n.inputs.len()];
    for (i, (mine, other)) in [(&e.a, &e.b), (&e.b, &e.a)].into_iter().enumerate() {
        if let Some(&c) = mine
            .iter()
            .find(|c| !other.contains(c) && !e.out.contains(c))
        {
            return Err(GraphError::node(
                n,
                format!(
                    "Einsum: no gradient rule when letter '{}' is summed out of one operand alone",
                    c as char
                ),
            ));
        }
        let eq = Equation::text(&e.out, other, mine);
        out[i] = Some(b.op(
            "Einsum",
            &[&dy, &n.inputs[1 - i]],
            vec![attr::string("equation", &eq)],
        )?);
    }
    Ok(out)
}

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
