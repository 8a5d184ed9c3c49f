//! `RunConfig`: the TOML file of `fieldtune run --config FILE`. Every key has a documented
//! default ([`RunConfig::default_toml`] prints them all); unknown keys are errors naming the
//! file and key. Relative paths are relative to the config file's folder.

use std::path::{Path, PathBuf};

use fieldtune_adapt::AdaptConfig;
use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Result};

mod engine_plan;
mod example;
mod sections;
mod validate;

pub use engine_plan::{EnginePlan, EngineSpec, Role};
pub use example::EXAMPLE;
pub use sections::*;
pub use validate::bounds;

/// The whole run configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Model folder (model.onnx + model.toml). Required.
    pub model: PathBuf,
    /// Labeled anchors of the source domain (class folders). Default: `<model>/anchors`.
    #[serde(default)]
    pub anchors: Option<PathBuf>,
    /// Checkpoints (`source.safetensors`, `last-good.safetensors`, `previous.safetensors`),
    /// the event log and `summary.json`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub source: SourceConfig,
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub replay: ReplayConfig,
    #[serde(default)]
    pub trigger: RoundTriggerConfig,
    #[serde(default)]
    pub recovery: RecoveryConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    /// Settings of one round: a recipe of `fieldtune adapt` plus overrides (same keys as
    /// `fieldtune adapt --print-config`). Default: `recipe = "uda-im"`, `steps = 100`.
    #[serde(default = "default_adapt")]
    pub adapt: toml::Table,
    #[serde(default)]
    pub gate: GateConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub fault: FaultConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("field-state")
}

fn default_adapt() -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("recipe".into(), "uda-im".into());
    t.insert("steps".into(), 100.into());
    t
}

impl RunConfig {
    /// Reads, resolves relative paths against the file's folder, and validates.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = fieldtune_frames::read_regular_string(path)?;
        let mut cfg = Self::from_toml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        cfg.resolve_paths(base);
        cfg.check_outputs(path)?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<RunConfig> {
        let de = toml::Deserializer::new(text);
        let cfg: RunConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // The key at fault when serde knows it (a wrong type or value).
            let key = Some(e.path().to_string()).filter(|k| k != "." && !k.is_empty());
            let e = e.into_inner();
            let msg = e.message().trim().to_string();
            FieldError::Config {
                path: path.into(),
                key,
                reason: match e.span() {
                    Some(span) => {
                        let line = text[..span.start].lines().count().max(1);
                        format!("line {line}: {msg}")
                    }
                    None => msg,
                },
            }
        })?;
        let mut cfg = cfg;
        cfg.apply_board(text, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Fills `[budget]` keys the file leaves out from the board profile it names.
    fn apply_board(&mut self, text: &str, path: &Path) -> Result<()> {
        if self.budget.board.is_empty() {
            return Ok(());
        }
        let profile = fieldtune_board_profile::Profile::load(&self.budget.board).map_err(|e| {
            FieldError::Config {
                path: path.into(),
                key: Some("budget.board".into()),
                reason: e.to_string(),
            }
        })?;
        let given: Vec<String> = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| t.get("budget").and_then(|b| b.as_table()).cloned())
            .map(|b| b.keys().cloned().collect())
            .unwrap_or_default();
        let unset = |k: &str| !given.iter().any(|g| g == k);
        let b = &mut self.budget;
        if unset("adapt_memory_mb") {
            b.adapt_memory_mb = profile.adaptation.memory_budget_mb;
        }
        if unset("duty_cycle") {
            b.duty_cycle = f64::from(profile.adaptation.duty_cycle_percent) / 100.0;
        }
        if unset("temperature_ceiling_c") {
            b.temperature_ceiling_c = f64::from(profile.thermal.ceiling_c);
        }
        if unset("temperature_hysteresis_c") {
            b.temperature_hysteresis_c =
                f64::from(profile.thermal.ceiling_c - profile.thermal.resume_c()).max(0.0);
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model);
        if let Some(a) = &mut self.anchors {
            fix(a);
        }
        fix(&mut self.state_dir);
        self.source.paths.iter_mut().for_each(fix);
        if let Some(p) = &mut self.events.path {
            fix(p);
        }
        fix(&mut self.engine.trt_cache);
        if self.fleet.enabled() {
            fix(&mut self.fleet.key);
            if let Some(ca) = &mut self.fleet.ca {
                fix(ca);
            }
        }
        if !matches!(self.output.path.as_str(), "-" | "none" | "") {
            let mut p = PathBuf::from(&self.output.path);
            fix(&mut p);
            self.output.path = p.display().to_string();
        }
    }

    /// The anchor folder.
    pub fn anchors_dir(&self) -> PathBuf {
        self.anchors
            .clone()
            .unwrap_or_else(|| self.model.join("anchors"))
    }

    /// The event log file.
    pub fn events_path(&self) -> PathBuf {
        self.events
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("events.jsonl"))
    }

    /// The round settings: `[adapt]` over its recipe's preset.
    pub fn adapt_config(&self, path: &Path) -> Result<AdaptConfig> {
        let text = toml::to_string(&self.adapt).map_err(|e| FieldError::Config {
            path: path.into(),
            key: Some("adapt".into()),
            reason: e.to_string(),
        })?;
        AdaptConfig::from_toml(&text, path).map_err(|e| FieldError::Config {
            path: path.into(),
            key: Some("adapt".into()),
            reason: e.to_string(),
        })
    }

    /// The config with every key at its resolved value, as TOML (the `[adapt]` table shows
    /// every round setting of its recipe).
    pub fn to_toml(&self, path: &Path) -> Result<String> {
        let mut full = self.clone();
        let adapt = self.adapt_config(path)?;
        full.adapt = toml::Table::try_from(&adapt).map_err(|e| FieldError::Config {
            path: path.into(),
            key: Some("adapt".into()),
            reason: e.to_string(),
        })?;
        toml::to_string_pretty(&full).map_err(|e| FieldError::Config {
            path: path.into(),
            key: None,
            reason: e.to_string(),
        })
    }
}

/// `a >= b`, false for NaN (range checks must refuse NaN).
pub(crate) fn ge(a: f64, b: f64) -> bool {
    a >= b
}

/// `a > b`, false for NaN.
pub(crate) fn gt(a: f64, b: f64) -> bool {
    a > b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_profile_fills_the_budget_keys_the_file_leaves_out() {
        let head = "model = \"m\"\n[source]\npaths = [\"d\"]\n";
        let text = format!("{head}[budget]\nboard = \"jetson-orin-nano-8gb\"\nduty_cycle = 0.3\n");
        let c = RunConfig::from_toml(&text, Path::new("run.toml")).expect("parses");
        assert_eq!(c.budget.adapt_memory_mb, 2048);
        assert_eq!(c.budget.duty_cycle, 0.3, "the file's own key wins");
        assert_eq!(c.budget.temperature_ceiling_c, 80.0);
        assert_eq!(c.budget.temperature_hysteresis_c, 10.0);
        let bad = format!("{head}[budget]\nboard = \"no-such-board\"\n");
        let err = RunConfig::from_toml(&bad, Path::new("run.toml")).expect_err("unknown board");
        let msg = err.to_string();
        assert!(
            msg.contains("budget.board") && msg.contains("no-such-board"),
            "{msg}"
        );
    }

    #[test]
    fn example_parses_and_equals_the_defaults() {
        let c = RunConfig::from_toml(EXAMPLE, Path::new("example.toml")).unwrap();
        assert_eq!(c.pipeline, PipelineConfig::default());
        assert_eq!(c.trigger, RoundTriggerConfig::default());
        assert_eq!(c.budget, BudgetConfig::default());
        assert_eq!(c.gate, GateConfig::default());
        assert_eq!(c.replay, ReplayConfig::default());
        assert_eq!(c.adapt, default_adapt());
        assert_eq!(c.adapt_config(Path::new("x")).unwrap().steps, 100);
        let minimal = "model = \"m\"\n[source]\npaths = [\"d\"]\n";
        let m = RunConfig::from_toml(minimal, Path::new("m.toml")).unwrap();
        assert_eq!(
            m.source,
            SourceConfig {
                paths: vec!["d".into()],
                ..SourceConfig::default()
            }
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = RunConfig::from_toml(
            "model = \"m\"\n[source]\npaths = [\"d\"]\n[gate]\nmax_anchor_dorp = 1\n",
            Path::new("run.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("run.toml") && e.contains("max_anchor_dorp"),
            "{e}"
        );
        let e = RunConfig::from_toml(
            "model = \"m\"\n[source]\npaths = [\"d\"]\n[metrics]\nlisten = \"0.0.0.0:9464\"\n",
            Path::new("run.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("loopback"),
            "{e}"
        );
        let e = RunConfig::from_toml(
            "model = \"m\"\n[source]\npaths = [\"d\"]\n[adapt]\nstepz = 3\n",
            Path::new("run.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("run.toml") && e.contains("stepz"), "{e}");
        let e = RunConfig::from_toml("model = \"m\"\n[source]\n", Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.paths"), "{e}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run.toml");
        std::fs::write(
            &p,
            "model = \"m\"\n[source]\npaths = [\"d\"]\n[output]\npath = \"o.jsonl\"\n",
        )
        .unwrap();
        let c = RunConfig::load(&p).unwrap();
        assert_eq!(c.model, d.path().join("m"));
        assert_eq!(c.source.paths[0], d.path().join("d"));
        assert_eq!(c.state_dir, d.path().join("field-state"));
        assert_eq!(
            c.output.path,
            d.path().join("o.jsonl").display().to_string()
        );
        assert_eq!(c.events_path(), d.path().join("field-state/events.jsonl"));
    }

    #[test]
    fn to_toml_round_trips() {
        let c = RunConfig::from_toml(EXAMPLE, Path::new("e.toml")).unwrap();
        let text = c.to_toml(Path::new("e.toml")).unwrap();
        assert!(text.contains("batch_unlabeled"), "{text}");
        let back = RunConfig::from_toml(&text, Path::new("e.toml")).unwrap();
        assert_eq!(
            back.adapt_config(Path::new("x")).unwrap(),
            c.adapt_config(Path::new("x")).unwrap()
        );
    }
}
