//! The sections of [`RunConfig`](super::RunConfig): one type per TOML table, each with its
//! defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[fleet]`: this device as a Flower SuperNode (docs/FLEET.md "In `fieldtune run`"): the
/// SuperLink, TLS, node key, heartbeat and what a reply sends; the keys of `fieldtune fleet`'s
/// link. An empty `superlink` (the default) leaves the run out of any fleet.
pub type FleetConfig = fieldtune_fleet::LinkConfig;
pub use fieldtune_fleet::SendSet;

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
    /// Bad frames (unreadable, truncated or corrupt files) in a row before the run stops
    /// with an error naming the last one; fewer are skipped, counted and logged
    /// (`frame_skipped`).
    pub max_bad_frames: u64,
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
            max_bad_frames: 100,
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
    /// Seconds from the first SIGINT/SIGTERM to a forced exit (non-zero, with a message)
    /// when the run has not stopped by then (a blocked read, a long engine call).
    pub shutdown_s: f64,
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
            shutdown_s: 10.0,
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

impl ReplayConfig {
    /// Frames held by the recent part (what an episode of `[recovery]` trains on).
    pub fn recent_capacity(&self) -> usize {
        ((self.capacity as f64 * self.recent_fraction).round() as usize).min(self.capacity)
    }
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
pub struct RoundTriggerConfig {
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
    /// With > 0, each drift threshold is at least this many standard deviations of the EMA's
    /// noise on the baseline frames (0: the fixed thresholds alone).
    pub drift_sigmas: f64,
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

impl Default for RoundTriggerConfig {
    fn default() -> Self {
        RoundTriggerConfig {
            every_frames: 0,
            drift: true,
            ema_alpha: 0.01,
            baseline_frames: 300,
            entropy_rise: 0.05,
            confidence_drop: 0.02,
            drift_sigmas: 0.0,
            every_seconds: 0.0,
            daily_utc: Vec::new(),
            manual_signal: true,
            cooldown_frames: 300,
            min_replay: 256,
        }
    }
}

/// `[recovery]`: what a drift trigger starts (docs/FIELD.md "Recovery after a shift"). A drift
/// trigger opens an episode. Its first round waits until `arm_frames` frames have arrived
/// after the trigger, then trains and probes on the frames seen since the trigger only. While
/// the episode's rounds commit with a probe-objective gain of at least `min_gain`, the next
/// round follows at once (no cooldown) on every post-trigger frame the replay holds, with the
/// optimizer state and step count carried over; a rolled-back round is retried on more
/// frames. The episode settles when a round gains less, after `max_rollbacks` rollbacks in a
/// row, or after `max_rounds`; only then is a new drift baseline measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Episodes on drift. false: a drift round is like the others (whole replay buffer,
    /// cooldown, fresh optimizer).
    pub enabled: bool,
    /// Frames after the drift trigger before the episode's first round starts.
    pub arm_frames: u64,
    /// Probe-objective gain (nats) below which a committed round ends the episode.
    pub min_gain: f64,
    /// Rounds per episode at most.
    pub max_rounds: u32,
    /// Rolled-back rounds in a row that settle the episode (each retry waits for
    /// `arm_frames` more post-trigger frames).
    pub max_rollbacks: u32,
    /// Steps of each episode round (0: the `[adapt]` steps).
    pub round_steps: usize,
    /// Optimizer state and step count carry from a committed round to the next one of the
    /// episode (reset on a rollback, a new episode or a reset to the source weights).
    pub carry_optimizer: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            enabled: true,
            arm_frames: 256,
            min_gain: 0.002,
            max_rounds: 30,
            max_rollbacks: 2,
            round_steps: 0,
            carry_optimizer: true,
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
    /// The agreement check is waived when the new model's probe marginal entropy exceeds the
    /// live model's by more than this (nats): the live model has collapsed onto a few classes
    /// on this scene, so its predictions are no reference (anchors, objective and collapse
    /// checks still apply). 0: never waived.
    pub agreement_waiver_spread: f64,
    /// The entropy of the probe's mean prediction may fall by at most this (nats): guards
    /// against collapse onto a few classes. The default is `fieldtune adapt`'s collapse
    /// threshold too (fieldtune_adapt::collapse).
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
            agreement_waiver_spread: 0.25,
            max_marginal_entropy_drop: fieldtune_adapt::collapse::MAX_MARGINAL_ENTROPY_DROP,
            max_failures: 3,
            no_gain_tolerance: 0.02,
        }
    }
}

/// `[engine]`: the engine plan per role (see [`EnginePlan`](super::EnginePlan)) and the
/// threads of the two engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// What serves: `auto`, `tract`, `ort:cpu`, `ort:cuda`, `ort:tensorrt,cuda` (providers in
    /// priority order). `auto`: the board profile's `[engine]` where `budget.board` names
    /// one, limited to the providers the ONNX Runtime library has; else ONNX Runtime on CPU
    /// when its library loads, else tract. `--engine tract|ort` overrides `auto`.
    pub inference: String,
    /// What trains in a round: same forms as `inference`.
    pub train: String,
    /// Where serving goes when the inference engine cannot start, a run returns an error, or
    /// the deadline is missed: `tract` or `none`.
    pub fallback: String,
    /// The engine of the round after a round whose train step failed: `ort:cpu`, `tract`, or
    /// empty (the same engine again).
    pub train_fallback: String,
    /// Seconds between probes of a failed primary during fallback (> 0).
    pub retry_s: f64,
    /// Per-frame deadline of the primary (ms; 0: none). `deadline_misses` misses in a row
    /// move serving to the fallback.
    pub inference_deadline_ms: f64,
    /// Missed deadlines in a row that count as a failure (>= 1).
    pub deadline_misses: u32,
    /// Folder of TensorRT's engine and timing caches (empty: none); must be writable.
    pub trt_cache: PathBuf,
    /// Bound of `trt_cache` (MiB; 0: none): at start and after each commit the oldest files
    /// go until the folder fits.
    pub trt_cache_max_mb: u64,
    /// TensorRT builds FP16 engines for serving.
    pub trt_fp16: bool,
    /// Serve from weight-stripped TensorRT engines refitted at each new version instead of
    /// rebuilt (needs `trt_cache`, ONNX Runtime >= 1.18.1 and TensorRT 10).
    pub trt_refit: bool,
    /// ONNX Runtime CUDA arena limit (MiB; 0: the library's default), for every CUDA and
    /// TensorRT session of the run (inference and train). Counts against the board's memory
    /// on unified-memory Jetsons. CPU and tract sessions ignore it.
    pub gpu_memory_mb: u64,
    /// Threads per operator of the inference session.
    pub inference_threads: usize,
    /// Threads per operator of the train step (`fieldtune --threads N run` overrides it).
    pub train_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            inference: "auto".into(),
            train: "auto".into(),
            fallback: "none".into(),
            train_fallback: String::new(),
            retry_s: 10.0,
            inference_deadline_ms: 0.0,
            deadline_misses: 3,
            trt_cache: PathBuf::new(),
            trt_cache_max_mb: 2048,
            trt_fp16: false,
            trt_refit: false,
            gpu_memory_mb: 0,
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

/// `[fault]`: deliberate faults, test and demonstration aids. Rounds are 1-based and
/// counted in this process; frames are the source's frame ids.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Rounds whose learning rate is NaN.
    pub nan_rounds: Vec<u64>,
    /// Rounds that train on permuted anchor labels (every class relabeled as another).
    pub label_noise_rounds: Vec<u64>,
    /// Frame ranges `[FROM, TO]` (inclusive) where the primary inference session's run
    /// returns an error.
    pub inference_errors: Vec<[u64; 2]>,
    /// Frame ranges `[FROM, TO]` where the primary inference session's run first sleeps
    /// `inference_stall_ms`.
    pub inference_stalls: Vec<[u64; 2]>,
    /// Sleep of a stalled run (ms).
    pub inference_stall_ms: u64,
    /// Rounds whose train step returns an error.
    pub train_error_rounds: Vec<u64>,
}

impl FaultConfig {
    /// Whether the primary inference session gets the fault wrapper.
    pub fn wraps_inference(&self) -> bool {
        !self.inference_errors.is_empty() || !self.inference_stalls.is_empty()
    }

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
