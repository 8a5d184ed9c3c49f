//! fieldtune's graph compiler: ONNX IR load/save, static shape inference, reverse-mode
//! autodiff that emits standard ai.onnx ops, the objectives (`loss/`) and optimizer blocks,
//! [`compile_train_step`] and the test-time inference graph [`predict_graph`]. It knows
//! nothing of engines, frames or boards.

pub mod affine;
pub mod autodiff;
pub mod builder;
pub mod compile;
pub mod error;
mod forward;
pub mod infer;
pub mod ir;
pub mod loss;
pub mod lower;
pub mod ops;
pub mod optim;
pub mod predict;
mod pretext;
pub mod proto;
pub mod random;
pub mod spec;
pub mod target;
mod topo;

pub use compile::{compile_inference, compile_train_step, inputs, next_name, TrainStep};
pub use error::{GraphError, Result};
pub use ir::{decode_model, encode_model, load_model, with_initializers, Graph};
pub use predict::predict_graph;
pub use spec::{
    is_head_param, jigsaw_permutations, teacher_name, BatchNormMode, Colorize, CorruptionKind,
    CorruptionTask, Cotta, FeatureConsistency, FeatureDistance, Inpaint, Jigsaw, MeanTeacher,
    Optimizer, PixelLoss, Rotation, TrainSpec, Trainable, Tsa, UdaLoss,
};
pub use target::{Target, TargetChoice, TuneReport, DOMAIN, TARGET_ENV};
