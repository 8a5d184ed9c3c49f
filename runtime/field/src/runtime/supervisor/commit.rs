//! The end of a round that trained: the gate (a candidate session on the inference engine,
//! judged against the live one), the commit (checkpoint first, then the swap) and the
//! rollback.

use std::sync::atomic::Ordering;

use fieldtune_engine::Session;
use fieldtune_frames::Image8;
use serde_json::json;

use super::{accuracy, note_trt, Judged, Live, RoundSupervisor};
use crate::error::Result;
use crate::events::{Committed, FieldEvent, RolledBack};
use crate::gate::{decide, probe, GateInput, GateVerdict};
use crate::round::{all_finite, RoundResult};
use crate::store::{unix_ms, CheckpointMeta};

impl RoundSupervisor {
    /// The gate, off the hot path: the candidate's session is built here and, if it passes,
    /// becomes the live one.
    pub(super) fn gate(&mut self, result: &RoundResult, probe_set: &[Image8]) -> Result<Judged> {
        let weights_finite = all_finite(&result.weights);
        let bytes = self.trainer.model().with_params(&result.weights)?;
        let mut session = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("candidate"))?;
        note_trt(
            self.infer_engine.as_ref(),
            &self.events,
            self.live.meta.version + 1,
        );
        let mcfg = &self.trainer.model().config;
        let (a_imgs, a_labels) = self.trainer.anchors();
        let cand_anchor = probe(session.as_mut(), mcfg, a_imgs, 250)?;
        let before = probe(self.live.reference.as_mut(), mcfg, probe_set, 250)?;
        let after = probe(session.as_mut(), mcfg, probe_set, 250)?;
        let input = GateInput {
            anchor_accuracy_before: self.live.anchor_accuracy,
            anchor_accuracy_after: accuracy(&cand_anchor.classes, a_labels),
            before,
            after,
            non_finite_step: result.non_finite.clone(),
            weights_finite,
            anchor_outputs_finite: cand_anchor.finite,
        };
        Ok(Judged {
            verdict: decide(&self.cfg.gate, &input),
            input,
            session,
            bytes,
        })
    }

    /// A passed round: checkpoint first (the live model is always one a restart comes back
    /// to), then hand the candidate's session to the inference loop; `rebaseline`: the drift
    /// detector measures a new baseline (not within an episode, which does so when it
    /// settles); `kind`: the checkpoint's kind (`adapted`, `fleet`). False when the checkpoint
    /// could not be written (the live model stays).
    pub(super) fn commit(
        &mut self,
        round_total: u64,
        result: RoundResult,
        judged: Judged,
        rebaseline: bool,
        kind: &str,
    ) -> Result<bool> {
        let Judged {
            verdict,
            session,
            bytes,
            ..
        } = judged;
        let gate_json = serde_json::to_value(&verdict).unwrap_or_default();
        let train: serde_json::Map<String, serde_json::Value> = result
            .metrics
            .iter()
            .map(|(n, v)| (n.clone(), json!(v)))
            .collect();
        let meta = CheckpointMeta {
            version: self.live.meta.version + 1,
            round: round_total,
            step: self.live.meta.step + result.steps as u64,
            kind: kind.into(),
            model_sha256: self.live.meta.model_sha256.clone(),
            metrics: json!({"gate": gate_json, "train": train}),
            unix_ms: unix_ms(),
        };
        let path = match self.store.commit(&result.weights, &meta) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "round {round_total}: checkpoint not written ({e}); the live model stays"
                );
                self.state.rollbacks.fetch_add(1, Ordering::Relaxed);
                self.failures += 1;
                self.events.emit(FieldEvent::RolledBack(RolledBack {
                    round: round_total,
                    reasons: vec![format!("checkpoint: {e}")],
                    no_gain_only: None,
                    failures_in_a_row: self.failures,
                    version: None,
                }));
                return Ok(false);
            }
        };
        let reference = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("gate reference"))?;
        self.swap(session, &bytes, meta.version, rebaseline);
        crate::runtime::bound_trt_cache(&self.serving.plan);
        self.state.commits.fetch_add(1, Ordering::Relaxed);
        self.failures = 0;
        tracing::info!(
            "round {round_total} committed: version {}, anchor accuracy {:.4} -> {:.4}, objective {:.4} -> {:.4}",
            meta.version, verdict.anchor_accuracy_before, verdict.anchor_accuracy_after, verdict.objective_before, verdict.objective_after
        );
        self.events.emit(FieldEvent::Committed(Committed {
            round: round_total,
            version: meta.version,
            step: meta.step,
            checkpoint: path.display().to_string(),
            anchor_accuracy: verdict.anchor_accuracy_after,
        }));
        self.live = Live {
            weights: result.weights,
            meta,
            reference,
            anchor_accuracy: verdict.anchor_accuracy_after,
        };
        Ok(true)
    }

    /// Hands `session` (weights of `version`, already checkpointed) to the inference loop.
    /// With a fallback engine, its session of the same weights goes along. `rebaseline`: the
    /// drift detector measures a new baseline on them.
    pub(super) fn swap(
        &self,
        session: Box<dyn Session>,
        bytes: &[u8],
        version: u64,
        rebaseline: bool,
    ) {
        self.handover.offer(self.serving.live_model(
            session,
            bytes,
            version,
            &self.trainer.model().label("live, fallback"),
        ));
        if rebaseline {
            self.handover.rebaseline();
        }
        self.state.version.store(version, Ordering::Relaxed);
    }

    /// A round the gate refused: discarded; it counts toward the reset unless the only
    /// failed check was a small lack of gain.
    pub(super) fn rollback(&mut self, round_total: u64, verdict: &GateVerdict) -> Result<()> {
        self.state.rollbacks.fetch_add(1, Ordering::Relaxed);
        if !verdict.no_gain_only {
            self.failures += 1;
        }
        tracing::warn!(
            "round {round_total} rolled back: {}",
            verdict.reasons.join("; ")
        );
        self.events.emit(FieldEvent::RolledBack(RolledBack {
            round: round_total,
            reasons: verdict.reasons.clone(),
            no_gain_only: Some(verdict.no_gain_only),
            failures_in_a_row: self.failures,
            version: Some(self.live.meta.version),
        }));
        self.reset_if_failing(round_total)
    }
}
