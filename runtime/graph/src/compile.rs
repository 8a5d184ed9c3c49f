//! `compile_train_step`: inference model + [`TrainSpec`] -> one self-contained train-step
//! graph in standard ai.onnx ops (forward in training mode, the loss, reverse-mode
//! gradients, the optimizer update).
//!
//! Graph inputs: `x_labeled` [Bl,C,H,W], `y_labeled` [Bl] (i64), `x_weak` and `x_strong`
//! [Bu,C,H,W], `lr` and `step` (f32 scalars; `step` counts from 1), the trainable
//! parameters under their model names, and the optimizer state. Graph outputs: `loss`, the
//! loss terms and metrics, `grad_norm`, then `new.<param>` for each parameter and
//! `new.<state>` for each optimizer state tensor.

use std::collections::{HashMap, HashSet};

use fieldtune_tensor::Tensor;

use crate::autodiff::{backward, grad_inputs};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{Dim, Elem, Graph, Node, TRAIN_OPSET};
use crate::loss::{uda, UdaInputs};
use crate::lower::{BatchNormMode, RunningUpdate};
use crate::optim::update_group;
use crate::proto::ModelProto;
use crate::random;
use crate::spec::{teacher_name, TrainSpec, ROTATION_BIAS, ROTATION_WEIGHT};

/// Names of the train step's batch and hyper-parameter inputs.
pub mod inputs {
    pub const X_LABELED: &str = "x_labeled";
    pub const Y_LABELED: &str = "y_labeled";
    pub const X_WEAK: &str = "x_weak";
    pub const X_STRONG: &str = "x_strong";
    /// CoTTA's augmented views of the unlabeled batch for the teacher, [N * Bu, C, H, W]
    /// (view-major).
    pub const X_TEACHER_AUG: &str = "x_teacher_aug";
    pub const LR: &str = "lr";
    pub const STEP: &str = "step";
}

/// Output name of a looped tensor's next value.
pub fn next_name(name: &str) -> String {
    format!("new.{name}")
}

/// A compiled train step and what a runner needs to drive it.
#[derive(Clone, Debug)]
pub struct TrainStep {
    pub graph: Graph,
    /// Trainable parameters and their initial values (graph inputs, looped).
    pub params: Vec<(String, Tensor)>,
    /// Optimizer state and its initial values (graph inputs, looped).
    pub state: Vec<(String, Tensor)>,
    /// Model buffers the step updates without gradients (BatchNormalization running
    /// statistics in `train` mode) and their initial values (graph inputs, looped; they belong
    /// to the model like the parameters).
    pub buffers: Vec<(String, Tensor)>,
    /// Floating-point operations of one step (2 per multiply-add of Conv, ConvTranspose,
    /// Gemm and MatMul; other ops are not counted).
    pub flops: u64,
    /// Scalar outputs: `loss` first, then terms and metrics.
    pub metrics: Vec<String>,
    /// Float initializers that stay frozen (not selected, or no gradient reaches them).
    pub frozen: Vec<String>,
    /// Image input shape [C, H, W] and number of classes.
    pub image: [usize; 3],
    pub classes: usize,
}

impl TrainStep {
    /// (output, input) pairs: after a step each output replaces its input.
    pub fn loops(&self) -> Vec<(String, String)> {
        self.params
            .iter()
            .chain(&self.state)
            .chain(&self.buffers)
            .map(|(n, _)| (next_name(n), n.clone()))
            .collect()
    }

    /// Initial values of everything resident between steps: parameters, optimizer state and
    /// buffers.
    pub fn resident_init(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .chain(&self.state)
            .chain(&self.buffers)
            .cloned()
            .collect()
    }

    /// The train-step graph as an ONNX model.
    pub fn to_model(&self) -> ModelProto {
        self.graph.to_model("fieldtune train-step compiler")
    }
}

/// Image shape [C,H,W] of the model input `name`; the batch dim may be symbolic.
pub fn image_shape(g: &Graph, name: &str) -> Result<[usize; 3]> {
    let io = g
        .inputs
        .iter()
        .find(|i| i.name == name)
        .ok_or_else(|| GraphError::Input {
            input: name.into(),
            reason: format!(
                "not an input of the model (inputs: {})",
                g.inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    if io.elem != Elem::F32 || io.dims.len() != 4 {
        return Err(GraphError::Input {
            input: name.into(),
            reason: format!(
                "expected a float32 NCHW tensor, found {:?} {:?}",
                io.elem, io.dims
            ),
        });
    }
    let mut s = [0; 3];
    for (i, d) in io.dims[1..].iter().enumerate() {
        s[i] = match d {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(p) => {
                return Err(GraphError::Input {
                    input: name.into(),
                    reason: format!(
                        "dimension {} is symbolic ('{p}'); only the batch may be",
                        i + 1
                    ),
                })
            }
        };
    }
    Ok(s)
}

/// How one forward instance treats BatchNormalization.
struct BnLowering<'a> {
    mode: BatchNormMode,
    /// Where the running-statistics updates go (`None`: this instance does not update them).
    updates: Option<&'a mut Vec<RunningUpdate>>,
}

/// Adds one forward instance of `g` reading `x`, naming its tensors under `prefix`;
/// returns the name of `output` in this instance. BatchNormalization nodes are lowered when
/// `bn` is given and kept as they are otherwise (inference).
#[allow(clippy::too_many_arguments)]
fn instantiate(
    b: &mut Builder,
    g: &Graph,
    input: &str,
    x: &str,
    output: &str,
    prefix: &str,
    shared: &HashSet<String>,
    mut bn: Option<BnLowering<'_>>,
    subst: Option<&HashMap<String, String>>,
    dropout: Option<(&str, u64)>,
) -> Result<String> {
    // Identity nodes over a shared tensor (exporters emit them when they deduplicate equal
    // initializers) become aliases, so gradients accumulate on the tensor itself.
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for n in &g.nodes {
        if n.op == "Identity" && n.inputs.len() == 1 && n.outputs.len() == 1 {
            let src = alias
                .get(n.inputs[0].as_str())
                .copied()
                .unwrap_or(&n.inputs[0]);
            if shared.contains(src) {
                alias.insert(&n.outputs[0], src);
            }
        }
    }
    let rename = |n: &str| -> String {
        let n = alias.get(n).copied().unwrap_or(n);
        if n.is_empty() {
            String::new()
        } else if shared.contains(n) {
            subst
                .and_then(|m| m.get(n))
                .cloned()
                .unwrap_or_else(|| n.to_string())
        } else if n == input {
            x.to_string()
        } else {
            format!("{prefix}/{n}")
        }
    };
    for n in &g.nodes {
        if n.outputs.len() == 1 && alias.contains_key(n.outputs[0].as_str()) {
            continue;
        }
        let node = Node {
            name: format!("{prefix}/{}", n.name),
            op: n.op.clone(),
            domain: n.domain.clone(),
            inputs: n.inputs.iter().map(|i| rename(i)).collect(),
            outputs: n.outputs.iter().map(|o| rename(o)).collect(),
            attrs: n.attrs.clone(),
        };
        if let (Some((step, seed)), "Dropout") = (dropout, n.op.as_str()) {
            // Per-node streams: the node's name, or its (unique) output when it has none.
            let id = if n.name.is_empty() {
                &n.outputs[0]
            } else {
                &n.name
            };
            let key = format!("dropout/{prefix}/{id}");
            random::dropout(b, &node, step, seed, &key)?;
            continue;
        }
        match bn.as_mut() {
            Some(low) if n.op == "BatchNormalization" => {
                if let Some(up) = crate::lower::batch_norm(b, &node, low.mode)? {
                    if let Some(list) = low.updates.as_mut() {
                        list.push(up);
                    }
                }
            }
            _ => b.add(node)?,
        }
    }
    if !g.outputs.iter().any(|o| o.name == output)
        && !g
            .nodes
            .iter()
            .any(|n| n.outputs.iter().any(|o| o == output))
    {
        return Err(GraphError::Input {
            input: output.into(),
            reason: "not an output of the model".into(),
        });
    }
    Ok(rename(output))
}

/// Float initializers with at least one dimension that feed a differentiable input of some
/// node (candidates to train), in order of first use; and the BatchNormalization scales and
/// biases among them.
fn trainable_candidates(g: &Graph) -> (Vec<String>, Vec<String>) {
    let inits = g.initializer_map();
    let is_param = |n: &str| {
        inits
            .get(n)
            .is_some_and(|t| t.as_f32().is_some() && !t.shape().is_empty())
    };
    let mut ordered: Vec<String> = Vec::new();
    let mut bn = Vec::new();
    for n in &g.nodes {
        let ix = if n.op == "BatchNormalization" {
            vec![1, 2]
        } else {
            grad_inputs(n).unwrap_or_default()
        };
        for i in ix {
            let name = &n.inputs[i];
            if is_param(name) && !ordered.contains(name) {
                ordered.push(name.clone());
            }
            if n.op == "BatchNormalization" && is_param(name) && !bn.contains(name) {
                bn.push(name.clone());
            }
        }
    }
    (ordered, bn)
}

/// The running mean and variance initializers of the model's BatchNormalization nodes.
fn running_stats(g: &Graph) -> Vec<String> {
    let inits = g.initializer_map();
    g.nodes
        .iter()
        .filter(|n| n.op == "BatchNormalization")
        .flat_map(|n| [n.input(3), n.input(4)])
        .flatten()
        .filter(|n| inits.contains_key(n))
        .map(str::to_string)
        .collect()
}

/// Floating-point operations of the multiply-add ops in the graph held by `b`.
fn count_flops(b: &Builder) -> u64 {
    let mut total = 0u64;
    for n in b.nodes() {
        let shape = |i: usize| n.inputs.get(i).and_then(|t| b.shape(t).ok());
        let out = n.outputs.first().and_then(|t| b.shape(t).ok());
        let macs = match (n.op.as_str(), shape(0), shape(1), out) {
            ("Conv", _, Some(w), Some(y)) => {
                // Each output element: (C_in / group) * kernel multiply-adds.
                y.iter().product::<usize>() * w[1..].iter().product::<usize>()
            }
            ("ConvTranspose", Some(x), Some(w), _) => {
                // Each input element scatters into (C_out / group) * kernel outputs.
                x.iter().product::<usize>() * w[1..].iter().product::<usize>()
            }
            ("Gemm" | "MatMul", Some(a), _, Some(y)) => {
                let k = if n.op == "Gemm" && n.int("transA", 0) != 0 {
                    a[0]
                } else {
                    a[a.len() - 1]
                };
                y.iter().product::<usize>() * k
            }
            _ => 0,
        };
        total += 2 * macs as u64;
    }
    total
}

/// Compiles the train step of `model` under `spec`.
pub fn compile_train_step(model: &ModelProto, spec: &TrainSpec) -> Result<TrainStep> {
    let g = Graph::from_model(model)?;
    let image = image_shape(&g, &spec.input)?;
    if spec.batch_unlabeled == 0 {
        return Err(GraphError::Spec(
            "batch_unlabeled must be at least 1".into(),
        ));
    }
    let opset = g.opset.max(TRAIN_OPSET);
    let mut b = Builder::new(opset);
    let [c, h, w] = image;
    let (bl, bu) = (spec.batch_labeled, spec.batch_unlabeled);

    // Inputs: batches, hyper-parameters, parameters; frozen initializers stay constants.
    let xl = if bl > 0 {
        Some(b.input(inputs::X_LABELED, Elem::F32, &[bl, c, h, w])?)
    } else {
        None
    };
    let yl = if bl > 0 {
        Some(b.input(inputs::Y_LABELED, Elem::I64, &[bl])?)
    } else {
        None
    };
    let xw = b.input(inputs::X_WEAK, Elem::F32, &[bu, c, h, w])?;
    let xs = b.input(inputs::X_STRONG, Elem::F32, &[bu, c, h, w])?;
    let xa = match &spec.cotta {
        Some(ct) => {
            if ct.views == 0 {
                return Err(GraphError::Spec("cotta.views must be at least 1".into()));
            }
            if !(0.0..1.0).contains(&ct.restore) {
                return Err(GraphError::Spec(format!(
                    "cotta.restore = {} must be in [0, 1)",
                    ct.restore
                )));
            }
            Some(b.input(inputs::X_TEACHER_AUG, Elem::F32, &[ct.views * bu, c, h, w])?)
        }
        None => None,
    };
    let lr = b.input(inputs::LR, Elem::F32, &[])?;
    let step = b.input(inputs::STEP, Elem::F32, &[])?;
    let (ordered, bn_affine) = trainable_candidates(&g);
    let selected: HashSet<String> = spec
        .trainable
        .select(&ordered, &bn_affine)
        .into_iter()
        .collect();
    let running: HashSet<String> = if spec.batchnorm == BatchNormMode::Train {
        running_stats(&g).into_iter().collect()
    } else {
        HashSet::new()
    };
    let mut params = Vec::new();
    let mut buffers = Vec::new();
    let mut frozen = Vec::new();
    let mut shared = HashSet::new();
    for (name, t) in &g.initializers {
        shared.insert(name.clone());
        if selected.contains(name) {
            b.input(name, Elem::F32, t.shape())?;
            params.push((name.clone(), t.clone()));
        } else if running.contains(name) {
            b.input(name, Elem::F32, t.shape())?;
            buffers.push((name.clone(), t.clone()));
        } else {
            if t.as_f32().is_some() {
                frozen.push(name.clone());
            }
            b.initializer(name, t.clone())?;
        }
    }
    if params.is_empty() {
        return Err(GraphError::Spec(
            "no initializer matches the trainable selection".into(),
        ));
    }

    // Forward passes: one with gradients over the concatenated training views, and the
    // weak view without gradients unless the entropy terms need it.
    let weak_trains = spec.loss.weak_view_trains();
    let mut parts: Vec<(&str, usize)> = Vec::new();
    if let Some(x) = &xl {
        parts.push((x, bl));
    }
    if weak_trains {
        parts.push((&xw, bu));
    }
    parts.push((&xs, bu));
    let refs: Vec<&str> = parts.iter().map(|p| p.0).collect();
    let xcat = if refs.len() == 1 {
        refs[0].to_string()
    } else {
        b.op("Concat", &refs, vec![crate::ir::attr::int("axis", 0)])?
    };
    let mut bn_updates: Vec<RunningUpdate> = Vec::new();
    let drop = spec.dropout.then_some((step.as_str(), spec.seed));
    let logits = instantiate(
        &mut b,
        &g,
        &spec.input,
        &xcat,
        &spec.output,
        "train",
        &shared,
        Some(BnLowering {
            mode: spec.batchnorm,
            updates: Some(&mut bn_updates),
        }),
        None,
        drop,
    )?;
    let ls = b.shape(&logits)?;
    if ls.len() != 2 || ls[0] != parts.iter().map(|p| p.1).sum::<usize>() {
        return Err(GraphError::Input {
            input: spec.output.clone(),
            reason: format!("expected [batch, classes] logits, found {ls:?}"),
        });
    }
    let classes = ls[1];
    let mut slices = Vec::new();
    let mut start = 0i64;
    for (_, n) in &parts {
        let (s, e, a) = (b.ints(&[start]), b.ints(&[start + *n as i64]), b.ints(&[0]));
        slices.push(if parts.len() == 1 {
            logits.clone()
        } else {
            b.op("Slice", &[&logits, &s, &e, &a], vec![])?
        });
        start += *n as i64;
    }
    let mut it = slices.into_iter();
    let logits_l = xl.as_ref().map(|_| it.next().expect("labeled slice"));
    // The mean teacher's copies of the trainable parameters (looped state).
    let mut teacher_state: Vec<(String, Tensor)> = Vec::new();
    let mut subst: HashMap<String, String> = HashMap::new();
    if spec.teacher.is_some() {
        for (name, t) in &params {
            let tn = teacher_name(name);
            b.input(&tn, Elem::F32, t.shape())?;
            teacher_state.push((tn.clone(), t.clone()));
            subst.insert(name.clone(), tn);
        }
    }
    let (weak_grad, weak_target) = if spec.teacher.is_some() {
        let wg = if weak_trains {
            Some(it.next().expect("weak slice"))
        } else {
            None
        };
        let lt = instantiate(
            &mut b,
            &g,
            &spec.input,
            &xw,
            &spec.output,
            "teacher",
            &shared,
            Some(BnLowering {
                mode: spec.batchnorm,
                updates: None,
            }),
            Some(&subst),
            None,
        )?;
        (wg, b.stop_gradient(&lt)?)
    } else if weak_trains {
        let wg = it.next().expect("weak slice");
        let wt = b.stop_gradient(&wg)?;
        (Some(wg), wt)
    } else {
        let lw = instantiate(
            &mut b,
            &g,
            &spec.input,
            &xw,
            &spec.output,
            "weak",
            &shared,
            Some(BnLowering {
                mode: spec.batchnorm,
                updates: None,
            }),
            None,
            None,
        )?;
        let wt = b.stop_gradient(&lw)?;
        (None, wt)
    };
    let logits_s = it.next().expect("strong slice");

    let terms = uda(
        &mut b,
        &spec.loss,
        &UdaInputs {
            labeled: logits_l.as_deref().zip(yl.as_deref()),
            weak_target: &weak_target,
            weak_grad: weak_grad.as_deref(),
            strong: &logits_s,
            step: &step,
            classes,
        },
    )?;

    let mut total = terms.total.clone();
    let mut metric_list = terms.metrics.clone();
    let add_term = |b: &mut Builder, total: &mut String, t: &str, w: f32| -> Result<()> {
        let ws = b.scalar(w);
        let t = b.op("Mul", &[t, &ws], vec![])?;
        *total = b.op("Add", &[total.as_str(), &t], vec![])?;
        Ok(())
    };

    // CoTTA: the teacher's predictions on the augmented views.
    if let (Some(ct), Some(xa)) = (&spec.cotta, &xa) {
        let la = instantiate(
            &mut b,
            &g,
            &spec.input,
            xa,
            &spec.output,
            "teacher_aug",
            &shared,
            Some(BnLowering {
                mode: spec.batchnorm,
                updates: None,
            }),
            spec.teacher.is_some().then_some(&subst),
            None,
        )?;
        let la = b.stop_gradient(&la)?;
        let (loss, rate) = crate::loss::cotta(
            &mut b,
            &weak_target,
            &la,
            &logits_s,
            ct.views,
            ct.confidence_threshold,
        )?;
        if ct.weight != 0.0 {
            add_term(&mut b, &mut total, &loss, ct.weight)?;
        }
        metric_list.push(("loss_cotta", loss));
        metric_list.push(("cotta_augmented_rate", rate));
    }

    // Rotation prediction: the weak view rotated 0/90/180/270 degrees, the model up to the
    // feature tensor, a linear head over 4 classes.
    let mut head: Vec<String> = Vec::new();
    if let Some(rot) = &spec.rotation {
        if rot.weight == 0.0 {
            return Err(GraphError::Spec(
                "rotation.weight is 0 (turn the rotation task off instead)".into(),
            ));
        }
        if h != w {
            return Err(GraphError::Input {
                input: spec.input.clone(),
                reason: format!("rotation prediction needs square images, found {h}x{w}"),
            });
        }
        let feature = match &rot.feature {
            Some(f) => f.clone(),
            None => default_rotation_feature(&g)?,
        };
        let xr = rotations(&mut b, &xw, h)?;
        instantiate(
            &mut b,
            &g,
            &spec.input,
            &xr,
            &spec.output,
            "rotation",
            &shared,
            Some(BnLowering {
                mode: spec.batchnorm,
                updates: None,
            }),
            None,
            drop,
        )?;
        let feat = if feature == spec.input {
            xr.clone()
        } else {
            format!("rotation/{feature}")
        };
        let fs = b.shape(&feat).map_err(|_| {
            GraphError::Spec(format!(
                "rotation.feature '{feature}' is not a tensor the model computes"
            ))
        })?;
        let feat = match fs.len() {
            2 => feat,
            4 => {
                let p = b.op("GlobalAveragePool", &[&feat], vec![])?;
                b.op("Flatten", &[&p], vec![crate::ir::attr::int("axis", 1)])?
            }
            _ => b.op("Flatten", &[&feat], vec![crate::ir::attr::int("axis", 1)])?,
        };
        let d = b.shape(&feat)?[1];
        let bound = 1.0 / (d as f32).sqrt();
        let init = |key: &str, n: usize| -> Vec<f32> {
            random::reference(spec.seed, key, 0, n)
                .into_iter()
                .map(|u| (2.0 * u - 1.0) * bound)
                .collect()
        };
        let wt = Tensor::f32(vec![4, d], init(ROTATION_WEIGHT, 4 * d)).expect("sized");
        let bt = Tensor::f32(vec![4], init(ROTATION_BIAS, 4)).expect("sized");
        let wn = b.input(ROTATION_WEIGHT, Elem::F32, &[4, d])?;
        let bn_ = b.input(ROTATION_BIAS, Elem::F32, &[4])?;
        params.push((wn.clone(), wt));
        params.push((bn_.clone(), bt));
        head = vec![wn.clone(), bn_.clone()];
        let lr_ = b.op(
            "Gemm",
            &[&feat, &wn, &bn_],
            vec![crate::ir::attr::int("transB", 1)],
        )?;
        let labels: Vec<i64> = (0..4 * bu).map(|i| (i / bu) as i64).collect();
        let labels = b.constant(Tensor::i64(vec![4 * bu], labels).expect("sized"));
        let (ce, acc) = crate::loss::cross_entropy(&mut b, &lr_, &labels)?;
        add_term(&mut b, &mut total, &ce, rot.weight)?;
        metric_list.push(("loss_rotation", ce));
        metric_list.push(("rotation_accuracy", acc));
    }

    // Gradients and the update.
    let names: Vec<String> = params.iter().map(|p| p.0.clone()).collect();
    let grads = backward(&mut b, &total, &names)?;
    let mut kept = Vec::new();
    let mut state = Vec::new();
    let mut sq_terms = Vec::new();
    let mut updates: Vec<(String, String)> = Vec::new();
    let ema = spec
        .teacher
        .map(|t| (b.scalar(t.ema), b.scalar(1.0 - t.ema)));
    // Parameters that a gradient reaches; the rest are frozen.
    let mut trained: Vec<(String, Tensor, String)> = Vec::new();
    for (name, t) in params {
        let Some(gname) = grads.get(&name).cloned().flatten() else {
            let tn = teacher_name(&name);
            if let Some(pos) = teacher_state.iter().position(|(n, _)| n == &tn) {
                // The teacher still reads its copy; it stays as it is.
                updates.push((next_name(&tn), tn.clone()));
                state.push(teacher_state.swap_remove(pos));
            }
            frozen.push(name);
            continue;
        };
        let gg = b.op("Mul", &[&gname, &gname], vec![])?;
        let r = t.shape().len() as i64;
        sq_terms.push(b.reduce("ReduceSum", &gg, &(0..r).collect::<Vec<_>>(), false)?);
        if spec.emit_gradients {
            updates.push((format!("grad.{name}"), gname.clone()));
        }
        trained.push((name, t, gname));
    }
    if trained.is_empty() {
        return Err(GraphError::Spec(
            "the loss depends on none of the trainable parameters".into(),
        ));
    }
    // One fused optimizer update for all trained parameters (they share its settings).
    let group: Vec<(&str, &str, &[usize])> = trained
        .iter()
        .map(|(n, t, g)| (n.as_str(), g.as_str(), t.shape()))
        .collect();
    let up = update_group(&mut b, &spec.optimizer, "params", &group, &lr, &step)?;
    for (s, shape) in up.state_inputs {
        state.push((s, Tensor::zeros_f32(shape)));
    }
    for slot in up.state {
        updates.push((next_name(&slot.input), slot.output));
    }
    for ((name, t, _), updated) in trained.into_iter().zip(up.new_params) {
        let tn = teacher_name(&name);
        if let (Some((keep, take)), Some(pos)) =
            (&ema, teacher_state.iter().position(|(n, _)| n == &tn))
        {
            let a = b.op("Mul", &[&tn, keep], vec![])?;
            let c = b.op("Mul", &[&updated, take], vec![])?;
            let nt = b.op("Add", &[&a, &c], vec![])?;
            updates.push((next_name(&tn), nt));
            state.push(teacher_state.swap_remove(pos));
        }
        // CoTTA's stochastic restore of the model's parameters (not the rotation head).
        let new_param = match spec.cotta {
            Some(ct) if ct.restore > 0.0 && !head.contains(&name) => {
                let src = b.constant(t.clone());
                let u = random::uniform(
                    &mut b,
                    t.shape(),
                    &step,
                    spec.seed,
                    &format!("restore/{name}"),
                )?;
                let p = b.scalar(ct.restore);
                let m = b.op("Less", &[&u, &p], vec![])?;
                b.op("Where", &[&m, &src, &updated], vec![])?
            }
            _ => updated,
        };
        updates.push((next_name(&name), new_param));
        kept.push((name, t));
    }
    let mut metrics = vec!["loss".to_string()];
    b.output_as(&total, "loss")?;
    for (n, t) in &metric_list {
        b.output_as(t, n)?;
        metrics.push(n.to_string());
    }
    let mut norm2 = sq_terms[0].clone();
    for t in &sq_terms[1..] {
        norm2 = b.op("Add", &[&norm2, t], vec![])?;
    }
    let gn = b.op("Sqrt", &[&norm2], vec![])?;
    b.output_as(&gn, "grad_norm")?;
    metrics.push("grad_norm".into());
    for (out, src) in &updates {
        b.output_as(src, out)?;
    }
    for [(mean, new_mean), (var, new_var)] in &bn_updates {
        b.output_as(new_mean, &next_name(mean))?;
        b.output_as(new_var, &next_name(var))?;
    }
    let flops = count_flops(&b);
    // The parameters' graph inputs of frozen-for-lack-of-gradient tensors are dropped.
    let mut graph = b.finish("fieldtune_train_step");
    let kept_names: HashSet<&str> = kept
        .iter()
        .map(|p| p.0.as_str())
        .chain(state.iter().map(|s| s.0.as_str()))
        .chain(buffers.iter().map(|s| s.0.as_str()))
        .collect();
    let frozen_inputs: HashMap<String, Tensor> = g
        .initializers
        .iter()
        .filter(|(n, _)| frozen.contains(n) && graph.inputs.iter().any(|i| &i.name == n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    graph
        .inputs
        .retain(|i| !frozen_inputs.contains_key(&i.name) || kept_names.contains(i.name.as_str()));
    for (n, t) in frozen_inputs {
        if graph.nodes.iter().any(|nd| nd.inputs.contains(&n)) {
            graph.initializers.push((n, t));
        }
    }
    Ok(TrainStep {
        graph,
        params: kept,
        state,
        buffers,
        flops,
        metrics,
        frozen,
        image,
        classes,
    })
}

/// The default feature of the rotation head: the input of the model's last Gemm or MatMul
/// (the classifier's input).
fn default_rotation_feature(g: &Graph) -> Result<String> {
    g.nodes
        .iter()
        .rev()
        .find(|n| n.op == "Gemm" || n.op == "MatMul")
        .and_then(|n| n.inputs.first().cloned())
        .ok_or_else(|| {
            GraphError::Spec(
                "rotation.feature is not set and the model has no Gemm or MatMul whose input could be the feature"
                    .into(),
            )
        })
}

/// `x` [B, C, S, S] and its rotations by 90, 180 and 270 degrees in the (H, W) plane, as
/// `np.rot90(x, k, axes=(2, 3))` for k = 0..3, concatenated along the batch: [4B, C, S, S].
fn rotations(b: &mut Builder, x: &str, side: usize) -> Result<String> {
    let flip = |b: &mut Builder, x: &str, axis: i64| -> Result<String> {
        let (s, e, a, st) = (
            b.ints(&[-1]),
            b.ints(&[-(side as i64) - 1]),
            b.ints(&[axis]),
            b.ints(&[-1]),
        );
        b.op("Slice", &[x, &s, &e, &a, &st], vec![])
    };
    let perm = vec![crate::ir::attr::ints("perm", &[0, 1, 3, 2])];
    let fw = flip(b, x, 3)?;
    let r1 = b.op("Transpose", &[&fw], perm.clone())?;
    let fh = flip(b, x, 2)?;
    let r2 = flip(b, &fh, 3)?;
    let t = b.op("Transpose", &[x], perm)?;
    let r3 = flip(b, &t, 3)?;
    b.op(
        "Concat",
        &[x, &r1, &r2, &r3],
        vec![crate::ir::attr::int("axis", 0)],
    )
}

/// Compiles the plain inference graph of `model` at a static batch (folded shapes, no
/// training nodes); used for engine parity checks and to inspect what the compiler sees.
pub fn compile_inference(
    model: &ModelProto,
    input: &str,
    output: &str,
    batch: usize,
) -> Result<Graph> {
    let g = Graph::from_model(model)?;
    let [c, h, w] = image_shape(&g, input)?;
    let mut b = Builder::new(g.opset);
    let x = b.input(input, Elem::F32, &[batch, c, h, w])?;
    let mut shared = HashSet::new();
    for (name, t) in &g.initializers {
        shared.insert(name.clone());
        b.initializer(name, t.clone())?;
    }
    let y = instantiate(
        &mut b, &g, input, &x, output, "infer", &shared, None, None, None,
    )?;
    b.output_as(&y, output)?;
    Ok(b.finish("fieldtune_inference"))
}
