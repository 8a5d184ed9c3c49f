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
    #[error("SuperLink {url} does not speak this client's Fleet API ({detail}); this client speaks flwr {ours}: run a flwr {ours} SuperLink (the Fleet API changes between releases)")]
    Version {
        url: String,
        detail: String,
        ours: &'static str,
    },
    #[error("SuperLink {url} has SuperNode authentication on and does not know this node's public key{}: register it there with `flwr supernode register`", .public_key.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    NotRegistered {
        url: String,
        /// The node's public key file, to register.
        public_key: Option<PathBuf>,
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
