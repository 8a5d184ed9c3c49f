//! Static shape and type inference, with constant folding of the small integer subgraphs
//! exporters emit for shapes (Shape -> Gather -> Unsqueeze -> Concat -> Reshape). Train-step
//! graphs have a static batch, so every tensor gets a concrete shape. The per-op rules live
//! in the op table (`crate::ops`); this module drives them.

use crate::error::{GraphError, Result};
use crate::ir::Node;
use crate::ops;

pub use crate::ops::{
    broadcast, norm_axis, reduce_axes, reshape_target, split_sizes, window_pads, ConvWindow,
    ResizePlan, SliceSpec, Value,
};

/// Infers the outputs of `node` given its inputs (`None` for absent optional inputs).
pub fn infer(node: &Node, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
    let Some(def) = ops::lookup(&node.op) else {
        return Err(GraphError::NoShapeRule {
            node: node.name.clone(),
            op: node.op.clone(),
        });
    };
    let out = (def.infer)(node, ins)?;
    if out.len() < node.outputs.len() {
        return Err(GraphError::node(
            node,
            format!(
                "has {} outputs; fieldtune knows {}",
                node.outputs.len(),
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The node as engines should get it, before [`infer`]: an Einsum's equation spelled out
/// (see `ops::einsum::spell_out`); other nodes stay as they are.
pub fn canonical(node: &mut Node, ins: &[Option<&Value>]) -> Result<()> {
    if node.op == "Einsum" {
        let ranks: Vec<usize> = ins.iter().map(|v| v.map_or(0, |v| v.shape.len())).collect();
        ops::einsum::spell_out(node, &ranks)?;
    }
    Ok(())
}

/// Whether a node of this op whose result inference computes as a constant becomes an
/// initializer (shape-chain folding).
pub fn folds(op: &str) -> bool {
    ops::lookup(op).is_some_and(|d| d.folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[4, 1, 3], &[2, 1]), Some(vec![4, 2, 3]));
        assert_eq!(broadcast(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast(&[3], &[4]), None);
    }

    #[test]
    fn reshape_targets_resolve_zero_and_minus_one() {
        assert_eq!(
            reshape_target(&[2, 3, 4], &[0, -1], false),
            Some(vec![2, 12])
        );
        assert_eq!(
            reshape_target(&[2, 3, 4], &[-1, 4], false),
            Some(vec![6, 4])
        );
        assert_eq!(reshape_target(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshape_target(&[2, 3], &[-1, -1], false), None);
    }

    #[test]
    fn slices_clamp_and_step() {
        let s = SliceSpec::resolve(&[10], &[-3], &[i64::MAX], &[0], &[1]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (7, 3));
        let s = SliceSpec::resolve(&[10], &[1], &[8], &[0], &[3]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (1, 3));
        let s = SliceSpec::resolve(&[10], &[-1], &[-11], &[0], &[-1]).unwrap();
        assert_eq!((s.start[0], s.count[0]), (9, 10));
    }
}
