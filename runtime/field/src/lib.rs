//! fieldtune-field: the field runtime behind `fieldtune run`. It serves a classifier on a
//! stream of frames and adapts it in the background, safely.
//!
//! - [`source`]: frames behind one seam, [`source::FrameSource`] (image folders; GStreamer
//!   pipelines in `gst` with feature `gstreamer`); [`preprocess`] turns them into model input.
//! - [`queue`]: fixed-capacity, preallocated, drop-oldest queues between the stages
//!   capture -> inference -> outputs.
//! - [`replay`]: the reservoir + recency buffer of unlabeled u8 frames.
//! - [`trigger`]: every N frames, drift, schedule, SIGUSR1; [`budget`]: memory, duty cycle,
//!   temperature ceiling, wall-clock cap, priority.
//! - [`round`]: the background trainer; [`gate`]: what new weights must show to go live;
//!   [`store`]: atomic, checksummed checkpoints (source, last good, previous).
//! - [`events`], [`metrics`], [`report`]: the JSON-lines event log of typed
//!   [`events::FieldEvent`]s, the Prometheus endpoint, the PNG report.
//! - [`runtime::run`] wires it all (threads, the inference loop, the round supervisor's
//!   commit protocol); [`config::RunConfig`] is its TOML file.

pub mod budget;
pub mod config;
pub mod error;
pub mod events;
mod frame;
pub mod gate;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod metrics;
mod nan;
pub mod preprocess;
pub mod queue;
pub mod recovery;
pub mod replay;
pub mod report;
pub mod round;
pub mod runtime;
pub mod source;
pub mod stats;
pub mod store;
pub mod trigger;

pub use config::RunConfig;
pub use error::{FieldError, Result};
pub use runtime::{run, RunOptions, RunSummary, VersionServed};
