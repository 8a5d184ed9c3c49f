//! Feature consistency ([`FeatureConsistency`]): the strong view's rows of an intermediate
//! feature tensor pulled towards the weak view's (no gradient), by cosine or by the L2
//! distance of the normalised rows.

use super::blocks::{mean_all, LossTerms};
use super::head::{feature_rows, pass_tensor, resolve_feature};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::spec::{FeatureConsistency, FeatureDistance};

/// Added to the squared norm before its square root when rows are normalised.
pub const NORM_EPS: f32 = 1e-8;

/// Where the two views' feature tensors are: the strong view's rows `strong`
/// (`start..start + bu`) of the gradient pass `train`, and the weak view's in the instance
/// `weak` (prefix, the input it read, and the first row of the weak view in it).
pub(crate) struct FeatureViews<'a> {
    pub train: (&'a str, &'a str),
    pub strong: usize,
    pub weak: (&'a str, &'a str, usize),
    pub bu: usize,
}

/// Adds `weight * mean_i d(weak_i, strong_i)` and the metric `loss_feature_consistency`.
pub(crate) fn feature_consistency_terms(
    b: &mut Builder,
    fc: &FeatureConsistency,
    fwd: &Forward<'_>,
    v: &FeatureViews<'_>,
    loss: &mut LossTerms,
) -> Result<()> {
    if !(fc.weight.is_finite() && fc.weight > 0.0) {
        return Err(GraphError::Spec(format!(
            "feature_consistency.weight is {} (must be positive; turn the term off instead of 0)",
            fc.weight
        )));
    }
    let key = "feature_consistency.feature";
    let feature = resolve_feature(fwd.g, &fc.feature, key)?;
    let rows_of = |b: &mut Builder, (prefix, x): (&str, &str), start: usize| -> Result<String> {
        let t = pass_tensor(b, fwd, prefix, x, &feature, key)?;
        let r = feature_rows(b, &t)?;
        if b.shape(&r)?[0] == v.bu {
            return Ok(r);
        }
        let (s, e, a) = (
            b.ints(&[start as i64]),
            b.ints(&[(start + v.bu) as i64]),
            b.ints(&[0]),
        );
        b.op("Slice", &[&r, &s, &e, &a], vec![])
    };
    let strong = rows_of(b, v.train, v.strong)?;
    let weak = rows_of(b, (v.weak.0, v.weak.1), v.weak.2)?;
    let weak = b.stop_gradient(&weak)?;
    let d = feature_distance(b, &weak, &strong, fc.distance)?;
    loss.add_weighted(b, &d, fc.weight)?;
    loss.metrics.push(("loss_feature_consistency", d));
    Ok(())
}

/// `x / sqrt(sum_row x^2 + eps)` of `[N, D]` rows.
fn normalise(b: &mut Builder, x: &str) -> Result<String> {
    let sq = b.op("Mul", &[x, x], vec![])?;
    let s = b.reduce("ReduceSum", &sq, &[1], true)?;
    let eps = b.scalar(NORM_EPS);
    let s = b.op("Add", &[&s, &eps], vec![])?;
    let n = b.op("Sqrt", &[&s], vec![])?;
    b.op("Div", &[x, &n], vec![])
}

/// The mean over rows of the distance between `[N, D]` rows `a` and `b_rows` after
/// normalising each row: `1 - cos` or the squared L2 distance.
pub fn feature_distance(
    b: &mut Builder,
    a: &str,
    b_rows: &str,
    distance: FeatureDistance,
) -> Result<String> {
    let na = normalise(b, a)?;
    let nb = normalise(b, b_rows)?;
    let per_row = match distance {
        FeatureDistance::Cosine => {
            let p = b.op("Mul", &[&na, &nb], vec![])?;
            let c = b.reduce("ReduceSum", &p, &[1], false)?;
            let one = b.scalar(1.0);
            b.op("Sub", &[&one, &c], vec![])?
        }
        FeatureDistance::L2 => {
            let d = b.op("Sub", &[&na, &nb], vec![])?;
            let d2 = b.op("Mul", &[&d, &d], vec![])?;
            b.reduce("ReduceSum", &d2, &[1], false)?
        }
    };
    mean_all(b, &per_row)
}
