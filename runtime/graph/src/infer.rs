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

/// Whether a node of this op whose result inference computes as a constant becomes an
/// initializer (shape-chain folding).
pub fn folds(op: &str) -> bool {
    ops::lookup(op).is_some_and(|d| d.folds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;
    use crate::ir::{attr, Elem};

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

    #[test]
    fn an_exporter_shape_chain_folds_to_a_constant_reshape() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[8, 4, 3, 3]).unwrap();
        let shape = b.op("Shape", &[&x], vec![]).unwrap();
        let zero = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![0]).unwrap());
        let n = b
            .op("Gather", &[&shape, &zero], vec![attr::int("axis", 0)])
            .unwrap();
        let ax = b.ints(&[0]);
        let n1 = b.op("Unsqueeze", &[&n, &ax], vec![]).unwrap();
        let m1 = b.ints(&[-1]);
        let target = b
            .op("Concat", &[&n1, &m1], vec![attr::int("axis", 0)])
            .unwrap();
        let y = b.op("Reshape", &[&x, &target], vec![]).unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![8, 36]);
        assert_eq!(b.value(&target).unwrap().ints(), Some(&[8i64, -1][..]));
        b.output(&y).unwrap();
        let g = b.finish("t");
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Reshape"], "the shape chain folds away");
    }

    #[test]
    fn conv_and_pool_shapes_resolve_auto_pad() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[1, 3, 11, 11]).unwrap();
        let w = b.input("w", Elem::F32, &[8, 3, 3, 3]).unwrap();
        let y = b
            .op(
                "Conv",
                &[&x, &w],
                vec![
                    attr::string("auto_pad", "SAME_UPPER"),
                    attr::ints("strides", &[2, 2]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![1, 8, 6, 6]);
        let p = b
            .op(
                "MaxPool",
                &[&y],
                vec![
                    attr::ints("kernel_shape", &[3, 3]),
                    attr::ints("strides", &[2, 2]),
                    attr::ints("pads", &[1, 1, 1, 1]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&p).unwrap(), vec![1, 8, 3, 3]);
        let w2 = b.input("w2", Elem::F32, &[8, 2, 3, 3]).unwrap();
        let err = b.op("Conv", &[&x, &w2], vec![]).unwrap_err().to_string();
        assert!(err.contains("Conv") && err.contains("group"), "{err}");
    }
}
