//! Jigsaw puzzles ([`Jigsaw`]): the weak view's 2x2 tiles rearranged in the graph by one of
//! P permutations per example, the model up to the feature tensor, and a linear head over the
//! P permutations trained with a cross-entropy.

use fieldtune_tensor::Tensor;

use super::blocks::LossTerms;
use super::head::{
    concat_rows, feature_rows, linear_head_terms, pass_tensor, resolve_feature, strided_groups,
    Head,
};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::attr;
use crate::spec::{jigsaw_permutations, Jigsaw, JIGSAW_BIAS, JIGSAW_WEIGHT};

/// The most permutations of a 2x2 grid.
pub const MAX_PERMUTATIONS: usize = 24;

/// Adds the jigsaw task over the weak view `xw` ([bu, C, H, W], `image` = [C, H, W], H and W
/// even): the puzzles (example i gets permutation i mod P), their forward pass (Dropout per
/// `dropout`), the head's parameters as graph inputs, and the weighted cross-entropy with its
/// metrics `loss_jigsaw`, `jigsaw_accuracy`. Returns the head's parameters with their initial
/// values (from `seed`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn jigsaw_terms(
    b: &mut Builder,
    jig: &Jigsaw,
    fwd: &Forward<'_>,
    xw: &str,
    image: [usize; 3],
    seed: u64,
    dropout: Option<(&str, u64)>,
    loss: &mut LossTerms,
) -> Result<Vec<(String, Tensor)>> {
    let [_, h, w] = image;
    if !(jig.weight.is_finite() && jig.weight > 0.0) {
        return Err(GraphError::Spec(format!(
            "jigsaw.weight is {} (must be positive; turn the jigsaw task off instead of 0)",
            jig.weight
        )));
    }
    let p = jig.permutations;
    if !(2..=MAX_PERMUTATIONS).contains(&p) {
        return Err(GraphError::Spec(format!(
            "jigsaw.permutations is {p}; a 2x2 grid has 2..={MAX_PERMUTATIONS}"
        )));
    }
    if h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2 {
        return Err(GraphError::Input {
            input: fwd.input.to_string(),
            reason: format!("a 2x2 jigsaw needs even image sides, found {h}x{w}"),
        });
    }
    let feature = resolve_feature(fwd.g, &jig.feature, "jigsaw.feature")?;
    let perms = jigsaw_permutations(seed, p);
    let (xj, labels) = puzzles(b, xw, &perms, [h, w])?;
    fwd.pass(b, &xj, "jigsaw", None, None, dropout)?;
    let feat = pass_tensor(b, fwd, "jigsaw", &xj, &feature, "jigsaw.feature")?;
    let rows = feature_rows(b, &feat)?;
    let head = Head {
        weight: JIGSAW_WEIGHT,
        bias: JIGSAW_BIAS,
        classes: p,
        term_weight: jig.weight,
        metrics: ("loss_jigsaw", "jigsaw_accuracy"),
    };
    linear_head_terms(b, &rows, &head, seed, labels, loss)
}

/// The puzzles of `x` [B, C, H, W]: for each permutation k (in order) the examples
/// k, k + P, k + 2P, ... with their tiles rearranged (position j gets tile `perm[j]`; tile t
/// is row t / 2, column t % 2), concatenated along the batch; and the label (k) of each row.
fn puzzles(
    b: &mut Builder,
    x: &str,
    perms: &[[usize; 4]],
    [h, w]: [usize; 2],
) -> Result<(String, Vec<i64>)> {
    let (h2, w2) = ((h / 2) as i64, (w / 2) as i64);
    let mut parts = Vec::new();
    let mut labels = Vec::new();
    for (k, (rows, n)) in strided_groups(b, x, perms.len())?.into_iter().enumerate() {
        let perm = perms[k];
        let mut tiles = Vec::new();
        for t in 0..4 {
            let (ty, tx) = ((t / 2) as i64, (t % 2) as i64);
            let (s, e, a) = (
                b.ints(&[ty * h2, tx * w2]),
                b.ints(&[(ty + 1) * h2, (tx + 1) * w2]),
                b.ints(&[2, 3]),
            );
            tiles.push(b.op("Slice", &[&rows, &s, &e, &a], vec![])?);
        }
        let top = b.op(
            "Concat",
            &[&tiles[perm[0]], &tiles[perm[1]]],
            vec![attr::int("axis", 3)],
        )?;
        let bottom = b.op(
            "Concat",
            &[&tiles[perm[2]], &tiles[perm[3]]],
            vec![attr::int("axis", 3)],
        )?;
        parts.push(b.op("Concat", &[&top, &bottom], vec![attr::int("axis", 2)])?);
        labels.extend(std::iter::repeat_n(k as i64, n));
    }
    Ok((concat_rows(b, &parts)?, labels))
}
