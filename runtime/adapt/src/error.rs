//! The adapt crate's error type.

use std::path::PathBuf;

/// What went wrong while adapting or evaluating; every variant names its file, tensor or step.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    ModelDir { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(transparent)]
    Frames(#[from] fieldtune_frames::FramesError),
    #[error(transparent)]
    Graph(#[from] fieldtune_graph::GraphError),
    #[error(transparent)]
    Engine(#[from] fieldtune_engine::EngineError),
    #[error(transparent)]
    Augment(#[from] fieldtune_augment::AugmentError),
    #[error("step {step}: {term} is {value}; the parameters from before this step are kept and nothing is written")]
    NonFinite {
        step: usize,
        term: String,
        value: f32,
    },
    #[error("{output} would overwrite the input {input}; write the output somewhere else")]
    WouldOverwrite { output: PathBuf, input: PathBuf },
    #[error("{what} does not fit the model: {reason}")]
    Mismatch { what: String, reason: String },
}

pub type Result<T, E = AdaptError> = std::result::Result<T, E>;
