//! Which ops the train-step compiler may emit run on both engines, and agree.
//!
//! Each case is a one- or two-node graph with random inputs; ONNX Runtime must run every case
//! and tract must match it to 1e-4, except the cases listed in `TRACT_KNOWN_GAPS`, which must
//! keep failing on tract (so the list stays true).

mod common;

use common::*;
use fieldtune_engine::{Engine, Tensor, TractEngine};
use tract_onnx::pb;

struct Case {
    name: &'static str,
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    inits: Vec<pb::TensorProto>,
    feeds: Vec<(&'static str, Tensor)>,
}

/// Cases tract 0.23.9 cannot run (found by this test).
const TRACT_KNOWN_GAPS: &[&str] = &["ReduceSum axes from graph input"];

fn cases() -> Vec<Case> {
    let mut r = Rng::new(7);
    let i64t = |shape: Vec<usize>, d: Vec<i64>| Tensor::i64(shape, d).unwrap();
    vec![
        Case {
            name: "ConvTranspose stride 2 output_padding 1, weight input",
            opset: 17,
            nodes: vec![node(
                "ConvTranspose",
                &["x", "w"],
                &["y"],
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 1, 1, 1]),
                    attr_ints("output_padding", &[1, 1]),
                    attr_ints("kernel_shape", &[3, 3]),
                ],
            )],
            inputs: vec![vi("x", FLOAT, &[1, 2, 5, 5]), vi("w", FLOAT, &[2, 3, 3, 3])],
            outputs: vec![vi("y", FLOAT, &[1, 3, 10, 10])],
            inits: vec![],
            feeds: vec![
                ("x", r.tensor(&[1, 2, 5, 5])),
                ("w", r.tensor(&[2, 3, 3, 3])),
            ],
        },
        Case {
            name: "ConvTranspose grouped dilated, weight input",
            opset: 17,
            nodes: vec![node(
                "ConvTranspose",
                &["x", "w"],
                &["y"],
                vec![
                    attr_ints("strides", &[2, 2]),
                    attr_ints("dilations", &[2, 2]),
                    attr_i("group", 2),
                    attr_ints("output_padding", &[1, 0]),
                ],
            )],
            inputs: vec![vi("x", FLOAT, &[2, 4, 4, 4]), vi("w", FLOAT, &[4, 1, 3, 3])],
            outputs: vec![vi("y", FLOAT, &[2, 2, 12, 11])],
            inits: vec![],
            feeds: vec![
                ("x", r.tensor(&[2, 4, 4, 4])),
                ("w", r.tensor(&[4, 1, 3, 3])),
            ],
        },
        Case {
            name: "Expand",
            opset: 17,
            nodes: vec![node("Expand", &["x", "shape"], &["y"], vec![])],
            inputs: vec![vi("x", FLOAT, &[3, 1])],
            outputs: vec![vi("y", FLOAT, &[2, 3, 4])],
            inits: vec![init_i64("shape", &[3], vec![2, 3, 4])],
            feeds: vec![("x", r.tensor(&[3, 1]))],
        },
        Case {
            name: "Greater + Where",
            opset: 17,
            nodes: vec![
                node("Greater", &["a", "b"], &["c"], vec![]),
                node("Where", &["c", "a", "b"], &["y"], vec![]),
            ],
            inputs: vec![vi("a", FLOAT, &[4, 5]), vi("b", FLOAT, &[5])],
            outputs: vec![vi("y", FLOAT, &[4, 5])],
            inits: vec![],
            feeds: vec![("a", r.tensor(&[4, 5])), ("b", r.tensor(&[5]))],
        },
        Case {
            name: "Equal (int64) -> bool output",
            opset: 17,
            nodes: vec![node("Equal", &["a", "b"], &["y"], vec![])],
            inputs: vec![vi("a", INT64, &[6]), vi("b", INT64, &[6])],
            outputs: vec![vi("y", BOOL, &[6])],
            inits: vec![],
            feeds: vec![
                ("a", i64t(vec![6], vec![1, 2, 3, 4, 5, 6])),
                ("b", i64t(vec![6], vec![1, 0, 3, 0, 5, 0])),
            ],
        },
        Case {
            name: "Cast float->int64 and int64->float",
            opset: 17,
            nodes: vec![
                node("Cast", &["a"], &["y"], vec![attr_i("to", 7)]),
                node("Cast", &["b"], &["z"], vec![attr_i("to", 1)]),
            ],
            inputs: vec![vi("a", FLOAT, &[5]), vi("b", INT64, &[3])],
            outputs: vec![vi("y", INT64, &[5]), vi("z", FLOAT, &[3])],
            inits: vec![],
            feeds: vec![
                (
                    "a",
                    Tensor::f32(vec![5], vec![-2.7, -0.5, 0.0, 1.5, 3.9]).unwrap(),
                ),
                ("b", i64t(vec![3], vec![-3, 0, 9])),
            ],
        },
        Case {
            name: "Pow (tensor exponent, broadcast)",
            opset: 17,
            nodes: vec![
                node("Abs", &["a"], &["p"], vec![]),
                node("Pow", &["p", "e"], &["y"], vec![]),
            ],
            inputs: vec![vi("a", FLOAT, &[3, 4])],
            outputs: vec![vi("y", FLOAT, &[3, 4])],
            inits: vec![init_f32("e", &[4], vec![2.0, 0.5, 3.0, -1.0])],
            feeds: vec![("a", r.tensor(&[3, 4]))],
        },
        Case {
            name: "ReduceSum axes from initializer (opset 13+)",
            opset: 17,
            nodes: vec![node(
                "ReduceSum",
                &["x", "axes"],
                &["y"],
                vec![attr_i("keepdims", 1)],
            )],
            inputs: vec![vi("x", FLOAT, &[2, 3, 4])],
            outputs: vec![vi("y", FLOAT, &[2, 1, 4])],
            inits: vec![init_i64("axes", &[1], vec![1])],
            feeds: vec![("x", r.tensor(&[2, 3, 4]))],
        },
        Case {
            name: "ReduceSum axes from graph input",
            opset: 17,
            nodes: vec![node(
                "ReduceSum",
                &["x", "axes"],
                &["y"],
                vec![attr_i("keepdims", 0)],
            )],
            inputs: vec![vi("x", FLOAT, &[2, 3, 4]), vi("axes", INT64, &[1])],
            outputs: vec![vi("y", FLOAT, &[2, 4])],
            inits: vec![],
            feeds: vec![
                ("x", r.tensor(&[2, 3, 4])),
                ("axes", i64t(vec![1], vec![1])),
            ],
        },
        Case {
            name: "ReduceMax axes attribute (opset 17)",
            opset: 17,
            nodes: vec![node(
                "ReduceMax",
                &["x"],
                &["y"],
                vec![attr_ints("axes", &[-1]), attr_i("keepdims", 1)],
            )],
            inputs: vec![vi("x", FLOAT, &[3, 5])],
            outputs: vec![vi("y", FLOAT, &[3, 1])],
            inits: vec![],
            feeds: vec![("x", r.tensor(&[3, 5]))],
        },
        Case {
            name: "ReduceMax axes input (opset 18)",
            opset: 18,
            nodes: vec![node(
                "ReduceMax",
                &["x", "axes"],
                &["y"],
                vec![attr_i("keepdims", 0)],
            )],
            inputs: vec![vi("x", FLOAT, &[3, 5])],
            outputs: vec![vi("y", FLOAT, &[3])],
            inits: vec![init_i64("axes", &[1], vec![1])],
            feeds: vec![("x", r.tensor(&[3, 5]))],
        },
        Case {
            name: "ScatterElements axis 1",
            opset: 17,
            nodes: vec![node(
                "ScatterElements",
                &["d", "i", "u"],
                &["y"],
                vec![attr_i("axis", 1)],
            )],
            inputs: vec![
                vi("d", FLOAT, &[3, 4]),
                vi("i", INT64, &[3, 1]),
                vi("u", FLOAT, &[3, 1]),
            ],
            outputs: vec![vi("y", FLOAT, &[3, 4])],
            inits: vec![],
            feeds: vec![
                ("d", r.tensor(&[3, 4])),
                ("i", i64t(vec![3, 1], vec![2, 0, 3])),
                ("u", r.tensor(&[3, 1])),
            ],
        },
        Case {
            name: "ScatterElements reduction add (one-hot gradient)",
            opset: 17,
            nodes: vec![node(
                "ScatterElements",
                &["d", "i", "u"],
                &["y"],
                vec![attr_i("axis", 1), attr_s("reduction", "add")],
            )],
            inputs: vec![
                vi("d", FLOAT, &[3, 4]),
                vi("i", INT64, &[3, 2]),
                vi("u", FLOAT, &[3, 2]),
            ],
            outputs: vec![vi("y", FLOAT, &[3, 4])],
            inits: vec![],
            feeds: vec![
                ("d", r.tensor(&[3, 4])),
                ("i", i64t(vec![3, 2], vec![2, 2, 0, 1, 3, 3])),
                ("u", r.tensor(&[3, 2])),
            ],
        },
        Case {
            name: "GatherElements (pick label logit)",
            opset: 17,
            nodes: vec![node(
                "GatherElements",
                &["d", "i"],
                &["y"],
                vec![attr_i("axis", 1)],
            )],
            inputs: vec![vi("d", FLOAT, &[3, 4]), vi("i", INT64, &[3, 1])],
            outputs: vec![vi("y", FLOAT, &[3, 1])],
            inits: vec![],
            feeds: vec![
                ("d", r.tensor(&[3, 4])),
                ("i", i64t(vec![3, 1], vec![1, 3, 0])),
            ],
        },
        Case {
            name: "LogSoftmax + Softmax + Exp + Log",
            opset: 17,
            nodes: vec![
                node("LogSoftmax", &["x"], &["a"], vec![attr_i("axis", -1)]),
                node("Softmax", &["x"], &["b"], vec![attr_i("axis", 1)]),
                node("Exp", &["a"], &["c"], vec![]),
                node("Log", &["b"], &["d"], vec![]),
            ],
            inputs: vec![vi("x", FLOAT, &[4, 10])],
            outputs: vec![
                vi("a", FLOAT, &[4, 10]),
                vi("c", FLOAT, &[4, 10]),
                vi("d", FLOAT, &[4, 10]),
            ],
            inits: vec![],
            feeds: vec![("x", r.tensor(&[4, 10]))],
        },
        Case {
            name: "ReduceMean + Unsqueeze axes input + Sqrt",
            opset: 17,
            nodes: vec![
                node(
                    "ReduceMean",
                    &["x"],
                    &["m"],
                    vec![attr_ints("axes", &[0, 2, 3]), attr_i("keepdims", 0)],
                ),
                node("Unsqueeze", &["m", "ax"], &["u"], vec![]),
                node("Abs", &["u"], &["v"], vec![]),
                node("Sqrt", &["v"], &["y"], vec![]),
            ],
            inputs: vec![vi("x", FLOAT, &[2, 3, 4, 4])],
            outputs: vec![vi("y", FLOAT, &[1, 3, 1, 1])],
            inits: vec![init_i64("ax", &[3], vec![0, 2, 3])],
            feeds: vec![("x", r.tensor(&[2, 3, 4, 4]))],
        },
        Case {
            name: "MaxPool with Indices output",
            opset: 17,
            nodes: vec![node(
                "MaxPool",
                &["x"],
                &["y", "idx"],
                vec![
                    attr_ints("kernel_shape", &[2, 2]),
                    attr_ints("strides", &[2, 2]),
                ],
            )],
            inputs: vec![vi("x", FLOAT, &[1, 2, 4, 4])],
            outputs: vec![
                vi("y", FLOAT, &[1, 2, 2, 2]),
                vi("idx", INT64, &[1, 2, 2, 2]),
            ],
            inits: vec![],
            feeds: vec![("x", r.tensor(&[1, 2, 4, 4]))],
        },
    ]
}

#[test]
fn ops_run_on_both_engines_and_agree() {
    let ort = ort();
    let tract = TractEngine::new();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in cases() {
        let bytes = model_bytes(c.opset, c.nodes, c.inputs, c.outputs, c.inits, vec![]);
        let feeds: Vec<(&str, &Tensor)> = c.feeds.iter().map(|(n, t)| (*n, t)).collect();
        let o = ort.load(&bytes, c.name).and_then(|mut s| s.run(&feeds));
        let t = tract.load(&bytes, c.name).and_then(|mut s| s.run(&feeds));
        let line = match (&o, &t) {
            (Ok(a), Ok(b)) => {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|((_, x), (_, y))| x.max_rel_diff(y).unwrap_or(f32::INFINITY))
                    .fold(0.0f32, f32::max);
                if worst > 1e-4 {
                    failures.push(format!("{}: engines disagree ({worst})", c.name));
                }
                if TRACT_KNOWN_GAPS.contains(&c.name) {
                    failures.push(format!(
                        "{}: now works on tract, drop it from TRACT_KNOWN_GAPS",
                        c.name
                    ));
                }
                format!("ok both (max diff {worst:.1e})")
            }
            (Ok(_), Err(e)) => {
                if !TRACT_KNOWN_GAPS.contains(&c.name) {
                    failures.push(format!("{}: tract failed: {e}", c.name));
                }
                format!("ORT ok, tract FAILS: {e}")
            }
            (Err(e), _) => {
                failures.push(format!("{}: ORT failed: {e}", c.name));
                format!("ORT FAILS: {e}")
            }
        };
        report.push(format!("{:<55} {line}", c.name));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
