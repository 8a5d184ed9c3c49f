//! [`RunOptions`]: how a run is started (beside its config file), and the engines it makes.

use std::path::PathBuf;
use std::sync::Arc;

use fieldtune_engine::{select_engine, Engine, EnginePreference, OrtOptions};

use crate::error::Result;
use crate::events::EventObserver;

/// How `run` is started.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub engine: EnginePreference,
    pub ort_lib: Option<PathBuf>,
    /// Install SIGINT/SIGTERM (stop) and SIGUSR1 (manual round) handlers.
    pub handle_signals: bool,
    /// The config file (names errors).
    pub config_path: PathBuf,
    /// Sees every event as it is logged (board status LEDs, systemd); `None`: nobody.
    pub observer: Option<Arc<dyn EventObserver>>,
}

impl RunOptions {
    /// The chosen engine with `threads` intra-op threads.
    pub(crate) fn engine(&self, threads: usize) -> Result<Box<dyn Engine>> {
        Ok(select_engine(
            self.engine,
            OrtOptions {
                lib: self.ort_lib.clone(),
                intra_threads: Some(threads),
                ..Default::default()
            },
        )?)
    }
}
