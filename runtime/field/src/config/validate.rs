//! Range checks of a parsed [`RunConfig`]: errors name the file and the key.

use std::path::Path;

use super::{ge, gt, RunConfig, SourceKind};
use crate::error::{FieldError, Result};

impl RunConfig {
    /// Checks ranges; errors name the file and key.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, reason: &str| {
            Err(FieldError::Config {
                path: path.into(),
                key: Some(key.into()),
                reason: reason.into(),
            })
        };
        if self.model.as_os_str().is_empty() {
            return bad("model", "must name a model folder");
        }
        match self.source.kind {
            SourceKind::Folder if self.source.paths.is_empty() => {
                return bad("source.paths", "a folder source needs at least one folder")
            }
            SourceKind::Gstreamer if self.source.pipeline.trim().is_empty() => {
                return bad(
                    "source.pipeline",
                    "a gstreamer source needs a pipeline ending in `appsink name=sink`",
                )
            }
            _ => {}
        }
        if !(self.source.fps.is_finite() && self.source.fps >= 0.0) {
            return bad("source.fps", "must be >= 0 (0: as fast as possible)");
        }
        if self.pipeline.capture_queue == 0 {
            return bad("pipeline.capture_queue", "must be at least 1");
        }
        if self.pipeline.output_queue == 0 {
            return bad("pipeline.output_queue", "must be at least 1");
        }
        if !gt(self.pipeline.stats_every_s, 0.0) {
            return bad("pipeline.stats_every_s", "must be > 0");
        }
        if !ge(self.pipeline.max_seconds, 0.0) {
            return bad("pipeline.max_seconds", "must be >= 0");
        }
        if self.replay.capacity < 8 {
            return bad("replay.capacity", "must be at least 8");
        }
        if !(0.0..=1.0).contains(&self.replay.recent_fraction) {
            return bad("replay.recent_fraction", "must be in 0..=1");
        }
        if !(0.0..0.9).contains(&self.replay.probe_fraction) || self.replay.probe_fraction == 0.0 {
            return bad("replay.probe_fraction", "must be in (0, 0.9)");
        }
        let t = &self.trigger;
        if !(t.ema_alpha > 0.0 && t.ema_alpha <= 1.0) {
            return bad("trigger.ema_alpha", "must be in (0, 1]");
        }
        if t.drift && t.baseline_frames == 0 {
            return bad("trigger.baseline_frames", "must be at least 1");
        }
        if !ge(t.every_seconds, 0.0) {
            return bad("trigger.every_seconds", "must be >= 0");
        }
        for d in &t.daily_utc {
            if crate::trigger::parse_hhmm(d).is_none() {
                return bad("trigger.daily_utc", &format!("{d:?} is not HH:MM (UTC)"));
            }
        }
        if t.min_replay < 2 || t.min_replay > self.replay.capacity {
            return bad(
                "trigger.min_replay",
                "must be at least 2 and at most replay.capacity",
            );
        }
        let b = &self.budget;
        if !(b.duty_cycle > 0.0 && b.duty_cycle <= 1.0) {
            return bad("budget.duty_cycle", "must be in (0, 1]");
        }
        if !ge(b.round_seconds, 0.0) {
            return bad("budget.round_seconds", "must be >= 0");
        }
        if !(b.temperature_ceiling_c >= 0.0 && b.temperature_hysteresis_c >= 0.0) {
            return bad("budget.temperature_ceiling_c", "must be >= 0");
        }
        if !(0..=19).contains(&b.nice) {
            return bad("budget.nice", "must be in 0..=19");
        }
        let g = &self.gate;
        if !ge(g.max_anchor_drop, 0.0) {
            return bad("gate.max_anchor_drop", "must be >= 0");
        }
        if !(0.0..=1.0).contains(&g.min_agreement) {
            return bad("gate.min_agreement", "must be in 0..=1");
        }
        if g.max_failures == 0 {
            return bad("gate.max_failures", "must be at least 1");
        }
        if self.engine.inference_threads == 0 || self.engine.train_threads == 0 {
            return bad("engine", "thread counts must be at least 1");
        }
        self.engine_plan(path)?;
        for (key, ranges) in [
            ("fault.inference_errors", &self.fault.inference_errors),
            ("fault.inference_stalls", &self.fault.inference_stalls),
        ] {
            if ranges.iter().any(|[a, b]| a > b) {
                return bad(key, "each range is [FROM, TO] with FROM <= TO");
            }
        }
        if !self.metrics.listen.is_empty() {
            match self.metrics.listen.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(_) => {
                    return bad(
                        "metrics.listen",
                        "must be a loopback address (127.0.0.1:PORT); put a proxy in front to expose it",
                    )
                }
                Err(_) => return bad("metrics.listen", "not an address like 127.0.0.1:9464"),
            }
        }
        self.adapt_config(path)?;
        Ok(())
    }
}
