//! The ONNX Runtime backend (through `ort`, library loaded at run time).
//!
//! - `options`: [`OrtOptions`], [`GraphOptimization`], execution provider checks;
//! - `session`: [`OrtSession`], one loaded model run with borrowed inputs;
//! - `resident`: `OrtResident`, train-step state kept as ONNX Runtime values behind an
//!   `IoBinding`;
//! - `trt_cache`: the TensorRT engine cache folder (which path a load took, refit
//!   preparation, the size bound);
//! - `values`: host tensors to and from ONNX Runtime values through `ndarray` (which
//!   hand-offs copy and which do not).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::discovery::{self, OrtRuntime};
use crate::{
    catch_panic, Engine, EngineError, EngineKind, ExecutionProvider, IoInfo, OrtFeature,
    ResidentSession, Session, StatefulSession, Tensor,
};

mod options;
mod resident;
mod session;
pub mod trt_cache;
mod values;

pub(crate) use options::available_providers;
use options::provider_available;
pub use options::{provider_settings, GpuOptions, GraphOptimization, OrtOptions, TrtRefit};
use resident::OrtResident;
pub use session::OrtSession;

/// ONNX Runtime as an [`Engine`].
pub struct OrtEngine {
    runtime: Arc<OrtRuntime>,
    opts: OrtOptions,
    providers: Vec<ExecutionProvider>,
    /// How the last TensorRT session's engines came to be.
    last_trt: Mutex<Option<trt_cache::TrtBuild>>,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("library", &self.runtime.info.location)
            .field("version", &self.runtime.info.version)
            .field("providers", &self.providers)
            .finish()
    }
}

impl OrtEngine {
    /// Finds and loads ONNX Runtime (once per process) and checks that every requested
    /// execution provider is compiled into it.
    pub fn new(opts: OrtOptions) -> Result<Self, EngineError> {
        let runtime = discovery::ort_runtime(opts.lib.as_deref())?;
        let providers = if opts.providers.is_empty() {
            vec![ExecutionProvider::Cpu]
        } else {
            opts.providers.clone()
        };
        for p in &providers {
            let ok = provider_available(p).map_err(|message| EngineError::ExecutionProvider {
                provider: p.ort_name().to_string(),
                model: None,
                message,
            })?;
            if !ok {
                return Err(EngineError::ExecutionProvider {
                    provider: p.ort_name().to_string(),
                    model: None,
                    message: format!(
                        "not compiled into ONNX Runtime {} at {} (available: {}); for CUDA/TensorRT run scripts/install-ort.sh --gpu",
                        runtime.info.version,
                        runtime.info.location.path.display(),
                        available_providers(&runtime).join(", ")
                    ),
                });
            }
        }
        let trt = providers
            .iter()
            .any(|p| matches!(p, ExecutionProvider::TensorRt { .. }));
        if trt && opts.gpu.trt_refit.is_some() {
            runtime.info.require(OrtFeature::TrtWeightStrippedEngine)?;
        }
        Ok(OrtEngine {
            runtime,
            opts,
            providers,
            last_trt: Mutex::new(None),
        })
    }

    /// The loaded library, its version and how it was found.
    pub fn runtime_info(&self) -> &discovery::OrtRuntimeInfo {
        &self.runtime.info
    }

    /// Execution providers the loaded library has.
    pub fn available_providers(&self) -> Vec<String> {
        available_providers(&self.runtime)
    }
}

impl Engine for OrtEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn describe(&self) -> String {
        let names: Vec<&str> = self
            .providers
            .iter()
            .map(ExecutionProvider::ort_name)
            .collect();
        format!(
            "ONNX Runtime {} from {} ({}), providers {}",
            self.runtime.info.version,
            self.runtime.info.location.path.display(),
            self.runtime.info.location.source,
            names.join(" > ")
        )
    }

    fn runs_fieldtune_ops(&self) -> bool {
        matches!(self.providers.first(), Some(ExecutionProvider::Cpu))
    }

    fn load(&self, model: &[u8], label: &str) -> Result<Box<dyn Session>, EngineError> {
        let s = catch_panic(
            || OrtSession::build(&self.runtime, &self.opts, &self.providers, model, label),
            |message| EngineError::ModelLoad {
                model: label.to_string(),
                engine: EngineKind::Ort,
                message,
            },
        )?;
        if let Some(b) = s.trt_build() {
            *self.last_trt.lock().unwrap_or_else(|p| p.into_inner()) = Some(b.clone());
        }
        Ok(Box::new(s))
    }

    fn take_trt_build(&self) -> Option<trt_cache::TrtBuild> {
        self.last_trt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Session for OrtSession {
    fn label(&self) -> &str {
        &self.label
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn execution_provider(&self) -> &str {
        &self.provider
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        let label = self.label.clone();
        catch_panic(
            || self.run_inner(inputs),
            |message| EngineError::Run {
                model: label,
                engine: EngineKind::Ort,
                message,
            },
        )
    }

    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError> {
        if std::env::var_os("FIELDTUNE_ORT_HOST_STATE").is_some() {
            // Host-copy state (the reference the IoBinding path is tested against).
            return Ok(Box::new(StatefulSession::new(self, initial_state, loops)?));
        }
        crate::stateful::check_resident(self.as_ref(), &initial_state, &loops)?;
        Ok(Box::new(OrtResident::new(*self, initial_state, loops)?))
    }
}
