//! Resize (2-D, nearest or linear, static scales or sizes): a linear map per spatial axis.

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::Node;

use super::entry::{def, dy, only, req, rule, Grads, OpDef};
use super::value::Value;

pub const OPS: &[OpDef] = &[def("Resize", resize, false, rule(resize_back))];

fn resize(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = req(node, ins, 0)?;
    let plan = ResizePlan::of(node, ins)?;
    Ok(vec![Value::new(x.elem, plan.output)])
}

/// A 2-D Resize over the last two axes of an `[N, C, H, W]` tensor with static scales or
/// sizes (`nearest` or `linear`): both modes are a linear map per axis, `Y = A_h X A_w^T`
/// on every (n, c) plane, with the interpolation matrices of [`ResizePlan::matrix`].
#[derive(Clone, Debug)]
pub struct ResizePlan {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    /// Scale per spatial axis as the coordinate transform uses it (the `scales` input, or
    /// output / input length when `sizes` is given).
    pub scales: [f32; 2],
    pub linear: bool,
    pub coord: String,
    pub nearest: String,
}

impl ResizePlan {
    /// Reads a Resize node (opset 10 `X, scales`; opset 11+ `X, roi, scales, sizes`).
    pub fn of(node: &Node, ins: &[Option<&Value>]) -> Result<ResizePlan> {
        let err = |r: String| GraphError::node(node, r);
        let x = ins
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| err("input 0 is required".into()))?;
        let r = x.shape.len();
        if r != 4 {
            return Err(err(format!(
                "only 2-D Resize of [N, C, H, W] tensors is supported, got {:?}",
                x.shape
            )));
        }
        let mode = node.string("mode").unwrap_or_else(|| "nearest".into());
        if mode != "nearest" && mode != "linear" {
            return Err(err(format!(
                "mode '{mode}' is not supported (nearest, linear)"
            )));
        }
        let coord = node
            .string("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into());
        if ![
            "half_pixel",
            "pytorch_half_pixel",
            "align_corners",
            "asymmetric",
        ]
        .contains(&coord.as_str())
        {
            return Err(err(format!(
                "coordinate_transformation_mode '{coord}' is not supported (half_pixel, pytorch_half_pixel, align_corners, asymmetric)"
            )));
        }
        let nearest = node
            .string("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into());
        if !["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"].contains(&nearest.as_str())
        {
            return Err(err(format!(
                "nearest_mode '{nearest}' is not an ONNX value"
            )));
        }
        if node.int("exclude_outside", 0) != 0
            || node.int("antialias", 0) != 0
            || node.ints("axes").is_some()
            || node
                .string("keep_aspect_ratio_policy")
                .is_some_and(|p| p != "stretch")
        {
            return Err(err(
                "exclude_outside, antialias, axes and keep_aspect_ratio_policy are not supported"
                    .into(),
            ));
        }
        let (scales_ix, sizes_ix) = if node.inputs.len() == 2 {
            (1, usize::MAX)
        } else {
            (2, 3)
        };
        let present = |i: usize| ins.get(i).copied().flatten().filter(|v| v.numel() > 0);
        let output: Vec<usize>;
        let scales: [f32; 2];
        if let Some(v) = present(scales_ix) {
            let s = v
                .konst
                .as_ref()
                .and_then(|t| t.as_f32())
                .ok_or_else(|| err("scales must be a float constant at compile time".into()))?;
            if s.len() != r {
                return Err(err(format!("scales {s:?} do not fit rank {r}")));
            }
            output = x
                .shape
                .iter()
                .zip(s)
                .map(|(&d, &f)| (d as f32 * f).floor().max(0.0) as usize)
                .collect();
            if s[..2] != [1.0, 1.0] {
                return Err(err(format!(
                    "scales {s:?} resize the batch or channel axis"
                )));
            }
            scales = [s[2], s[3]];
        } else if let Some(v) = present(sizes_ix) {
            let s = v
                .ints()
                .ok_or_else(|| err("sizes must be an integer constant at compile time".into()))?;
            if s.len() != r || s.iter().any(|&d| d < 1) {
                return Err(err(format!("sizes {s:?} do not fit rank {r}")));
            }
            output = s.iter().map(|&d| d as usize).collect();
            scales = [
                output[2] as f32 / x.shape[2] as f32,
                output[3] as f32 / x.shape[3] as f32,
            ];
        } else {
            return Err(err("needs constant scales or sizes".into()));
        }
        if output[..2] != x.shape[..2] || output[2] == 0 || output[3] == 0 {
            return Err(err(format!(
                "output shape {output:?} from input {:?} is not a 2-D resize",
                x.shape
            )));
        }
        Ok(ResizePlan {
            input: x.shape.clone(),
            output,
            scales,
            linear: mode == "linear",
            coord,
            nearest,
        })
    }

    /// The interpolation matrix `[out, in]` (row-major) of spatial axis `a` (0: H, 1: W),
    /// as ONNX defines it (coordinates in f32 like the engines; outside samples take the
    /// edge value).
    pub fn matrix(&self, a: usize) -> Vec<f32> {
        let (n_in, n_out, scale) = (self.input[2 + a], self.output[2 + a], self.scales[a]);
        let mut m = vec![0f32; n_out * n_in];
        let last = n_in as f32 - 1.0;
        for i in 0..n_out {
            let xo = i as f32;
            let x = match self.coord.as_str() {
                "asymmetric" => xo / scale,
                "align_corners" if n_out == 1 => 0.0,
                "align_corners" => xo * last / (n_out as f32 - 1.0),
                "pytorch_half_pixel" if n_out == 1 => 0.0,
                _ => (xo + 0.5) / scale - 0.5,
            };
            let row = &mut m[i * n_in..(i + 1) * n_in];
            if self.linear {
                let x = x.clamp(0.0, last);
                let i0 = x.floor();
                let lam = x - i0;
                let i0 = i0 as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                row[i0] += 1.0 - lam;
                row[i1] += lam;
            } else {
                let f = x.floor();
                let frac = x - f;
                let k = match self.nearest.as_str() {
                    "floor" => f,
                    "ceil" => x.ceil(),
                    "round_prefer_ceil" if frac >= 0.5 => f + 1.0,
                    "round_prefer_floor" if frac > 0.5 => f + 1.0,
                    _ => f,
                };
                row[k.clamp(0.0, last) as usize] = 1.0;
            }
        }
        m
    }

    /// `Some(s)` when axis `a` repeats every input cell `s` times in a row (integer nearest
    /// upsampling): its gradient sums groups of `s`.
    pub fn replication(&self, a: usize) -> Option<usize> {
        let (n_in, n_out) = (self.input[2 + a], self.output[2 + a]);
        if self.linear || n_out % n_in != 0 {
            return None;
        }
        let s = n_out / n_in;
        let m = self.matrix(a);
        (0..n_out).all(|i| m[i * n_in + i / s] == 1.0).then_some(s)
    }
}

/// Resize (2-D, nearest or linear): `Y = A_h X A_w^T` per (n, c) plane with constant
/// interpolation matrices, so `dX = A_h^T dY A_w`, one MatMul per resized axis; an axis
/// that repeats each cell `s` times (integer nearest upsampling) sums groups of `s` instead.
fn resize_back(b: &mut Builder, n: &Node, gy: &[Option<String>]) -> Grads {
    let dy = &dy(n, gy)?;
    let ins: Vec<Option<&Value>> = n
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
        return Ok(only(n, g));
    }
    if let Some(s) = plan.replication(0) {
        let r = b.reshape(&g, &[nb, c, xs[2], s, xs[3]])?;
        return Ok(only(n, b.reduce("ReduceSum", &r, &[3], false)?));
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
    Ok(only(n, b.op("MatMul", &[&at, &g], vec![])?))
}

fn identity(n: usize) -> Vec<f32> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0;
    }
    m
}
