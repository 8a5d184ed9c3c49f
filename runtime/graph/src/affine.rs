//! Per-channel affine adaptation for models whose BatchNormalization was folded away at export
//! (a default `torch.onnx.export` folds it into the convolutions).
//!
//! [`insert`] puts `y = x * scale + shift` after each Conv that no BatchNormalization follows:
//! a Mul and an Add with `[1, C, 1, ..]` initializers named `<conv weight>.affine_scale` and
//! `<conv weight>.affine_shift`, initialised to 1 and 0, so the graph computes what it did.
//! They are what `--train bn` trains on such a model (and `--train affine` on any model).
//! [`fold_into_model`] folds trained values back into the convolution
//! (`W'[o] = W[o] * scale[o]`, `b'[o] = b[o] * scale[o] + shift[o]`), so the adapted model has
//! the input's graph; it is the one place that does, for the `adapt` writer and the field
//! runtime's commits alike.

use std::collections::HashMap;

use fieldtune_tensor::Tensor;

use crate::error::{GraphError, Result};
use crate::ir::{tensor_to_proto, with_initializers, Graph, Node};
use crate::proto::ModelProto;

/// Suffix of a per-channel scale after a convolution whose weight is the prefix.
pub const SCALE_SUFFIX: &str = ".affine_scale";
/// Suffix of a per-channel shift after a convolution whose weight is the prefix.
pub const SHIFT_SUFFIX: &str = ".affine_shift";

/// Whether `name` is an inserted affine parameter.
pub fn is_affine_param(name: &str) -> bool {
    name.ends_with(SCALE_SUFFIX) || name.ends_with(SHIFT_SUFFIX)
}

/// Inserts the identity affine after each Conv whose weight is a float initializer that no
/// other Conv reads and whose output no BatchNormalization reads. Returns the new parameters' names (scale, shift per
/// convolution, in graph order). The Conv's output keeps its name (the Add writes it), so
/// every reader is unchanged.
pub fn insert(g: &mut Graph) -> Result<Vec<String>> {
    let weights: HashMap<String, Vec<usize>> = g
        .initializers
        .iter()
        .filter(|(_, t)| t.as_f32().is_some() && t.shape().len() >= 3)
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    let mut added = Vec::new();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    let old = std::mem::take(&mut g.nodes);
    for n in &old {
        let Some(w) = conv_weight(n, &weights) else {
            nodes.push(n.clone());
            continue;
        };
        let y = n.outputs[0].clone();
        let followed_by_bn = old
            .iter()
            .any(|m| m.op == "BatchNormalization" && m.input(0) == Some(y.as_str()));
        let (scale, shift) = (format!("{w}{SCALE_SUFFIX}"), format!("{w}{SHIFT_SUFFIX}"));
        // A weight two convolutions share gets none: folding would change both.
        let shared = old
            .iter()
            .filter(|m| conv_weight(m, &weights) == Some(w))
            .count()
            > 1;
        if followed_by_bn || shared {
            nodes.push(n.clone());
            continue;
        }
        let shape = &weights[w];
        let mut pshape = vec![1usize; shape.len()];
        pshape[1] = shape[0];
        let (pre, mid) = (format!("{y}/pre_affine"), format!("{y}/affine_scaled"));
        let mut conv = n.clone();
        conv.outputs[0] = pre.clone();
        nodes.push(conv);
        nodes.push(node(&n.name, "Mul", [&pre, &scale], &mid));
        nodes.push(node(&n.name, "Add", [&mid, &shift], &y));
        g.initializers
            .push((scale.clone(), shaped(vec![1.0; shape[0]], &pshape)));
        g.initializers
            .push((shift.clone(), Tensor::zeros_f32(pshape.clone())));
        added.push(scale);
        added.push(shift);
    }
    g.nodes = nodes;
    Ok(added)
}

/// The weight initializer of a Conv node, when it is one (float, rank 3 or more).
fn conv_weight<'a>(n: &'a Node, weights: &HashMap<String, Vec<usize>>) -> Option<&'a str> {
    (n.op == "Conv" && n.outputs.len() == 1)
        .then(|| n.input(1))
        .flatten()
        .filter(|w| weights.contains_key(*w))
}

fn node(conv: &str, op: &str, inputs: [&str; 2], output: &str) -> Node {
    Node {
        name: format!("{conv}/affine_{}", op.to_lowercase()),
        op: op.into(),
        domain: String::new(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs: vec![],
    }
}

/// `model` with `params` as its initializers, affine parameters folded into their
/// convolutions: `W'[o] = W[o] * scale[o]` and `b'[o] = b[o] * scale[o] + shift[o]`, where W
/// and b are `params`' values when it has them, else the model's. A convolution without a
/// bias gets one, `<weight>.folded_bias`. Other names go in as they are (an unknown one is an
/// error naming it). An initializer the exporter shares through Identity nodes becomes one per
/// reader, as [`with_initializers`] makes it for any update.
pub fn fold_into_model(model: &ModelProto, params: &HashMap<String, Tensor>) -> Result<ModelProto> {
    let scales: Vec<&str> = params
        .keys()
        .filter_map(|k| k.strip_suffix(SCALE_SUFFIX))
        .collect();
    if scales.is_empty() && !params.keys().any(|k| is_affine_param(k)) {
        return with_initializers(model, params);
    }
    let mut out = model.clone();
    let mut updates: HashMap<String, Tensor> = params
        .iter()
        .filter(|(k, _)| !is_affine_param(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for k in params.keys().filter_map(|k| k.strip_suffix(SHIFT_SUFFIX)) {
        if !scales.contains(&k) {
            return Err(bad(k, "has an affine shift but no affine scale"));
        }
    }
    // The model's values as the compiler reads them: initializers that an exporter shares
    // through Identity nodes (e.g. equal biases) are separate there, and `with_initializers`
    // unties them the same way when an update names one.
    let ir = Graph::from_model(model)?;
    let base = ir.initializer_map();
    let g = out.graph.as_mut().ok_or(GraphError::NoGraph)?;
    for w in scales {
        let scale = &params[&format!("{w}{SCALE_SUFFIX}")];
        let shift = params
            .get(&format!("{w}{SHIFT_SUFFIX}"))
            .ok_or_else(|| bad(w, "has an affine scale but no affine shift"))?;
        let conv = g
            .node
            .iter_mut()
            .find(|n| n.op_type == "Conv" && n.input.get(1).map(String::as_str) == Some(w))
            .ok_or_else(|| bad(w, "is the weight of no Conv in the model"))?;
        let init = |name: &str| -> Result<Tensor> {
            match updates.get(name).or_else(|| base.get(name).copied()) {
                Some(t) => Ok(t.clone()),
                None => Err(bad(name, "is not an initializer of the model")),
            }
        };
        let weight = init(w)?;
        if weight.shape().len() < 3 {
            return Err(bad(
                w,
                &format!("a Conv weight of shape {:?}", weight.shape()),
            ));
        }
        let co = weight.shape()[0];
        let bias_name = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => b.clone(),
            None => format!("{w}.folded_bias"),
        };
        let bias = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(_) => init(&bias_name)?,
            None => Tensor::zeros_f32(vec![co]),
        };
        let (s, t) = (f32s(scale, w)?, f32s(shift, w)?);
        if s.len() != co || t.len() != co || bias.shape() != [co] {
            return Err(bad(
                w,
                &format!(
                    "weight {:?}, bias {:?}, affine scale {:?} and shift {:?} do not agree on {co} output channels",
                    weight.shape(),
                    bias.shape(),
                    scale.shape(),
                    shift.shape()
                ),
            ));
        }
        let per = weight.shape()[1..].iter().product::<usize>();
        let wv: Vec<f32> = f32s(&weight, w)?
            .iter()
            .enumerate()
            .map(|(i, v)| v * s[i / per])
            .collect();
        let bv: Vec<f32> = f32s(&bias, &bias_name)?
            .iter()
            .zip(s.iter().zip(t))
            .map(|(b, (s, t))| b * s + t)
            .collect();
        if conv.input.get(2).is_none_or(|b| b.is_empty()) {
            conv.input.resize(2, String::new());
            conv.input.push(bias_name.clone());
            g.initializer
                .push(tensor_to_proto(&bias_name, &Tensor::zeros_f32(vec![co])));
        }
        updates.insert(w.to_string(), shaped(wv, weight.shape()));
        updates.insert(bias_name, shaped(bv, &[co]));
    }
    with_initializers(&out, &updates)
}

fn f32s<'a>(t: &'a Tensor, name: &str) -> Result<&'a [f32]> {
    t.as_f32().ok_or_else(|| bad(name, "is not a float tensor"))
}

fn shaped(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::f32(shape.to_vec(), v).expect("sizes checked")
}

fn bad(tensor: &str, reason: &str) -> GraphError {
    GraphError::Tensor {
        tensor: tensor.to_string(),
        reason: format!("folding the per-channel affine: {reason}"),
    }
}
