//! Errors: each names what was wrong and where (the server, the key file, the object).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("SuperLink {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("SuperLink {url} rejected the request: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("SuperLink {url} runs flwr {theirs}; this client speaks flwr {ours} (the Fleet API changes between releases: pin the SuperLink to {ours})")]
    Version {
        url: String,
        theirs: String,
        ours: &'static str,
    },
    #[error("object {id}: {reason}")]
    Object { id: String, reason: String },
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, FleetError>;

pub(crate) fn obj(id: &str, reason: impl Into<String>) -> FleetError {
    FleetError::Object {
        id: id.to_string(),
        reason: reason.into(),
    }
}
