//! What the pretext tasks share: the model tensor a task reads (by default the classifier's
//! input), that tensor as `[N, D]` rows, and a linear head initialised from the seed and
//! trained with a cross-entropy (rotation, jigsaw).

use fieldtune_tensor::Tensor;

use super::blocks::{cross_entropy, LossTerms};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::{attr, Elem, Graph};
use crate::random;

/// The feature a task reads: `given`, else the input of the model's last Gemm or MatMul (the
/// classifier's input). `key` names the setting in errors (`rotation.feature`).
pub(super) fn resolve_feature(g: &Graph, given: &Option<String>, key: &str) -> Result<String> {
    if let Some(f) = given {
        return Ok(f.clone());
    }
    g.nodes
        .iter()
        .rev()
        .find(|n| n.op == "Gemm" || n.op == "MatMul")
        .and_then(|n| n.inputs.first().cloned())
        .ok_or_else(|| {
            GraphError::Spec(format!(
                "{key} is not set and the model has no Gemm or MatMul whose input could be the feature"
            ))
        })
}

/// The tensor `feature` of the forward instance under `prefix` that read `x` (`x` itself when
/// `feature` is the model input); an error naming `key` when the model computes no such
/// tensor.
pub(super) fn pass_tensor(
    b: &Builder,
    fwd: &Forward<'_>,
    prefix: &str,
    x: &str,
    feature: &str,
    key: &str,
) -> Result<String> {
    let t = if feature == fwd.input {
        x.to_string()
    } else {
        format!("{prefix}/{feature}")
    };
    b.shape(&t).map_err(|_| {
        GraphError::Spec(format!(
            "{key} '{feature}' is not a tensor the model computes"
        ))
    })?;
    Ok(t)
}

/// A feature tensor as `[N, D]` rows: a 4-D map globally average-pooled, rank 2 as it is,
/// other ranks flattened after the batch.
pub(super) fn feature_rows(b: &mut Builder, feat: &str) -> Result<String> {
    Ok(match b.shape(feat)?.len() {
        2 => feat.to_string(),
        4 => {
            let p = b.op("GlobalAveragePool", &[feat], vec![])?;
            b.op("Flatten", &[&p], vec![attr::int("axis", 1)])?
        }
        _ => b.op("Flatten", &[feat], vec![attr::int("axis", 1)])?,
    })
}

/// A pretext task's linear head and its loss term.
pub(super) struct Head {
    /// Parameter names: weight `[K, D]`, bias `[K]`.
    pub weight: &'static str,
    pub bias: &'static str,
    /// K, the classes the head tells apart.
    pub classes: usize,
    /// Weight of the cross-entropy in the loss.
    pub term_weight: f32,
    /// Metric names of the cross-entropy and the accuracy.
    pub metrics: (&'static str, &'static str),
}

/// The linear `head` over `rows` `[N, D]`, declared as graph inputs and initialised like
/// PyTorch's `nn.Linear` (uniform in +-1/sqrt(D)) from `seed` (streams named after the
/// parameters); its cross-entropy against `labels` (`[N]`) is added to `loss` and reported
/// with the accuracy. Returns the head's parameters with their initial values.
pub(super) fn linear_head_terms(
    b: &mut Builder,
    rows: &str,
    head: &Head,
    seed: u64,
    labels: Vec<i64>,
    loss: &mut LossTerms,
) -> Result<Vec<(String, Tensor)>> {
    let (weight, bias, k) = (head.weight, head.bias, head.classes);
    let d = b.shape(rows)?[1];
    let bound = 1.0 / (d as f32).sqrt();
    let init = |key: &str, n: usize| -> Vec<f32> {
        random::reference(seed, key, 0, n)
            .into_iter()
            .map(|u| (2.0 * u - 1.0) * bound)
            .collect()
    };
    let wt = Tensor::f32(vec![k, d], init(weight, k * d)).expect("sized");
    let bt = Tensor::f32(vec![k], init(bias, k)).expect("sized");
    let wn = b.input(weight, Elem::F32, &[k, d])?;
    let bn = b.input(bias, Elem::F32, &[k])?;
    let logits = b.op("Gemm", &[rows, &wn, &bn], vec![attr::int("transB", 1)])?;
    let n = labels.len();
    let labels = b.constant(Tensor::i64(vec![n], labels).expect("sized"));
    let (ce, acc) = cross_entropy(b, &logits, &labels)?;
    loss.add_weighted(b, &ce, head.term_weight)?;
    loss.metrics.push((head.metrics.0, ce));
    loss.metrics.push((head.metrics.1, acc));
    Ok(vec![(wn, wt), (bn, bt)])
}

/// Rows `k, k + g, k + 2g, ...` of `x` for each group `k` in `0..g` that has any (example i
/// goes to group i mod g), with their row counts.
pub(super) fn strided_groups(b: &mut Builder, x: &str, g: usize) -> Result<Vec<(String, usize)>> {
    let bu = b.shape(x)?[0];
    let mut out = Vec::new();
    for k in 0..g.min(bu) {
        let (s, e, a, st) = (
            b.ints(&[k as i64]),
            b.ints(&[bu as i64]),
            b.ints(&[0]),
            b.ints(&[g as i64]),
        );
        let rows = b.op("Slice", &[x, &s, &e, &a, &st], vec![])?;
        let n = b.shape(&rows)?[0];
        out.push((rows, n));
    }
    Ok(out)
}

/// `parts` concatenated along the batch (one part as it is).
pub(super) fn concat_rows(b: &mut Builder, parts: &[String]) -> Result<String> {
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    if refs.len() == 1 {
        Ok(refs[0].to_string())
    } else {
        b.op("Concat", &refs, vec![attr::int("axis", 0)])
    }
}
