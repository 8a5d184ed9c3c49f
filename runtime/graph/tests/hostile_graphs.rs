//! Hostile and unlucky model graphs: each is refused with a message that says what is wrong
//! and names the output, never a panic and never a misleading message.

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
