//! Inference graphs for test-time adaptation: the model at a static batch, BatchNormalization
//! optionally normalising by the statistics of the test batch, and chosen initializers fed as
//! graph inputs (the current weights of a resident train step).

use std::collections::HashSet;

use crate::builder::Builder;
use crate::error::Result;
use crate::forward::image_shape;
use crate::ir::{Elem, Graph, TRAIN_OPSET};
use crate::lower::{self, BatchNormMode};
use crate::proto::ModelProto;

/// The inference graph of `model` (image input `input`, logits output `output`) at a static
/// batch, with BatchNormalization normalising by the statistics of the batch (when
/// `batch_stats`) and the initializers named in `fed` as graph inputs, so the current weights
/// of a resident train step can be fed in. When `fed` names per-channel affine parameters
/// ([`crate::affine`]), they are inserted first, as the train step has them.
pub fn predict_graph(
    model: &ModelProto,
    input: &str,
    output: &str,
    batch: usize,
    batch_stats: bool,
    fed: &HashSet<String>,
) -> Result<Graph> {
    let mut g = Graph::from_model(model)?;
    if fed.iter().any(|n| crate::affine::is_affine_param(n)) {
        crate::affine::insert(&mut g)?;
    }
    let [c, h, w] = image_shape(&g, input)?;
    let mut b = Builder::new(g.opset.max(TRAIN_OPSET));
    b.input(input, Elem::F32, &[batch, c, h, w])?;
    for (name, t) in &g.initializers {
        if fed.contains(name) {
            b.input(name, Elem::F32, t.shape())?;
        } else {
            b.initializer(name, t.clone())?;
        }
    }
    for n in &g.nodes {
        if batch_stats && n.op == "BatchNormalization" {
            lower::batch_norm(&mut b, n, BatchNormMode::Train)?;
        } else {
            b.add(n.clone())?;
        }
    }
    b.output(output)?;
    Ok(b.finish("fieldtune_tta_predict"))
}

#[cfg(test)]
mod tests {
    use fieldtune_tensor::Tensor;

    use super::*;
    use crate::ir::{Dim, Node};

    /// input [1, 2, 3, 3] -> BatchNormalization -> Flatten -> logits.
    fn bn_model() -> ModelProto {
        let mut b = Builder::new(TRAIN_OPSET);
        b.input("input", Elem::F32, &[1, 2, 3, 3]).unwrap();
        let names = ["bn.scale", "bn.bias", "bn.mean", "bn.var"];
        for (n, v) in names.iter().zip([1.5, 0.1, 0.2, 2.0]) {
            b.initializer(n, Tensor::f32(vec![2], vec![v, v]).unwrap())
                .unwrap();
        }
        let mut inputs = vec!["input".to_string()];
        inputs.extend(names.iter().map(|n| n.to_string()));
        b.add(Node {
            name: "bn".into(),
            op: "BatchNormalization".into(),
            domain: String::new(),
            inputs,
            outputs: vec!["y".into()],
            attrs: vec![],
        })
        .unwrap();
        b.add(Node {
            name: "flatten".into(),
            op: "Flatten".into(),
            domain: String::new(),
            inputs: vec!["y".into()],
            outputs: vec!["logits".into()],
            attrs: vec![],
        })
        .unwrap();
        b.output("logits").unwrap();
        b.finish("bn").to_model("test")
    }

    fn ops(g: &Graph) -> Vec<&str> {
        g.nodes.iter().map(|n| n.op.as_str()).collect()
    }

    #[test]
    fn running_statistics_kept_as_in_the_model() {
        let g = predict_graph(&bn_model(), "input", "logits", 5, false, &HashSet::new()).unwrap();
        assert_eq!(ops(&g), ["BatchNormalization", "Flatten"]);
        assert_eq!(g.inputs.len(), 1);
        assert_eq!(g.inputs[0].name, "input");
        assert_eq!(g.inputs[0].dims, [5, 2, 3, 3].map(Dim::Fixed));
        assert_eq!(g.outputs[0].name, "logits");
        assert_eq!(g.outputs[0].dims, [5, 18].map(Dim::Fixed));
        assert_eq!(g.initializers.len(), 4);
    }

    #[test]
    fn batch_statistics_and_fed_weights() {
        let fed: HashSet<String> = ["bn.scale".to_string(), "bn.bias".to_string()].into();
        let g = predict_graph(&bn_model(), "input", "logits", 4, true, &fed).unwrap();
        assert!(!ops(&g).contains(&"BatchNormalization"), "{:?}", ops(&g));
        assert!(ops(&g).contains(&"ReduceMean"), "{:?}", ops(&g));
        let inputs: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["input", "bn.scale", "bn.bias"]);
        assert_eq!(g.inputs[0].dims, [4, 2, 3, 3].map(Dim::Fixed));
        // The running statistics are not read with batch statistics.
        assert!(g.initializers.iter().all(|(n, _)| !fed.contains(n)));
        assert!(g
            .nodes
            .iter()
            .all(|n| !n.inputs.iter().any(|i| i == "bn.mean")));
        assert_eq!(g.outputs[0].dims, [4, 18].map(Dim::Fixed));
    }

    #[test]
    fn unknown_input_is_an_error() {
        assert!(predict_graph(&bn_model(), "x", "logits", 2, true, &HashSet::new()).is_err());
    }
}
