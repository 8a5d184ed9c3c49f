//! Corrupted-image classification ([`CorruptionTask`]): each example of the weak view left as
//! it is or corrupted in the graph by one of K corruptions (noise drawn per step, blur,
//! contrast, quantisation, pixelation), the model up to the feature tensor, and a linear head
//! over the K + 1 classes trained with a cross-entropy.

use fieldtune_tensor::Tensor;

use super::head::{concat_rows, strided_groups, HeadTask, PretextTask, Targets};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::attr;
use crate::random;
use crate::spec::{CorruptionKind, CorruptionTask, CORRUPTION_BIAS, CORRUPTION_WEIGHT};

/// Noise amplitude as a fraction of the image's range.
pub const NOISE: f32 = 0.3;
/// Contrast kept around the image's mean.
pub const CONTRAST: f32 = 0.3;
/// Quantisation levels.
pub const LEVELS: f32 = 4.0;
/// Added to the image's range before dividing by it.
pub const RANGE_EPS: f32 = 1e-6;

/// The weak view with example i left as it is or corrupted (class i mod (K + 1)); `step` (the
/// train step's step input) draws the noise. The head's metrics are `loss_corruption`,
/// `corruption_accuracy`.
impl PretextTask for CorruptionTask {
    const KEY: &'static str = "corruption";
    const PARAMS: (&'static str, &'static str) = (CORRUPTION_WEIGHT, CORRUPTION_BIAS);
    const METRICS: &'static [&'static str] = &["loss_corruption", "corruption_accuracy"];

    fn weight(&self) -> f32 {
        self.weight
    }

    fn feature(&self) -> Option<&String> {
        self.feature.as_ref()
    }

    fn batch(&self, b: &mut Builder, t: &HeadTask<'_>) -> Result<(String, Targets)> {
        let [c, h, w] = t.image;
        let k = self.corruptions.len();
        if k == 0 {
            return Err(GraphError::Spec(
                "corruption.corruptions is empty (name at least one)".into(),
            ));
        }
        for (i, ci) in self.corruptions.iter().enumerate() {
            if self.corruptions[..i].contains(ci) {
                return Err(GraphError::Spec(format!(
                    "corruption.corruptions names {ci:?} twice"
                )));
            }
        }
        if self.corruptions.contains(&CorruptionKind::Pixelate) && (h % 2 != 0 || w % 2 != 0) {
            return Err(GraphError::Input {
                input: t.fwd.input.to_string(),
                reason: format!("2x2 pixelation needs even image sides, found {h}x{w}"),
            });
        }
        let mut parts = Vec::new();
        let mut labels = Vec::new();
        for (class, (rows, n)) in strided_groups(b, t.xw, k + 1)?.into_iter().enumerate() {
            let part = match class {
                0 => rows,
                _ => corrupt(b, &rows, self.corruptions[class - 1], c, (t.step, t.seed))?,
            };
            parts.push(part);
            labels.extend(std::iter::repeat_n(class as i64, n));
        }
        let xc = concat_rows(b, &parts)?;
        Ok((
            xc,
            Targets::Classes {
                labels,
                classes: k + 1,
            },
        ))
    }
}

/// Per-image reduction over (C, H, W), kept as [n, 1, 1, 1].
fn per_image(b: &mut Builder, op: &str, x: &str) -> Result<String> {
    b.reduce(op, x, &[1, 2, 3], true)
}

/// A depthwise constant kernel [c, 1, s, s] of `value`.
fn depthwise(b: &mut Builder, c: usize, s: usize, value: f32) -> String {
    b.constant(Tensor::f32(vec![c, 1, s, s], vec![value; c * s * s]).expect("sized"))
}

/// `x` [n, C, H, W] corrupted by `kind` (see [`CorruptionKind`]).
fn corrupt(
    b: &mut Builder,
    x: &str,
    kind: CorruptionKind,
    c: usize,
    (step, seed): (&str, u64),
) -> Result<String> {
    match kind {
        CorruptionKind::Noise => {
            let shape = b.shape(x)?;
            let u = random::uniform(b, &shape, step, seed, "corruption/noise")?;
            let (two, one) = (b.scalar(2.0), b.scalar(1.0));
            let u = b.op("Mul", &[&u, &two], vec![])?;
            let u = b.op("Sub", &[&u, &one], vec![])?;
            let hi = per_image(b, "ReduceMax", x)?;
            let lo = per_image(b, "ReduceMin", x)?;
            let range = b.op("Sub", &[&hi, &lo], vec![])?;
            let amp = b.scalar(NOISE);
            let amp = b.op("Mul", &[&range, &amp], vec![])?;
            let n = b.op("Mul", &[&u, &amp], vec![])?;
            b.op("Add", &[x, &n], vec![])
        }
        CorruptionKind::Blur => {
            let wk = depthwise(b, c, 3, 1.0 / 9.0);
            b.op(
                "Conv",
                &[x, &wk],
                vec![
                    attr::int("group", c as i64),
                    attr::ints("kernel_shape", &[3, 3]),
                    attr::ints("pads", &[1, 1, 1, 1]),
                ],
            )
        }
        CorruptionKind::Contrast => {
            let m = per_image(b, "ReduceMean", x)?;
            let d = b.op("Sub", &[x, &m], vec![])?;
            let f = b.scalar(CONTRAST);
            let d = b.op("Mul", &[&d, &f], vec![])?;
            b.op("Add", &[&d, &m], vec![])
        }
        CorruptionKind::Quantise => {
            let hi = per_image(b, "ReduceMax", x)?;
            let lo = per_image(b, "ReduceMin", x)?;
            let range = b.op("Sub", &[&hi, &lo], vec![])?;
            let eps = b.scalar(RANGE_EPS);
            let den = b.op("Add", &[&range, &eps], vec![])?;
            let t = b.op("Sub", &[x, &lo], vec![])?;
            let t = b.op("Div", &[&t, &den], vec![])?;
            let levels = b.scalar(LEVELS);
            let q = b.op("Mul", &[&t, &levels], vec![])?;
            let q = b.op("Floor", &[&q], vec![])?;
            let q = b.op("Div", &[&q, &levels], vec![])?;
            let q = b.op("Mul", &[&q, &range], vec![])?;
            b.op("Add", &[&q, &lo], vec![])
        }
        CorruptionKind::Pixelate => {
            let p = b.op(
                "AveragePool",
                &[x],
                vec![
                    attr::ints("kernel_shape", &[2, 2]),
                    attr::ints("strides", &[2, 2]),
                ],
            )?;
            let ones = depthwise(b, c, 2, 1.0);
            b.op(
                "ConvTranspose",
                &[&p, &ones],
                vec![
                    attr::int("group", c as i64),
                    attr::ints("kernel_shape", &[2, 2]),
                    attr::ints("strides", &[2, 2]),
                ],
            )
        }
    }
}
