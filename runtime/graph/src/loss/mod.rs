//! The train step's objectives, written as forward ONNX ops so that autodiff differentiates
//! them like the model. One file per objective:
//! - [`uda`]: the base objective of every step (TSA cross-entropy on the labeled batch,
//!   masked sharpened KL consistency, FixMatch pseudo-labels, information maximisation);
//! - `teacher`: the mean teacher (weak-view targets from an EMA copy of the parameters);
//! - `cotta`: CoTTA's augmentation-averaged targets and stochastic restore;
//! - `rotation`: the rotation-prediction pretext task and its head;
//! - `jigsaw`: the 2x2 jigsaw pretext task and its head;
//! - `corruption`: corrupted-image classification and its head;
//! - `inpaint`: masked inpainting and its decoder head;
//! - `colorize`: colorization (RGB models) and its decoder head;
//! - `features`: weak/strong agreement in an intermediate feature tensor;
//! - `proximal`: FedProx's proximal term, applied as its exact gradient.
//!
//! Shared pieces (stable log-softmax, cross-entropy, the accumulators) are in `blocks`; what
//! the pretext tasks share in `head`: [`HeadTask`], the one driver every task goes through
//! (each supplies only its batch, its targets and its class count through `PretextTask`),
//! the feature a head reads and the seeded linear head; the decoder heads in `decoder`.
//!
//! The seam: each optional objective is a struct built from its spec section, with a method
//! per phase of the train step that it takes part in (declare inputs, add loss terms into
//! [`LossTerms`], rewrite parameter updates into `Loops`); `compile_train_step` calls them
//! in a fixed order, which fixes the emitted graph.

mod blocks;
mod colorize;
mod corruption;
mod cotta;
mod decoder;
mod features;
mod head;
mod inpaint;
mod jigsaw;
mod proximal;
mod rotation;
mod teacher;
mod uda;

pub(crate) use blocks::Loops;
pub use blocks::{cross_entropy, log_softmax, LossTerms};
pub use corruption::{CONTRAST, LEVELS, NOISE, RANGE_EPS};
pub use cotta::cotta;
pub(crate) use cotta::CottaStep;
pub(crate) use features::{feature_consistency_terms, FeatureViews};
pub use features::{feature_distance, NORM_EPS};
pub(crate) use head::HeadTask;
pub use jigsaw::MAX_PERMUTATIONS;
pub(crate) use proximal::ProximalStep;
pub(crate) use teacher::TeacherStep;
pub use uda::{uda, UdaInputs, DIVERSITY_EPS};
