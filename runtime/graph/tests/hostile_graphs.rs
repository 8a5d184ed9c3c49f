//! Hostile and unlucky model graphs: each is refused with a message that says what is wrong
//! and names the node, output or dimension, never a panic and never a misleading message.

use fieldtune_graph::ir::{Dim, Elem, Graph, Io, Node};
use fieldtune_graph::proto::ModelProto;
use fieldtune_graph::{compile_train_step, TrainSpec};
use fieldtune_tensor::Tensor;

fn node(name: &str, op: &str, ins: &[&str], outs: &[&str]) -> Node {
    Node {
        name: name.into(),
        op: op.into(),
        domain: String::new(),
        inputs: ins.iter().map(|s| s.to_string()).collect(),
        outputs: outs.iter().map(|s| s.to_string()).collect(),
        attrs: vec![],
    }
}

/// input [N, 1, 4, 4] -> `nodes` -> logits (declared with `out` dims); one trainable scale.
fn model(nodes: Vec<Node>, out: &[usize]) -> ModelProto {
    let mut input = Io::fixed("input", Elem::F32, &[1, 4, 4]);
    input.dims.insert(0, Dim::Symbolic("N".into()));
    let mut output = Io::fixed("logits", Elem::F32, out);
    output.dims[0] = Dim::Symbolic("N".into());
    Graph {
        name: "hostile".into(),
        opset: 17,
        nodes,
        inputs: vec![input],
        outputs: vec![output],
        initializers: vec![("scale".into(), Tensor::f32(vec![1], vec![2.0]).unwrap())],
    }
    .to_model("test")
}

fn spec() -> TrainSpec {
    TrainSpec {
        batch_labeled: 2,
        batch_unlabeled: 2,
        ..TrainSpec::default()
    }
}

fn compile_error(m: &ModelProto) -> String {
    match compile_train_step(m, &spec()) {
        Ok(_) => panic!("compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_4d_output_is_called_an_output_naming_it() {
    // logits = input * scale: [N, 1, 4, 4], not [batch, classes].
    let m = model(
        vec![node("mul", "Mul", &["input", "scale"], &["logits"])],
        &[0, 1, 4, 4],
    );
    let e = compile_error(&m);
    assert!(
        e.contains("output 'logits'") && e.contains("[batch, classes]") && !e.contains("input"),
        "{e}"
    );
}

#[test]
fn a_cycle_is_reported_as_a_cycle_naming_a_node_on_it() {
    // a = input * c; c = relu(a): a cycle through 'mul' and 'relu'.
    let m = model(
        vec![
            node("mul", "Mul", &["input", "c"], &["a"]),
            node("relu", "Relu", &["a"], &["c"]),
            node("flatten", "Flatten", &["a"], &["logits"]),
        ],
        &[0, 16],
    );
    for e in [
        Graph::from_model(&m).expect_err("a cycle").to_string(),
        compile_error(&m),
    ] {
        assert!(e.contains("cycle"), "{e}");
        assert!(e.contains("'mul'") || e.contains("'relu'"), "{e}");
        assert!(!e.contains("no node, input or initializer defines"), "{e}");
    }
}

#[test]
fn an_undefined_input_is_still_called_undefined() {
    let m = model(
        vec![
            node("mul", "Mul", &["input", "scale"], &["a"]),
            node("add", "Add", &["a", "ghost"], &["b"]),
            node("flatten", "Flatten", &["b"], &["logits"]),
        ],
        &[0, 16],
    );
    let e = compile_error(&m);
    assert!(
        e.contains("ghost'") && e.contains("no node, input or initializer defines"),
        "{e}"
    );
    assert!(!e.contains("cycle"), "{e}");
}

#[test]
fn nodes_out_of_order_are_sorted_and_sorted_graphs_keep_their_order() {
    let sorted = vec![
        node("mul", "Mul", &["input", "scale"], &["a"]),
        node("relu", "Relu", &["a"], &["b"]),
        node("flatten", "Flatten", &["b"], &["logits"]),
    ];
    let mut shuffled = sorted.clone();
    shuffled.reverse();
    for nodes in [sorted, shuffled] {
        let g = Graph::from_model(&model(nodes, &[0, 16])).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["mul", "relu", "flatten"]);
    }
    compile_train_step(
        &model(
            vec![
                node("flatten", "Flatten", &["b"], &["logits"]),
                node("relu", "Relu", &["a"], &["b"]),
                node("mul", "Mul", &["input", "scale"], &["a"]),
            ],
            &[0, 16],
        ),
        &spec(),
    )
    .unwrap();
}

#[test]
fn huge_or_negative_dimensions_in_shape_tensors_are_refused_naming_the_node() {
    for dims in [vec![-1i64], vec![1 << 40, 1 << 40], vec![1 << 62, 4]] {
        let mut g = Graph::from_model(&model(
            vec![
                node("zeros", "ConstantOfShape", &["shape"], &["z"]),
                node("mul", "Mul", &["input", "scale"], &["a"]),
                node("flatten", "Flatten", &["a"], &["logits"]),
            ],
            &[0, 16],
        ))
        .unwrap();
        let shape = Tensor::i64(vec![dims.len()], dims.clone()).unwrap();
        g.initializers.push(("shape".into(), shape));
        let e = compile_error(&g.to_model("test"));
        assert!(
            e.contains("zeros' (ConstantOfShape)") && e.contains("dimension"),
            "{dims:?}: {e}"
        );
    }
}

#[test]
fn an_empty_trainable_selection_lists_the_parameters_and_how_to_keep_batchnorm() {
    // logits = Flatten(input) * scale: no BatchNormalization (as after a folding export).
    let m = model(
        vec![
            node("flat", "Flatten", &["input"], &["f"]),
            node("mul", "Mul", &["f", "scale"], &["logits"]),
        ],
        &[0, 16],
    );
    for (train, want) in [
        (
            "bn",
            vec![
                "`bn`",
                "no BatchNormalization",
                "TrainingMode.PRESERVE",
                "parameters: scale",
            ],
        ),
        ("conv*", vec!["selection conv*", "parameters: scale"]),
    ] {
        let spec = TrainSpec {
            trainable: fieldtune_graph::Trainable::parse(train).unwrap(),
            ..spec()
        };
        let e = match compile_train_step(&m, &spec) {
            Ok(_) => panic!("compiled with --train {train}"),
            Err(e) => e.to_string(),
        };
        for w in want {
            assert!(e.contains(w), "--train {train}: {e}");
        }
    }
}
