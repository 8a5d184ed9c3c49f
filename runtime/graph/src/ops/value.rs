//! What shape inference knows of a tensor ([`Value`]: type, static shape, small constant
//! values) and the helpers the op table's shape rules share: broadcasting, axes, and the
//! folding of the small integer subgraphs exporters emit for shapes.

use fieldtune_tensor::{DType, Tensor};

use crate::ir::Elem;

/// What the compiler knows of a tensor: element type, concrete shape and, for small
/// constants, the value.
#[derive(Clone, Debug)]
pub struct Value {
    pub elem: Elem,
    pub shape: Vec<usize>,
    pub konst: Option<Tensor>,
}

impl Value {
    pub fn new(elem: Elem, shape: Vec<usize>) -> Value {
        Value {
            elem,
            shape,
            konst: None,
        }
    }

    pub fn konst(t: Tensor) -> Value {
        let elem = match t.dtype() {
            DType::F32 => Elem::F32,
            DType::I64 => Elem::I64,
        };
        Value {
            elem,
            shape: t.shape().to_vec(),
            konst: Some(t),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The value as i64s, when it is a known integer constant.
    pub fn ints(&self) -> Option<&[i64]> {
        self.konst.as_ref().and_then(|t| t.as_i64())
    }
}

/// Largest result of a folded op; bigger ones stay as nodes.
pub const FOLD_LIMIT: usize = 1 << 16;

/// Normalises a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// `x` under a new shape, its constant value (if any) reshaped along.
pub fn reshaped(x: &Value, shape: Vec<usize>) -> Value {
    let mut v = Value::new(x.elem, shape.clone());
    v.konst = x.konst.clone().and_then(|k| k.reshaped(shape).ok());
    v
}

/// The flat index into an input of shape `s` that output element `flat` (of shape `out`)
/// reads under numpy broadcasting.
pub fn broadcast_index(flat: usize, s: &[usize], out: &[usize]) -> usize {
    let mut rem = flat;
    let mut res = 0;
    let mut stride = 1;
    let off = out.len() - s.len();
    for d in (0..out.len()).rev() {
        let coord = rem % out[d];
        rem /= out[d];
        if d >= off {
            let sd = s[d - off];
            res += (if sd == 1 { 0 } else { coord }) * stride;
            stride *= sd;
        }
    }
    res
}

/// Folds a binary op over constant i64 inputs (shape chains): arithmetic, and comparisons as
/// 0/1 (the bool result of Equal, Less, ... is only ever read by a folding Where).
pub fn fold_binary_i64(
    op: &str,
    a: &[i64],
    sa: &[usize],
    b: &[i64],
    sb: &[usize],
    out: &[usize],
) -> Option<Tensor> {
    let n: usize = out.iter().product();
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = (
            a[broadcast_index(i, sa, out)],
            b[broadcast_index(i, sb, out)],
        );
        v.push(match op {
            "Add" => x.checked_add(y)?,
            "Sub" => x.checked_sub(y)?,
            "Mul" => x.checked_mul(y)?,
            "Div" if y != 0 => x / y,
            // Mod with fmod=0: the remainder takes the divisor's sign (Python's %).
            "Mod" if y != 0 => x.checked_rem(y).map(|r| {
                if r != 0 && (r < 0) != (y < 0) {
                    r + y
                } else {
                    r
                }
            })?,
            "Equal" => i64::from(x == y),
            "Greater" => i64::from(x > y),
            "Less" => i64::from(x < y),
            "GreaterOrEqual" => i64::from(x >= y),
            "LessOrEqual" => i64::from(x <= y),
            _ => return None,
        });
    }
    Tensor::i64(out.to_vec(), v).ok()
}
