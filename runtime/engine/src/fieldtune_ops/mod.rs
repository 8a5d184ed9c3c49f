//! The fieldtune-domain ops of tuned train steps (`fieldtune_graph::target`), registered with
//! each engine that runs them; the kernels themselves are `fieldtune-kernels`.
//!
//! - `ort`: ONNX Runtime custom operators on its CPU provider (the `ort` crate's operator
//!   API), added to every ONNX Runtime session as the [`DOMAIN`] domain;
//! - `tract`: one tract op type registered with tract's ONNX parser for each op name.

pub(crate) mod ort;
pub(crate) mod tract;

use fieldtune_kernels::{DwShape, DwWindow};

pub use fieldtune_kernels::DOMAIN;

/// The names of the ops of the [`DOMAIN`] domain, as tuned graphs spell them.
pub const OPS: [&str; 5] = [
    "BatchNormTrain",
    "BatchNormTrainGrad",
    "ClipGrad",
    "MaxPoolGrad",
    "DepthwiseConvWgrad",
];

/// The window attributes of a `DepthwiseConvWgrad` node: `kernel_shape` (required),
/// `strides`, `dilations` (default 1) and `pads` (`[top, left, bottom, right]`, default 0;
/// the kernel needs the begin pads only).
fn dw_window(
    kernel: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
    dilations: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
) -> Result<DwWindow, String> {
    let two = |name: &str, v: Option<Vec<i64>>, default: usize, min: i64| match v {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&e| e >= min) => {
            Ok([v[0] as usize, v[1] as usize])
        }
        Some(v) => Err(format!("{name} {v:?}: expected 2 values of at least {min}")),
    };
    if kernel.is_none() {
        return Err("the kernel_shape attribute is missing".into());
    }
    let pads = match pads {
        None => [0; 2],
        Some(p) if p.len() == 4 && p.iter().all(|&e| e >= 0) => [p[0] as usize, p[1] as usize],
        Some(p) => return Err(format!("pads {p:?}: expected 4 values of at least 0")),
    };
    Ok(DwWindow {
        kernel: two("kernel_shape", kernel, 1, 1)?,
        strides: two("strides", strides, 1, 1)?,
        dilations: two("dilations", dilations, 1, 1)?,
        pads,
    })
}

/// `[N, C, H, W]` x and dy as a [`DwShape`].
fn dw_shape(xs: &[usize], ys: &[usize]) -> Result<DwShape, String> {
    if xs.len() != 4 || ys.len() != 4 || xs[..2] != ys[..2] {
        return Err(format!(
            "x has shape {xs:?}, dy {ys:?} (need [N, C, H, W] for both, same N and C)"
        ));
    }
    Ok(DwShape {
        n: xs[0],
        c: xs[1],
        input: [xs[2], xs[3]],
        output: [ys[2], ys[3]],
    })
}
