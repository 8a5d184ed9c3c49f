//! fieldtune's adaptation layer: recipes (presets + TOML overrides), [`TrainSession`] (the one
//! place a train step is compiled and made resident) and the loops around it (offline
//! adaptation, test-time adaptation, benchmarks), evaluation, model folders and checksummed, atomically written
//! checkpoints. Data flows frames -> adapt -> engine; the graph crate compiles train steps.

pub mod batches;
pub mod bench;
pub mod checkpoint;
pub mod collapse;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod model_dir;
pub mod recipe;
mod recipe_presets;
mod recipe_toml;
pub mod session;
pub mod trainer;
pub mod tta;

pub use batches::{prefetch, AdaptData, Batch, BatchMaker};
pub use error::{AdaptError, Result};
pub use eval::{evaluate, predict, EvalReport};
pub use model_dir::{ModelDir, Normalisation};
pub use recipe::{AdaptConfig, CollapseWatch, LrSchedule, OnCollapse};
pub use recipe_presets::RECIPES;
pub use session::{train_spec, StepOutcome, StepShape, TrainSession};
pub use trainer::{
    adapt, evaluate_params, AdaptOutcome, CollapseCheck, CollapseReport, StepReport,
};
