//! Helpers shared by the integration tests: tiny ONNX models built with tract's prost types,
//! a deterministic random source, and engine constructors.
#![allow(dead_code)]

use fieldtune_engine::{Engine, EngineError, OrtEngine, OrtOptions, Tensor, TractEngine};
use prost::Message;
use tract_onnx::pb;

/// ONNX element type codes.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;
pub const BOOL: i32 = 9;

/// A value info; `-1` dims are symbolic ("N").
pub fn vi(name: &str, elem: i32, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            denotation: String::new(),
            value: Some(if d < 0 {
                Value::DimParam("N".into())
            } else {
                Value::DimValue(d)
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

pub fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 1,
        f: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 3,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op}_{}", outputs.first().copied().unwrap_or("")),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

pub fn init_f32(name: &str, dims: &[i64], data: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: data,
        ..Default::default()
    }
}

pub fn init_i64(name: &str, dims: &[i64], data: Vec<i64>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: INT64,
        int64_data: data,
        ..Default::default()
    }
}

/// Serializes a one-graph model at the given opset.
pub fn model_bytes(
    opset: i64,
    nodes: Vec<pb::NodeProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    initializers: Vec<pb::TensorProto>,
    value_info: Vec<pb::ValueInfoProto>,
) -> Vec<u8> {
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "fieldtune-engine-tests".into(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: initializers,
            input: inputs,
            output: outputs,
            value_info,
            ..Default::default()
        }),
        ..Default::default()
    };
    m.encode_to_vec()
}

/// Deterministic xorshift in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::f32(shape.to_vec(), self.vec(n)).unwrap()
    }
}

pub const GEMM_W: [f32; 12] = [
    0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 0.1, 2.0, 0.3, -0.7, 0.9,
];
pub const GEMM_B: [f32; 3] = [0.1, -0.2, 0.3];

/// `y = Relu(x @ W + b)`, x: [N, 4] with a symbolic batch, also in value_info.
pub fn gemm_relu_model() -> Vec<u8> {
    model_bytes(
        17,
        vec![
            node(
                "Gemm",
                &["x", "W", "b"],
                &["h"],
                vec![attr_f("alpha", 1.0), attr_f("beta", 1.0)],
            ),
            node("Relu", &["h"], &["y"], vec![]),
        ],
        vec![vi("x", FLOAT, &[-1, 4])],
        vec![vi("y", FLOAT, &[-1, 3])],
        vec![
            init_f32("W", &[4, 3], GEMM_W.to_vec()),
            init_f32("b", &[3], GEMM_B.to_vec()),
        ],
        vec![vi("h", FLOAT, &[-1, 3])],
    )
}

/// Reference for [`gemm_relu_model`].
pub fn gemm_relu_reference(x: &Tensor) -> Vec<f32> {
    let n = x.shape()[0];
    let xs = x.as_f32().unwrap();
    let mut y = vec![0.0; n * 3];
    for r in 0..n {
        for c in 0..3 {
            let mut acc = GEMM_B[c];
            for k in 0..4 {
                acc += xs[r * 4 + k] * GEMM_W[k * 3 + c];
            }
            y[r * 3 + c] = acc.max(0.0);
        }
    }
    y
}

/// Conv whose weight is a graph input: x [2,3,8,8], w [4,3,3,3], stride 2, pad 1 -> [2,4,4,4].
pub fn conv_weight_input_model() -> Vec<u8> {
    model_bytes(
        17,
        vec![node(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[2, 2]),
            ],
        )],
        vec![vi("x", FLOAT, &[2, 3, 8, 8]), vi("w", FLOAT, &[4, 3, 3, 3])],
        vec![vi("y", FLOAT, &[2, 4, 4, 4])],
        vec![],
        vec![],
    )
}

/// `x_new = x + delta`, `total = ReduceSum(x_new)` (all axes, scalar); x: [3], delta: scalar.
pub fn add_delta_model() -> Vec<u8> {
    model_bytes(
        17,
        vec![
            node("Add", &["x", "delta"], &["x_new"], vec![]),
            node(
                "ReduceSum",
                &["x_new"],
                &["total"],
                vec![attr_i("keepdims", 0)],
            ),
        ],
        vec![vi("x", FLOAT, &[3]), vi("delta", FLOAT, &[])],
        vec![vi("x_new", FLOAT, &[3]), vi("total", FLOAT, &[])],
        vec![],
        vec![],
    )
}

/// ONNX Runtime through normal discovery; a missing library fails the test loudly.
pub fn ort() -> OrtEngine {
    match OrtEngine::new(OrtOptions { intra_threads: Some(1), ..Default::default() }) {
        Ok(e) => e,
        Err(e @ EngineError::OrtNotFound { .. }) => {
            panic!("ONNX Runtime not found: run scripts/install-ort.sh ({e})")
        }
        Err(e) => panic!("ONNX Runtime not found: run scripts/install-ort.sh (a library was found but failed: {e})"),
    }
}

/// Both engines, ONNX Runtime first.
pub fn engines() -> Vec<Box<dyn Engine>> {
    vec![Box::new(ort()), Box::new(TractEngine::new())]
}

/// Asserts two f32 tensors agree within `tol` (absolute, relative above 1).
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let d = a
        .max_rel_diff(b)
        .unwrap_or_else(|| panic!("{what}: types differ"));
    assert!(d <= tol, "{what}: max diff {d} > {tol}");
}
