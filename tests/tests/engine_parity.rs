//! ONNX Runtime and tract agree on the compiled train step (every output, one step), and the
//! hand-built ONNX and PyTorch's dynamic-batch export of the same network (Shape/Gather/
//! Unsqueeze/Concat/Reshape chain, Constant nodes) compile to train steps that compute the same.

use std::collections::HashMap;

use fieldtune_engine::Engine;
use fieldtune_engine::TractEngine;
use fieldtune_graph::{
    compile_inference, compile_train_step, encode_model, inputs, load_model, TrainSpec, Trainable,
};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{axpy, ort, repo_root, rng, uda_batch, uniform};

fn feeds(
    spec: &TrainSpec,
    params: &[(String, Tensor)],
    state: &[(String, Tensor)],
) -> Vec<(String, Tensor)> {
    let batch = uda_batch(spec.batch_labeled, spec.batch_unlabeled, 1, &mut rng(3));
    feeds_with(batch, params, state)
}

/// A random batch of `step`'s image shape: uniform pixels in [-1.5, 1.5], the strong view
/// the weak one plus noise, random labels.
fn random_batch(step: &fieldtune_graph::TrainStep, spec: &TrainSpec) -> [Tensor; 4] {
    use rand::Rng;
    let [c, h, w] = step.image;
    let mut r = rng(5);
    let (bl, bu) = (spec.batch_labeled, spec.batch_unlabeled);
    let xl = uniform(&mut r, &[bl, c, h, w], -1.5, 1.5);
    let labels = (0..bl)
        .map(|_| r.gen_range(0..step.classes as i64))
        .collect();
    let xw = uniform(&mut r, &[bu, c, h, w], -1.5, 1.5);
    let noise = uniform(&mut r, &[bu, c, h, w], -0.3, 0.3);
    let xs = axpy(&xw, &noise, 1.0);
    [xl, Tensor::i64(vec![bl], labels).unwrap(), xw, xs]
}

fn feeds_with(
    [xl, yl, xw, xs]: [Tensor; 4],
    params: &[(String, Tensor)],
    state: &[(String, Tensor)],
) -> Vec<(String, Tensor)> {
    let mut f: Vec<(String, Tensor)> = params.iter().chain(state).cloned().collect();
    f.push((inputs::X_LABELED.into(), xl));
    f.push((inputs::Y_LABELED.into(), yl));
    f.push((inputs::X_WEAK.into(), xw));
    f.push((inputs::X_STRONG.into(), xs));
    f.push((inputs::LR.into(), Tensor::scalar_f32(1e-3)));
    f.push((inputs::STEP.into(), Tensor::scalar_f32(1.0)));
    f
}

fn run(engine: &dyn Engine, bytes: &[u8], feeds: &[(String, Tensor)]) -> HashMap<String, Tensor> {
    let mut s = engine.load(bytes, "train-step").expect("load");
    let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    s.run(&refs).expect("run").into_iter().collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    a.max_rel_diff(b).unwrap_or(f32::INFINITY)
}

#[test]
fn one_train_step_agrees_on_ort_and_tract() {
    let model = load_model(&repo_root().join("models/mnist-cnn/model.onnx")).unwrap();
    // SGD keeps the update linear in the gradient. (Adam's first step is lr * g/|g|, which
    // turns last-bit differences of near-zero gradient elements into lr-sized ones; the
    // PyTorch parity test covers Adam over three steps.)
    let spec = TrainSpec {
        batch_labeled: 8,
        batch_unlabeled: 16,
        optimizer: fieldtune_graph::Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
        },
        ..TrainSpec::default()
    };
    let step = compile_train_step(&model, &spec).unwrap();
    let bytes = encode_model(&step.to_model());
    let f = feeds(&spec, &step.params, &step.state);
    let a = run(&ort(), &bytes, &f);
    let b = run(&TractEngine::new(), &bytes, &f);
    assert_eq!(a.len(), b.len());
    assert_eq!(
        a.len(),
        step.metrics.len() + step.params.len() + step.state.len(),
        "metrics plus new parameters and state"
    );
    for (name, ta) in &a {
        let d = max_rel(ta, &b[name]);
        assert!(
            d < 1e-4,
            "output {name}: ORT and tract differ by {d:.2e} (relative to max(1, |x|))"
        );
    }
}

/// A network of ResNet-50's bottleneck blocks (models/resnet-bottleneck-tiny): its train steps
/// run on tract and agree with ONNX Runtime, with SGD (every output to 1e-4) and with the
/// default AdamW (the loss terms to 1e-4; the new parameters within a few lr of each other,
/// see above), training all parameters and only the BatchNorm affines. tract 0.23.9's
/// PushSliceUp pass left a removed node in the plan of exactly these steps ("eval() called on a
/// Dummy op"), so the tract backend optimises without it (runtime/engine/src/tract_backend.rs).
#[test]
fn bottleneck_resnet_steps_run_on_tract_and_agree_with_ort() {
    let model = load_model(&repo_root().join("models/resnet-bottleneck-tiny/model.onnx")).unwrap();
    let sgd = fieldtune_graph::Optimizer::Sgd {
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
    };
    for trainable in [Trainable::All, Trainable::Bn] {
        for optimizer in [sgd.clone(), fieldtune_graph::Optimizer::default()] {
            let adam = matches!(optimizer, fieldtune_graph::Optimizer::AdamW { .. });
            let spec = TrainSpec {
                batch_labeled: 4,
                batch_unlabeled: 4,
                optimizer,
                trainable: trainable.clone(),
                ..TrainSpec::default()
            };
            let step = compile_train_step(&model, &spec).unwrap();
            let bytes = encode_model(&step.to_model());
            let state: Vec<_> = step.state.iter().chain(&step.buffers).cloned().collect();
            let f = feeds_with(random_batch(&step, &spec), &step.params, &state);
            let a = run(&ort(), &bytes, &f);
            let b = run(&TractEngine::new(), &bytes, &f);
            assert_eq!(a.len(), b.len());
            let metrics: Vec<&str> = step.metrics.iter().map(|m| m.as_str()).collect();
            for (name, ta) in &a {
                let d = max_rel(ta, &b[name]);
                let tol = if adam && !metrics.contains(&name.as_str()) {
                    // Adam's first step is lr * g/|g| per element: 2 lr where a gradient
                    // element near zero changes sign between the engines.
                    2.5e-3
                } else {
                    1e-4
                };
                assert!(
                    d < tol,
                    "{trainable:?} adam {adam}: output {name}: ORT and tract differ by {d:.2e}"
                );
            }
        }
    }
}

#[test]
fn torch_export_and_clean_graph_compile_to_the_same_step() {
    let root = repo_root();
    let clean = load_model(&root.join("models/mnist-cnn/model.onnx")).unwrap();
    let exported = load_model(&root.join("models/mnist-cnn-torch/model.onnx")).unwrap();
    // The exporter's graph really has the shape chain the compiler must fold.
    let ops: Vec<&str> = exported
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    for op in [
        "Shape",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Reshape",
        "Constant",
    ] {
        assert!(ops.contains(&op), "torch export lacks {op}: {ops:?}");
    }
    let spec = TrainSpec {
        batch_labeled: 8,
        batch_unlabeled: 16,
        ..TrainSpec::default()
    };
    let s1 = compile_train_step(&clean, &spec).unwrap();
    let s2 = compile_train_step(&exported, &spec).unwrap();
    // Same weights under the same names.
    let p1: HashMap<_, _> = s1.params.iter().cloned().collect();
    for (n, t) in &s2.params {
        assert_eq!(p1.get(n), Some(t), "parameter {n}");
    }
    let ort = ort();
    let o1 = run(
        &ort,
        &encode_model(&s1.to_model()),
        &feeds(&spec, &s1.params, &s1.state),
    );
    let o2 = run(
        &ort,
        &encode_model(&s2.to_model()),
        &feeds(&spec, &s2.params, &s2.state),
    );
    for (name, t) in &o1 {
        let d = max_rel(t, &o2[name]);
        assert!(d < 1e-5, "{name}: clean {d:.2e} away from the export's");
    }
    // And the static-batch inference graph of the export runs on tract with no Shape op left.
    let inf = compile_inference(&exported, "input", "logits", 4).unwrap();
    assert!(
        !inf.nodes
            .iter()
            .any(|n| n.op == "Shape" || n.op == "Gather"),
        "shape chain not folded"
    );
    let mut s = TractEngine::new()
        .load(&encode_model(&inf.to_model("t")), "inference")
        .unwrap();
    let x = Tensor::zeros_f32(vec![4, 1, 28, 28]);
    assert_eq!(s.run(&[("input", &x)]).unwrap()[0].1.shape(), &[4, 10]);
}

/// ONNX Runtime's resident state (IoBinding: looped outputs become the next step's inputs
/// without host copies) against host-copied state around the same session kind: same
/// metrics and state over several steps; a rejected step leaves the state as it was.
#[test]
fn iobinding_resident_state_equals_host_copied_state() {
    use fieldtune_engine::StatefulSession;
    let model = load_model(&repo_root().join("models/mnist-cnn/model.onnx")).unwrap();
    let spec = TrainSpec {
        batch_labeled: 8,
        batch_unlabeled: 16,
        ..TrainSpec::default()
    };
    let step = compile_train_step(&model, &spec).unwrap();
    let bytes = encode_model(&step.to_model());
    let init: HashMap<String, Tensor> = step.params.iter().chain(&step.state).cloned().collect();
    let engine = ort();
    let mut bound = engine
        .load(&bytes, "train-step")
        .unwrap()
        .into_resident(init.clone(), step.loops())
        .unwrap();
    let mut host = StatefulSession::new(
        engine.load(&bytes, "train-step").unwrap(),
        init,
        step.loops(),
    )
    .unwrap();
    let metrics: Vec<&str> = step.metrics.iter().map(String::as_str).collect();
    let mut r = rng(5);
    for k in 1..=4 {
        let [xl, yl, xw, xs] = uda_batch(8, 16, k, &mut r);
        let (lr, st) = (Tensor::scalar_f32(1e-3), Tensor::scalar_f32(k as f32));
        let feeds = [
            (inputs::X_LABELED, &xl),
            (inputs::Y_LABELED, &yl),
            (inputs::X_WEAK, &xw),
            (inputs::X_STRONG, &xs),
            (inputs::LR, &lr),
            (inputs::STEP, &st),
        ];
        // Step 3 is rejected on both: nothing may move.
        let accept = |_: &[Tensor]| k != 3;
        let before = bound.read_state("features.0.weight").unwrap().unwrap();
        let (a, moved_a) = bound.step_if(&feeds, &metrics, &accept).unwrap();
        let (b, moved_b) = host.step_if(&feeds, &metrics, &accept).unwrap();
        assert_eq!((moved_a, moved_b), (k != 3, k != 3));
        for ((n, x), y) in metrics.iter().zip(&a).zip(&b) {
            assert!(max_rel(x, y) < 1e-6, "step {k}: {n} {x:?} vs {y:?}");
        }
        let after = bound.read_state("features.0.weight").unwrap().unwrap();
        assert_eq!(
            after == before,
            k == 3,
            "step {k}: state moved only when accepted"
        );
    }
    let got = bound.export_state().unwrap();
    for (n, want) in host.into_state() {
        assert!(max_rel(&got[&n], &want) < 1e-6, "{n} after 4 steps");
    }
}
