//! Resident train-step state as ONNX Runtime values behind an `IoBinding`.

use std::collections::HashMap;

use ort::value::DynValue;

use crate::{catch_panic, EngineError, EngineKind, ResidentSession, Tensor};

use super::session::OrtSession;
use super::values::{ort_msg, owned_value, to_tensor};

/// Resident state held as ONNX Runtime values and fed through an `IoBinding`: step k's
/// looped outputs become step k+1's inputs without a copy to or from host tensors (in CPU
/// memory here, in device memory on a GPU provider). A step copies in only its batch and
/// copies out only the fetched metrics.
///
/// State given as owned tensors (the initial state, [`ResidentSession::set_state`]) moves
/// into ONNX Runtime values without a copy. A step's feeds are borrowed, and `IoBinding` keeps
/// its inputs past the call, so each feed is copied once into an owned value (ort would make
/// the same copy of a borrowed value).
pub struct OrtResident {
    session: OrtSession,
    binding: ort::session::IoBinding,
    state: HashMap<String, DynValue>,
    loops: Vec<(String, String)>,
    /// Where fetched outputs go: host memory.
    outputs_mem: ort::memory::MemoryInfo<'static>,
    /// Where looped outputs (the next step's state) go: the provider's device memory.
    state_mem: ort::memory::MemoryInfo<'static>,
}

impl OrtResident {
    pub(super) fn new(
        session: OrtSession,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Self, EngineError> {
        let label = session.label.clone();
        let err = |m: String| EngineError::Run {
            model: label.clone(),
            engine: EngineKind::Ort,
            message: m,
        };
        let binding = session
            .session
            .create_binding()
            .map_err(|e| err(format!("IoBinding: {}", ort_msg(&e))))?;
        // Outputs where the session's allocator puts them (host memory for the CPU provider).
        let outputs_mem = ort::memory::MemoryInfo::new(
            ort::memory::AllocationDevice::CPU,
            0,
            ort::memory::AllocatorType::Device,
            ort::memory::MemoryType::Default,
        )
        .map_err(|e| err(format!("memory info: {}", ort_msg(&e))))?;
        let state_mem = match session.cuda_device {
            Some(device) => ort::memory::MemoryInfo::new(
                ort::memory::AllocationDevice::CUDA,
                device,
                ort::memory::AllocatorType::Device,
                ort::memory::MemoryType::Default,
            ),
            None => ort::memory::MemoryInfo::new(
                ort::memory::AllocationDevice::CPU,
                0,
                ort::memory::AllocatorType::Device,
                ort::memory::MemoryType::Default,
            ),
        }
        .map_err(|e| err(format!("memory info: {}", ort_msg(&e))))?;
        let mut r = OrtResident {
            session,
            binding,
            state: HashMap::new(),
            loops,
            outputs_mem,
            state_mem,
        };
        for (name, t) in initial_state {
            r.set_value(&name, t)?;
        }
        Ok(r)
    }

    fn err(&self, message: String) -> EngineError {
        EngineError::Run {
            model: self.session.label.clone(),
            engine: EngineKind::Ort,
            message,
        }
    }

    /// An owned ONNX Runtime value taking `t`'s buffer (no copy).
    fn value_of(&self, name: &str, t: Tensor) -> Result<DynValue, EngineError> {
        owned_value(t).map_err(|e| self.err(format!("input '{name}': {}", ort_msg(&e))))
    }

    fn set_value(&mut self, name: &str, t: Tensor) -> Result<(), EngineError> {
        let v = self.value_of(name, t)?;
        self.binding
            .bind_input(name, &v)
            .map_err(|e| self.err(format!("binding '{name}': {}", ort_msg(&e))))?;
        self.state.insert(name.to_string(), v);
        Ok(())
    }

    fn step_inner(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        let model = self.session.label.clone();
        for (name, t) in feeds {
            if self.state.contains_key(*name) {
                return Err(EngineError::State {
                    model,
                    tensor: name.to_string(),
                    message: "is resident state and cannot also be fed".into(),
                });
            }
            let info = self
                .session
                .inputs
                .iter()
                .find(|i| i.name == *name)
                .ok_or_else(|| self.err(format!("'{name}' is not an input of the model")))?;
            crate::check_tensor(&model, info, t)?;
            // The one copy of a feed (see the type's doc).
            let v = self.value_of(name, (*t).clone())?;
            self.binding
                .bind_input(*name, &v)
                .map_err(|e| self.err(format!("binding '{name}': {}", ort_msg(&e))))?;
        }
        let mut wanted: Vec<&str> = fetch.to_vec();
        for (out, _) in &self.loops {
            if !wanted.contains(&out.as_str()) {
                wanted.push(out);
            }
        }
        for name in &wanted {
            if !self.session.outputs.iter().any(|o| o.name == *name) {
                return Err(crate::unknown_output(&model, &self.session.outputs, name));
            }
            // Fresh output buffers every step: a looped output becomes resident input state,
            // so the next run must not write into it. Fetched outputs come to the host; state
            // stays in the provider's memory.
            let mem = if fetch.contains(name) {
                &self.outputs_mem
            } else {
                &self.state_mem
            };
            self.binding
                .bind_output_to_device(*name, mem)
                .map_err(|e| self.err(format!("binding output '{name}': {}", ort_msg(&e))))?;
        }
        let mut outs = self
            .session
            .session
            .run_binding(&self.binding)
            .map_err(|e| EngineError::Run {
                model: model.clone(),
                engine: EngineKind::Ort,
                message: ort_msg(&e),
            })?;
        let missing = |name: &str| EngineError::Run {
            model: model.clone(),
            engine: EngineKind::Ort,
            message: format!("output '{name}' missing from the results"),
        };
        let mut fetched = Vec::with_capacity(fetch.len());
        for name in fetch {
            let v = outs.get(name).ok_or_else(|| missing(name))?;
            fetched.push(to_tensor(&model, name, v)?);
        }
        let mut next: Vec<(String, DynValue)> = Vec::with_capacity(self.loops.len());
        for (out, inp) in &self.loops {
            let v = outs.remove(out).ok_or_else(|| missing(out))?;
            next.push((inp.clone(), v));
        }
        drop(outs);
        // Feeds stay bound until rebound; unbind nothing, but never keep a batch resident.
        if !accept(&fetched) {
            return Ok((fetched, false));
        }
        for (inp, v) in next {
            self.binding
                .bind_input(inp.as_str(), &v)
                .map_err(|e| self.err(format!("binding '{inp}': {}", ort_msg(&e))))?;
            self.state.insert(inp, v);
        }
        Ok((fetched, true))
    }
}

impl ResidentSession for OrtResident {
    fn label(&self) -> &str {
        &self.session.label
    }

    fn execution_provider(&self) -> &str {
        &self.session.provider
    }

    fn state_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state.keys().cloned().collect();
        v.sort();
        v
    }

    fn step(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError> {
        Ok(self.step_if(feeds, fetch, &|_| true)?.0)
    }

    fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        let label = self.session.label.clone();
        catch_panic(
            || self.step_inner(feeds, fetch, accept),
            |message| EngineError::Run {
                model: label,
                engine: EngineKind::Ort,
                message,
            },
        )
    }

    fn read_state(&self, name: &str) -> Result<Option<Tensor>, EngineError> {
        match self.state.get(name) {
            Some(v) => Ok(Some(to_tensor(&self.session.label, name, v)?)),
            None => Ok(None),
        }
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError> {
        let old = self.read_state(name)?.ok_or_else(|| EngineError::State {
            model: self.session.label.clone(),
            tensor: name.to_string(),
            message: "is not resident state".into(),
        })?;
        crate::stateful::check_replacement(&self.session.label, name, &old, &value)?;
        self.set_value(name, value)
    }

    fn export_state(self: Box<Self>) -> Result<HashMap<String, Tensor>, EngineError> {
        self.state
            .iter()
            .map(|(n, v)| Ok((n.clone(), to_tensor(&self.session.label, n, v)?)))
            .collect()
    }
}
