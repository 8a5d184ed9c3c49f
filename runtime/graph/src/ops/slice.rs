//! Joining, cutting and indexing: Concat, Split, Slice, Pad, Gather, ScatterElements, ScatterND.

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Elem, Node};

use super::entry::{def, dy, only, req, rule, rule_all, vec_i64, Grad, Grads, OpDef};
use super::value::{norm_axis, Value, FOLD_LIMIT};

pub const OPS: &[OpDef] = &[
    def("Concat", concat, true, rule_all(concat_back)),
    def("Split", split, false, rule(split_back)),
    def("Slice", slice, true, rule(slice_back)),
    def("Pad", pad, false, rule(pad_back)),
    def("Gather", gather, true, rule(gather_back)),
    def("ScatterElements", scatter_elements, false, Grad::NoRule),
    def("ScatterND", scatter_nd, false, Grad::NoRule),
];

fn axis_of(node: &Node, rank: usize) -> Result<usize> {
    norm_axis(node.int("axis", 0), rank).ok_or_else(|| GraphError::node(node, "axis out of range"))
}

fn concat(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let first = req(node, ins, 0)?;
    let r = first.shape.len();
    let axis = axis_of(node, r)?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    let mut all = Vec::new();
    for i in 0..ins.len() {
        let v = req(node, ins, i)?;
        if v.shape.len() != r || (0..r).any(|d| d != axis && v.shape[d] != first.shape[d]) {
            return Err(GraphError::node(
                node,
                format!(
                    "input {i} has shape {:?}, input 0 has {:?}",
                    v.shape, first.shape
                ),
            ));
        }
        shape[axis] += v.shape[axis];
        all.push(v);
    }
    let mut v = Value::new(first.elem, shape.clone());
    if r == 1 && all.iter().all(|a| a.ints().is_some()) {
        let d: Vec<i64> = all
            .iter()
            .flat_map(|a| a.ints().unwrap_or(&[]).iter().copied())
            .collect();
        v.konst = Tensor::i64(shape, d).ok();
    }
    Ok(vec![v])
}

/// The part sizes of a Split along an axis of length `len`: from the `split` input (opset
/// 13+) or attribute, or equal parts (`num_outputs`, opset 18, or the output count).
pub fn split_sizes(node: &Node, ins: &[Option<&Value>], len: usize) -> Result<Vec<usize>> {
    let given = ins
        .get(1)
        .copied()
        .flatten()
        .map(|v| {
            v.ints()
                .map(<[i64]>::to_vec)
                .ok_or_else(|| GraphError::node(node, "split sizes must be constant"))
        })
        .transpose()?
        .or_else(|| node.ints("split"));
    let sizes: Vec<usize> = match given {
        Some(v) => v.iter().map(|&x| x.max(0) as usize).collect(),
        None => {
            let k = node.int("num_outputs", node.outputs.len() as i64).max(1) as usize;
            let chunk = len.div_ceil(k);
            (0..k)
                .map(|i| chunk.min(len.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != len {
        return Err(GraphError::node(
            node,
            format!("split sizes {sizes:?} do not add up to {len}"),
        ));
    }
    Ok(sizes)
}

fn split(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let axis = axis_of(node, x.shape.len())?;
    let parts = split_sizes(node, ins, x.shape[axis])?;
    Ok(parts
        .into_iter()
        .map(|p| {
            let mut sh = x.shape.clone();
            sh[axis] = p;
            Value::new(x.elem, sh)
        })
        .collect())
}

/// A resolved static slice: per-axis start, step and count.
#[derive(Clone, Debug)]
pub struct SliceSpec {
    pub start: Vec<usize>,
    pub step: Vec<i64>,
    pub count: Vec<usize>,
}

impl SliceSpec {
    /// Resolves ONNX Slice semantics (negative indices, clamping, steps) for a static shape.
    pub fn resolve(
        shape: &[usize],
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: &[i64],
    ) -> Option<SliceSpec> {
        let r = shape.len();
        let mut spec = SliceSpec {
            start: vec![0; r],
            step: vec![1; r],
            count: shape.to_vec(),
        };
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return None;
        }
        for k in 0..starts.len() {
            let a = norm_axis(axes[k], r)?;
            let dim = shape[a] as i64;
            let step = steps[k];
            if step == 0 {
                return None;
            }
            let fix = |v: i64| if v < 0 { v + dim } else { v };
            let (s, e) = if step > 0 {
                (fix(starts[k]).clamp(0, dim), fix(ends[k]).clamp(0, dim))
            } else if dim == 0 {
                (0, 0)
            } else {
                (
                    fix(starts[k]).clamp(0, dim - 1),
                    fix(ends[k]).clamp(-1, dim - 1),
                )
            };
            // ceil(|e - s| / |step|) elements, without overflow for any step.
            let (from, to) = if step > 0 { (s, e) } else { (e, s) };
            let count = if to > from {
                ((to - from - 1) as u64 / step.unsigned_abs()) as i64 + 1
            } else {
                0
            };
            spec.start[a] = s.max(0) as usize;
            spec.step[a] = step;
            spec.count[a] = count as usize;
        }
        Some(spec)
    }

    pub fn out_shape(&self, _shape: &[usize]) -> Vec<usize> {
        self.count.clone()
    }
}

fn slice(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let err = |r: String| GraphError::node(node, r);
    let x = req(node, ins, 0)?;
    let r = x.shape.len();
    let get = |i: usize| -> Result<Option<Vec<i64>>> {
        match ins.get(i).copied().flatten() {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.ints()
                    .ok_or_else(|| err(format!("slice input {i} must be a constant")))?
                    .to_vec(),
            )),
        }
    };
    let starts = get(1)?.ok_or_else(|| err("starts are required".into()))?;
    let ends = get(2)?.ok_or_else(|| err("ends are required".into()))?;
    let axes = get(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = get(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    let sl = SliceSpec::resolve(&x.shape, &starts, &ends, &axes, &steps).ok_or_else(|| {
        err(format!(
            "slice {starts:?}..{ends:?} axes {axes:?} steps {steps:?} does not fit {:?}",
            x.shape
        ))
    })?;
    let shape = sl.out_shape(&x.shape);
    let mut v = Value::new(x.elem, shape.clone());
    // Constant i64 tensors of any rank fold (exporters reverse a [rank, 2] pad list with a
    // step -1 slice).
    if let Some(d) = x.ints().filter(|d| d.len() <= FOLD_LIMIT) {
        let n: usize = shape.iter().product();
        let in_strides: Vec<i64> = (0..r)
            .map(|i| x.shape[i + 1..].iter().product::<usize>() as i64)
            .collect();
        let picked: Vec<i64> = (0..n)
            .map(|flat| {
                let (mut rem, mut src) = (flat, 0i64);
                for a in (0..r).rev() {
                    let k = (rem % shape[a]) as i64;
                    rem /= shape[a];
                    src += (sl.start[a] as i64 + k * sl.step[a]) * in_strides[a];
                }
                d[src as usize]
            })
            .collect();
        v.konst = Tensor::i64(shape, picked).ok();
    }
    Ok(vec![v])
}

/// The pads of a Pad node over every axis of a rank-`r` input: its `pads` input (a constant,
/// or folded from the shape chain that computes it, as Swin's window padding does from
/// Shape, Gather, Sub, Mod and Concat), spread over the optional `axes` input (opset 18).
fn full_pads(
    node: &Node,
    pads: Option<&Value>,
    axes: Option<&Value>,
    r: usize,
) -> Result<Vec<i64>> {
    let err = |m: String| GraphError::node(node, m);
    let pads = pads.and_then(Value::ints).ok_or_else(|| {
        err(format!(
            "pads '{}' are not a constant: they depend on the data, not only on shapes (pads computed from Shape, Gather, Slice, Concat and integer arithmetic fold when the model's input shape is static)",
            node.inputs.get(1).map_or("", String::as_str)
        ))
    })?;
    let axes: Vec<i64> = match node.input(3) {
        None => (0..r as i64).collect(),
        Some(name) => axes
            .and_then(Value::ints)
            .ok_or_else(|| err(format!("axes '{name}' must be a constant")))?
            .to_vec(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(err(format!(
            "pads {pads:?} do not fit {} axes of rank {r}",
            axes.len()
        )));
    }
    let k = axes.len();
    let mut full = vec![0i64; 2 * r];
    for (j, &a) in axes.iter().enumerate() {
        let d = norm_axis(a, r).ok_or_else(|| err(format!("axis {a} is out of rank {r}")))?;
        full[d] = pads[j];
        full[d + r] = pads[j + k];
    }
    Ok(full)
}

fn pad(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let r = x.shape.len();
    let opt = |i: usize| ins.get(i).copied().flatten();
    let pads = full_pads(node, opt(1), opt(3), r)?;
    let shape = (0..r)
        .map(|i| (x.shape[i] as i64 + pads[i] + pads[i + r]).max(0) as usize)
        .collect();
    Ok(vec![Value::new(x.elem, shape)])
}

fn gather(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let idx = req(node, ins, 1)?;
    let r = x.shape.len();
    let axis = axis_of(node, r)?;
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(&idx.shape);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    let mut v = Value::new(x.elem, shape.clone());
    if let (Some(d), Some(i), 1) = (x.ints(), idx.ints(), r) {
        let n = d.len() as i64;
        let picked: Option<Vec<i64>> = i
            .iter()
            .map(|&k| d.get((if k < 0 { k + n } else { k }) as usize).copied())
            .collect();
        v.konst = picked.and_then(|p| Tensor::i64(shape, p).ok());
    }
    Ok(vec![v])
}

fn scatter_elements(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (x, i, u) = (req(node, ins, 0)?, req(node, ins, 1)?, req(node, ins, 2)?);
    let r = x.shape.len();
    axis_of(node, r)?;
    if i.elem != Elem::I64 || u.elem != x.elem || i.shape != u.shape || i.shape.len() != r {
        return Err(GraphError::node(node, format!(
            "indices {:?} (int64) and updates {:?} (the data's type) must have one shape of the data's rank {r}",
            i.shape, u.shape
        )));
    }
    Ok(vec![Value::new(x.elem, x.shape.clone())])
}

/// ScatterND (exporters' indexed assignment, e.g. Swin's shifted-window mask): the data's
/// shape; indices [.., k] address k leading axes and updates fill the rest.
fn scatter_nd(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (x, i, u) = (req(node, ins, 0)?, req(node, ins, 1)?, req(node, ins, 2)?);
    if node.string("reduction").is_some_and(|r| r != "none") {
        return Err(GraphError::node(
            node,
            "ScatterND with a reduction is not supported",
        ));
    }
    let k = i.shape.last().copied().unwrap_or(0);
    let want: Vec<usize> = i.shape[..i.shape.len().saturating_sub(1)]
        .iter()
        .chain(x.shape.get(k..).unwrap_or(&[]))
        .copied()
        .collect();
    if i.elem != Elem::I64
        || u.elem != x.elem
        || i.shape.is_empty()
        || k > x.shape.len()
        || u.shape != want
    {
        return Err(GraphError::node(node, format!(
            "data {:?}, indices {:?} (int64, last axis at most the data's rank) and updates {:?} (the data's type) do not fit: updates must be {want:?}",
            x.shape, i.shape, u.shape
        )));
    }
    Ok(vec![Value::new(x.elem, x.shape.clone())])
}

fn concat_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    let axis = axis_of(n, xs.len())?;
    let mut out = vec![None; n.inputs.len()];
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
    Ok(out)
}

/// Split: the input gradient is the outputs' gradients concatenated (zeros for outputs
/// that carry none).
fn split_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let xs = b.shape(&n.inputs[0])?;
    let axis = axis_of(n, xs.len())?;
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
    Ok(only(
        n,
        if refs.len() == 1 {
            parts[0].clone()
        } else {
            b.op("Concat", &refs, vec![attr::int("axis", axis as i64)])?
        },
    ))
}

/// Slice (unit steps): the gradient is the output's, zero-padded back to the input's shape.
fn slice_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
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
    if sl.step.iter().any(|&s| s < 1) {
        return Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: "Slice (negative step)".into(),
        });
    }
    let r = xs.len();
    // A strided axis (step s > 1, Swin's patch merging `x[..., 0::2, 0::2, :]`): each
    // gradient value is followed by s - 1 zeros (Unsqueeze, Pad, Reshape), and the last
    // zeros cut, so the axis spans (count - 1) * s + 1 input cells from the start.
    let mut g = dy;
    let mut span = sl.count.clone();
    for d in 0..r {
        let (step, c) = (sl.step[d] as usize, sl.count[d]);
        if step == 1 || c == 0 {
            continue;
        }
        let mut shape = b.shape(&g)?;
        let ax = b.ints(&[d as i64 + 1]);
        let u = b.op("Unsqueeze", &[&g, &ax], vec![])?;
        let mut pads = vec![0i64; 2 * (r + 1)];
        pads[r + 1 + d + 1] = step as i64 - 1;
        let p = b.ints(&pads);
        let spread = b.op("Pad", &[&u, &p], vec![])?;
        shape[d] = c * step;
        let flat = b.reshape(&spread, &shape)?;
        span[d] = (c - 1) * step + 1;
        let (st, en, a) = (b.ints(&[0]), b.ints(&[span[d] as i64]), b.ints(&[d as i64]));
        g = b.op("Slice", &[&flat, &st, &en, &a], vec![])?;
    }
    let mut pads = vec![0i64; 2 * r];
    for d in 0..r {
        pads[d] = sl.start[d] as i64;
        pads[d + r] = (xs[d] - sl.start[d] - span[d]) as i64;
    }
    let p = b.ints(&pads);
    Ok(only(n, b.op("Pad", &[&g, &p], vec![])?))
}

/// Pad (constant mode): the gradient is the output's, sliced back to the input's cells (and
/// padded with zeros where a negative pad cropped the input).
fn pad_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let xs = b.shape(&n.inputs[0])?;
    let mode = n.string("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(GraphError::NoGradRule {
            node: n.name.clone(),
            op: format!("Pad (mode {mode})"),
        });
    }
    let r = xs.len();
    let opt = |i: usize| n.input(i).and_then(|t| b.value(t));
    let pads = full_pads(n, opt(1), opt(3), r)?;
    // Positive pads are cut from dY; negative ones (a crop) come back as zeros.
    let cut: Vec<i64> = (0..r)
        .map(|d| pads[d].min(0) + pads[d + r].min(0))
        .collect();
    let starts: Vec<i64> = (0..r).map(|d| pads[d].max(0)).collect();
    let ends: Vec<i64> = (0..r).map(|d| starts[d] + xs[d] as i64 + cut[d]).collect();
    let axes: Vec<i64> = (0..r as i64).collect();
    let (s, e, a) = (b.ints(&starts), b.ints(&ends), b.ints(&axes));
    let g = b.op("Slice", &[&dy, &s, &e, &a], vec![])?;
    if pads.iter().all(|&p| p >= 0) {
        return Ok(only(n, g));
    }
    let back: Vec<i64> = pads.iter().map(|&p| (-p).max(0)).collect();
    let p = b.ints(&back);
    Ok(only(n, b.op("Pad", &[&g, &p], vec![])?))
}

/// Gather: the output's gradient scattered back to the rows it was gathered from, summed
/// where an index repeats (ScatterElements with reduction add, opset 16+, into zeros). The
/// indices are flattened to one axis, wrapped when they may be negative, and broadcast over
/// the other axes of the data.
fn gather_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = dy(n, gy)?;
    let (x, idx) = (&n.inputs[0], &n.inputs[1]);
    let xs = b.shape(x)?;
    let axis = axis_of(n, xs.len())?;
    let k: usize = b.shape(idx)?.iter().product();
    let mut us = xs.clone();
    us[axis] = k;
    let upd = b.reshape(&dy, &us)?;
    let mut is = vec![1; xs.len()];
    is[axis] = k;
    let mut i = b.reshape(idx, &is)?;
    let known_nonneg = b
        .value(idx)
        .and_then(Value::ints)
        .is_some_and(|v| v.iter().all(|&j| j >= 0));
    if !known_nonneg {
        let (zero, len) = (b.ints(&[0]), b.ints(&[xs[axis] as i64]));
        let neg = b.op("Less", &[&i, &zero], vec![])?;
        let wrapped = b.op("Add", &[&i, &len], vec![])?;
        i = b.op("Where", &[&neg, &wrapped, &i], vec![])?;
    }
    let ushape = b.ints(&vec_i64(&us));
    let i = b.op("Expand", &[&i, &ushape], vec![])?;
    let zero = b.scalar(0.0);
    let xshape = b.ints(&vec_i64(&xs));
    let zeros = b.op("Expand", &[&zero, &xshape], vec![])?;
    let g = b.op(
        "ScatterElements",
        &[&zeros, &i, &upd],
        vec![
            attr::int("axis", axis as i64),
            attr::string("reduction", "add"),
        ],
    )?;
    Ok(only(n, g))
}

#[cfg(test)]
mod tests {
    use crate::builder::Builder;
    use crate::ir::{attr, Elem};

    /// Swin's window padding: pads computed from the input's shape (Shape, Gather, Sub, Mod,
    /// Concat) fold to a constant, and the Pad's shape follows; pads computed from data are
    /// refused naming them.
    #[test]
    fn pads_computed_from_shapes_fold() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[1, 5, 6, 3]).unwrap();
        let pads = computed_window_pads(&mut b, &x, 4);
        assert_eq!(
            b.value(&pads).unwrap().ints(),
            Some(&[0i64, 0, 0, 0, 0, 3, 2, 0][..])
        );
        let y = b.op("Pad", &[&x, &pads], vec![]).unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![1, 8, 8, 3]);
        // Opset 18's axes input: pads [1, 0, 2, 1] over axes 1 and -2.
        let (axes, two) = (b.ints(&[1, -2]), b.ints(&[1, 0, 2, 1]));
        let y2 = b.op("Pad", &[&x, &two, "", &axes], vec![]).unwrap();
        assert_eq!(b.shape(&y2).unwrap(), vec![1, 8, 7, 3]);
        let f = b.input("f", Elem::F32, &[8]).unwrap();
        let data = b.op("Cast", &[&f], vec![attr::int("to", 7)]).unwrap();
        let err = b.op("Pad", &[&x, &data], vec![]).unwrap_err().to_string();
        assert!(
            err.contains("not a constant: they depend on the data"),
            "{err}"
        );
        assert!(err.contains(&data), "{err}");
    }

    /// torchvision's Swin window padding as exported: `pad_b = (w - H % w) % w` and
    /// `pad_r = (w - W % w) % w` from Shape and Gather, into NHWC pads by Concat.
    fn computed_window_pads(b: &mut Builder, x: &str, w: i64) -> String {
        let shape = b.op("Shape", &[x], vec![]).unwrap();
        let win = b.ints(&[w]);
        let mut ends = Vec::new();
        for axis in [1i64, 2] {
            let i = b.ints(&[axis]);
            let d = b.op("Gather", &[&shape, &i], vec![]).unwrap();
            let m = b.op("Mod", &[&d, &win], vec![]).unwrap();
            let s = b.op("Sub", &[&win, &m], vec![]).unwrap();
            ends.push(b.op("Mod", &[&s, &win], vec![]).unwrap());
        }
        let zeros = b.ints(&[0, 0, 0, 0, 0]);
        let zero = b.ints(&[0]);
        b.op(
            "Concat",
            &[&zeros, &ends[0], &ends[1], &zero],
            vec![attr::int("axis", 0)],
        )
        .unwrap()
    }
}
