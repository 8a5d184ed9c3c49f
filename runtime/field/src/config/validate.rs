//! Range checks of a parsed [`RunConfig`]: errors name the file and the key.

use std::path::Path;

use super::{ge, gt, RunConfig, SourceKind};
use crate::error::{FieldError, Result};

/// Upper bounds of the run config's size-like keys, checked when the config is read (before
/// they size a queue, the replay buffer or a thread pool); docs/RELIABILITY.md lists them.
pub mod bounds {
    /// `pipeline.capture_queue` (frames, each held at its decoded size).
    pub const MAX_CAPTURE_QUEUE: usize = 1024;
    /// `pipeline.output_queue` (predictions: small fixed-size records).
    pub const MAX_OUTPUT_QUEUE: usize = 65_536;
    /// `replay.capacity` (frames; each is held at the model's input size).
    pub const MAX_REPLAY: usize = 65_536;
    /// The longest time any time key may give (about 31 years): every time key becomes a
    /// `Duration`, which holds at most about 5.8e11 years and panics beyond.
    pub const MAX_SECONDS: f64 = 1e9;
    /// `engine.inference_threads`, `engine.train_threads`.
    pub const MAX_THREADS: usize = 256;
    /// `source.max_bad_frames` (bad frames in a row before the run stops).
    pub const MAX_BAD_FRAMES: u64 = 1_000_000;
    /// `pipeline.shutdown_s` (seconds from SIGINT/SIGTERM to a forced exit).
    pub const MAX_SHUTDOWN_S: f64 = 3600.0;
    /// `engine.gpu_memory_mb` (MiB: 1 TiB, beyond any GPU; 0: no limit).
    pub const MAX_GPU_MEMORY_MB: u64 = 1 << 20;
    /// `engine.trt_cache_max_mb` (MiB; 0: no bound).
    pub const MAX_TRT_CACHE_MB: u64 = 1 << 20;
}

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
        use bounds::*;
        // Times become Durations: an infinite or astronomically long one is refused here
        // (NaN and negative values by the checks of each key below).
        let fps_period = if self.source.fps > 0.0 {
            1.0 / self.source.fps
        } else {
            0.0
        };
        for (key, secs) in [
            ("source.fps", fps_period),
            ("pipeline.stats_every_s", self.pipeline.stats_every_s),
            ("pipeline.max_seconds", self.pipeline.max_seconds),
            ("trigger.every_seconds", self.trigger.every_seconds),
            ("budget.round_seconds", self.budget.round_seconds),
            ("engine.retry_s", self.engine.retry_s),
            (
                "engine.inference_deadline_ms",
                self.engine.inference_deadline_ms / 1e3,
            ),
        ] {
            if secs.is_infinite() || secs.abs() > MAX_SECONDS {
                return bad(
                    key,
                    &format!("gives {secs} s; times must be within {MAX_SECONDS} s"),
                );
            }
        }
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                bad(key, &format!("is {v}; must be {lo}..={hi}"))
            }
        };
        range(
            "pipeline.capture_queue",
            self.pipeline.capture_queue,
            1,
            MAX_CAPTURE_QUEUE,
        )?;
        range(
            "pipeline.output_queue",
            self.pipeline.output_queue,
            1,
            MAX_OUTPUT_QUEUE,
        )?;
        range("replay.capacity", self.replay.capacity, 8, MAX_REPLAY)?;
        if !(1..=MAX_BAD_FRAMES).contains(&self.source.max_bad_frames) {
            return bad(
                "source.max_bad_frames",
                &format!(
                    "is {}; must be 1..={MAX_BAD_FRAMES}",
                    self.source.max_bad_frames
                ),
            );
        }
        let e = &self.engine;
        range(
            "engine.inference_threads",
            e.inference_threads,
            1,
            MAX_THREADS,
        )?;
        range("engine.train_threads", e.train_threads, 1, MAX_THREADS)?;
        for (key, v, hi, zero) in [
            (
                "engine.gpu_memory_mb",
                e.gpu_memory_mb,
                MAX_GPU_MEMORY_MB,
                "no limit",
            ),
            (
                "engine.trt_cache_max_mb",
                e.trt_cache_max_mb,
                MAX_TRT_CACHE_MB,
                "no bound",
            ),
        ] {
            if v > hi {
                return bad(key, &format!("is {v} MiB; must be 0..={hi} (0: {zero})"));
            }
        }
        if !gt(self.pipeline.stats_every_s, 0.0) {
            return bad("pipeline.stats_every_s", "must be > 0");
        }
        let shutdown = self.pipeline.shutdown_s;
        if !(gt(shutdown, 0.0) && shutdown <= MAX_SHUTDOWN_S) {
            return bad(
                "pipeline.shutdown_s",
                &format!("is {shutdown}; must be in (0, {MAX_SHUTDOWN_S}]"),
            );
        }
        if !ge(self.pipeline.max_seconds, 0.0) {
            return bad("pipeline.max_seconds", "must be >= 0");
        }
        if !(0.0..=1.0).contains(&self.replay.recent_fraction) {
            return bad("replay.recent_fraction", "must be in 0..=1");
        }
        if !(0.0..0.9).contains(&self.replay.probe_fraction) || self.replay.probe_fraction == 0.0 {
            return bad("replay.probe_fraction", "must be in (0, 0.9)");
        }
        let t = &self.trigger;
        if !(t.drift_sigmas >= 0.0 && t.drift_sigmas <= 1000.0) {
            return bad("trigger.drift_sigmas", "must be in [0, 1000]");
        }
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
        let r = &self.recovery;
        // Episodes open only on a drift trigger: without one the section has no effect.
        if r.enabled && t.drift {
            if self.replay.recent_capacity() < 2 {
                return bad(
                    "recovery.enabled",
                    "episodes train on the replay's recent part: set replay.recent_fraction > 0, or enabled = false",
                );
            }
            let ring = self.replay.recent_capacity();
            if r.arm_frames < 2 || r.arm_frames as usize > ring {
                return bad(
                    "recovery.arm_frames",
                    &format!(
                        "is {}; must be 2..={ring}, the replay's recent part (replay.capacity x replay.recent_fraction): lower it or raise replay.capacity",
                        r.arm_frames
                    ),
                );
            }
            range("recovery.max_rounds", r.max_rounds as usize, 1, 10_000)?;
            range("recovery.max_rollbacks", r.max_rollbacks as usize, 1, 100)?;
            range(
                "recovery.round_steps",
                r.round_steps,
                0,
                fieldtune_adapt::recipe::bounds::MAX_STEPS,
            )?;
            if !ge(r.min_gain, 0.0) {
                return bad("recovery.min_gain", "must be >= 0");
            }
        }
        let b = &self.budget;
        // The rest after a round is busy * (1 - d) / d: at least 1/1000 keeps it a Duration.
        if !(0.001..=1.0).contains(&b.duty_cycle) {
            return bad("budget.duty_cycle", "must be in 0.001..=1");
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
        if !(g.agreement_waiver_spread >= 0.0 && g.agreement_waiver_spread <= 10.0) {
            return bad("gate.agreement_waiver_spread", "must be in 0..=10 (nats)");
        }
        if !(0.0..=1.0).contains(&g.min_agreement) {
            return bad("gate.min_agreement", "must be in 0..=1");
        }
        if g.max_failures == 0 {
            return bad("gate.max_failures", "must be at least 1");
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
        if self.fleet.enabled() {
            if let Err((key, why)) = self.fleet.check() {
                return bad(&format!("fleet.{key}"), &why);
            }
        }
        self.adapt_config(path)?;
        Ok(())
    }
}

impl RunConfig {
    /// Refuses an `[output] path` or `[events] path` that would write over one of the run's
    /// inputs (the model, its files, the anchors, the frame folders, the config file) or
    /// state files, by path or by inode. Call after paths are resolved and overrides applied.
    pub fn check_outputs(&self, config_path: &Path) -> Result<()> {
        let state = |n: &str| self.state_dir.join(n);
        let mut inputs: Vec<std::path::PathBuf> = vec![
            config_path.to_path_buf(),
            self.model.clone(),
            self.model.join("model.onnx"),
            self.model.join("model.toml"),
            self.anchors_dir(),
            state(crate::store::SOURCE),
            state(crate::store::LAST_GOOD),
            state(crate::store::PREVIOUS),
            state("summary.json"),
        ];
        inputs.extend(self.source.paths.iter().cloned());
        let events = self.events_path();
        let refs: Vec<&Path> = inputs.iter().map(|p| p.as_path()).collect();
        let fail = |key: &str, e: fieldtune_adapt::AdaptError| FieldError::Config {
            path: config_path.into(),
            key: Some(key.into()),
            reason: e.to_string(),
        };
        fieldtune_adapt::fsutil::refuse_overwrite(&events, &refs)
            .map_err(|e| fail("events.path", e))?;
        if !matches!(self.output.path.as_str(), "-" | "none" | "") {
            let mut with_events = refs.clone();
            with_events.push(&events);
            fieldtune_adapt::fsutil::refuse_overwrite(Path::new(&self.output.path), &with_events)
                .map_err(|e| fail("output.path", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_keys_are_checked_naming_the_key() {
        let head = "model = \"m\"\n[source]\npaths = [\"d\"]\n[fleet]\n";
        let ok = RunConfig::from_toml(
            &format!("{head}superlink = \"127.0.0.1:9092\"\ninsecure = true\nsend = \"fedbn\""),
            Path::new("run.toml"),
        )
        .unwrap();
        assert!(ok.fleet.enabled());
        assert_eq!(ok.fleet.send, crate::config::SendSet::Fedbn);
        for (body, key, why) in [
            (
                "superlink = \"10.0.0.5:9092\"\ninsecure = true",
                "fleet.superlink",
                "loopback",
            ),
            (
                "superlink = \"link:9092\"\nheartbeat_s = 0.0",
                "fleet.heartbeat_s",
                "outside",
            ),
            (
                "superlink = \"link:9092\"\nsend = \"some\"",
                "send",
                "unknown variant",
            ),
            (
                "superlink = \"link:9092\"\nclock = 1",
                "clock",
                "unknown field",
            ),
        ] {
            let e = RunConfig::from_toml(&format!("{head}{body}"), Path::new("run.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(why), "{body}: {e}");
        }
        // No [fleet], or an empty superlink: no fleet and nothing checked.
        let off = RunConfig::from_toml(head, Path::new("run.toml")).unwrap();
        assert!(!off.fleet.enabled());
    }

    #[test]
    fn size_keys_beyond_their_bound_are_refused_naming_the_key() {
        let head = "model = \"m\"\n[source]\npaths = [\"d\"]\n";
        for (table, key, value) in [
            ("pipeline", "capture_queue", "4611686018427387904"),
            ("pipeline", "output_queue", "4611686018427387904"),
            ("replay", "capacity", "4611686018427387904"),
            ("replay", "capacity", "100000000"),
            ("engine", "train_threads", "100000"),
            ("engine", "inference_threads", "0"),
            ("source", "max_bad_frames", "0"),
            ("source", "max_bad_frames", "4611686018427387904"),
            ("pipeline", "shutdown_s", "0.0"),
            ("pipeline", "shutdown_s", "1e300"),
            ("pipeline", "shutdown_s", "nan"),
            ("engine", "gpu_memory_mb", "1048577"),
            ("engine", "trt_cache_max_mb", "4611686018427387904"),
        ] {
            let text = if table == "source" {
                format!("{head}{key} = {value}\n")
            } else {
                format!("{head}[{table}]\n{key} = {value}\n")
            };
            let e = RunConfig::from_toml(&text, Path::new("run.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{table}.{key}")) && e.contains("run.toml"),
                "{table}.{key} = {value}: {e}"
            );
        }
        let ok = format!("{head}[replay]\ncapacity = {}\n", bounds::MAX_REPLAY);
        RunConfig::from_toml(&ok, Path::new("run.toml")).expect("the bound itself is allowed");
        let ok = format!(
            "{head}[engine]\ngpu_memory_mb = {}\ntrt_cache_max_mb = 0\n",
            bounds::MAX_GPU_MEMORY_MB
        );
        RunConfig::from_toml(&ok, Path::new("run.toml")).expect("the bounds themselves");
    }

    #[test]
    fn recovery_keys_are_checked_only_where_drift_opens_episodes() {
        // A small replay (recent part 32 frames) under the default arm_frames (256).
        let head = "model = \"m\"\n[source]\npaths = [\"d\"]\n[replay]\ncapacity = 64\n[trigger]\nmin_replay = 32\n";
        let off = format!("{head}drift = false\nevery_frames = 40\n");
        RunConfig::from_toml(&off, Path::new("run.toml"))
            .expect("without drift triggers [recovery] has no effect and is not checked");
        let on = format!("{head}drift = true\n");
        let e = RunConfig::from_toml(&on, Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recovery.arm_frames")
                && e.contains("2..=32")
                && e.contains("replay.capacity"),
            "{e}"
        );
        let fixed = format!("{head}drift = true\n[recovery]\narm_frames = 32\n");
        RunConfig::from_toml(&fixed, Path::new("run.toml")).expect("arm_frames within the ring");
    }

    #[test]
    fn outputs_on_the_model_config_or_state_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("model.onnx"), b"onnx").unwrap();
        std::fs::hard_link(model.join("model.onnx"), d.path().join("link.onnx")).unwrap();
        let cfg_path = d.path().join("run.toml");
        for (table, target) in [
            ("output", "m/model.onnx"),
            ("output", "link.onnx"),
            ("output", "run.toml"),
            ("output", "field-state/last-good.safetensors"),
            ("output", "field-state/events.jsonl"),
            ("events", "m/model.onnx"),
        ] {
            std::fs::write(
                &cfg_path,
                format!(
                    "model = \"m\"\n[source]\npaths = [\"d\"]\n[{table}]\npath = \"{target}\"\n"
                ),
            )
            .unwrap();
            let e = RunConfig::load(&cfg_path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{table}.path")) && e.contains("would overwrite"),
                "{table}.path = {target}: {e}"
            );
        }
        assert_eq!(std::fs::read(model.join("model.onnx")).unwrap(), b"onnx");
        std::fs::write(
            &cfg_path,
            "model = \"m\"\n[source]\npaths = [\"d\"]\n[output]\npath = \"preds.jsonl\"\n",
        )
        .unwrap();
        RunConfig::load(&cfg_path).expect("an output of its own is fine");
    }
}
