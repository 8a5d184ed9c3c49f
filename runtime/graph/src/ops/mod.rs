//! The op table: one entry per ONNX op ([`OpDef`]) with its shape rule, whether and into
//! which inputs gradients flow, and its vector-Jacobian product, grouped by family. This
//! module is the one registry; `infer` and `autodiff` hold only the generic drivers and look
//! ops up here.
//!
//! Adding an op is one entry in its family's `OPS` (see [`entry::def`]): every entry must
//! say how gradients pass ([`Grad::Never`], [`Grad::NoRule`] or [`Grad::Rule`]), and a test
//! in `tests/tests/gradcheck.rs` fails until each op with a rule has a finite-difference case.

pub mod activation;
pub mod conv;
pub mod einsum;
pub mod elementwise;
pub mod entry;
pub mod fused;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape;
pub mod slice;
pub mod value;

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::ir::Node;

pub use conv::{depthwise_weight_grad_taps, grouped_weight_grad_conv, window_pads, ConvWindow};
pub use entry::{unbroadcast, Grad, OpDef};
pub use norm::{custom_inputs, custom_rule};
pub use reduce::reduce_axes;
pub use resize::ResizePlan;
pub use shape::reshape_target;
pub use slice::{split_sizes, SliceSpec};
pub use value::{broadcast, norm_axis, Value};

/// Every family's entries.
const FAMILIES: &[&[OpDef]] = &[
    elementwise::OPS,
    activation::OPS,
    shape::OPS,
    slice::OPS,
    reduce::OPS,
    matmul::OPS,
    einsum::OPS,
    conv::OPS,
    pool::OPS,
    resize::OPS,
    norm::OPS,
    fused::OPS,
];

/// Every entry of the table.
pub fn all() -> impl Iterator<Item = &'static OpDef> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// The entry of an ai.onnx op, `None` when fieldtune does not know it.
pub fn lookup(op: &str) -> Option<&'static OpDef> {
    static INDEX: OnceLock<HashMap<&'static str, &'static OpDef>> = OnceLock::new();
    INDEX
        .get_or_init(|| all().map(|d| (d.name, d)).collect())
        .get(op)
        .copied()
}

/// The ops with a gradient rule, sorted by name.
pub fn differentiable() -> Vec<&'static str> {
    let mut v: Vec<&str> = all()
        .filter(|d| matches!(d.grad, Grad::Rule { .. }))
        .map(|d| d.name)
        .collect();
    v.sort_unstable();
    v
}

/// The inputs of `node` that gradients flow into, or `None` when the op has no rule.
pub fn grad_inputs(node: &Node) -> Option<Vec<usize>> {
    match lookup(&node.op)?.grad {
        Grad::Rule { inputs, .. } => Some(inputs(node)),
        Grad::Never | Grad::NoRule => None,
    }
}

/// Whether the op's outputs never carry gradients.
pub fn never_differentiable(op: &str) -> bool {
    lookup(op).is_some_and(|d| matches!(d.grad, Grad::Never))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_one_entry() {
        let mut names: Vec<&str> = all().map(|d| d.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "an op is listed twice");
    }
}
