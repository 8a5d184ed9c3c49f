//! The event log: one JSON object per line, `{"t_ms": <unix ms>, "event": "<kind>", ...}`, each
//! line one [`FieldEvent`] (its variant names the kind, its fields are the line's other keys).
//!
//! Kinds: `started`, `stats`, `trigger`, `round_started`, `round_ended`, `committed`,
//! `rolled_back`, `reset_to_source`, `paused`, `resumed`, `checkpoint_quarantined`,
//! `engine_fallback`, `engine_restored`, `recovery_started`, `recovery_settled`,
//! `frame_skipped`, `fleet_node`, `fleet_message` (events/fleet.rs), `stopped`.
//! Keys are written in sorted order (serde_json's map) and numbers as serde_json prints them;
//! a non-finite number is written `null`.
//!
//! Each line is written with one `write` call on a file opened for appending. fsync policy
//! (`[events] fsync`): `rounds` (default) fsyncs after every event except `stats`, so what a
//! round did survives power loss as its checkpoint does; `every` fsyncs every line; `never`
//! leaves it to the OS. A line torn by a crash is closed with a newline when the log is
//! opened again, and readers skip lines that do not parse (counting them).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Fsync;
use crate::error::{io_err, FieldError, Result};
use crate::gate::GateVerdict;
use crate::nan::{f64_or_nan, map_f64_or_nan};
use crate::runtime::summary::RunSummary;
use crate::store::unix_ms;
use crate::trigger::Reason;

mod fleet;
pub use fleet::{FleetMessage, FleetNode};

/// One event of a run, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FieldEvent {
    /// Serving began (after resuming from the store).
    Started(Started),
    /// One stats window of the inference thread.
    Stats(Stats),
    /// A manual trigger that was not followed by a round.
    Trigger(TriggerIgnored),
    RoundStarted(RoundStarted),
    RoundEnded(RoundEnded),
    /// A round's weights passed the gate, were checkpointed and went live.
    Committed(Committed),
    /// A round's weights were discarded.
    RolledBack(RolledBack),
    /// Repeated failures: the source weights went live again.
    ResetToSource(ResetToSource),
    /// Above the temperature ceiling: rounds wait, or a running round pauses.
    Paused(Paused),
    /// Cooled below the ceiling: rounds may start.
    Resumed(Resumed),
    /// A checkpoint that did not verify was moved aside on start.
    CheckpointQuarantined(CheckpointQuarantined),
    /// A role left its planned engine (at start, on a failed run or missed deadlines, or
    /// after a failed train step).
    EngineFallback(EngineFallback),
    /// The primary inference engine answered a probe and serves again.
    EngineRestored(EngineRestored),
    /// A serving session on TensorRT: its engines were built, refitted or loaded.
    TrtEngine(TrtEngine),
    /// A drift trigger opened a recovery episode (`[recovery]`).
    RecoveryStarted(RecoveryStarted),
    /// A recovery episode ended; the drift detector measures a new baseline.
    RecoverySettled(RecoverySettled),
    /// A frame that could not be read or used was skipped (logged for the first ten skips,
    /// then at every power of two; `skipped` counts them all).
    FrameSkipped(FrameSkipped),
    /// The fleet node's link changed state (`[fleet]`).
    FleetNode(FleetNode),
    /// The fleet node answered a message (`[fleet]`).
    FleetMessage(FleetMessage),
    /// The run ended; the run's summary.
    Stopped(RunSummary),
}

impl FieldEvent {
    /// The kind, as the log's `"event"` key spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            FieldEvent::Started(_) => "started",
            FieldEvent::Stats(_) => "stats",
            FieldEvent::Trigger(_) => "trigger",
            FieldEvent::RoundStarted(_) => "round_started",
            FieldEvent::RoundEnded(_) => "round_ended",
            FieldEvent::Committed(_) => "committed",
            FieldEvent::RolledBack(_) => "rolled_back",
            FieldEvent::ResetToSource(_) => "reset_to_source",
            FieldEvent::Paused(_) => "paused",
            FieldEvent::Resumed(_) => "resumed",
            FieldEvent::CheckpointQuarantined(_) => "checkpoint_quarantined",
            FieldEvent::EngineFallback(_) => "engine_fallback",
            FieldEvent::EngineRestored(_) => "engine_restored",
            FieldEvent::TrtEngine(_) => "trt_engine",
            FieldEvent::RecoveryStarted(_) => "recovery_started",
            FieldEvent::RecoverySettled(_) => "recovery_settled",
            FieldEvent::FrameSkipped(_) => "frame_skipped",
            FieldEvent::FleetNode(_) => "fleet_node",
            FieldEvent::FleetMessage(_) => "fleet_message",
            FieldEvent::Stopped(_) => "stopped",
        }
    }

    /// The line as written to the log (newline included), stamped `t_ms`.
    pub fn to_line(&self, t_ms: u64) -> String {
        let mut obj = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        obj.insert("t_ms".into(), t_ms.into());
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        line
    }
}

/// `started`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    pub model: String,
    pub engine: String,
    pub source: String,
    pub resumed_version: u64,
    pub resumed_kind: String,
    pub resumed_round: u64,
    pub anchors: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_mb: f64,
}

/// `stats`: the last window of frames (`window_frames`) and the run so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub frames: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub fps: f64,
    pub window_frames: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_p50_ms: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_p99_ms: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub latency_max_ms: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub entropy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub confidence: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ema_entropy: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ema_confidence: f64,
    /// Only when frames carry labels.
    pub accuracy: Option<f64>,
    pub version: u64,
    pub round_active: bool,
    pub capture_dropped: u64,
    pub output_dropped: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_mb: f64,
    /// The drift limit on `ema_entropy` (baseline + threshold), once a baseline is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_entropy_limit: Option<f64>,
    /// The drift limit on `ema_confidence` (baseline - threshold), once a baseline is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_confidence_limit: Option<f64>,
}

/// `trigger`: why a manual trigger was ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TriggerIgnored {
    pub reason: Reason,
    pub ignored: String,
}

/// `round_started`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundStarted {
    pub round: u64,
    pub reason: Reason,
    pub frame: u64,
    pub train_frames: usize,
    pub probe_frames: usize,
    /// The live version the round starts from.
    pub version: u64,
    /// A deliberate fault (`[fault]`), as `Nan` or `LabelNoise`.
    pub poison: Option<String>,
    /// The oldest source frame number among the round's frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_frame: Option<u64>,
    /// The round's 1-based index in its recovery episode (absent outside episodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_round: Option<u32>,
}

/// `recovery_started`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStarted {
    /// 1-based count of episodes in this process.
    pub episode: u64,
    /// Frames classified so far.
    pub frame: u64,
    /// Source frame number of the trigger: the episode trains on frames from it on.
    pub since_frame: u64,
    /// Post-trigger frames the first round waits for.
    pub arm_frames: u64,
}

/// `recovery_settled`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoverySettled {
    pub episode: u64,
    /// Frames classified so far.
    pub frame: u64,
    pub since_frame: u64,
    pub rounds: u32,
    pub commits: u32,
    pub reason: crate::recovery::SettleReason,
    /// Probe-objective gain of the last committed round (nats; null if none or not finite).
    #[serde(default)]
    pub last_gain: Option<f64>,
}

/// `frame_skipped`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameSkipped {
    /// The file, for sources that read files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub reason: String,
    /// Frames skipped so far in this run, this one included.
    pub skipped: u64,
    /// Bad frames in a row, this one included (`[source] max_bad_frames` ends the run).
    pub in_a_row: u64,
}

/// `round_ended`, in one of three shapes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RoundEnded {
    /// The round's weights went to the gate.
    Gated(GatedRound),
    /// A stop request cut the round; nothing went to the gate.
    Stopped(StoppedRound),
    /// The round or its gate failed with an error.
    Failed(FailedRound),
}

/// A round whose weights the gate judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatedRound {
    pub round: u64,
    pub steps: usize,
    /// Wall-clock seconds of the round, gate included.
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_seconds: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub busy_seconds: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub paused_seconds: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_growth_mb: f64,
    /// How the round ended early (`WallClock`, `Memory(bytes)`), if it did.
    pub cut: Option<String>,
    /// Mean of each train-step metric.
    #[serde(deserialize_with = "map_f64_or_nan")]
    pub metrics: BTreeMap<String, f64>,
    pub mask_rate: Option<f64>,
    pub gate: GateVerdict,
    #[serde(deserialize_with = "f64_or_nan")]
    pub probe_entropy_before: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub probe_entropy_after: f64,
}

/// A round cut by a stop request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoppedRound {
    pub round: u64,
    pub steps: usize,
    /// Always `"stop"`.
    pub cut: String,
    #[serde(deserialize_with = "map_f64_or_nan")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
}

/// A round that failed with an error (before the gate: `steps` is absent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedRound {
    pub round: u64,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
}

/// `committed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub round: u64,
    pub version: u64,
    pub step: u64,
    pub checkpoint: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub anchor_accuracy: f64,
}

/// `rolled_back`: the gate's reasons (then with `no_gain_only` and the live `version`), or
/// the error that ended the round or its checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    pub round: u64,
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_gain_only: Option<bool>,
    pub failures_in_a_row: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// `reset_to_source`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResetToSource {
    pub round: u64,
    pub version: u64,
    pub failures_in_a_row: u32,
}

/// `paused`: before a round (`round` null, with the `ceiling`) or during one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    #[serde(deserialize_with = "f64_or_nan")]
    pub celsius: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<f64>,
    pub round: Option<u64>,
}

/// `resumed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    #[serde(deserialize_with = "f64_or_nan")]
    pub ceiling: f64,
}

/// `checkpoint_quarantined`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointQuarantined {
    pub file: String,
    pub moved_to: String,
    pub reason: String,
}

/// `engine_fallback`: `role` (`inference` or `train`) moved from engine `from` to `to`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineFallback {
    pub role: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// The first frame the fallback answered (inference during serving); null at start and
    /// for training.
    pub frame: Option<u64>,
    /// The round that failed (training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
}

/// `engine_restored`: the primary serves again from `frame` on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineRestored {
    pub engine: String,
    pub frame: u64,
    /// Frames the fallback answered in this episode.
    pub fallback_frames: u64,
}

/// `trt_engine`: how the TensorRT engines of a serving session of weights `version` came to
/// be (`path`: `build`, `refit`, `cached` or `none`), and how long the session's load took
/// (`ms`, on the round thread while the previous version serves). `refit`: weight-stripped
/// engines were asked for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrtEngine {
    pub label: String,
    pub version: u64,
    pub path: String,
    #[serde(deserialize_with = "f64_or_nan")]
    pub ms: f64,
    pub refit: bool,
}

/// Sees every event as it is logged (e.g. to drive a board's status LEDs).
pub trait EventObserver: Send + Sync + std::fmt::Debug {
    fn event(&self, event: &FieldEvent);
}

/// Appends events to a JSON-lines file.
pub struct EventLog {
    file: Mutex<File>,
    path: PathBuf,
    fsync: Fsync,
    observer: Option<Arc<dyn EventObserver>>,
}

impl EventLog {
    /// Opens `path` for appending (creating folders), closing a torn last line. A symbolic
    /// link, FIFO, device or folder at `path` is refused, naming it.
    pub fn open(path: &Path, fsync: Fsync) -> Result<EventLog> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let refused = |reason: &str| FieldError::State {
            path: path.into(),
            reason: reason.into(),
        };
        // Not through a symbolic link (O_NOFOLLOW), and never blocking on a FIFO or device
        // (O_NONBLOCK, then refused).
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                    refused("is a symbolic link; the event log is not written through links")
                } else {
                    io_err(path)(e)
                }
            })?;
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Err(refused(
                "is not a regular file (a FIFO, device or folder); refused as the event log",
            ));
        }
        let len = meta.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(io_err(path))?;
            file.read_exact(&mut last).map_err(io_err(path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io_err(path))?;
            }
        }
        Ok(EventLog {
            file: Mutex::new(file),
            path: path.to_path_buf(),
            fsync,
            observer: None,
        })
    }

    /// Tells `observer` every event after it is written.
    pub fn with_observer(mut self, observer: Option<Arc<dyn EventObserver>>) -> EventLog {
        self.observer = observer;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event. A failing write is logged, never fatal: serving frames matters more.
    pub fn emit(&self, event: FieldEvent) {
        let line = event.to_line(unix_ms());
        let sync = match self.fsync {
            Fsync::Every => true,
            Fsync::Rounds => !matches!(event, FieldEvent::Stats(_)),
            Fsync::Never => false,
        };
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let res = f
            .write_all(line.as_bytes())
            .and_then(|_| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            tracing::error!("event log {}: {e}", self.path.display());
        }
        drop(f);
        if let Some(o) = &self.observer {
            o.event(&event);
        }
    }
}

/// One event read back: its time, kind and other keys as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub t_ms: u64,
    pub event: String,
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The typed event; `None` for a kind or shape this version does not know.
    pub fn typed(&self) -> Option<FieldEvent> {
        let mut m = self.fields.clone();
        m.insert("event".into(), self.event.clone().into());
        serde_json::from_value(Value::Object(m)).ok()
    }
}

/// Reads an event log: the events, and how many lines were skipped as unreadable (torn by
/// a crash). A file that is not an event log at all (no line parses) is an error.
pub fn read_events(path: &Path) -> Result<(Vec<Event>, usize)> {
    let text = fieldtune_frames::read_regular_string(path)?;
    let mut events = Vec::new();
    let mut skipped = 0;
    let mut first_bad = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Option<Event> =
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| match v {
                    Value::Object(mut m) => {
                        let t_ms = m.remove("t_ms")?.as_u64()?;
                        let event = m.remove("event")?.as_str()?.to_string();
                        Some(Event {
                            t_ms,
                            event,
                            fields: m,
                        })
                    }
                    _ => None,
                });
        match parsed {
            Some(e) => events.push(e),
            None => {
                skipped += 1;
                first_bad.get_or_insert(i + 1);
            }
        }
    }
    if events.is_empty() {
        if let Some(line) = first_bad {
            return Err(FieldError::EventLog {
                path: path.into(),
                line,
                reason: "not a fieldtune event log (expected JSON objects with t_ms and event)"
                    .into(),
            });
        }
    }
    Ok((events, skipped))
}

#[cfg(test)]
mod tests;
