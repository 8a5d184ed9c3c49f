//! Einsum with any number of operands, an explicit (`->`) or implicit output and `...`:
//! exporters' attention products (MaxViT's `B G H I D, B G H J D -> B G H I J`), batched
//! matrix products (`bhid,bhjd->bhij`) and reductions.
//!
//! Each `...` is spelled as letters the equation does not use, right-aligned across the
//! operands, so the shape rule and the gradient work on plain letters. Refused by name: a
//! letter repeated within one term (a diagonal), an axis whose sizes differ between operands
//! (size-1 broadcasting included), and an implicit output over both upper- and lower-case
//! letters (ONNX Runtime and NumPy order those differently).

use std::collections::HashMap;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Node};

use super::entry::{def, dy, req, rule_all, vec_i64, Grads, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[def("Einsum", einsum, false, rule_all(einsum_back))];

/// An equation with every term spelled out in letters, one per axis.
struct Equation {
    terms: Vec<Vec<u8>>,
    out: Vec<u8>,
}

/// One term as written: its letters and where its `...` stands, if it has one.
struct Written {
    letters: Vec<u8>,
    ellipsis: Option<usize>,
}

impl Equation {
    /// The node's equation for operands of the given ranks.
    fn parse(node: &Node, ranks: &[usize]) -> Result<Equation> {
        let eq: String = node
            .string("equation")
            .ok_or_else(|| GraphError::node(node, "Einsum: no equation"))?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let err = |r: String| GraphError::node(node, format!("Einsum '{eq}': {r}"));
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l, Some(r)),
            None => (eq.as_str(), None),
        };
        let written = lhs.split(',').map(split_term).collect::<Option<Vec<_>>>();
        let written = written.ok_or_else(|| {
            err("terms hold letters and at most one '...' each, nothing else".into())
        })?;
        if written.len() != ranks.len() {
            return Err(err(format!(
                "{} terms for {} operands",
                written.len(),
                ranks.len()
            )));
        }
        // The rank each `...` covers, and as many unused letters as the widest needs.
        let mut widths = Vec::with_capacity(ranks.len());
        for (i, (w, &rank)) in written.iter().zip(ranks).enumerate() {
            let n = w.letters.len();
            match w.ellipsis {
                None if n != rank => {
                    return Err(err(format!(
                        "operand {i} has rank {rank}, its term '{}' names {n} axes",
                        text(&w.letters)
                    )))
                }
                Some(_) if n > rank => {
                    return Err(err(format!(
                        "operand {i} has rank {rank}, its term names {n} axes besides '...'"
                    )))
                }
                _ => widths.push(rank - n.min(rank)),
            }
        }
        let width = widths.iter().copied().max().unwrap_or(0);
        let spare: Vec<u8> = (b'a'..=b'z')
            .chain(b'A'..=b'Z')
            .filter(|c| !eq.as_bytes().contains(c))
            .collect();
        if spare.len() < width {
            return Err(err(format!(
                "'...' covers {width} axes and only {} letters are unused",
                spare.len()
            )));
        }
        let dots = &spare[..width];
        let spell = |w: &Written, n: usize| -> Vec<u8> {
            match w.ellipsis {
                None => w.letters.clone(),
                Some(at) => {
                    let mut v = w.letters[..at].to_vec();
                    v.extend_from_slice(&dots[width - n..]);
                    v.extend_from_slice(&w.letters[at..]);
                    v
                }
            }
        };
        let terms: Vec<Vec<u8>> = written
            .iter()
            .zip(&widths)
            .map(|(w, &n)| spell(w, n))
            .collect();
        for t in &terms {
            if let Some(c) = repeated(t) {
                return Err(err(format!(
                    "letter '{}' repeated within a term (a diagonal) is not supported",
                    c as char
                )));
            }
        }
        let out = match rhs {
            Some(r) => {
                let w = split_term(r).ok_or_else(|| {
                    err("the output holds letters and at most one '...', nothing else".into())
                })?;
                let out = spell(&w, width);
                if let Some(c) = repeated(&out) {
                    return Err(err(format!("output letter '{}' repeated", c as char)));
                }
                if let Some(&c) = out.iter().find(|c| !terms.iter().any(|t| t.contains(c))) {
                    return Err(err(format!(
                        "output letter '{}' is in no operand",
                        c as char
                    )));
                }
                out
            }
            None => {
                // Implicit output: the `...` axes, then the letters used once, in order.
                let mut once: Vec<u8> = written
                    .iter()
                    .flat_map(|w| w.letters.iter().copied())
                    .filter(|c| terms.iter().flatten().filter(|&d| d == c).count() == 1)
                    .collect();
                let upper = once.iter().any(u8::is_ascii_uppercase);
                if upper && once.iter().any(u8::is_ascii_lowercase) {
                    return Err(err(
                        "an implicit output over upper- and lower-case letters is ordered differently by ONNX Runtime and NumPy; write '->'".into(),
                    ));
                }
                once.sort_unstable();
                dots.iter().copied().chain(once).collect()
            }
        };
        Ok(Equation { terms, out })
    }

    /// The size of each letter over operands of the given shapes.
    fn sizes(&self, node: &Node, shapes: &[&[usize]]) -> Result<HashMap<u8, usize>> {
        let mut size = HashMap::new();
        for (t, s) in self.terms.iter().zip(shapes) {
            for (&c, &d) in t.iter().zip(s.iter()) {
                match size.insert(c, d) {
                    Some(prev) if prev != d => {
                        return Err(GraphError::node(
                            node,
                            format!(
                                "Einsum: axis '{}' is {prev} in one operand and {d} in another (sizes must agree; size-1 broadcasting is not supported)",
                                c as char
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(size)
    }
}

/// Rewrites an Einsum node's equation with every `...` spelled as letters and the output
/// explicit, as the shape rule reads it: tract 0.23.9 computes wrong values for `...`
/// (`...j,jk->...k`), and an implicit output's order then cannot differ between engines.
pub fn spell_out(node: &mut Node, ranks: &[usize]) -> Result<()> {
    let e = Equation::parse(node, ranks)?;
    let terms: Vec<String> = e.terms.iter().map(|t| text(t)).collect();
    let eq = format!("{}->{}", terms.join(","), text(&e.out));
    node.attrs.retain(|a| a.name != "equation");
    node.attrs.push(attr::string("equation", &eq));
    Ok(())
}

/// A term's letters and the position of its `...`; `None` when it holds anything else or
/// more than one `...`.
fn split_term(t: &str) -> Option<Written> {
    let (before, after) = match t.split_once("...") {
        Some((b, a)) => (b, Some(a)),
        None => (t, None),
    };
    let letters = |s: &str| s.bytes().all(|c| c.is_ascii_alphabetic());
    if !letters(before) || !after.is_none_or(letters) {
        return None;
    }
    let mut v = before.as_bytes().to_vec();
    v.extend_from_slice(after.unwrap_or("").as_bytes());
    Some(Written {
        letters: v,
        ellipsis: after.map(|_| before.len()),
    })
}

fn repeated(t: &[u8]) -> Option<u8> {
    (1..t.len()).find(|&i| t[..i].contains(&t[i])).map(|i| t[i])
}

fn text(t: &[u8]) -> String {
    String::from_utf8_lossy(t).into_owned()
}

fn einsum(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let vals = (0..ins.len().max(1))
        .map(|i| req(node, ins, i))
        .collect::<Result<Vec<_>>>()?;
    let ranks: Vec<usize> = vals.iter().map(|v| v.shape.len()).collect();
    let e = Equation::parse(node, &ranks)?;
    let shapes: Vec<&[usize]> = vals.iter().map(|v| v.shape.as_slice()).collect();
    let size = e.sizes(node, &shapes)?;
    Ok(vec![Value::new(
        vals[0].elem,
        e.out.iter().map(|c| size[c]).collect(),
    )])
}

/// y = einsum(T1, .., Tn -> O): the gradient of operand i is einsum(O, the other terms ->
/// Ti). The letters of Ti found nowhere else (summed out of Ti alone: each of their cells
/// receives the same gradient) enter that product through one more operand, ones over
/// those letters (a scalar 1 expanded).
fn einsum_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let shapes = n
        .inputs
        .iter()
        .map(|x| b.shape(x))
        .collect::<Result<Vec<_>>>()?;
    let ranks: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let e = Equation::parse(n, &ranks)?;
    let mut grads = vec![None; n.inputs.len()];
    for (i, mine) in e.terms.iter().enumerate() {
        let others: Vec<usize> = (0..e.terms.len()).filter(|&j| j != i).collect();
        let elsewhere =
            |c: &u8| e.out.contains(c) || others.iter().any(|&j| e.terms[j].contains(c));
        let mut ins: Vec<String> = vec![dy.clone()];
        let mut lhs = vec![text(&e.out)];
        for &j in &others {
            ins.push(n.inputs[j].clone());
            lhs.push(text(&e.terms[j]));
        }
        let lonely: Vec<usize> = (0..mine.len()).filter(|&k| !elsewhere(&mine[k])).collect();
        if !lonely.is_empty() {
            let dims: Vec<usize> = lonely.iter().map(|&k| shapes[i][k]).collect();
            let (one, to) = (b.scalar(1.0), b.ints(&vec_i64(&dims)));
            ins.push(b.op("Expand", &[&one, &to], vec![])?);
            lhs.push(lonely.iter().map(|&k| mine[k] as char).collect());
        }
        let g = if lhs.len() == 1 && e.out == *mine {
            dy.clone()
        } else {
            let eq = format!("{}->{}", lhs.join(","), text(mine));
            let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
            b.op("Einsum", &refs, vec![attr::string("equation", &eq)])?
        };
        grads[i] = Some(g);
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use crate::builder::Builder;
    use crate::ir::{attr, Elem};

    #[test]
    fn einsum_shapes_and_refusals() {
        let mut b = Builder::new(17);
        let q = b.input("q", Elem::F32, &[2, 3, 4, 5]).unwrap();
        let k = b.input("k", Elem::F32, &[2, 3, 6, 5]).unwrap();
        let m = b.input("m", Elem::F32, &[5, 7]).unwrap();
        let eq = |e: &str| vec![attr::string("equation", e)];
        for (e, ins, want) in [
            (
                "B H I D, B H J D -> B H I J",
                vec![&q, &k],
                vec![2, 3, 4, 6],
            ),
            ("...id,...jd->...ij", vec![&q, &k], vec![2, 3, 4, 6]),
            ("bhid,dz", vec![&q, &m], vec![2, 3, 4, 7]),
            ("...d,dz->...z", vec![&q, &m], vec![2, 3, 4, 7]),
            ("bhid,bhjd,dz->bz", vec![&q, &k, &m], vec![2, 7]),
            ("bhid->dhb", vec![&q], vec![5, 3, 2]),
            ("...", vec![&q], vec![2, 3, 4, 5]),
        ] {
            let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
            let s = b.op("Einsum", &ins, eq(e)).unwrap();
            assert_eq!(b.shape(&s).unwrap(), want, "{e}");
        }
        // Engines get the equation spelled out: `...` as unused letters, the output explicit.
        let spelled: Vec<String> = b
            .nodes()
            .iter()
            .map(|n| n.string("equation").unwrap())
            .collect();
        for (i, want) in [
            (1, "abid,abjd->abij"),
            (2, "bhid,dz->bhiz"),
            (6, "abcd->abcd"),
        ] {
            assert_eq!(spelled[i], want);
        }
        for (e, want) in [
            ("bhii,bhjd->bhij", "diagonal"),
            ("bhid,bhjd->bhiz", "in no operand"),
            ("bhid,bhid->bhi", "'i' is 4 in one operand and 6"),
            ("bhid,bhjd,x->bhij", "3 terms for 2 operands"),
            (
                "bhi,bhjd->bhij",
                "operand 0 has rank 4, its term 'bhi' names 3 axes",
            ),
            ("bhId,bhjd", "upper- and lower-case"),
            ("b.hid,bhjd->bhij", "at most one '...'"),
        ] {
            let err = b.op("Einsum", &[&q, &k], eq(e)).unwrap_err().to_string();
            assert!(err.contains(want), "{e}: {err}");
        }
    }
}
