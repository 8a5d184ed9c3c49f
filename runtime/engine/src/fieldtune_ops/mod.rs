//! The fieldtune-domain ops of tuned train steps (`fieldtune_graph::target`), registered with
//! each engine that runs them; the kernels themselves are `fieldtune-kernels`.
//!
//! - `ort`: ONNX Runtime custom operators on its CPU provider (the `ort` crate's operator
//!   API), added to every ONNX Runtime session as the [`DOMAIN`] domain;
//! - `tract`: one tract op type registered with tract's ONNX parser for each op name.

pub(crate) mod ort;
pub(crate) mod tract;

pub use fieldtune_kernels::DOMAIN;

/// The names of the ops of the [`DOMAIN`] domain, as tuned graphs spell them.
pub const OPS: [&str; 4] = [
    "BatchNormTrain",
    "BatchNormTrainGrad",
    "ClipGrad",
    "MaxPoolGrad",
];
