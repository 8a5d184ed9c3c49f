//! Resident state for training: parameters, optimizer moments and running statistics stay with
//! the session between steps, and each step's new values replace the old ones.

use std::collections::{HashMap, HashSet};

use crate::{check_tensor, unknown_output, EngineError, IoInfo, Session, Tensor};

/// A session that keeps some of its inputs resident between runs.
///
/// Each step feeds the resident state plus the per-step `feeds` (a batch, the learning rate,
/// the step number), returns the `fetch`ed outputs, and replaces every looped input's state
/// with the matching output. A failed step leaves the state unchanged.
///
/// [`StatefulSession`] is the host-memory implementation; an ONNX Runtime GPU implementation
/// can keep the same state in device memory with `IoBinding`, copying only on
/// [`ResidentSession::read_state`] and [`ResidentSession::export_state`].
pub trait ResidentSession: Send {
    /// The model label.
    fn label(&self) -> &str;
    /// The execution provider the graph runs on.
    fn execution_provider(&self) -> &str;
    /// Names of the resident inputs.
    fn state_names(&self) -> Vec<String>;
    /// Runs one step; returns the outputs named in `fetch`, in that order.
    fn step(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError>;
    /// Runs one step but moves the state only if `accept` approves the fetched outputs
    /// (e.g. every loss term finite); returns them and whether the state moved.
    fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError>;
    /// A host copy of one resident tensor; `None` when `name` is not resident.
    fn read_state(&self, name: &str) -> Result<Option<Tensor>, EngineError>;
    /// Replaces one resident tensor (same dtype and shape as before).
    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError>;
    /// Ends the session and hands back all resident tensors.
    fn export_state(self: Box<Self>) -> Result<HashMap<String, Tensor>, EngineError>;
}

/// Host-memory resident state around any [`Session`] (copies state in and out every step).
///
/// Each step lends the state tensors to [`Session::run`] (ONNX Runtime reads their arrays in
/// place; tract copies each into a tensor of its own) and gets every output back as a new host
/// tensor (one copy out of the engine). A looped output then moves into the state without a
/// further copy; one that is also fetched, or fetched twice, is cloned.
pub struct StatefulSession {
    session: Box<dyn Session>,
    state: HashMap<String, Tensor>,
    loops: Vec<(String, String)>,
}

impl std::fmt::Debug for StatefulSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        f.debug_struct("StatefulSession")
            .field("model", &self.session.label())
            .field("state", &names)
            .field("loops", &self.loops)
            .finish()
    }
}

fn state_err(model: &str, tensor: &str, message: impl Into<String>) -> EngineError {
    EngineError::State {
        model: model.to_string(),
        tensor: tensor.to_string(),
        message: message.into(),
    }
}

/// Checks resident state against a session: every `initial_state` name is an input (with
/// matching dtype and static dims); every loop `(output, input)` names an output and a state
/// input, each input looped at most once, with matching element types.
pub(crate) fn check_resident(
    session: &dyn Session,
    initial_state: &HashMap<String, Tensor>,
    loops: &[(String, String)],
) -> Result<(), EngineError> {
    let model = session.label().to_string();
    for (name, t) in initial_state {
        let info = session
            .inputs()
            .iter()
            .find(|i| i.name == *name)
            .ok_or_else(|| state_err(&model, name, "is not an input of the model"))?;
        check_tensor(&model, info, t)?;
    }
    let mut targets = HashSet::new();
    for (out, inp) in loops {
        let out_info: &IoInfo = session
            .outputs()
            .iter()
            .find(|o| o.name == *out)
            .ok_or_else(|| unknown_output(&model, session.outputs(), out))?;
        let Some(in_info) = session.inputs().iter().find(|i| i.name == *inp) else {
            return Err(state_err(
                &model,
                inp,
                format!("loop target of output '{out}' is not an input of the model"),
            ));
        };
        if !initial_state.contains_key(inp) {
            return Err(state_err(
                &model,
                inp,
                format!("looped from output '{out}' but has no initial value"),
            ));
        }
        if !targets.insert(inp.as_str()) {
            return Err(state_err(
                &model,
                inp,
                "is the target of more than one loop",
            ));
        }
        if out_info.dtype != in_info.dtype {
            return Err(state_err(
                &model,
                inp,
                format!(
                    "output '{out}' is {} but the input is {}",
                    out_info.onnx_type, in_info.onnx_type
                ),
            ));
        }
    }
    Ok(())
}

/// A new value for resident tensor `name` must keep its dtype and shape.
pub(crate) fn check_replacement(
    model: &str,
    name: &str,
    old: &Tensor,
    value: &Tensor,
) -> Result<(), EngineError> {
    if old.dtype() != value.dtype() || old.shape() != value.shape() {
        return Err(state_err(
            model,
            name,
            format!(
                "new value is {} {:?}, the state is {} {:?}",
                value.dtype(),
                value.shape(),
                old.dtype(),
                old.shape()
            ),
        ));
    }
    Ok(())
}

impl StatefulSession {
    /// Wraps `session`. Every `initial_state` name must be a session input (and match its
    /// dtype and static dims); every loop `(output, input)` must name a session output and a
    /// state input, each input looped at most once, with matching element types.
    pub fn new(
        session: Box<dyn Session>,
        initial_state: HashMap<String, Tensor>,
        loops: Vec<(String, String)>,
    ) -> Result<Self, EngineError> {
        check_resident(session.as_ref(), &initial_state, &loops)?;
        Ok(StatefulSession {
            session,
            state: initial_state,
            loops,
        })
    }

    /// Runs one step with the state plus `feeds`, updates every looped state from its output
    /// and returns the outputs named in `fetch`, in order. On error the state is unchanged.
    pub fn step(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
    ) -> Result<Vec<Tensor>, EngineError> {
        Ok(self.step_if(feeds, fetch, &|_| true)?.0)
    }

    /// Like [`StatefulSession::step`], but the looped state is only updated when `accept`
    /// approves the fetched outputs (e.g. all loss terms finite); returns them and whether
    /// the state moved. A rejected step leaves the state exactly as it was.
    pub fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        let model = self.session.label().to_string();
        for (name, _) in feeds {
            if self.state.contains_key(*name) {
                return Err(state_err(
                    &model,
                    name,
                    "is resident state and cannot also be fed",
                ));
            }
        }
        for name in fetch {
            if !self.session.outputs().iter().any(|o| o.name == *name) {
                return Err(unknown_output(&model, self.session.outputs(), name));
            }
        }
        let mut inputs: Vec<(&str, &Tensor)> =
            self.state.iter().map(|(k, v)| (k.as_str(), v)).collect();
        inputs.extend_from_slice(feeds);
        let mut outs: HashMap<String, Tensor> = self.session.run(&inputs)?.into_iter().collect();

        // Validate every update before applying any.
        for (out, inp) in &self.loops {
            let new = outs
                .get(out)
                .ok_or_else(|| unknown_output(&model, self.session.outputs(), out))?;
            let old = &self.state[inp];
            if new.dtype() != old.dtype() || new.shape() != old.shape() {
                return Err(state_err(
                    &model,
                    inp,
                    format!(
                        "output '{out}' came back as {} {:?}, the state is {} {:?}",
                        new.dtype(),
                        new.shape(),
                        old.dtype(),
                        old.shape()
                    ),
                ));
            }
        }
        let fetched: Vec<Tensor> = fetch
            .iter()
            .map(|n| {
                let looped = self.loops.iter().any(|(o, _)| o == n);
                let repeated = fetch.iter().filter(|m| *m == n).count() > 1;
                if looped || repeated {
                    outs.get(*n).cloned()
                } else {
                    outs.remove(*n)
                }
                .ok_or_else(|| unknown_output(&model, self.session.outputs(), n))
            })
            .collect::<Result<_, _>>()?;
        if !accept(&fetched) {
            return Ok((fetched, false));
        }
        for (out, inp) in &self.loops {
            if let Some(t) = outs.remove(out) {
                self.state.insert(inp.clone(), t);
            }
        }
        Ok((fetched, true))
    }

    /// The current value of a resident input.
    pub fn state(&self, name: &str) -> Option<&Tensor> {
        self.state.get(name)
    }

    /// Replaces a resident input (same dtype and shape as before), e.g. to roll back.
    pub fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError> {
        let model = self.session.label().to_string();
        let old = self
            .state
            .get(name)
            .ok_or_else(|| state_err(&model, name, "is not resident state"))?;
        check_replacement(&model, name, old, &value)?;
        self.state.insert(name.to_string(), value);
        Ok(())
    }

    /// The `(output, input)` loops.
    pub fn loops(&self) -> &[(String, String)] {
        &self.loops
    }

    /// The wrapped session.
    pub fn session(&self) -> &dyn Session {
        self.session.as_ref()
    }

    /// Ends the session and returns the state.
    pub fn into_state(self) -> HashMap<String, Tensor> {
        self.state
    }
}

impl ResidentSession for StatefulSession {
    fn label(&self) -> &str {
        self.session.label()
    }

    fn execution_provider(&self) -> &str {
        self.session.execution_provider()
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
        StatefulSession::step(self, feeds, fetch)
    }

    fn step_if(
        &mut self,
        feeds: &[(&str, &Tensor)],
        fetch: &[&str],
        accept: &dyn Fn(&[Tensor]) -> bool,
    ) -> Result<(Vec<Tensor>, bool), EngineError> {
        StatefulSession::step_if(self, feeds, fetch, accept)
    }

    fn read_state(&self, name: &str) -> Result<Option<Tensor>, EngineError> {
        Ok(self.state.get(name).cloned())
    }

    fn set_state(&mut self, name: &str, value: Tensor) -> Result<(), EngineError> {
        StatefulSession::set_state(self, name, value)
    }

    fn export_state(self: Box<Self>) -> Result<HashMap<String, Tensor>, EngineError> {
        Ok(self.into_state())
    }
}
