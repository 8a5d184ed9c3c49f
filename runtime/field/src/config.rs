//! `RunConfig`: the TOML file of `fieldtune run --config FILE`. Every key has a documented
//! default ([`RunConfig::default_toml`] prints them all); unknown keys are errors naming the
//! file and key. Relative paths are relative to the config file's folder.

use std::path::{Path, PathBuf};

use fieldtune_adapt::AdaptConfig;
use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Result};

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
    pub trigger: TriggerConfig,
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

/// Where frames come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Image folders played one after the other.
    #[default]
    Folder,
    /// A GStreamer pipeline ending in `appsink name=sink` (feature `gstreamer`).
    Gstreamer,
}

/// Play order of an image folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// By path.
    #[default]
    Sorted,
    /// A seeded permutation per folder (class folders would otherwise play class by class).
    Shuffled,
}

/// `[source]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `folder` or `gstreamer`.
    pub kind: SourceKind,
    /// folder: image folders (flat, or class folders whose names give labels used only for
    /// scoring), played one after the other.
    pub paths: Vec<PathBuf>,
    /// folder: `sorted` or `shuffled`.
    pub order: Order,
    /// folder: seed of the shuffled order.
    pub seed: u64,
    /// folder: frames per second (0: as fast as the pipeline takes them).
    pub fps: f64,
    /// folder: start again after the last folder.
    #[serde(rename = "loop")]
    pub looping: bool,
    /// folder: play at most this many images of each folder (0: all).
    pub limit: usize,
    /// folder: decode every image at start (no decoding, and no allocation, per frame;
    /// memory grows with the folder).
    pub preload: bool,
    /// gstreamer: the pipeline, ending in `appsink name=sink` (caps are set by fieldtune:
    /// GRAY8 or RGB, as the model needs).
    pub pipeline: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Folder,
            paths: Vec::new(),
            order: Order::Sorted,
            seed: 0,
            fps: 30.0,
            looping: false,
            limit: 0,
            preload: false,
            pipeline: String::new(),
        }
    }
}

/// How a frame of another size becomes the model's input size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Scale the whole frame to the model's size (aspect ratio not kept).
    #[default]
    Stretch,
    /// Crop the largest centred region with the model's aspect ratio, then scale it.
    CenterCrop,
}

/// `[input]`: frame to model input. Size, channels and normalisation come from model.toml.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `stretch` or `center-crop`.
    pub resize: Resize,
}

/// What capture does when the inference queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Drop the oldest queued frame and count it (live cameras).
    #[default]
    DropOldest,
    /// Wait for room (file playback where every frame must be seen).
    Block,
}

/// `[pipeline]`: capture -> inference -> outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Frames queued between capture and inference.
    pub capture_queue: usize,
    /// Predictions queued between inference and the output writer.
    pub output_queue: usize,
    /// `drop-oldest` or `block`.
    pub when_full: WhenFull,
    /// Stop after this many frames (0: when the source ends or on SIGINT/SIGTERM).
    pub max_frames: u64,
    /// Stop after this many seconds (0: no limit).
    pub max_seconds: f64,
    /// Seconds between `stats` events (latency, entropy, accuracy, RSS).
    pub stats_every_s: f64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            capture_queue: 4,
            output_queue: 256,
            when_full: WhenFull::DropOldest,
            max_frames: 0,
            max_seconds: 0.0,
            stats_every_s: 5.0,
        }
    }
}

/// `[output]`: one JSON line per frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// `-` for stdout, `none` for no output, else a file (appended).
    pub path: String,
    /// Add `"label"` when the source knows the frame's class (scoring only).
    pub labels: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            path: "-".into(),
            labels: true,
        }
    }
}

/// `[replay]`: unlabeled frames kept for rounds, as u8 at the model's input size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Frames held (reservoir + recent).
    pub capacity: usize,
    /// Share of the capacity that holds the most recent frames; the rest is a uniform
    /// reservoir sample of every frame seen.
    pub recent_fraction: f64,
    /// Share of a round's snapshot held out from training to judge the unlabeled objective.
    pub probe_fraction: f64,
    /// Seed of the reservoir.
    pub seed: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            capacity: 2048,
            recent_fraction: 0.5,
            probe_fraction: 0.25,
            seed: 0,
        }
    }
}

/// `[trigger]`: when a round starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    /// A round every this many frames (0: off).
    pub every_frames: u64,
    /// A round when the EMAs of prediction entropy / confidence drift from the baseline
    /// measured after the last commit.
    pub drift: bool,
    /// EMA weight of the newest frame.
    pub ema_alpha: f64,
    /// Frames averaged into the baseline after start and after each commit.
    pub baseline_frames: u64,
    /// Drift when EMA(entropy) - baseline entropy exceeds this (nats).
    pub entropy_rise: f64,
    /// Drift when baseline confidence - EMA(confidence) exceeds this.
    pub confidence_drop: f64,
    /// A round every this many seconds (0: off).
    pub every_seconds: f64,
    /// Rounds at these UTC times of day, "HH:MM".
    pub daily_utc: Vec<String>,
    /// A round on SIGUSR1 (`kill -USR1 <pid>`).
    pub manual_signal: bool,
    /// Frames that must pass between the end of a round and the next one.
    pub cooldown_frames: u64,
    /// Replay frames needed before a round may start.
    pub min_replay: usize,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            every_frames: 0,
            drift: true,
            ema_alpha: 0.01,
            baseline_frames: 300,
            entropy_rise: 0.05,
            confidence_drop: 0.02,
            every_seconds: 0.0,
            daily_utc: Vec::new(),
            manual_signal: true,
            cooldown_frames: 300,
            min_replay: 256,
        }
    }
}

/// `[budget]`: what a round may use (a board profile's values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// A board profile (a shipped name such as `jetson-orin-nano-8gb`, or a .toml file; see
    /// `fieldtune doctor --board`): its adaptation memory budget, duty cycle and thermal ceiling
    /// and resume temperature fill every key of this table that the file does not set.
    /// Empty: none.
    pub board: String,
    /// Memory a round may add to the process RSS (MiB); a round that exceeds it stops and is
    /// discarded. 0: no limit.
    pub adapt_memory_mb: u64,
    /// Largest share of wall time the round thread computes (0..1]; it sleeps in between.
    pub duty_cycle: f64,
    /// Rounds pause while the hottest thermal zone is above this (Celsius; 0: no ceiling).
    pub temperature_ceiling_c: f64,
    /// Paused rounds resume below `temperature_ceiling_c - temperature_hysteresis_c`.
    pub temperature_hysteresis_c: f64,
    /// Where the thermal zones are (`thermal_zone*/temp`, millidegrees).
    pub thermal_root: PathBuf,
    /// Wall-clock cap of one round (seconds, pauses included); the steps done so far go to
    /// the gate. 0: no cap.
    pub round_seconds: f64,
    /// Nice value of the round thread (0..19): the scheduler favours inference.
    pub nice: i32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            board: String::new(),
            adapt_memory_mb: 1024,
            duty_cycle: 1.0,
            temperature_ceiling_c: 85.0,
            temperature_hysteresis_c: 5.0,
            thermal_root: PathBuf::from("/sys/class/thermal"),
            round_seconds: 300.0,
            nice: 10,
        }
    }
}

/// `[gate]`: what a round's weights must show before they go live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Anchor accuracy may fall by at most this (fraction, 0.01 = 1 point).
    pub max_anchor_drop: f64,
    /// The unlabeled objective on the held-out probe (mean prediction entropy minus the
    /// entropy of the mean prediction, lower is better) must fall by more than this.
    pub min_objective_gain: f64,
    /// Share of probe frames on which the new model agrees with the live one.
    pub min_agreement: f64,
    /// The entropy of the probe's mean prediction may fall by at most this (nats): guards
    /// against collapse onto a few classes.
    pub max_marginal_entropy_drop: f64,
    /// Failed rounds in a row after which the live model is reset to the source weights.
    pub max_failures: u32,
    /// A round whose only failed check is the objective, and whose objective rose by at most
    /// this, is "no gain" (a model that has converged on a steady scene): discarded, but not
    /// counted toward `max_failures`. A larger rise counts. Negative: every failure counts.
    pub no_gain_tolerance: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            max_anchor_drop: 0.01,
            min_objective_gain: 0.0,
            min_agreement: 0.7,
            max_marginal_entropy_drop: 0.2,
            max_failures: 3,
            no_gain_tolerance: 0.02,
        }
    }
}

/// `[engine]`: threads of the two engines (the engine itself is `--engine`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Threads per operator of the inference session.
    pub inference_threads: usize,
    /// Threads per operator of the train step (`fieldtune --threads N run` overrides it).
    pub train_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inference_threads: 1,
            train_threads: 1,
        }
    }
}

/// When the event log is fsynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// After every event.
    Every,
    /// After round, checkpoint and lifecycle events (stats events are only written).
    #[default]
    Rounds,
    /// Never (the OS flushes).
    Never,
}

/// `[events]`: the JSON-lines event log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The log file (appended). Default: `<state_dir>/events.jsonl`.
    pub path: Option<PathBuf>,
    /// `every`, `rounds` or `never`.
    pub fsync: Fsync,
}

/// `[metrics]`: Prometheus text endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Loopback address to serve `GET /metrics` on, e.g. "127.0.0.1:9464" (empty: off).
    pub listen: String,
}

/// Deliberate faults, for tests and demonstrations of the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Poison {
    /// The round's learning rate is NaN: the train step turns the weights into NaN.
    Nan,
    /// The anchors' labels are permuted (every class relabeled as another) for the round.
    LabelNoise,
}

/// `[fault]`: rounds (1-based, counted in this process) to poison.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Rounds whose learning rate is NaN.
    pub nan_rounds: Vec<u64>,
    /// Rounds that train on permuted anchor labels (every class relabeled as another).
    pub label_noise_rounds: Vec<u64>,
}

impl FaultConfig {
    /// The poison of round `n`, if any.
    pub fn poison(&self, n: u64) -> Option<Poison> {
        if self.nan_rounds.contains(&n) {
            Some(Poison::Nan)
        } else if self.label_noise_rounds.contains(&n) {
            Some(Poison::LabelNoise)
        } else {
            None
        }
    }
}

impl RunConfig {
    /// Reads, resolves relative paths against the file's folder, and validates.
    pub fn load(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_err(path))?;
        let mut cfg = Self::from_toml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Parses and validates TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<RunConfig> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            FieldError::Config {
                path: path.into(),
                key: None,
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

/// A documented starting config (every section with its defaults), for `--print-config`
/// without `--config`.
pub const EXAMPLE: &str = r#"# fieldtune run config. Relative paths are relative to this file's folder.
model = "models/mnist-cnn"          # model folder (model.onnx + model.toml)
# anchors = "models/mnist-cnn/anchors"  # labeled source anchors; default <model>/anchors
state_dir = "field-state"           # checkpoints, events.jsonl, summary.json

[source]
kind = "folder"                     # "folder" | "gstreamer"
paths = ["data/opencv-digits"]      # folder: played one after the other
order = "sorted"                    # "sorted" | "shuffled"
seed = 0
fps = 30.0                          # 0: as fast as the pipeline takes them
loop = false
limit = 0                           # per folder (0: all)
preload = false                     # decode all images at start
pipeline = ""                       # gstreamer: "... ! appsink name=sink"

[input]
resize = "stretch"                  # "stretch" | "center-crop"

[pipeline]
capture_queue = 4
output_queue = 256
when_full = "drop-oldest"           # "drop-oldest" | "block"
max_frames = 0                      # 0: until the source ends or SIGINT/SIGTERM
max_seconds = 0.0
stats_every_s = 5.0

[output]
path = "-"                          # "-": stdout, "none", or a file
labels = true

[replay]
capacity = 2048
recent_fraction = 0.5
probe_fraction = 0.25
seed = 0

[trigger]
every_frames = 0
drift = true
ema_alpha = 0.01
baseline_frames = 300
entropy_rise = 0.05
confidence_drop = 0.02
every_seconds = 0.0
daily_utc = []                      # e.g. ["02:30"]
manual_signal = true                # SIGUSR1
cooldown_frames = 300
min_replay = 256

[budget]
board = ""                          # e.g. "jetson-orin-nano-8gb": fills the keys not set here
adapt_memory_mb = 1024
duty_cycle = 1.0
temperature_ceiling_c = 85.0
temperature_hysteresis_c = 5.0
thermal_root = "/sys/class/thermal"
round_seconds = 300.0
nice = 10

[adapt]                             # any key of `fieldtune adapt --print-config`
recipe = "uda-im"
steps = 100

[gate]
max_anchor_drop = 0.01
min_objective_gain = 0.0
min_agreement = 0.7
max_marginal_entropy_drop = 0.2
max_failures = 3
no_gain_tolerance = 0.02

[engine]
inference_threads = 1
train_threads = 1

[events]
# path = "field-state/events.jsonl"
fsync = "rounds"                    # "every" | "rounds" | "never"

[metrics]
listen = ""                         # e.g. "127.0.0.1:9464"

[fault]                             # deliberate faults (tests, demonstrations)
nan_rounds = []                     # rounds whose learning rate is NaN
label_noise_rounds = []             # rounds trained on permuted anchor labels
"#;

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
        assert_eq!(c.trigger, TriggerConfig::default());
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
