//! The supervisor's failure paths: a round that ended in an error, the switch to the train
//! fallback engine, and the reset to the source weights after `max_failures` in a row.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::{anchor_accuracy, Live, RoundSupervisor};
use crate::config::Role;
use crate::error::Result;
use crate::events::{
    EngineFallback, FailedRound, FieldEvent, ResetToSource, RolledBack, RoundEnded,
};
use crate::recovery::SettleReason;
use crate::store::{unix_ms, CheckpointMeta};

impl RoundSupervisor {
    /// A round that ended in an error: reported, rolled back, counted as a failure.
    pub(super) fn fail(
        &mut self,
        round_total: u64,
        steps: Option<usize>,
        e: &dyn std::fmt::Display,
    ) -> Result<()> {
        self.state.round_active.store(false, Ordering::Relaxed);
        tracing::error!("round {round_total} failed: {e}");
        self.events
            .emit(FieldEvent::RoundEnded(RoundEnded::Failed(FailedRound {
                round: round_total,
                error: e.to_string(),
                steps,
            })));
        self.state.rollbacks.fetch_add(1, Ordering::Relaxed);
        self.failures += 1;
        self.events.emit(FieldEvent::RolledBack(RolledBack {
            round: round_total,
            reasons: vec![e.to_string()],
            no_gain_only: None,
            failures_in_a_row: self.failures,
            version: None,
        }));
        self.reset_if_failing(round_total)
    }

    /// After a failed train step: the next rounds train on `train_fallback`, if set (once).
    pub(super) fn train_fallback(
        &mut self,
        round_total: u64,
        e: &dyn std::fmt::Display,
    ) -> Result<()> {
        let Some(spec) = self.serving.plan.train_fallback.clone() else {
            return Ok(());
        };
        if self.training.switched {
            return Ok(());
        }
        let r = self.training.opts.resolve(
            &spec,
            &self.cfg.budget.board,
            self.serving.plan.trt_cache.as_deref(),
            &self.serving.plan.gpu_options(Role::Train, ""),
            self.cfg.engine.train_threads,
        )?;
        let (anchors, labels) = self.trainer.anchors();
        let trainer = self.training.trainer(
            r.engine.as_ref(),
            self.trainer.model().clone(),
            self.trainer.config().clone(),
            anchors.to_vec(),
            labels.to_vec(),
        )?;
        tracing::warn!(
            "round {round_total}: the train step failed; the next rounds train on {spec} ({})",
            r.engine.describe()
        );
        self.events.emit(FieldEvent::EngineFallback(EngineFallback {
            role: "train".into(),
            from: self.training.spec.clone(),
            to: spec.to_string(),
            reason: e.to_string(),
            frame: None,
            round: Some(round_total),
        }));
        self.trainer = trainer;
        self.train_engine = r.engine;
        self.training.spec = spec.to_string();
        self.training.switched = true;
        Ok(())
    }

    /// After `max_failures` failed rounds in a row, the live model goes back to the source
    /// weights (checkpointed as a new version of kind `reset`).
    pub(super) fn reset_if_failing(&mut self, round_total: u64) -> Result<()> {
        if self.failures < self.cfg.gate.max_failures {
            return Ok(());
        }
        let weights = self.trainer.source_weights().clone();
        let meta = CheckpointMeta {
            version: self.live.meta.version + 1,
            round: round_total,
            step: 0,
            kind: "reset".into(),
            model_sha256: self.live.meta.model_sha256.clone(),
            metrics: json!({"failures_in_a_row": self.failures}),
            unix_ms: unix_ms(),
        };
        let bytes = self.trainer.model().with_params(&weights)?;
        let session = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("source"))?;
        super::note_trt(self.infer_engine.as_ref(), &self.events, meta.version);
        let mut reference = self
            .infer_engine
            .load(&bytes, &self.trainer.model().label("gate reference"))?;
        let anchor_accuracy = anchor_accuracy(reference.as_mut(), &self.trainer)?;
        self.store.commit(&weights, &meta)?;
        self.swap(session, &bytes, meta.version, true);
        self.end_episode(SettleReason::Reset);
        self.state.resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "{} failed rounds in a row: reset to the source weights (version {})",
            self.failures,
            meta.version
        );
        self.events.emit(FieldEvent::ResetToSource(ResetToSource {
            round: round_total,
            version: meta.version,
            failures_in_a_row: self.failures,
        }));
        self.failures = 0;
        self.live = Live {
            weights,
            meta,
            reference,
            anchor_accuracy,
        };
        Ok(())
    }
}
