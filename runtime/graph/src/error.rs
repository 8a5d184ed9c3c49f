//! The graph crate's one error type.

use std::path::PathBuf;

/// What went wrong while reading, checking or compiling an ONNX graph. Every variant names
/// the file, node, op or tensor it is about.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model (protobuf decode failed: {reason}); is the file truncated or corrupt?")]
    Decode { path: PathBuf, reason: String },
    #[error("model has no graph")]
    NoGraph,
    #[error("model imports ai.onnx opset {found}; fieldtune needs opset >= {min}: re-export with torch.onnx.export(..., opset_version=17)")]
    Opset { found: i64, min: i64 },
    #[error("node '{node}' ({op}): unsupported op in domain '{domain}'")]
    Domain {
        node: String,
        op: String,
        domain: String,
    },
    #[error("tensor '{tensor}': {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("node '{node}' ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("node '{node}': op '{op}' has no shape rule, so fieldtune cannot compile graphs that contain it")]
    NoShapeRule { node: String, op: String },
    #[error("node '{node}': op '{op}' is on the path from trainable parameters to the loss but has no gradient rule")]
    NoGradRule { node: String, op: String },
    #[error("node '{node}' ({op}) reads '{tensor}', which no node, input or initializer defines")]
    Undefined {
        node: String,
        op: String,
        tensor: String,
    },
    #[error("graph input '{input}': {reason}")]
    Input { input: String, reason: String },
    #[error("train spec: {0}")]
    Spec(String),
}

impl GraphError {
    pub(crate) fn node(node: &crate::ir::Node, reason: impl Into<String>) -> Self {
        GraphError::Node {
            node: node.name.clone(),
            op: node.op.clone(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;
