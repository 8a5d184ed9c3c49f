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
    #[error("node '{node}' ({op}) is on a cycle ({path}); an ONNX graph must be acyclic")]
    Cycle {
        node: String,
        op: String,
        /// The cycle, node names joined by " -> ", back to the first.
        path: String,
    },
    #[error("graph input '{input}': {reason}")]
    Input { input: String, reason: String },
    #[error("graph output '{output}': {reason}")]
    Output { output: String, reason: String },
    #[error("train spec: {0}")]
    Spec(String),
}

/// What an error about a node names: the node and its op.
pub(crate) trait NodeName {
    fn node_name(&self) -> &str;
    fn op_name(&self) -> &str;
}

impl<T: NodeName + ?Sized> NodeName for &T {
    fn node_name(&self) -> &str {
        (**self).node_name()
    }
    fn op_name(&self) -> &str {
        (**self).op_name()
    }
}

impl GraphError {
    pub(crate) fn node(node: &impl NodeName, reason: impl Into<String>) -> Self {
        GraphError::Node {
            node: node.node_name().to_string(),
            op: node.op_name().to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;
