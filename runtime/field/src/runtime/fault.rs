//! [`FaultSession`]: deliberate inference faults (`[fault] inference_errors`,
//! `inference_stalls`), a wrapper around the real [`Session`] behind the same trait. The
//! inference loop sets the [`FrameClock`] to the frame it is about to run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldtune_engine::{EngineError, IoInfo, ResidentSession, Session, Tensor};

use crate::config::FaultConfig;

/// The frame id the inference loop is running (shared with the fault wrappers).
#[derive(Debug, Default)]
pub(crate) struct FrameClock(AtomicU64);

impl FrameClock {
    pub fn set(&self, frame: u64) {
        self.0.store(frame, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The faults of the primary inference session, from `[fault]`.
#[derive(Clone, Debug)]
pub(crate) struct InferenceFaults {
    errors: Vec<[u64; 2]>,
    stalls: Vec<[u64; 2]>,
    stall: Duration,
    clock: Arc<FrameClock>,
}

impl InferenceFaults {
    /// `None` when `[fault]` has no inference faults.
    pub fn new(f: &FaultConfig, clock: Arc<FrameClock>) -> Option<InferenceFaults> {
        f.wraps_inference().then(|| InferenceFaults {
            errors: f.inference_errors.clone(),
            stalls: f.inference_stalls.clone(),
            stall: Duration::from_millis(f.inference_stall_ms),
            clock,
        })
    }

    /// `session` behind the fault wrapper.
    pub fn wrap(&self, session: Box<dyn Session>) -> Box<dyn Session> {
        Box::new(FaultSession {
            inner: session,
            faults: self.clone(),
        })
    }
}

fn within(ranges: &[[u64; 2]], frame: u64) -> bool {
    ranges.iter().any(|[a, b]| (*a..=*b).contains(&frame))
}

/// A real session whose runs fail or stall on the configured frames.
struct FaultSession {
    inner: Box<dyn Session>,
    faults: InferenceFaults,
}

impl Session for FaultSession {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn inputs(&self) -> &[IoInfo] {
        self.inner.inputs()
    }

    fn outputs(&self) -> &[IoInfo] {
        self.inner.outputs()
    }

    fn execution_provider(&self) -> &str {
        self.inner.execution_provider()
    }

    fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        let frame = self.faults.clock.get();
        if within(&self.faults.stalls, frame) {
            std::thread::sleep(self.faults.stall);
        }
        if within(&self.faults.errors, frame) {
            return Err(EngineError::Run {
                model: self.inner.label().to_string(),
                engine: if self.inner.execution_provider().starts_with("tract") {
                    fieldtune_engine::EngineKind::Tract
                } else {
                    fieldtune_engine::EngineKind::Ort
                },
                message: format!("injected fault on frame {frame} ([fault] inference_errors)"),
            });
        }
        self.inner.run(inputs)
    }

    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError> {
        self.inner.into_resident(initial_state, loops)
    }
}
