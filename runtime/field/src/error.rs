//! The field crate's error type: every variant names its file, key or stage.

use std::path::PathBuf;

/// What went wrong while configuring or running the field runtime.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// A file or folder that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bad run config; `key` names the offending key.
    #[error("{}: {}{reason}", path.display(), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Config {
        path: PathBuf,
        key: Option<String>,
        reason: String,
    },
    /// A frame source that failed (pipeline, folder, device).
    #[error("source {source_name}: {reason}")]
    Source { source_name: String, reason: String },
    /// The state folder holds something that cannot be resumed from.
    #[error("{}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    /// An event log that cannot be read.
    #[error("{}:{line}: {reason}", path.display())]
    EventLog {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A report that could not be drawn.
    #[error("report {}: {reason}", path.display())]
    Report { path: PathBuf, reason: String },
    #[error(transparent)]
    Adapt(#[from] fieldtune_adapt::AdaptError),
    #[error(transparent)]
    Frames(#[from] fieldtune_frames::FramesError),
    #[error(transparent)]
    Engine(#[from] fieldtune_engine::EngineError),
}

pub type Result<T, E = FieldError> = std::result::Result<T, E>;

/// Maps an io::Error to [`FieldError::Io`] naming `path`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FieldError {
    let path = path.into();
    move |source| FieldError::Io { path, source }
}
