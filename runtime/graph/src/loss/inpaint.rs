//! Masked inpainting ([`Inpaint`]): square patches of the weak view masked in the graph (a
//! mask drawn per step), the model up to a feature map, and a decoder head that reconstructs
//! the frame, trained on the masked pixels only.
//!
//! The mask is made here, in the graph, not in the augment crate: like the corruption task's
//! noise and Dropout it is then a pure function of (seed, step) from [`crate::random`], the
//! same on both engines and in the numpy reference (scripts/reference/rng.py), and the train
//! step needs no extra input (batches, dumps and the field runtime stay as they are).

use super::head::{HeadTask, PretextTask, Targets};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::attr;
use crate::random;
use crate::spec::{Inpaint, INPAINT_BIAS, INPAINT_WEIGHT};

/// The weak view `[bu, C, H, W]` with each `patch` x `patch` patch set to 0 where the stream
/// `inpaint/mask` at the step (`[bu, 1, H / patch, W / patch]`) is below `ratio`; the target is
/// the weak view itself on the masked pixels. Metric: `loss_inpaint`.
impl PretextTask for Inpaint {
    const KEY: &'static str = "inpaint";
    const PARAMS: (&'static str, &'static str) = (INPAINT_WEIGHT, INPAINT_BIAS);
    const METRICS: &'static [&'static str] = &["loss_inpaint"];

    fn weight(&self) -> f32 {
        self.weight
    }

    fn feature(&self) -> Option<&String> {
        self.feature.as_ref()
    }

    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)> {
        let [c, h, w] = t.image;
        let p = self.patch;
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(GraphError::Spec(format!(
                "inpaint.ratio is {}; it must be in (0, 1]",
                self.ratio
            )));
        }
        if p == 0 || h % p != 0 || w % p != 0 {
            return Err(GraphError::Input {
                input: t.fwd.input.to_string(),
                reason: format!("inpaint.patch {p} does not divide the image's {h}x{w}"),
            });
        }
        let bu = b.shape(t.xw)?[0];
        let (gh, gw) = (h / p, w / p);
        let u = random::uniform(b, &[bu, 1, gh, gw], t.step, t.seed, "inpaint/mask")?;
        let r = b.scalar(self.ratio);
        let m = b.op("Less", &[&u, &r], vec![])?;
        let mut m = b.op("Cast", &[&m], vec![attr::int("to", 1)])?;
        if p > 1 {
            let cells = b.reshape(&m, &[bu, 1, gh, 1, gw, 1])?;
            let to = b.ints(&[bu as i64, 1, gh as i64, p as i64, gw as i64, p as i64]);
            let px = b.op("Expand", &[&cells, &to], vec![])?;
            m = b.reshape(&px, &[bu, 1, h, w])?;
        }
        let one = b.scalar(1.0);
        let keep = b.op("Sub", &[&one, &m], vec![])?;
        let x = b.op("Mul", &[t.xw, &keep], vec![])?;
        let targets = Targets::Pixels {
            target: t.xw.to_string(),
            mask: Some(m),
            channels: c,
            loss: self.loss,
        };
        Ok((x, targets))
    }
}
