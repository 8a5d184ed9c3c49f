//! Rotation prediction ([`Rotation`]): the weak view rotated by 0/90/180/270 degrees in the
//! graph, the model up to the feature tensor, and a linear head over the 4 rotations trained
//! with a cross-entropy.

use fieldtune_tensor::Tensor;

use super::blocks::{cross_entropy, LossTerms};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::{attr, Elem, Graph};
use crate::random;
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
    let feature = match &rot.feature {
        Some(f) => f.clone(),
        None => default_rotation_feature(fwd.g)?,
    };
    let xr = rotations(b, xw, h)?;
    fwd.pass(b, &xr, "rotation", None, None, dropout)?;
    let feat = if feature == fwd.input {
        xr.clone()
    } else {
        format!("rotation/{feature}")
    };
    let fs = b.shape(&feat).map_err(|_| {
        GraphError::Spec(format!(
            "rotation.feature '{feature}' is not a tensor the model computes"
        ))
    })?;
    let feat = match fs.len() {
        2 => feat,
        4 => {
            let p = b.op("GlobalAveragePool", &[&feat], vec![])?;
            b.op("Flatten", &[&p], vec![attr::int("axis", 1)])?
        }
        _ => b.op("Flatten", &[&feat], vec![attr::int("axis", 1)])?,
    };
    let d = b.shape(&feat)?[1];
    let bound = 1.0 / (d as f32).sqrt();
    let init = |key: &str, n: usize| -> Vec<f32> {
        random::reference(seed, key, 0, n)
            .into_iter()
            .map(|u| (2.0 * u - 1.0) * bound)
            .collect()
    };
    let wt = Tensor::f32(vec![4, d], init(ROTATION_WEIGHT, 4 * d)).expect("sized");
    let bt = Tensor::f32(vec![4], init(ROTATION_BIAS, 4)).expect("sized");
    let wn = b.input(ROTATION_WEIGHT, Elem::F32, &[4, d])?;
    let bn = b.input(ROTATION_BIAS, Elem::F32, &[4])?;
    let logits = b.op("Gemm", &[&feat, &wn, &bn], vec![attr::int("transB", 1)])?;
    let labels: Vec<i64> = (0..4 * bu).map(|i| (i / bu) as i64).collect();
    let labels = b.constant(Tensor::i64(vec![4 * bu], labels).expect("sized"));
    let (ce, acc) = cross_entropy(b, &logits, &labels)?;
    loss.add_weighted(b, &ce, rot.weight)?;
    loss.metrics.push(("loss_rotation", ce));
    loss.metrics.push(("rotation_accuracy", acc));
    Ok(vec![(wn, wt), (bn, bt)])
}

/// The default feature of the rotation head: the input of the model's last Gemm or MatMul
/// (the classifier's input).
fn default_rotation_feature(g: &Graph) -> Result<String> {
    g.nodes
        .iter()
        .rev()
        .find(|n| n.op == "Gemm" || n.op == "MatMul")
        .and_then(|n| n.inputs.first().cloned())
        .ok_or_else(|| {
            GraphError::Spec(
                "rotation.feature is not set and the model has no Gemm or MatMul whose input could be the feature"
                    .into(),
            )
        })
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
