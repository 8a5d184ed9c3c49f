//! Collapse of a classifier's predictions onto a few classes: one definition for the field
//! runtime's gate and for offline adaptation (`adapt`). Both run a model over a fixed set
//! of unlabeled frames ([`probe`]), compare what it does with what the reference model did
//! ([`ProbeStats`]), and call it collapsing when
//! - the entropy of the mean prediction falls by more than a drop
//!   ([`MAX_MARGINAL_ENTROPY_DROP`] by default; the gate's `max_marginal_entropy_drop`):
//!   [`marginal_entropy_collapse`];
//! - and `adapt` also notes when the mean confidence saturates: it reaches
//!   [`SATURATED_CONFIDENCE`] from below ([`confidence_saturation`]). That is a warning, not
//!   collapse: TENT on the shipped MNIST CNN and OpenCV digits (600 steps, lr 1e-3) reaches a
//!   mean confidence of 1.0000 while its accuracy rises from 94.56% to 96.84%, its
//!   predictions still spread over the ten classes. The gate has no such note.
//!
//! DESIGN.md: entropy minimisation (TENT) or hard pseudo-labels can drive a model to predict
//! one class for every frame, with full confidence, while its loss looks better than ever.

use fieldtune_engine::Session;
use fieldtune_frames::{Image8, ModelConfig};
use serde::Serialize;

use crate::error::Result;
use crate::eval::for_each_logits;

/// The largest fall of the marginal entropy (nats) that is not collapse: the field gate's
/// default `max_marginal_entropy_drop` and `adapt`'s threshold.
pub const MAX_MARGINAL_ENTROPY_DROP: f64 = 0.2;

/// A mean max-softmax confidence at or above this, reached from below, is saturated: the
/// model has stopped saying it is unsure about anything (a warning; not collapse by itself).
pub const SATURATED_CONFIDENCE: f64 = 0.999;

/// What a model does on a set of frames.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProbeStats {
    /// Arg-max class per frame (`usize::MAX` where an output was not finite).
    #[serde(skip)]
    pub classes: Vec<usize>,
    pub mean_entropy: f64,
    /// Entropy of the mean predicted distribution.
    pub marginal_entropy: f64,
    pub mean_confidence: f64,
    /// `mean_entropy - marginal_entropy` (lower is better).
    pub objective: f64,
    /// Every output finite.
    pub finite: bool,
}

/// Softmax statistics of one logit row: (argmax, max probability, entropy in nats). `None`
/// when a logit is not finite. Allocates nothing (the field's inference thread calls it).
pub fn softmax_stats(logits: &[f32]) -> Option<(usize, f64, f64)> {
    let mut arg = 0;
    let mut max = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_finite() {
            return None;
        }
        if x > max {
            max = x;
            arg = i;
        }
    }
    let z: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = z.ln();
    // H = log Z - sum p_i (x_i - max)
    let mut h = log_z;
    for &x in logits {
        let d = (x - max) as f64;
        h -= d.exp() / z * d;
    }
    Some((arg, 1.0 / z, h.max(0.0)))
}

/// Runs `session` on `images` in batches and summarises the softmax outputs.
pub fn probe(
    session: &mut dyn Session,
    cfg: &ModelConfig,
    images: &[Image8],
    batch: usize,
) -> Result<ProbeStats> {
    let k = cfg.classes.len();
    let mut mean = vec![0f64; k];
    let mut out = ProbeStats {
        finite: true,
        ..ProbeStats::default()
    };
    for_each_logits(session, cfg, images, batch, |row| {
        match softmax_stats(row) {
            Some((c, p, h)) => {
                out.classes.push(c);
                out.mean_confidence += p;
                out.mean_entropy += h;
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
                for (m, &x) in mean.iter_mut().zip(row) {
                    *m += ((x - max) as f64).exp() / z;
                }
            }
            None => {
                out.finite = false;
                out.classes.push(usize::MAX);
            }
        }
    })?;
    let n = images.len().max(1) as f64;
    out.mean_entropy /= n;
    out.mean_confidence /= n;
    out.marginal_entropy = -mean
        .iter()
        .map(|m| m / n)
        .filter(|&m| m > 0.0)
        .map(|m| m * m.ln())
        .sum::<f64>();
    out.objective = out.mean_entropy - out.marginal_entropy;
    Ok(out)
}

/// The marginal entropy fell from `before` to `after` by more than `max_drop` (a NaN counts):
/// the reason in words, as the gate and `adapt` both print it.
pub fn marginal_entropy_collapse(before: f64, after: f64, max_drop: f64) -> Option<String> {
    // Written so that NaN fails: `after >= before - max_drop` is false for NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let collapsing = !(after >= before - max_drop);
    collapsing.then(|| {
        format!(
            "predictions collapsing: marginal entropy {after:.4} fell more than {max_drop} below {before:.4}"
        )
    })
}

/// The mean confidence reached [`SATURATED_CONFIDENCE`] from below `before` (a NaN counts).
pub fn confidence_saturation(before: f64, after: f64) -> Option<String> {
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let saturated = before < SATURATED_CONFIDENCE && !(after < SATURATED_CONFIDENCE);
    saturated.then(|| {
        format!(
            "confidence saturated: mean confidence {after:.4} (from {before:.4}) reached {SATURATED_CONFIDENCE}"
        )
    })
}

/// `adapt`'s check of a model (`after`) against the model it started from (`before`) on the
/// same frames: every reason it is collapsing (empty: it is not). The marginal-entropy check
/// is the gate's, at the gate's default threshold.
pub fn collapse_reasons(before: &ProbeStats, after: &ProbeStats) -> Vec<String> {
    let mut reasons = Vec::new();
    if !after.finite {
        reasons.push("non-finite outputs".to_string());
    }
    reasons.extend(marginal_entropy_collapse(
        before.marginal_entropy,
        after.marginal_entropy,
        MAX_MARGINAL_ENTROPY_DROP,
    ));
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(marginal: f64, confidence: f64) -> ProbeStats {
        ProbeStats {
            marginal_entropy: marginal,
            mean_confidence: confidence,
            finite: true,
            ..ProbeStats::default()
        }
    }

    #[test]
    fn collapse_and_saturation_fire_at_their_thresholds() {
        let before = stats(2.3, 0.9);
        assert!(collapse_reasons(&before, &stats(2.1, 0.99)).is_empty());
        let r = collapse_reasons(&before, &stats(2.09, 0.99));
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("marginal entropy 2.0900 fell more than 0.2 below 2.3000"));
        // Saturation is a note, not collapse.
        assert!(collapse_reasons(&before, &stats(2.3, 1.0)).is_empty());
        assert!(confidence_saturation(0.9, 0.998).is_none());
        let n = confidence_saturation(0.9, 0.999).expect("saturated");
        assert!(n.contains("confidence saturated"), "{n}");
        // A model that was already saturated is not "saturating"; NaN is.
        assert!(confidence_saturation(0.9995, 1.0).is_none());
        assert!(confidence_saturation(0.9, f64::NAN).is_some());
        // NaN counts as collapse, and so do non-finite outputs.
        assert_eq!(collapse_reasons(&before, &stats(f64::NAN, 0.9)).len(), 1);
        let mut nan = stats(2.3, 0.9);
        nan.finite = false;
        assert_eq!(collapse_reasons(&before, &nan), ["non-finite outputs"]);
    }

    #[test]
    fn softmax_stats_match_the_definition() {
        let (c, p, h) = softmax_stats(&[0.0, 0.0]).unwrap();
        assert_eq!(c, 0);
        assert!((p - 0.5).abs() < 1e-12 && (h - 2f64.ln()).abs() < 1e-12);
        let (c, p, h) = softmax_stats(&[1.0, 3.0, -2.0]).unwrap();
        let z: f64 = [1f64, 3.0, -2.0].iter().map(|x| x.exp()).sum();
        let ps: Vec<f64> = [1f64, 3.0, -2.0].iter().map(|x| x.exp() / z).collect();
        let want_h: f64 = -ps.iter().map(|p| p * p.ln()).sum::<f64>();
        assert_eq!(c, 1);
        assert!((p - ps[1]).abs() < 1e-6 && (h - want_h).abs() < 1e-6);
        assert!(softmax_stats(&[f32::NAN, 1.0]).is_none());
    }
}
