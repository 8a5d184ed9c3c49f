//! Deliberate faults from `[fault]`, as one wrapper around the real [`Session`] behind the same
//! trait: inference errors and stalls on chosen frames (the inference loop sets the
//! [`FrameClock`] to the frame it is about to run), and train-step errors in chosen rounds
//! (through [`FaultEngine`], whose sessions' resident steps fail).

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
            faults: Faults::Inference(self.clone()),
        })
    }
}

/// The error an injected fault returns, as the engine behind `label` would report a failed run.
fn injected(label: &str, execution_provider: &str, message: String) -> EngineError {
    EngineError::Run {
        model: label.to_string(),
        engine: if execution_provider.starts_with("tract") {
            fieldtune_engine::EngineKind::Tract
        } else {
            fieldtune_engine::EngineKind::Ort
        },
        message,
    }
}

fn within(ranges: &[[u64; 2]], frame: u64) -> bool {
    ranges.iter().any(|[a, b]| (*a..=*b).contains(&frame))
}

/// A real session whose runs fail or stall on the configured frames ([`InferenceFaults`]), or
/// whose resident train steps fail in the configured rounds ([`TrainFaults`]).
struct FaultSession {
    inner: Box<dyn Session>,
    faults: Faults,
}

enum Faults {
    Inference(InferenceFaults),
    Train(TrainFaults),
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
        let Faults::Inference(faults) = &self.faults else {
            return self.inner.run(inputs);
        };
        let frame = faults.clock.get();
        if within(&faults.stalls, frame) {
            std::thread::sleep(faults.stall);
        }
        if within(&faults.errors, frame) {
            return Err(injected(
                self.inner.label(),
                self.inner.execution_provider(),
                format!("injected fault on frame {frame} ([fault] inference_errors)"),
            ));
        }
        self.inner.run(inputs)
    }

    fn into_resident(
        self: Box<Self>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Box<dyn ResidentSession>, EngineError> {
        let resident = self.inner.into_resident(initial_state, loops)?;
        Ok(match self.faults {
            Faults::Inference(_) => resident,
            Faults::Train(faults) => Box::new(TrainFaultResident {
                inner: resident,
                faults,
            }),
        })
    }
}

/// The train-step faults of `[fault] train_error_rounds`: the supervisor sets the round
/// (1-based, in this process) before it trains.
#[derive(Clone, Debug)]
pub(crate) struct TrainFaults {
    rounds: Vec<u64>,
    round: Arc<AtomicU64>,
}

impl TrainFaults {
    /// `None` when `[fault]` has no train-step faults.
    pub fn new(f: &FaultConfig) -> Option<TrainFaults> {
        (!f.train_error_rounds.is_empty()).then(|| TrainFaults {
            rounds: f.train_error_rounds.clone(),
            round: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The round about to train.
    pub fn set_round(&self, n: u64) {
        self.round.store(n, Ordering::Relaxed);
    }

    fn failing(&self) -> Option<u64> {
        let n = self.round.load(Ordering::Relaxed);
        self.rounds.contains(&n).then_some(n)
    }
}

/// An engine whose sessions' resident train steps fail in the rounds of [`TrainFaults`].
pub(crate) struct FaultEngine<'a> {
    pub inner: &'a dyn fieldtune_engine::Engine,
    pub faults: TrainFaults,
}

impl fieldtune_engine::Engine for FaultEngine<'_> {
    fn kind(&self) -> fieldtune_engine::EngineKind {
        self.inner.kind()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn load(&self, model: &[u8], label: &str) -> Result<Box<dyn Session>, EngineError> {
        Ok(Box::new(FaultSession {
            inner: self.inner.load(model, label)?,
            faults: Faults::Train(self.faults.clone()),
        }))
    }
}

struct TrainFaultResident {
    inner: Box<dyn ResidentSession>,
    faults: TrainFaults,
}

impl TrainFaultResident {
    fn check(&self) -> Result<(), EngineError> {
        match self.faults.failing() {
            Some(n) => Err(injected(
                self.inner.label(),
                self.inner.execution_provider(),
                format!("injected fault in round {n} ([fault] train_error_rounds)"),
            )),
            None => Ok(()),
        }
    }
}

impl ResidentSession for TrainFaultResident {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn execution_provider(&self) -> &str {
        self.inner.execution_provider()
    }

    fn state_names(&self) -> Vec<String> {
        self.inner.state_names()
    }

    fn step(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError> {
        self.check()?;
        self.inner.step(feeds, fetch)
    }

    fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        self.check()?;
        self.inner.step_if(feeds, fetch, accept)
    }

    fn read_state(&self, name: &str) -> Result<Option<Tensor>, EngineError> {
        self.inner.read_state(name)
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError> {
        self.inner.set_state(name, value)
    }

    fn export_state(self: Box<Self>) -> Result<HashMap<String, Tensor>, EngineError> {
        self.inner.export_state()
    }
}
