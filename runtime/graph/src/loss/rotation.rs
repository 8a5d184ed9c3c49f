//! Rotation prediction ([`Rotation`]): the weak view rotated by 0/90/180/270 degrees in the
//! graph, the model up to the feature tensor, and a linear head over the 4 rotations trained
//! with a cross-entropy.

use fieldtune_tensor::Tensor;

use super::blocks::LossTerms;
use super::head::{feature_rows, linear_head_terms, pass_tensor, resolve_feature, Head};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::attr;
use crate::spec::{Rotation, ROTATION_BIAS, ROTATION_WEIGHT};

/// Adds the rotation task over the weak view `xw` ([bu, C, S, S], `image` = [C, S, S]): its
/// forward pass (Dropout per `dropout`, as in the gradient pass), the head's parameters as
/// graph inputs, and the weighted cross-entropy with its metrics `loss_rotation`,
/// `rotation_accuracy`. Returns the head's parameters with their initial values (from
/// `seed`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotation_terms(
    b: &mut Builder,
    rot: &Rotation,
    fwd: &Forward<'_>,
    xw: &str,
    image: [usize; 3],
    seed: u64,
    dropout: Option<(&str, u64)>,
    loss: &mut LossTerms,
) -> Result<Vec<(String, Tensor)>> {
    let [_, h, w] = image;
    let bu = b.shape(xw)?[0];
    if rot.weight == 0.0 {
        return Err(GraphError::Spec(
            "rotation.weight is 0 (turn the rotation task off instead)".into(),
        ));
    }
    if h != w {
        return Err(GraphError::Input {
            input: fwd.input.to_string(),
            reason: format!("rotation prediction needs square images, found {h}x{w}"),
        });
    }
    let feature = resolve_feature(fwd.g, &rot.feature, "rotation.feature")?;
    let xr = rotations(b, xw, h)?;
    fwd.pass(b, &xr, "rotation", None, None, dropout)?;
    let feat = pass_tensor(b, fwd, "rotation", &xr, &feature, "rotation.feature")?;
    let rows = feature_rows(b, &feat)?;
    let labels: Vec<i64> = (0..4 * bu).map(|i| (i / bu) as i64).collect();
    let head = Head {
        weight: ROTATION_WEIGHT,
        bias: ROTATION_BIAS,
        classes: 4,
        term_weight: rot.weight,
        metrics: ("loss_rotation", "rotation_accuracy"),
    };
    linear_head_terms(b, &rows, &head, seed, labels, loss)
}

/// `x` [B, C, S, S] and its rotations by 90, 180 and 270 degrees in the (H, W) plane, as
/// `np.rot90(x, k, axes=(2, 3))` for k = 0..3, concatenated along the batch: [4B, C, S, S].
fn rotations(b: &mut Builder, x: &str, side: usize) -> Result<String> {
    let flip = |b: &mut Builder, x: &str, axis: i64| -> Result<String> {
        let (s, e, a, st) = (
            b.ints(&[-1]),
            b.ints(&[-(side as i64) - 1]),
            b.ints(&[axis]),
            b.ints(&[-1]),
        );
        b.op("Slice", &[x, &s, &e, &a, &st], vec![])
    };
    let perm = vec![attr::ints("perm", &[0, 1, 3, 2])];
    let fw = flip(b, x, 3)?;
    let r1 = b.op("Transpose", &[&fw], perm.clone())?;
    let fh = flip(b, x, 2)?;
    let r2 = flip(b, &fh, 3)?;
    let t = b.op("Transpose", &[x], perm)?;
    let r3 = flip(b, &t, 3)?;
    b.op("Concat", &[x, &r1, &r2, &r3], vec![attr::int("axis", 0)])
}
