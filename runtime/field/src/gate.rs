//! The gate between a round and the live model. New weights go live only if
//! - nothing is NaN/Inf: the round's loss terms, the weights, the outputs on anchors and probe;
//! - anchor accuracy falls by at most `max_anchor_drop`;
//! - the unlabeled objective on the held-out probe frames (mean prediction entropy minus the
//!   entropy of the mean prediction, i.e. information maximisation; lower is better) improves
//!   by more than `min_objective_gain`;
//! - the predictions have not collapsed: the entropy of the probe's mean prediction falls by at
//!   most `max_marginal_entropy_drop` (fieldtune_adapt::collapse, shared with `adapt`), and the new model agrees with the live one on at least
//!   `min_agreement` of the probe frames (DESIGN.md: an anchor check alone would commit a model
//!   that predicts one class for every target frame). Agreement is waived where the new
//!   model's marginal entropy exceeds the live one's by more than `agreement_waiver_spread`:
//!   after a severe shift the live model itself has collapsed onto a few classes, and a
//!   candidate that repairs it must disagree with it (the anchors still catch a relabelling).

use serde::{Deserialize, Serialize};

use crate::config::{ge, gt, GateConfig};
use crate::nan::f64_or_nan;
use fieldtune_adapt::collapse::marginal_entropy_collapse;
/// What a model does on the probe, and running it: the definition `adapt`'s collapse watch
/// shares (fieldtune_adapt::collapse).
pub use fieldtune_adapt::collapse::{probe, ProbeStats};

/// Everything the gate looks at.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GateInput {
    pub anchor_accuracy_before: f64,
    pub anchor_accuracy_after: f64,
    /// The live model on the probe.
    pub before: ProbeStats,
    /// The candidate on the probe.
    pub after: ProbeStats,
    /// A non-finite loss term during the round: (step, term, value).
    pub non_finite_step: Option<(usize, String, f32)>,
    /// Every candidate weight finite.
    pub weights_finite: bool,
    /// Whether the candidate's anchor outputs were all finite.
    pub anchor_outputs_finite: bool,
}

/// The gate's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    pub pass: bool,
    /// Each failed check, in words.
    pub reasons: Vec<String>,
    /// The only failed check is "the objective did not improve", and it rose by at most
    /// `no_gain_tolerance`: a converged model, not a harmful round.
    pub no_gain_only: bool,
    #[serde(deserialize_with = "f64_or_nan")]
    pub anchor_accuracy_before: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub anchor_accuracy_after: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub objective_before: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub objective_after: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub marginal_entropy_before: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub marginal_entropy_after: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub agreement: f64,
    /// The agreement check was waived: the new model's predictions spread over more classes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agreement_waived: bool,
}

/// Share of frames with the same class in `a` and `b`.
pub fn agreement(a: &[usize], b: &[usize]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .filter(|(x, y)| x == y && **x != usize::MAX)
        .count() as f64
        / a.len() as f64
}

/// Applies the checks of `cfg` to `input`.
pub fn decide(cfg: &GateConfig, input: &GateInput) -> GateVerdict {
    let mut reasons = Vec::new();
    if let Some((step, term, value)) = &input.non_finite_step {
        reasons.push(format!("non-finite {term} = {value} at step {step}"));
    }
    if !input.weights_finite {
        reasons.push("non-finite weights".into());
    }
    if !input.after.finite || !input.anchor_outputs_finite {
        reasons.push("non-finite outputs".into());
    }
    let (b, a) = (input.anchor_accuracy_before, input.anchor_accuracy_after);
    if !ge(a, b - cfg.max_anchor_drop) {
        reasons.push(format!(
            "anchor accuracy {a:.4} fell more than {} below {b:.4}",
            cfg.max_anchor_drop
        ));
    }
    let (ob, oa) = (input.before.objective, input.after.objective);
    let no_gain = !gt(ob - cfg.min_objective_gain, oa);
    if no_gain {
        reasons.push(format!(
            "unlabeled objective {oa:.4} did not improve on {ob:.4} by more than {}",
            cfg.min_objective_gain
        ));
    }
    let (mb, ma) = (input.before.marginal_entropy, input.after.marginal_entropy);
    reasons.extend(marginal_entropy_collapse(
        mb,
        ma,
        cfg.max_marginal_entropy_drop,
    ));
    let agree = agreement(&input.before.classes, &input.after.classes);
    let waived = cfg.agreement_waiver_spread > 0.0 && gt(ma - mb, cfg.agreement_waiver_spread);
    if !waived && !ge(agree, cfg.min_agreement) {
        reasons.push(format!(
            "agrees with the live model on {agree:.3} of the probe, below {}",
            cfg.min_agreement
        ));
    }
    let no_gain_only = no_gain && reasons.len() == 1 && oa - ob <= cfg.no_gain_tolerance;
    GateVerdict {
        pass: reasons.is_empty(),
        no_gain_only,
        reasons,
        anchor_accuracy_before: b,
        anchor_accuracy_after: a,
        objective_before: ob,
        objective_after: oa,
        marginal_entropy_before: mb,
        marginal_entropy_after: ma,
        agreement: agree,
        agreement_waived: waived,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(objective: f64, marginal: f64, classes: Vec<usize>) -> ProbeStats {
        ProbeStats {
            classes,
            objective,
            marginal_entropy: marginal,
            finite: true,
            ..ProbeStats::default()
        }
    }

    fn good() -> GateInput {
        GateInput {
            anchor_accuracy_before: 0.99,
            anchor_accuracy_after: 0.985,
            before: stats(-2.0, 2.3, vec![0, 1, 2, 3]),
            after: stats(-2.1, 2.29, vec![0, 1, 2, 4]),
            non_finite_step: None,
            weights_finite: true,
            anchor_outputs_finite: true,
        }
    }

    #[test]
    fn a_good_round_passes() {
        let v = decide(
            &GateConfig {
                min_agreement: 0.7,
                ..GateConfig::default()
            },
            &good(),
        );
        assert!(v.pass, "{:?}", v.reasons);
        assert_eq!(v.agreement, 0.75);
    }

    #[test]
    fn a_candidate_repairing_a_collapsed_live_model_may_disagree_with_it() {
        // The live model put the shifted probe onto two classes; the candidate spreads it.
        let mut g = good();
        g.before = stats(-0.36, 1.59, vec![1, 1, 8, 8]);
        g.after = stats(-1.49, 2.19, vec![0, 1, 2, 3]);
        let v = decide(&GateConfig::default(), &g);
        assert!(v.pass && v.agreement_waived, "{:?}", v.reasons);
        assert_eq!(v.agreement, 0.25);
        // Off, or with a spread below the margin: agreement applies.
        let off = GateConfig {
            agreement_waiver_spread: 0.0,
            ..GateConfig::default()
        };
        assert!(!decide(&off, &g).pass);
        g.after.marginal_entropy = 1.7;
        let v = decide(&GateConfig::default(), &g);
        assert!(!v.pass && !v.agreement_waived && v.reasons[0].contains("agrees"));
        // The anchors still refuse a candidate that spreads by relabelling.
        g.after.marginal_entropy = 2.19;
        g.anchor_accuracy_after = 0.5;
        assert!(!decide(&GateConfig::default(), &g).pass);
    }

    #[test]
    fn each_check_can_fail_alone() {
        let cfg = GateConfig::default();
        type Poison = Box<dyn Fn(&mut GateInput)>;
        let cases: Vec<(&str, Poison)> = vec![
            (
                "anchor accuracy",
                Box::new(|g| g.anchor_accuracy_after = 0.97),
            ),
            ("did not improve", Box::new(|g| g.after.objective = -1.99)),
            ("collapsing", Box::new(|g| g.after.marginal_entropy = 1.0)),
            ("agrees", Box::new(|g| g.after.classes = vec![5, 5, 5, 5])),
            (
                "non-finite loss_ce",
                Box::new(|g| g.non_finite_step = Some((3, "loss_ce".into(), f32::NAN))),
            ),
            ("non-finite weights", Box::new(|g| g.weights_finite = false)),
            ("non-finite outputs", Box::new(|g| g.after.finite = false)),
            (
                "anchor accuracy",
                Box::new(|g| g.anchor_accuracy_after = f64::NAN),
            ),
        ];
        for (want, poison) in cases {
            let mut g = good();
            g.before.classes = vec![0, 1, 2, 3];
            g.after.classes = vec![0, 1, 2, 3];
            poison(&mut g);
            let v = decide(&cfg, &g);
            assert!(!v.pass, "{want}");
            assert_eq!(v.reasons.len(), 1, "{want}: {:?}", v.reasons);
            assert!(v.reasons[0].contains(want), "{want}: {:?}", v.reasons);
            assert_eq!(v.no_gain_only, want == "did not improve", "{want}");
        }
        // An objective that got clearly worse is a failure that counts.
        let mut g = good();
        g.after.objective = -1.5;
        let v = decide(&cfg, &g);
        assert!(!v.pass && !v.no_gain_only, "{:?}", v.reasons);
    }
}
