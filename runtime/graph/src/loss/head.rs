//! What the pretext tasks share: [`HeadTask`], the one driver of every task (settings checks,
//! the task's batch through the model, the feature its head reads, the head and its loss), the
//! [`PretextTask`] seam each task implements (its batch, its targets, its class count), the
//! feature tensor as `[N, D]` rows, and the seeded linear head with its cross-entropy (rotation,
//! jigsaw, corruption); the pixel heads (inpaint, colorize) are in `decoder`.

use fieldtune_tensor::Tensor;

use super::blocks::{cross_entropy, seeded_uniform, LossTerms};
use super::decoder::{decoder_head, last_map, pixel_loss};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::{attr, Elem, Graph};
use crate::spec::PixelLoss;

/// What the train step hands every pretext task: the model's forward instance maker, the
/// unlabeled weak view `xw` `[bu, C, H, W]` (`image` = `[C, H, W]`), the step input and seed
/// of the in-graph randomness, and Dropout in the tasks' passes (as in the gradient pass).
pub(crate) struct HeadTask<'a> {
    pub fwd: &'a Forward<'a>,
    pub xw: &'a str,
    pub image: [usize; 3],
    pub step: &'a str,
    pub seed: u64,
    pub dropout: Option<(&'a str, u64)>,
}

/// What a task's head learns from its batch.
pub(crate) enum Targets {
    /// One class in `0..classes` per row: a linear head on the pooled feature rows, with a
    /// cross-entropy and an accuracy.
    Classes { labels: Vec<i64>, classes: usize },
    /// A `[N, channels, H, W]` image per row, compared where `mask` (`[N, 1, H, W]`, 0/1) is 1
    /// (everywhere without one): a decoder head on a 4-D feature map.
    Pixels {
        target: String,
        mask: Option<String>,
        channels: usize,
        loss: PixelLoss,
    },
}

/// A pretext task: a settings table, a head of two parameters, and what it supplies to
/// [`HeadTask::terms`]: its batch and targets.
pub(crate) trait PretextTask {
    /// The settings table (`rotation`), also the prefix of the task's forward instance.
    const KEY: &'static str;
    /// The head's weight and bias names.
    const PARAMS: (&'static str, &'static str);
    /// Metric names: the loss, then (class heads) the accuracy.
    const METRICS: &'static [&'static str];
    fn weight(&self) -> f32;
    /// The tensor the head reads, when the settings name one.
    fn feature(&self) -> Option<&String>;
    /// The task's batch, built from the weak view, and its targets; errors for settings or
    /// images the task cannot take.
    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)>;
}

impl HeadTask<'_> {
    /// Adds `task`: its batch through the model (Dropout as in the gradient pass), its head's
    /// parameters as graph inputs (initial values from the seed), and its weighted loss with
    /// its metrics. Returns the head's parameters with their initial values.
    pub(crate) fn terms<T: PretextTask>(
        &self,
        b: &mut Builder,
        task: &T,
        loss: &mut LossTerms,
    ) -> Result<Vec<(String, Tensor)>> {
        let (key, w) = (T::KEY, task.weight());
        if !(w.is_finite() && w > 0.0) {
            return Err(GraphError::Spec(format!(
                "{key}.weight is {w} (must be positive; turn the {key} task off instead of 0)"
            )));
        }
        let fkey = format!("{key}.feature");
        let (x, targets) = task.batch(b, self)?;
        let fwd = self.fwd;
        fwd.pass(b, &x, key, None, None, self.dropout)?;
        let (weight, bias) = T::PARAMS;
        match targets {
            Targets::Classes { labels, classes } => {
                let feature = resolve_feature(fwd.g, &task.feature().cloned(), &fkey)?;
                let feat = pass_tensor(b, fwd, key, &x, &feature, &fkey)?;
                let rows = feature_rows(b, &feat)?;
                let head = Head {
                    weight,
                    bias,
                    classes,
                    term_weight: w,
                    metrics: (T::METRICS[0], T::METRICS[1]),
                };
                linear_head_terms(b, &rows, &head, self.seed, labels, loss)
            }
            Targets::Pixels {
                target,
                mask,
                channels,
                loss: kind,
            } => {
                let [_, h, wd] = self.image;
                let feat = match task.feature() {
                    Some(f) => pass_tensor(b, fwd, key, &x, f, &fkey)?,
                    None => last_map(b, fwd, key, &fkey, [h, wd])?,
                };
                let names = (weight, bias);
                let (pred, hp) =
                    decoder_head(b, &feat, &fkey, names, channels, [h, wd], self.seed)?;
                let l = pixel_loss(b, &pred, &target, mask.as_deref(), kind)?;
                loss.add_weighted(b, &l, w)?;
                loss.metrics.push((T::METRICS[0], l));
                Ok(hp)
            }
        }
    }
}

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
struct Head {
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
fn linear_head_terms(
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
    let init = |key: &str, n: usize| seeded_uniform(seed, key, n, bound);
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
