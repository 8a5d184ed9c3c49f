//! The per-channel affine of folded-BatchNorm models (runtime/graph/src/affine.rs) on the
//! committed default export models/fmnist-cnn-folded: inserting it changes no output on either
//! engine, its gradients match finite differences, a trained affine folded back into the
//! convolutions gives the trained graph's outputs with the input's graph, and selections that
//! match nothing say what exists.

use std::collections::{HashMap, HashSet};

use fieldtune_engine::Engine;
use fieldtune_graph::affine::{fold_into_model, insert, is_affine_param};
use fieldtune_graph::proto::ModelProto;
use fieldtune_graph::{
    compile_train_step, encode_model, inputs, load_model, with_initializers, Graph, Optimizer,
    TrainSpec, Trainable, UdaLoss,
};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{engines, gradcheck, ort, repo_root, rng, uda_batch, uniform};

fn folded() -> ModelProto {
    load_model(&repo_root().join("models/fmnist-cnn-folded/model.onnx")).unwrap()
}

fn with_affine(model: &ModelProto) -> (ModelProto, Vec<String>) {
    let mut g = Graph::from_model(model).unwrap();
    let added = insert(&mut g).unwrap();
    (g.to_model("affine test"), added)
}

fn logits(engine: &dyn Engine, model: &ModelProto, x: &Tensor) -> Tensor {
    let mut s = engine.load(&encode_model(model), "affine test").unwrap();
    s.run(&[("input", x)]).unwrap().remove(0).1
}

fn images(n: usize) -> Tensor {
    uda_batch(1, n, 2, &mut rng(5))[2].clone()
}

#[test]
fn inserted_affine_is_the_identity_on_both_engines() {
    let model = folded();
    let (inserted, added) = with_affine(&model);
    assert_eq!(
        added.len(),
        6,
        "a scale and a shift after each of 3 convolutions"
    );
    assert!(added.iter().all(|n| is_affine_param(n)));
    let x = images(8);
    for e in engines() {
        let (a, b) = (
            logits(e.as_ref(), &model, &x),
            logits(e.as_ref(), &inserted, &x),
        );
        let d = a.max_rel_diff(&b).unwrap();
        assert!(
            d <= 1e-6,
            "{}: identity affine changed the logits by {d:.2e}",
            e.describe()
        );
    }
}

/// One SGD step of cross-entropy on the affine parameters only (`--train bn` on a model without
/// BatchNormalization), on ONNX Runtime; returns the new parameter values.
fn trained_affine(model: &ModelProto) -> HashMap<String, Tensor> {
    let spec = TrainSpec {
        batch_labeled: 8,
        batch_unlabeled: 8,
        trainable: Trainable::Bn,
        optimizer: Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        ..TrainSpec::default()
    };
    let step = compile_train_step(model, &spec).unwrap();
    let names: Vec<&str> = step.params.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names.len(), 6, "trains the affine only: {names:?}");
    assert!(names.iter().all(|n| is_affine_param(n)), "{names:?}");
    let [xl, yl, xw, xs] = uda_batch(8, 8, 1, &mut rng(3));
    let mut feeds: Vec<(String, Tensor)> = step.params.iter().chain(&step.state).cloned().collect();
    feeds.extend([
        (inputs::X_LABELED.to_string(), xl),
        (inputs::Y_LABELED.to_string(), yl),
        (inputs::X_WEAK.to_string(), xw),
        (inputs::X_STRONG.to_string(), xs),
        (inputs::LR.to_string(), Tensor::scalar_f32(0.05)),
        (inputs::STEP.to_string(), Tensor::scalar_f32(1.0)),
    ]);
    let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut s = ort()
        .load(&encode_model(&step.to_model()), "train-step")
        .unwrap();
    let out: HashMap<String, Tensor> = s.run(&refs).unwrap().into_iter().collect();
    names
        .iter()
        .map(|n| (n.to_string(), out[&format!("new.{n}")].clone()))
        .collect()
}

#[test]
fn folding_back_gives_the_trained_graphs_outputs_and_the_inputs_graph() {
    let model = folded();
    let trained = trained_affine(&model);
    let moved = trained
        .iter()
        .filter(|(n, _)| n.ends_with(".affine_scale"))
        .flat_map(|(_, t)| t.as_f32().unwrap().to_vec())
        .map(|v| (v - 1.0).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "the step hardly moved the scales ({moved:.1e})"
    );
    let (inserted, _) = with_affine(&model);
    let trained_graph = with_initializers(&inserted, &trained).unwrap();
    let out = fold_into_model(&model, &trained).unwrap();
    // The input's graph: same nodes, same initializer names and shapes.
    let (g0, g1) = (model.graph.as_ref().unwrap(), out.graph.as_ref().unwrap());
    let nodes = |g: &fieldtune_graph::proto::GraphProto| {
        g.node
            .iter()
            .map(|n| (n.op_type.clone(), n.input.clone(), n.output.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(g0), nodes(g1));
    let inits = |g: &fieldtune_graph::proto::GraphProto| {
        g.initializer
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone()))
            .collect::<HashSet<_>>()
    };
    assert_eq!(inits(g0), inits(g1));
    let x = images(16);
    for e in engines() {
        let a = logits(e.as_ref(), &trained_graph, &x);
        let b = logits(e.as_ref(), &out, &x);
        let before = logits(e.as_ref(), &model, &x);
        let d = b.max_rel_diff(&a).unwrap();
        assert!(
            d <= 1e-5,
            "{}: folded model differs by {d:.2e}",
            e.describe()
        );
        assert!(
            before.max_rel_diff(&a).unwrap() > 1e-4,
            "{}: training changed nothing",
            e.describe()
        );
    }
}

#[test]
fn a_conv_without_bias_gets_one_when_folded() {
    // The PRESERVE export's convolutions have no bias (BatchNorm follows them); `affine` after
    // the last one's ReLU is not possible, so fold directly: scale and shift for the first conv.
    let model = load_model(&repo_root().join("models/fmnist-cnn/model.onnx")).unwrap();
    let mut p = HashMap::new();
    p.insert(
        "features.0.weight.affine_scale".to_string(),
        uniform(&mut rng(1), &[1, 16, 1, 1], 0.5, 1.5),
    );
    p.insert(
        "features.0.weight.affine_shift".to_string(),
        uniform(&mut rng(2), &[1, 16, 1, 1], -0.5, 0.5),
    );
    let out = fold_into_model(&model, &p).unwrap();
    let g = out.graph.as_ref().unwrap();
    let conv = g.node.iter().find(|n| n.op_type == "Conv").unwrap();
    assert_eq!(conv.input[2], "features.0.weight.folded_bias");
    let b = g
        .initializer
        .iter()
        .find(|t| t.name == conv.input[2])
        .unwrap();
    assert_eq!(b.dims, vec![16]);
    // A shift without its scale, or a scale of a weight no Conv reads, is refused by name.
    p.remove("features.0.weight.affine_scale");
    let e = fold_into_model(&model, &p).unwrap_err().to_string();
    assert!(
        e.contains("features.0.weight") && e.contains("no affine scale"),
        "{e}"
    );
    let mut q = HashMap::new();
    q.insert(
        "fc.weight.affine_scale".to_string(),
        Tensor::zeros_f32(vec![1, 10, 1, 1]),
    );
    q.insert(
        "fc.weight.affine_shift".to_string(),
        Tensor::zeros_f32(vec![1, 10, 1, 1]),
    );
    let e = fold_into_model(&model, &q).unwrap_err().to_string();
    assert!(e.contains("fc.weight") && e.contains("no Conv"), "{e}");
}

#[test]
fn affine_gradients_match_finite_differences_on_both_engines() {
    let mut r = rng(11);
    let x = uniform(&mut r, &[2, 3, 6, 6], -1.0, 1.0);
    let w = uniform(&mut r, &[4, 3, 3, 3], -0.5, 0.5);
    let scale = uniform(&mut r, &[1, 4, 1, 1], 0.5, 1.5);
    let shift = uniform(&mut r, &[1, 4, 1, 1], -0.5, 0.5);
    for e in engines() {
        let c = gradcheck(
            e.as_ref(),
            &[
                ("x", x.clone()),
                ("scale", scale.clone()),
                ("shift", shift.clone()),
            ],
            1e-2,
            7,
            |b, n| {
                let wc = b.constant(w.clone());
                let y = b.op("Conv", &[&n[0], &wc], vec![])?;
                let m = b.op("Mul", &[&y, &n[1]], vec![])?;
                b.op("Add", &[&m, &n[2]], vec![])
            },
        );
        let worst = c.worst(1e-3);
        assert!(worst < 2e-3, "{}: {:?}", e.describe(), c.rows);
    }
}

#[test]
fn selections_say_what_exists() {
    let model = folded();
    let spec = |t: Trainable| TrainSpec {
        batch_labeled: 0,
        batch_unlabeled: 4,
        loss: UdaLoss {
            ce_weight: 0.0,
            ..UdaLoss::default()
        },
        trainable: t,
        ..TrainSpec::default()
    };
    let err = |m: &ModelProto, t: Trainable| match compile_train_step(m, &spec(t)) {
        Ok(_) => panic!("compiled"),
        Err(e) => e.to_string(),
    };
    let e = err(&model, Trainable::parse("layer9.*").unwrap());
    assert!(
        e.contains("selection layer9.*") && e.contains("onnx::Conv_36") && e.contains("fc.weight"),
        "{e}"
    );
    // The PRESERVE export: `bn` trains BatchNormalization, `affine` finds no Conv without one.
    let preserve = load_model(&repo_root().join("models/fmnist-cnn/model.onnx")).unwrap();
    let step = compile_train_step(&preserve, &spec(Trainable::Bn)).unwrap();
    assert!(step.params.iter().all(|p| !is_affine_param(&p.0)));
    assert!(step.params.iter().any(|p| p.0 == "features.1.weight"));
    let e = err(&preserve, Trainable::Affine);
    assert!(
        e.contains("`affine`") && e.contains("features.0.weight"),
        "{e}"
    );
    // `affine` on the folded model: the same parameters as `bn`.
    let step = compile_train_step(&model, &spec(Trainable::Affine)).unwrap();
    assert_eq!(step.params.len(), 6);
}

#[test]
fn folding_reads_a_bias_an_exporter_shares_through_identity() {
    // torch's default export shares equal initializers through Identity nodes (ResNet18's
    // biases): conv b reads `b.bias`, an Identity copy of `a.bias`.
    use fieldtune_graph::ir::{Elem, Io, Node};
    let node = |name: &str, op: &str, i: &[&str], o: &str| Node {
        name: name.into(),
        op: op.into(),
        domain: String::new(),
        inputs: i.iter().map(|s| s.to_string()).collect(),
        outputs: vec![o.into()],
        attrs: vec![],
    };
    let mut r = rng(4);
    let g = Graph {
        name: "shared".into(),
        opset: 17,
        nodes: vec![
            node("copy", "Identity", &["a.bias"], "b.bias"),
            node("a", "Conv", &["input", "a.weight", "a.bias"], "ya"),
            node("b", "Conv", &["ya", "b.weight", "b.bias"], "logits"),
        ],
        inputs: vec![Io::fixed("input", Elem::F32, &[2, 2, 6, 6])],
        outputs: vec![Io::fixed("logits", Elem::F32, &[2, 2, 2, 2])],
        initializers: vec![
            ("a.weight".into(), uniform(&mut r, &[2, 2, 3, 3], -0.5, 0.5)),
            ("a.bias".into(), uniform(&mut r, &[2], -0.5, 0.5)),
            ("b.weight".into(), uniform(&mut r, &[2, 2, 3, 3], -0.5, 0.5)),
        ],
    };
    let model = g.to_model("shared-bias test");
    let mut p = HashMap::new();
    for (w, seed) in [("a.weight", 1), ("b.weight", 2)] {
        p.insert(
            format!("{w}.affine_scale"),
            uniform(&mut rng(seed), &[1, 2, 1, 1], 0.5, 1.5),
        );
        p.insert(
            format!("{w}.affine_shift"),
            uniform(&mut rng(seed + 10), &[1, 2, 1, 1], -0.5, 0.5),
        );
    }
    let (inserted, added) = with_affine(&model);
    assert_eq!(added.len(), 4);
    let trained_graph = with_initializers(&inserted, &p).unwrap();
    let out = fold_into_model(&model, &p).unwrap();
    let x = uniform(&mut rng(9), &[2, 2, 6, 6], -1.0, 1.0);
    for e in engines() {
        let a = logits(e.as_ref(), &trained_graph, &x);
        let b = logits(e.as_ref(), &out, &x);
        let d = b.max_rel_diff(&a).unwrap();
        assert!(
            d <= 1e-5,
            "{}: folded model differs by {d:.2e}",
            e.describe()
        );
    }
}

#[test]
fn folding_refuses_a_weight_that_is_no_conv_weight_by_name() {
    // A checkpoint can name anything: an affine for a Conv whose weight is a scalar is refused.
    let model = folded();
    let mut g = Graph::from_model(&model).unwrap();
    for (n, t) in g.initializers.iter_mut() {
        if n == "onnx::Conv_36" {
            *t = Tensor::scalar_f32(1.0);
        }
    }
    let m = g.to_model("scalar weight");
    let mut p = HashMap::new();
    p.insert(
        "onnx::Conv_36.affine_scale".to_string(),
        Tensor::zeros_f32(vec![1, 16, 1, 1]),
    );
    p.insert(
        "onnx::Conv_36.affine_shift".to_string(),
        Tensor::zeros_f32(vec![1, 16, 1, 1]),
    );
    let e = fold_into_model(&m, &p).unwrap_err().to_string();
    assert!(e.contains("onnx::Conv_36") && e.contains("shape []"), "{e}");
}

#[test]
fn a_weight_two_convolutions_share_gets_no_affine() {
    // Folding a scale into a shared weight would change both convolutions.
    use fieldtune_graph::ir::{Elem, Io, Node};
    let conv = |name: &str, x: &str, y: &str| Node {
        name: name.into(),
        op: "Conv".into(),
        domain: String::new(),
        inputs: vec![x.into(), "w".into()],
        outputs: vec![y.into()],
        attrs: vec![],
    };
    let mut g = Graph {
        name: "shared".into(),
        opset: 17,
        nodes: vec![conv("a", "input", "ya"), conv("b", "ya", "logits")],
        inputs: vec![Io::fixed("input", Elem::F32, &[1, 2, 6, 6])],
        outputs: vec![Io::fixed("logits", Elem::F32, &[1, 2, 2, 2])],
        initializers: vec![("w".into(), uniform(&mut rng(3), &[2, 2, 3, 3], -0.5, 0.5))],
    };
    assert!(insert(&mut g).unwrap().is_empty());
    assert_eq!(g.nodes.len(), 2);
}
