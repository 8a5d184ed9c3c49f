//! [`TrainSession`]: a compiled train step made resident on one engine.
//!
//! It is the one place that compiles a train step, loads it and keeps its state (parameters,
//! optimizer state, running statistics) resident between steps. The offline trainer, the field
//! round, test-time adaptation and the benchmark are loops around it that add only their own
//! policy (batches, schedules, budgets, evaluation).

use std::collections::HashMap;

use fieldtune_engine::{Engine, EngineKind, ResidentSession};
use fieldtune_graph::is_head_param;
use fieldtune_graph::{
    encode_model, inputs, teacher_name, Target, TargetChoice, TrainSpec, TrainStep,
};
use fieldtune_tensor::Tensor;

use crate::error::{AdaptError, Result};
use crate::model_dir::ModelDir;
use crate::recipe::AdaptConfig;

/// The compile-time spec of a config for this model.
pub fn train_spec(model: &ModelDir, cfg: &AdaptConfig) -> TrainSpec {
    TrainSpec {
        input: model.config.input.clone(),
        output: model.config.output.clone(),
        batch_labeled: cfg.batch_labeled,
        batch_unlabeled: cfg.batch_unlabeled,
        loss: cfg.loss.clone(),
        optimizer: cfg.optimizer.clone(),
        trainable: cfg.trainable.clone(),
        batchnorm: cfg.batchnorm,
        emit_gradients: false,
        teacher: cfg.teacher,
        dropout: cfg.dropout,
        seed: cfg.seed,
        cotta: cfg.cotta,
        rotation: cfg.rotation.clone(),
        feature_consistency: cfg.feature_consistency.clone(),
        jigsaw: cfg.jigsaw.clone(),
        corruption: cfg.corruption.clone(),
        inpaint: cfg.inpaint.clone(),
        colorize: cfg.colorize.clone(),
        target: Target::Portable,
    }
}

/// The tuned target of an engine: its own where it runs fieldtune-domain ops (ONNX Runtime
/// on CPU, tract), else ONNX Runtime's standard-op CUDA target.
pub fn tuned_target(engine: &dyn Engine) -> Target {
    match (engine.kind(), engine.runs_fieldtune_ops()) {
        (EngineKind::Tract, _) => Target::Tract,
        (EngineKind::Ort, true) => Target::OrtCpu,
        (EngineKind::Ort, false) => Target::OrtCuda,
    }
}

/// The target a train step for `engine` is compiled for: `choice` (`--target`, `[adapt]
/// target`; none: `FIELDTUNE_TARGET`, else portable), never fieldtune-domain ops where the
/// engine does not run them.
pub fn target_for(engine: &dyn Engine, choice: Option<TargetChoice>) -> Target {
    TargetChoice::resolve(choice, tuned_target(engine), engine.runs_fieldtune_ops())
}

/// What one step reported: every metric of the train step, by name, in the step's order
/// (`loss` first), and the first one that was not finite.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    pub metrics: Vec<(String, f32)>,
    /// `Some((term, value))` when a loss term or metric was NaN or infinite; the resident
    /// state did not move then.
    pub non_finite: Option<(String, f32)>,
}

impl StepOutcome {
    /// Whether the step was applied (all metrics finite).
    pub fn moved(&self) -> bool {
        self.non_finite.is_none()
    }

    /// The value of metric `name`, if the step has it.
    pub fn metric(&self, name: &str) -> Option<f32> {
        self.metrics.iter().find(|(n, _)| n == name).map(|m| m.1)
    }
}

/// Figures of a compiled train step, for logs and reports.
#[derive(Clone, Debug)]
pub struct StepShape {
    /// Nodes in the train-step graph.
    pub nodes: usize,
    /// Floating-point operations of one step (see `TrainStep::flops`).
    pub flops: u64,
    /// The model's input image shape `[c, h, w]`.
    pub image: [usize; 3],
    pub classes: usize,
    /// The target the step was compiled for (portable or an engine's tuned target).
    pub target: Target,
}

impl StepShape {
    pub fn of(step: &TrainStep, target: Target) -> StepShape {
        StepShape {
            target,
            nodes: step.graph.nodes.len(),
            flops: step.flops,
            image: step.image,
            classes: step.classes,
        }
    }
}

/// A train step compiled for a model and a recipe, resident on one engine.
pub struct TrainSession {
    resident: Box<dyn ResidentSession>,
    execution_provider: String,
    metric_names: Vec<String>,
    /// Trainable parameters, in the step's order.
    params: Vec<String>,
    /// Model buffers the step updates (running statistics), in the step's order.
    buffers: Vec<String>,
    /// Initial optimizer state (moments, mean teacher, rotation head state).
    optimizer_init: Vec<(String, Tensor)>,
    /// The model's own values of every parameter and buffer.
    source: HashMap<String, Tensor>,
    /// Whether the recipe keeps a mean teacher (the adapted model is the teacher's copy).
    teacher: bool,
    shape: StepShape,
}

impl TrainSession {
    /// Compiles the train step of `cfg` for `model`, loads it on `engine` (`label` names the
    /// session in errors and logs) and makes its state resident.
    pub fn compile(
        engine: &dyn Engine,
        model: &ModelDir,
        cfg: &AdaptConfig,
        label: &str,
    ) -> Result<TrainSession> {
        let mut spec = train_spec(model, cfg);
        spec.target = target_for(engine, cfg.target);
        let step = model.compile_step(&spec)?;
        let session = engine.load(&encode_model(&step.to_model()), label)?;
        let execution_provider = session.execution_provider().to_string();
        let resident = session.into_resident(step.resident_init(), step.loops())?;
        let shape = StepShape::of(&step, spec.target);
        tracing::debug!(
            session = label,
            target = %spec.target,
            nodes = shape.nodes,
            params = step.params.len(),
            frozen = step.frozen.len(),
            ep = %execution_provider,
            "train step resident"
        );
        let names = |v: &[(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect();
        Ok(TrainSession {
            resident,
            execution_provider,
            metric_names: step.metrics.clone(),
            params: names(&step.params),
            buffers: names(&step.buffers),
            optimizer_init: step.state,
            source: step.params.into_iter().chain(step.buffers).collect(),
            teacher: cfg.teacher.is_some(),
            shape,
        })
    }

    /// The execution provider the train step really got (e.g. `CPUExecutionProvider`, `tract`).
    pub fn execution_provider(&self) -> &str {
        &self.execution_provider
    }

    pub fn shape(&self) -> &StepShape {
        &self.shape
    }

    /// The names of the step's metrics, in the order [`StepOutcome::metrics`] reports them.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// The trainable parameters' names.
    pub fn params(&self) -> &[String] {
        &self.params
    }

    /// The model's own values of every parameter and buffer (what a reset goes back to).
    pub fn source_weights(&self) -> &HashMap<String, Tensor> {
        &self.source
    }

    /// One line for logs: nodes and execution provider.
    pub fn describe(&self) -> String {
        format!(
            "{} train-step nodes on {}",
            self.shape.nodes, self.execution_provider
        )
    }

    /// Runs one step on `feeds` (the batches) at learning rate `lr` and step number `step`.
    /// A step whose metrics are not all finite does not move the resident state.
    pub fn step(&mut self, feeds: &[(&str, &Tensor)], lr: f32, step: usize) -> Result<StepOutcome> {
        let lr = Tensor::scalar_f32(lr);
        let k = Tensor::scalar_f32(step as f32);
        let mut all: Vec<(&str, &Tensor)> = Vec::with_capacity(feeds.len() + 2);
        all.extend_from_slice(feeds);
        all.push((inputs::LR, &lr));
        all.push((inputs::STEP, &k));
        let fetch: Vec<&str> = self.metric_names.iter().map(String::as_str).collect();
        let finite = |v: &[Tensor]| {
            v.iter()
                .all(|t| t.as_f32().is_some_and(|x| x.iter().all(|x| x.is_finite())))
        };
        let (vals, moved) = self.resident.step_if(&all, &fetch, &finite)?;
        let metrics: Vec<(String, f32)> = self
            .metric_names
            .iter()
            .cloned()
            .zip(vals.iter().map(|t| t.as_f32().map_or(f32::NAN, |v| v[0])))
            .collect();
        let non_finite = if moved {
            None
        } else {
            Some(
                metrics
                    .iter()
                    .find(|(_, v)| !v.is_finite())
                    .cloned()
                    .unwrap_or_else(|| ("a metric".into(), f32::NAN)),
            )
        };
        Ok(StepOutcome {
            metrics,
            non_finite,
        })
    }

    /// Loads model weights: each parameter and buffer from `weights`, or from the source
    /// model where `weights` lacks it.
    pub fn load_weights(&mut self, weights: &HashMap<String, Tensor>) -> Result<()> {
        for name in self.params.iter().chain(&self.buffers) {
            let t = weights
                .get(name)
                .or_else(|| self.source.get(name))
                .cloned()
                .expect("the source covers every parameter and buffer");
            self.resident.set_state(name, t)?;
        }
        Ok(())
    }

    /// Puts the optimizer state (moments, mean teacher, ...) back to its initial values.
    pub fn reset_optimizer(&mut self) -> Result<()> {
        for (name, t) in &self.optimizer_init {
            self.resident.set_state(name, t.clone())?;
        }
        Ok(())
    }

    /// Back to the source weights with a fresh optimizer.
    pub fn reset(&mut self) -> Result<()> {
        self.load_weights(&HashMap::new())?;
        self.reset_optimizer()
    }

    /// The current value of one resident tensor.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        self.resident
            .read_state(name)?
            .ok_or_else(|| AdaptError::Mismatch {
                what: name.to_string(),
                reason: "not resident in the train step".into(),
            })
    }

    /// The current parameters and buffers under their own names, as the step trains them.
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        self.params
            .iter()
            .chain(&self.buffers)
            .map(|n| Ok((n.clone(), self.read(n)?)))
            .collect()
    }

    /// Where the adapted model's tensor `name` lives: the mean teacher's copy of a parameter
    /// when the recipe has a teacher, else the parameter itself.
    pub fn model_source(&self, name: &str) -> String {
        if self.teacher && self.params.iter().any(|p| p == name) {
            teacher_name(name)
        } else {
            name.to_string()
        }
    }

    /// The adapted model's tensors: trained parameters (their mean-teacher copies when the
    /// recipe has a teacher) and updated buffers. The pretext heads are not part of the model
    /// and is left out.
    pub fn model_weights(&self) -> Result<HashMap<String, Tensor>> {
        self.model_names()
            .map(|n| Ok((n.clone(), self.read(&self.model_source(n))?)))
            .collect()
    }

    /// Like [`TrainSession::model_weights`], ending the session (no copies where the engine
    /// holds host tensors).
    pub fn into_model_weights(self) -> Result<HashMap<String, Tensor>> {
        let names: Vec<(String, String)> = self
            .model_names()
            .map(|n| (n.clone(), self.model_source(n)))
            .collect();
        let mut all = self.resident.export_state()?;
        names
            .into_iter()
            .map(|(n, src)| {
                let t = all.remove(&src).ok_or_else(|| AdaptError::Mismatch {
                    what: src.clone(),
                    reason: "not resident in the train step".into(),
                })?;
                Ok((n, t))
            })
            .collect()
    }

    fn model_names(&self) -> impl Iterator<Item = &String> {
        self.params
            .iter()
            .filter(|n| !is_head_param(n))
            .chain(&self.buffers)
    }
}
