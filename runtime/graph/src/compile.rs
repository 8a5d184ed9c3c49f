//! `compile_train_step`: inference model + [`TrainSpec`] -> one self-contained train-step
//! graph in standard ai.onnx ops (forward in training mode, the loss, reverse-mode
//! gradients, the optimizer update).
//!
//! Graph inputs: `x_labeled` `[Bl, C, H, W]`, `y_labeled` `[Bl]` (i64), `x_weak` and
//! `x_strong` `[Bu, C, H, W]`, `lr` and `step` (f32 scalars; `step` counts from 1), the
//! trainable parameters under their model names, and the optimizer state. Graph outputs:
//! `loss`, the loss terms and metrics, `grad_norm`, then `new.<param>` for each parameter and
//! `new.<state>` for each optimizer state tensor.

use std::collections::{HashMap, HashSet};

use fieldtune_tensor::Tensor;

use crate::autodiff::{backward, grad_inputs};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::{instantiate, Forward};
use crate::ir::{Elem, Graph, TRAIN_OPSET};
use crate::loss::{
    feature_consistency_terms, uda, CottaStep, FeatureViews, HeadTask, Loops, ProximalStep,
    TeacherStep, UdaInputs,
};
use crate::lower::{BatchNormMode, RunningUpdate};
use crate::optim::update_group;
use crate::proto::ModelProto;
use crate::spec::TrainSpec;
use crate::spec::Trainable;

pub use crate::forward::image_shape;
pub use crate::spec::{inputs, next_name};

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
            // A node with fewer inputs than its op takes is reported when it is built.
            let Some(name) = n.inputs.get(i) else {
                continue;
            };
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

/// Whether the train step of `g` under `trainable` gets the per-channel affine of
/// [`crate::affine`]: `affine`, or `bn` on a model without BatchNormalization (folded into the
/// convolutions at export).
fn affine_wanted(g: &Graph, trainable: &Trainable) -> bool {
    match trainable {
        Trainable::Affine => true,
        Trainable::Bn => !g.nodes.iter().any(|n| n.op == "BatchNormalization"),
        _ => false,
    }
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

/// Floating-point operations of the multiply-add ops in the graph held by `b` (the
/// fieldtune-domain `DepthwiseConvWgrad` counted as the Conv it replaces).
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
            ("DepthwiseConvWgrad", _, Some(dy), Some(w)) => {
                // Each output-gradient element meets every kernel tap once (the multiply-adds
                // of the regrouped Conv it replaces).
                dy.iter().product::<usize>() * w[2..].iter().product::<usize>()
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

/// The model's initializers as the train step declares them.
struct ModelInputs {
    /// Trainable parameters (graph inputs) and their initial values.
    params: Vec<(String, Tensor)>,
    /// BatchNormalization running statistics updated by the step (graph inputs).
    buffers: Vec<(String, Tensor)>,
    /// Float initializers kept as constants.
    frozen: Vec<String>,
    /// Every initializer's name (shared by all forward instances).
    shared: HashSet<String>,
}

/// Declares the trainable parameters and updated buffers of `g` as graph inputs; the other
/// initializers stay constants.
fn declare_model(b: &mut Builder, g: &Graph, spec: &TrainSpec) -> Result<ModelInputs> {
    let (ordered, bn_affine) = trainable_candidates(g);
    let selected: HashSet<String> = spec
        .trainable
        .select(&ordered, &bn_affine)
        .into_iter()
        .collect();
    let running: HashSet<String> = if spec.batchnorm == BatchNormMode::Train {
        running_stats(g).into_iter().collect()
    } else {
        HashSet::new()
    };
    let mut m = ModelInputs {
        params: Vec::new(),
        buffers: Vec::new(),
        frozen: Vec::new(),
        shared: HashSet::new(),
    };
    for (name, t) in &g.initializers {
        m.shared.insert(name.clone());
        if selected.contains(name) {
            b.input(name, Elem::F32, t.shape())?;
            m.params.push((name.clone(), t.clone()));
        } else if running.contains(name) {
            b.input(name, Elem::F32, t.shape())?;
            m.buffers.push((name.clone(), t.clone()));
        } else {
            if t.as_f32().is_some() {
                m.frozen.push(name.clone());
            }
            b.initializer(name, t.clone())?;
        }
    }
    if m.params.is_empty() {
        return Err(GraphError::Spec(empty_selection(
            &spec.trainable,
            &ordered,
            &bn_affine,
        )));
    }
    Ok(m)
}

/// Why a trainable selection matched nothing, and what would: the model's parameter names
/// (the first 12, and how many more) and, for `bn` on a model without BatchNormalization nor
/// convolutions, how to export one that keeps it.
fn empty_selection(t: &Trainable, ordered: &[String], bn_affine: &[String]) -> String {
    let shown: Vec<&str> = ordered.iter().take(12).map(String::as_str).collect();
    let more = ordered.len().saturating_sub(shown.len());
    let names = if ordered.is_empty() {
        "the model has no float parameters".to_string()
    } else if more > 0 {
        format!("parameters: {} (and {more} more)", shown.join(", "))
    } else {
        format!("parameters: {}", shown.join(", "))
    };
    let why = match t {
        Trainable::Bn if bn_affine.is_empty() => {
            "no initializer matches the trainable selection `bn`: the model has no BatchNormalization \
             and no Conv with an initializer weight to put a per-channel affine after \
             (a default torch.onnx.export folds BatchNorm into the convolutions; export with \
             training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False to keep it), \
             or choose --train all, head, last:K or name globs"
                .to_string()
        }
        Trainable::Affine => {
            "no initializer matches the trainable selection `affine`: the model has no Conv with an \
             initializer weight that no BatchNormalization follows"
                .to_string()
        }
        Trainable::Names(globs) => format!(
            "no initializer matches the trainable selection {}",
            globs.join(",")
        ),
        other => format!("no initializer matches the trainable selection {other:?}"),
    };
    format!("{why}; {names}")
}

/// The forward pass with gradients over the concatenation of `parts` (input, batch size);
/// returns each part's logits, the number of classes and the pass's input.
fn gradient_pass(
    b: &mut Builder,
    fwd: &Forward<'_>,
    parts: &[(&str, usize)],
    dropout: Option<(&str, u64)>,
    bn_updates: &mut Vec<RunningUpdate>,
) -> Result<(Vec<String>, usize, String)> {
    let refs: Vec<&str> = parts.iter().map(|p| p.0).collect();
    let xcat = if refs.len() == 1 {
        refs[0].to_string()
    } else {
        b.op("Concat", &refs, vec![crate::ir::attr::int("axis", 0)])?
    };
    let logits = fwd.pass(b, &xcat, "train", Some(bn_updates), None, dropout)?;
    let ls = b.shape(&logits)?;
    if ls.len() != 2 || ls[0] != parts.iter().map(|p| p.1).sum::<usize>() {
        return Err(GraphError::Output {
            output: fwd.output.to_string(),
            reason: format!("expected [batch, classes] logits, found {ls:?}"),
        });
    }
    let mut slices = Vec::new();
    let mut start = 0i64;
    for (_, n) in parts {
        let (s, e, a) = (b.ints(&[start]), b.ints(&[start + *n as i64]), b.ints(&[0]));
        slices.push(if parts.len() == 1 {
            logits.clone()
        } else {
            b.op("Slice", &[&logits, &s, &e, &a], vec![])?
        });
        start += *n as i64;
    }
    Ok((slices, ls[1], xcat))
}

/// Compiles the train step of `model` under `spec`: the forward passes, the objectives'
/// terms (UDA, then CoTTA, feature consistency, then the pretext tasks rotation, jigsaw,
/// corruption, inpaint and colorize when set; the mean teacher gives the targets), the
/// gradients, the optimizer update (then the teacher's EMA and CoTTA's restore) and the
/// outputs.
pub fn compile_train_step(model: &ModelProto, spec: &TrainSpec) -> Result<TrainStep> {
    let mut g = Graph::from_model(model)?;
    if affine_wanted(&g, &spec.trainable) {
        crate::affine::insert(&mut g)?;
    }
    let image = image_shape(&g, &spec.input)?;
    if spec.batch_unlabeled == 0 {
        return Err(GraphError::Spec(
            "batch_unlabeled must be at least 1".into(),
        ));
    }
    let mut b = Builder::new(g.opset.max(TRAIN_OPSET));
    b.set_fieldtune_ops(spec.target.uses_fieldtune_ops());
    let [c, h, w] = image;
    let (bl, bu) = (spec.batch_labeled, spec.batch_unlabeled);

    // Inputs: batches, hyper-parameters, parameters; frozen initializers stay constants.
    let labeled = if bl > 0 {
        let x = b.input(inputs::X_LABELED, Elem::F32, &[bl, c, h, w])?;
        Some((x, b.input(inputs::Y_LABELED, Elem::I64, &[bl])?))
    } else {
        None
    };
    let xw = b.input(inputs::X_WEAK, Elem::F32, &[bu, c, h, w])?;
    let xs = b.input(inputs::X_STRONG, Elem::F32, &[bu, c, h, w])?;
    let cotta = spec
        .cotta
        .map(|ct| CottaStep::new(&mut b, ct, bu, image))
        .transpose()?;
    let lr = b.input(inputs::LR, Elem::F32, &[])?;
    let step = b.input(inputs::STEP, Elem::F32, &[])?;
    let ModelInputs {
        mut params,
        buffers,
        mut frozen,
        shared,
    } = declare_model(&mut b, &g, spec)?;
    let fwd = Forward {
        g: &g,
        input: &spec.input,
        output: &spec.output,
        shared,
        batchnorm: spec.batchnorm,
    };

    // Forward passes: one with gradients over the concatenated training views, and the
    // weak view without gradients unless the entropy terms need it.
    let weak_trains = spec.loss.weak_view_trains();
    let mut parts: Vec<(&str, usize)> = Vec::new();
    if let Some((x, _)) = &labeled {
        parts.push((x, bl));
    }
    if weak_trains {
        parts.push((&xw, bu));
    }
    parts.push((&xs, bu));
    let mut bn_updates: Vec<RunningUpdate> = Vec::new();
    let drop = spec.dropout.then_some((step.as_str(), spec.seed));
    let (slices, classes, xcat) = gradient_pass(&mut b, &fwd, &parts, drop, &mut bn_updates)?;
    let mut it = slices.into_iter();
    let logits_l = labeled.as_ref().map(|_| it.next().expect("labeled slice"));
    let mut teacher = spec
        .teacher
        .map(|t| TeacherStep::new(&mut b, t, &params))
        .transpose()?;
    let weak_grad = weak_trains.then(|| it.next().expect("weak slice"));
    let weak_target = match (&teacher, &weak_grad) {
        (Some(t), _) => t.predict(&mut b, &fwd, &xw)?,
        (None, Some(wg)) => b.stop_gradient(wg)?,
        (None, None) => {
            let lw = fwd.pass(&mut b, &xw, "weak", None, None, None)?;
            b.stop_gradient(&lw)?
        }
    };
    let logits_s = it.next().expect("strong slice");

    // The objectives' terms.
    let mut loss = uda(
        &mut b,
        &spec.loss,
        &UdaInputs {
            labeled: logits_l
                .as_deref()
                .zip(labeled.as_ref().map(|l| l.1.as_str())),
            weak_target: &weak_target,
            weak_grad: weak_grad.as_deref(),
            strong: &logits_s,
            step: &step,
            classes,
        },
    )?;
    if let Some(ct) = &cotta {
        let subst = teacher.as_ref().map(TeacherStep::subst);
        ct.terms(&mut b, &fwd, subst, &weak_target, &logits_s, &mut loss)?;
    }
    if let Some(fc) = &spec.feature_consistency {
        // The weak view's feature: in the gradient pass (after the labeled rows) when it
        // trains, else in the teacher's or the no-gradient weak pass.
        let bl_rows = if labeled.is_some() { bl } else { 0 };
        let weak = match (weak_trains, &teacher) {
            (true, _) => ("train", xcat.as_str(), bl_rows),
            (false, Some(_)) => ("teacher", xw.as_str(), 0),
            (false, None) => ("weak", xw.as_str(), 0),
        };
        let strong = bl_rows + if weak_trains { bu } else { 0 };
        let views = FeatureViews {
            train: ("train", &xcat),
            strong,
            weak,
            bu,
        };
        feature_consistency_terms(&mut b, fc, &fwd, &views, &mut loss)?;
    }
    // The pretext tasks, each with its head (trained, not part of the model).
    let tasks = HeadTask {
        fwd: &fwd,
        xw: &xw,
        image,
        step: &step,
        seed: spec.seed,
        dropout: drop,
    };
    let mut heads = Vec::new();
    if let Some(t) = &spec.rotation {
        heads.extend(tasks.terms(&mut b, t, &mut loss)?);
    }
    if let Some(t) = &spec.jigsaw {
        heads.extend(tasks.terms(&mut b, t, &mut loss)?);
    }
    if let Some(t) = &spec.corruption {
        heads.extend(tasks.terms(&mut b, t, &mut loss)?);
    }
    if let Some(t) = &spec.inpaint {
        heads.extend(tasks.terms(&mut b, t, &mut loss)?);
    }
    if let Some(t) = &spec.colorize {
        heads.extend(tasks.terms(&mut b, t, &mut loss)?);
    }
    let head: Vec<String> = heads.iter().map(|p| p.0.clone()).collect();
    params.extend(heads);

    // Gradients; parameters no gradient reaches are frozen.
    let names: Vec<String> = params.iter().map(|p| p.0.clone()).collect();
    let grads = backward(&mut b, &loss.total, &names)?;
    let mut loops = Loops::default();
    let mut sq_terms = Vec::new();
    if let Some(t) = teacher.as_mut() {
        t.begin_update(&mut b);
    }
    let mut prox = ProximalStep::new(&mut b, spec.loss.proximal_mu);
    let mut trained: Vec<(String, Tensor, String)> = Vec::new();
    for (name, t) in params {
        let Some(gname) = grads.get(&name).cloned().flatten() else {
            if let Some(tc) = teacher.as_mut() {
                tc.keep(&name, &mut loops);
            }
            frozen.push(name);
            continue;
        };
        let gname = match prox.as_mut() {
            Some(p) if !head.contains(&name) => p.grad(&mut b, &name, &t, &gname)?,
            _ => gname,
        };
        let gg = b.op("Mul", &[&gname, &gname], vec![])?;
        let r = t.shape().len() as i64;
        sq_terms.push(b.reduce("ReduceSum", &gg, &(0..r).collect::<Vec<_>>(), false)?);
        if spec.emit_gradients {
            loops.updates.push((format!("grad.{name}"), gname.clone()));
        }
        trained.push((name, t, gname));
    }
    if trained.is_empty() {
        return Err(GraphError::Spec(
            "the loss depends on none of the trainable parameters".into(),
        ));
    }

    // One fused optimizer update for all trained parameters (they share its settings), then
    // the teacher's EMA and CoTTA's restore (of the model's parameters, not the pretext
    // heads) per parameter.
    let group: Vec<(&str, &str, &[usize])> = trained
        .iter()
        .map(|(n, t, g)| (n.as_str(), g.as_str(), t.shape()))
        .collect();
    let up = update_group(&mut b, &spec.optimizer, "params", &group, &lr, &step)?;
    for (s, shape) in up.state_inputs {
        loops.state.push((s, Tensor::zeros_f32(shape)));
    }
    for slot in up.state {
        loops.updates.push((next_name(&slot.input), slot.output));
    }
    let mut kept = Vec::new();
    for ((name, t, _), updated) in trained.into_iter().zip(up.new_params) {
        if let Some(tc) = teacher.as_mut() {
            tc.follow(&mut b, &name, &updated, &mut loops)?;
        }
        let new_param = match &cotta {
            Some(ct) if !head.contains(&name) => {
                ct.restore(&mut b, &name, &t, updated, &step, spec.seed)?
            }
            _ => updated,
        };
        loops.updates.push((next_name(&name), new_param));
        kept.push((name, t));
    }

    if let Some(p) = prox {
        p.finish(&mut b, &mut loss)?;
    }

    // Outputs: loss, terms and metrics, the gradient norm, the looped tensors.
    let mut metrics = vec!["loss".to_string()];
    b.output_as(&loss.total, "loss")?;
    for (n, t) in &loss.metrics {
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
    for (out, src) in &loops.updates {
        b.output_as(src, out)?;
    }
    for [(mean, new_mean), (var, new_var)] in &bn_updates {
        b.output_as(new_mean, &next_name(mean))?;
        b.output_as(new_var, &next_name(var))?;
    }
    let flops = count_flops(&b);
    let state = loops.state;
    let graph = drop_frozen_inputs(b, &g, &frozen, &kept, &state, &buffers);
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

/// Finishes the graph; the graph inputs of parameters frozen for lack of a gradient become
/// initializers again (or go, when nothing reads them).
fn drop_frozen_inputs(
    b: Builder,
    g: &Graph,
    frozen: &[String],
    kept: &[(String, Tensor)],
    state: &[(String, Tensor)],
    buffers: &[(String, Tensor)],
) -> Graph {
    let mut graph = b.finish("fieldtune_train_step");
    let kept_names: HashSet<&str> = kept
        .iter()
        .chain(state)
        .chain(buffers)
        .map(|p| p.0.as_str())
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
    graph
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
