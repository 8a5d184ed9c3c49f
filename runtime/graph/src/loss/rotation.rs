//! Rotation prediction ([`Rotation`]): the weak view rotated by 0/90/180/270 degrees in the
//! graph, the model up to the feature tensor, and a linear head over the 4 rotations trained
//! with a cross-entropy.

use super::head::{HeadTask, PretextTask, Targets};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::attr;
use crate::spec::{Rotation, ROTATION_BIAS, ROTATION_WEIGHT};

/// The weak view `[bu, C, S, S]` rotated by 0, 90, 180 and 270 degrees (square images only),
/// labelled by rotation; the head's metrics are `loss_rotation`, `rotation_accuracy`.
impl PretextTask for Rotation {
    const KEY: &'static str = "rotation";
    const PARAMS: (&'static str, &'static str) = (ROTATION_WEIGHT, ROTATION_BIAS);
    const METRICS: &'static [&'static str] = &["loss_rotation", "rotation_accuracy"];

    fn weight(&self) -> f32 {
        self.weight
    }

    fn feature(&self) -> Option<&String> {
        self.feature.as_ref()
    }

    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)> {
        let [_, h, w] = t.image;
        let bu = b.shape(t.xw)?[0];
        if h != w {
            return Err(GraphError::Input {
                input: t.fwd.input.to_string(),
                reason: format!("rotation prediction needs square images, found {h}x{w}"),
            });
        }
        let xr = rotations(b, t.xw, h)?;
        let labels: Vec<i64> = (0..4 * bu).map(|i| (i / bu) as i64).collect();
        Ok((xr, Targets::Classes { labels, classes: 4 }))
    }
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
