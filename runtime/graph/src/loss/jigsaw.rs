//! Jigsaw puzzles ([`Jigsaw`]): the weak view's 2x2 tiles rearranged in the graph by one of
//! P permutations per example, the model up to the feature tensor, and a linear head over the
//! P permutations trained with a cross-entropy.

use super::head::{concat_rows, strided_groups, HeadTask, PretextTask, Targets};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::attr;
use crate::spec::{jigsaw_permutations, Jigsaw, JIGSAW_BIAS, JIGSAW_WEIGHT};

/// The most permutations of a 2x2 grid.
pub const MAX_PERMUTATIONS: usize = 24;

/// The weak view's puzzles `[bu, C, H, W]` (H and W even; example i gets permutation i mod P),
/// labelled by permutation; the head's metrics are `loss_jigsaw`, `jigsaw_accuracy`.
impl PretextTask for Jigsaw {
    const KEY: &'static str = "jigsaw";
    const PARAMS: (&'static str, &'static str) = (JIGSAW_WEIGHT, JIGSAW_BIAS);
    const METRICS: &'static [&'static str] = &["loss_jigsaw", "jigsaw_accuracy"];

    fn weight(&self) -> f32 {
        self.weight
    }

    fn feature(&self) -> Option<&String> {
        self.feature.as_ref()
    }

    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)> {
        let [_, h, w] = t.image;
        let p = self.permutations;
        if !(2..=MAX_PERMUTATIONS).contains(&p) {
            return Err(GraphError::Spec(format!(
                "jigsaw.permutations is {p}; a 2x2 grid has 2..={MAX_PERMUTATIONS}"
            )));
        }
        if h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2 {
            return Err(GraphError::Input {
                input: t.fwd.input.to_string(),
                reason: format!("a 2x2 jigsaw needs even image sides, found {h}x{w}"),
            });
        }
        let perms = jigsaw_permutations(t.seed, p);
        let (xj, labels) = puzzles(b, t.xw, &perms, [h, w])?;
        Ok((xj, Targets::Classes { labels, classes: p }))
    }
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
