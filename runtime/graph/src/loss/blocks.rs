//! Pieces the objectives share: the stable log-softmax, cross-entropy, reductions, and the
//! accumulators of loss terms ([`LossTerms`]) and looped tensors ([`Loops`]).

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::Result;
use crate::ir::attr;
use crate::random;

/// Names of the scalar terms a loss block produces.
pub struct LossTerms {
    pub total: String,
    /// (output name, tensor) pairs reported as metrics.
    pub metrics: Vec<(&'static str, String)>,
}

impl LossTerms {
    /// Adds `weight * term` to the total.
    pub fn add_weighted(&mut self, b: &mut Builder, term: &str, weight: f32) -> Result<()> {
        let ws = b.scalar(weight);
        let t = b.op("Mul", &[term, &ws], vec![])?;
        self.total = b.op("Add", &[self.total.as_str(), &t], vec![])?;
        Ok(())
    }
}

/// What a train step loops between steps besides the parameters: (output, tensor) pairs in
/// output order, and the state inputs with their initial values.
#[derive(Default)]
pub(crate) struct Loops {
    pub updates: Vec<(String, String)>,
    pub state: Vec<(String, Tensor)>,
}

/// Values uniform in +-`bound` of the stream `key` under `seed` (a head's initial values, as
/// PyTorch's `nn.Linear` / `nn.Conv2d` draw them with bound 1/sqrt(fan in)).
pub(super) fn seeded_uniform(seed: u64, key: &str, n: usize, bound: f32) -> Vec<f32> {
    random::reference(seed, key, 0, n)
        .into_iter()
        .map(|u| (2.0 * u - 1.0) * bound)
        .collect()
}

pub(super) fn mean_all(b: &mut Builder, x: &str) -> Result<String> {
    let r = b.shape(x)?.len() as i64;
    b.reduce("ReduceMean", x, &(0..r).collect::<Vec<_>>(), false)
}

pub(super) fn sum_all(b: &mut Builder, x: &str) -> Result<String> {
    let r = b.shape(x)?.len() as i64;
    b.reduce("ReduceSum", x, &(0..r).collect::<Vec<_>>(), false)
}

/// Log-softmax over axis 1 written out (x - max - log sum exp(x - max)). Engines' fused
/// LogSoftmax may compute log(softmax), which is -inf once a logit trails the maximum by
/// more than ~87 (tract does); this form stays finite. The max is a constant shift, so it
/// carries no gradient.
pub fn log_softmax(b: &mut Builder, x: &str) -> Result<String> {
    let m = b.reduce("ReduceMax", x, &[1], true)?;
    let m = b.stop_gradient(&m)?;
    let z = b.op("Sub", &[x, &m], vec![])?;
    let e = b.op("Exp", &[&z], vec![])?;
    let s = b.reduce("ReduceSum", &e, &[1], true)?;
    let l = b.op("Log", &[&s], vec![])?;
    b.op("Sub", &[&z, &l], vec![])
}

/// Cross-entropy `[B]` of each row of `[B, K]` logits against integer `labels` (`[B]`, int64),
/// with the block's stable log-softmax.
pub fn per_example_cross_entropy(
    b: &mut Builder,
    logits: &str,
    labels: &str,
    k: usize,
) -> Result<String> {
    let lp = log_softmax(b, logits)?;
    let one = b.ints(&[1]);
    let lab = b.op("Unsqueeze", &[labels, &one], vec![])?;
    let range = b.constant(Tensor::i64(vec![1, k], (0..k as i64).collect()).expect("sized"));
    let hot = b.op("Equal", &[&lab, &range], vec![])?;
    let hot = b.op("Cast", &[&hot], vec![attr::int("to", 1)])?;
    let picked = b.op("Mul", &[&hot, &lp], vec![])?;
    let picked = b.reduce("ReduceSum", &picked, &[1], false)?;
    b.op("Neg", &[&picked], vec![])
}

/// Mean cross-entropy of `[B, K]` logits against integer `labels` (`[B]`, int64), with the
/// block's stable log-softmax; also the accuracy (argmax == label), without gradients.
pub fn cross_entropy(b: &mut Builder, logits: &str, labels: &str) -> Result<(String, String)> {
    let k = b.shape(logits)?[1];
    let ce = per_example_cross_entropy(b, logits, labels, k)?;
    let ce = mean_all(b, &ce)?;
    let ng = b.stop_gradient(logits)?;
    let am = b.op(
        "ArgMax",
        &[&ng],
        vec![attr::int("axis", 1), attr::int("keepdims", 0)],
    )?;
    let right = b.op("Equal", &[&am, labels], vec![])?;
    let right = b.op("Cast", &[&right], vec![attr::int("to", 1)])?;
    let acc = mean_all(b, &right)?;
    Ok((ce, acc))
}
