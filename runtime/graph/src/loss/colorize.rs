//! Colorization ([`Colorize`], RGB models): the weak view's luma replicated to three channels,
//! the model up to a feature map, and a decoder head that predicts the chroma.

use fieldtune_tensor::Tensor;

use super::head::{HeadTask, PretextTask, Targets};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::attr;
use crate::spec::{Colorize, COLORIZE_BIAS, COLORIZE_WEIGHT, LUMA};

/// The weak view's luma `Y` (model-input units) as a `[bu, 3, H, W]` gray frame; the target is
/// the chroma `(R - Y, B - Y)` `[bu, 2, H, W]`. Metric: `loss_colorize`.
impl PretextTask for Colorize {
    const KEY: &'static str = "colorize";
    const PARAMS: (&'static str, &'static str) = (COLORIZE_WEIGHT, COLORIZE_BIAS);
    const METRICS: &'static [&'static str] = &["loss_colorize"];

    fn weight(&self) -> f32 {
        self.weight
    }

    fn feature(&self) -> Option<&String> {
        self.feature.as_ref()
    }

    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)> {
        let [c, _, _] = t.image;
        if c != 3 {
            return Err(GraphError::Input {
                input: t.fwd.input.to_string(),
                reason: format!(
                    "colorize needs an RGB model (3 input channels); this model's input has {c} \
                     channel{}",
                    if c == 1 { "" } else { "s" }
                ),
            });
        }
        let lw = b.constant(Tensor::f32(vec![1, 3, 1, 1], LUMA.to_vec()).expect("sized"));
        let weighted = b.op("Mul", &[t.xw, &lw], vec![])?;
        let y = b.reduce("ReduceSum", &weighted, &[1], true)?;
        let gray = b.op("Concat", &[&y, &y, &y], vec![attr::int("axis", 1)])?;
        let channel = |b: &mut Builder, k: i64| -> Result<String> {
            let (s, e, a) = (b.ints(&[k]), b.ints(&[k + 1]), b.ints(&[1]));
            b.op("Slice", &[t.xw, &s, &e, &a], vec![])
        };
        let (r, bl) = (channel(b, 0)?, channel(b, 2)?);
        let cr = b.op("Sub", &[&r, &y], vec![])?;
        let cb = b.op("Sub", &[&bl, &y], vec![])?;
        let chroma = b.op("Concat", &[&cr, &cb], vec![attr::int("axis", 1)])?;
        let targets = Targets::Pixels {
            target: chroma,
            mask: None,
            channels: 2,
            loss: self.loss,
        };
        Ok((gray, targets))
    }
}
