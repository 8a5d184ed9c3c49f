//! A small owned IR over ONNX protobuf: nodes, graph inputs/outputs and initializers,
//! plus attribute and tensor conversions. Load and save go through [`crate::proto`].

use std::collections::HashMap;
use std::path::Path;

use fieldtune_tensor::{Tensor, TensorData};
use prost::Message;

use crate::error::{GraphError, Result};
use crate::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};

/// Element types the compiler reasons about. `Bool` only appears inside graphs
/// (comparisons); tensors that cross into engines are `F32` or `I64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    I64,
    Bool,
}

impl Elem {
    pub fn from_onnx(code: i32) -> Option<Elem> {
        match DataType::try_from(code).ok()? {
            DataType::Float => Some(Elem::F32),
            DataType::Int64 => Some(Elem::I64),
            DataType::Bool => Some(Elem::Bool),
            _ => None,
        }
    }

    pub fn onnx(self) -> i32 {
        match self {
            Elem::F32 => DataType::Float as i32,
            Elem::I64 => DataType::Int64 as i32,
            Elem::Bool => DataType::Bool as i32,
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

/// A graph input or output: name, element type, dims.
#[derive(Clone, Debug, PartialEq)]
pub struct Io {
    pub name: String,
    pub elem: Elem,
    pub dims: Vec<Dim>,
}

impl Io {
    pub fn fixed(name: impl Into<String>, elem: Elem, shape: &[usize]) -> Io {
        Io {
            name: name.into(),
            elem,
            dims: shape.iter().map(|&d| Dim::Fixed(d)).collect(),
        }
    }
}

/// One operator application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<AttributeProto>,
}

impl crate::error::NodeName for Node {
    fn node_name(&self) -> &str {
        &self.name
    }
    fn op_name(&self) -> &str {
        &self.op
    }
}

impl Node {
    /// Integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// The `i`-th input name, or `None` when absent or empty (ONNX's optional inputs).
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// Attribute constructors.
pub mod attr {
    use super::*;

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i: v,
            ..Default::default()
        }
    }
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Float as i32,
            f: v,
            ..Default::default()
        }
    }
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }
    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Tensor as i32,
            t: Some(t),
            ..Default::default()
        }
    }
}

/// An ONNX graph in owned form with the ai.onnx opset it imports.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub opset: i64,
    pub nodes: Vec<Node>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub initializers: Vec<(String, Tensor)>,
}

/// Lowest ai.onnx opset fieldtune reads (the axes-as-input forms of Squeeze, Unsqueeze and
/// ReduceSum, and the N-D Softmax, begin at 13).
pub const MIN_OPSET: i64 = 13;
/// The opset of graphs fieldtune writes, unless the model's is newer.
pub const TRAIN_OPSET: i64 = 17;

/// Reads an ONNX file; errors name the file and say what is wrong.
pub fn load_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| GraphError::Io {
        path: path.into(),
        source,
    })?;
    decode_model(&bytes, path)
}

/// Decodes ONNX bytes; `path` only labels errors.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).map_err(|e| GraphError::Decode {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if model.graph.is_none() {
        return Err(GraphError::Decode {
            path: path.into(),
            reason: "the model holds no graph".into(),
        });
    }
    Ok(model)
}

/// The ai.onnx opset a model imports (the default domain).
pub fn model_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

impl Graph {
    /// Converts a model's main graph. Initializers of types other than f32/i64 are refused
    /// by name.
    pub fn from_model(model: &ModelProto) -> Result<Graph> {
        let opset = model_opset(model);
        if opset < MIN_OPSET {
            return Err(GraphError::Opset {
                found: opset,
                min: MIN_OPSET,
            });
        }
        let g = model.graph.as_ref().ok_or(GraphError::NoGraph)?;
        let mut initializers = Vec::with_capacity(g.initializer.len());
        for t in &g.initializer {
            initializers.push((t.name.clone(), tensor_from_proto(t)?));
        }
        let init_names: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = g
            .input
            .iter()
            .filter(|v| !init_names.contains(v.name.as_str()))
            .map(|v| io_from_proto(v, IoKind::Input))
            .collect::<Result<Vec<_>>>()?;
        let outputs = g
            .output
            .iter()
            .map(|v| io_from_proto(v, IoKind::Output))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = g
            .node
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if n.name.is_empty() {
                    format!("{}_{i}", n.op_type)
                } else {
                    n.name.clone()
                }
            })
            .collect();
        let mut nodes = Vec::with_capacity(g.node.len());
        for i in crate::topo::order(&g.node, &names)? {
            let (n, name) = (&g.node[i], names[i].clone());
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return Err(GraphError::Domain {
                    node: name,
                    op: n.op_type.clone(),
                    domain: n.domain.clone(),
                });
            }
            nodes.push(Node {
                name,
                op: n.op_type.clone(),
                domain: String::new(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs: n.attribute.clone(),
            });
        }
        untie_initializer_copies(&mut nodes, &mut initializers, &outputs);
        drop_unread_dropout_masks(&mut nodes, &outputs);
        Ok(Graph {
            name: g.name.clone(),
            opset,
            nodes,
            inputs,
            outputs,
            initializers,
        })
    }

    /// Converts back to a model with ir_version 8 and this graph's opset.
    pub fn to_model(&self, producer: &str) -> ModelProto {
        let graph = proto::GraphProto {
            name: self.name.clone(),
            node: self
                .nodes
                .iter()
                .map(|n| NodeProto {
                    name: n.name.clone(),
                    op_type: n.op.clone(),
                    domain: n.domain.clone(),
                    input: n.inputs.clone(),
                    output: n.outputs.clone(),
                    attribute: n.attrs.clone(),
                    ..Default::default()
                })
                .collect(),
            initializer: self
                .initializers
                .iter()
                .map(|(n, t)| tensor_to_proto(n, t))
                .collect(),
            input: self.inputs.iter().map(io_to_proto).collect(),
            output: self.outputs.iter().map(io_to_proto).collect(),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            producer_name: producer.into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            opset_import: self.opset_imports(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// The default domain at this graph's opset, and version 1 of each other domain its
    /// nodes use (the fieldtune-domain ops of tuned train steps).
    fn opset_imports(&self) -> Vec<proto::OperatorSetIdProto> {
        let mut v = vec![proto::OperatorSetIdProto {
            domain: String::new(),
            version: self.opset,
        }];
        for n in &self.nodes {
            if !n.domain.is_empty() && !v.iter().any(|o| o.domain == n.domain) {
                v.push(proto::OperatorSetIdProto {
                    domain: n.domain.clone(),
                    version: 1,
                });
            }
        }
        v
    }

    /// Initializers by name.
    pub fn initializer_map(&self) -> HashMap<&str, &Tensor> {
        self.initializers
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect()
    }
}

/// Encodes a model to bytes.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Whether a graph input or output is read (errors say which it is).
#[derive(Clone, Copy)]
enum IoKind {
    Input,
    Output,
}

fn io_from_proto(v: &ValueInfoProto, kind: IoKind) -> Result<Io> {
    let bad = |reason: &str| match kind {
        IoKind::Input => GraphError::Input {
            input: v.name.clone(),
            reason: reason.into(),
        },
        IoKind::Output => GraphError::Output {
            output: v.name.clone(),
            reason: reason.into(),
        },
    };
    let ty = v
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .ok_or_else(|| bad("no type"))?;
    let type_proto::Value::TensorType(tt) = ty;
    let elem = Elem::from_onnx(tt.elem_type).ok_or_else(|| {
        bad(&format!(
            "element type {} is not float32, int64 or bool",
            tt.elem_type
        ))
    })?;
    let dims = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .enumerate()
                .map(|(i, d)| match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => {
                        usize::try_from(*n).map(Dim::Fixed).map_err(|_| {
                            bad(&format!(
                                "dimension {i} ({n}) does not fit this machine's usize"
                            ))
                        })
                    }
                    Some(tensor_shape_proto::dimension::Value::DimParam(p)) => {
                        Ok(Dim::Symbolic(p.clone()))
                    }
                    _ => Ok(Dim::Symbolic(format!("{}_dim{i}", v.name))),
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Io {
        name: v.name.clone(),
        elem,
        dims,
    })
}

fn io_to_proto(io: &Io) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as D, Dimension};
    ValueInfoProto {
        name: io.name.clone(),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: io.elem.onnx(),
                shape: Some(proto::TensorShapeProto {
                    dim: io
                        .dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Dim::Fixed(n) => D::DimValue(*n as i64),
                                Dim::Symbolic(s) => D::DimParam(s.clone()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A TensorProto's shape and element count, checked (no negative dimension, no overflow);
/// data stored outside the model file is refused by name.
fn proto_shape(t: &TensorProto) -> Result<(Vec<usize>, usize)> {
    let bad = |reason: String| GraphError::Tensor {
        tensor: t.name.clone(),
        reason,
    };
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(bad(
            "data stored outside the model file is not supported; re-export without external data"
                .into(),
        ));
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements")))?;
    Ok((shape, n))
}

/// Converts a TensorProto holding f32 or i64 (raw or typed fields; externally stored data is
/// refused by name).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    let bad = |reason: String| GraphError::Tensor {
        tensor: t.name.clone(),
        reason,
    };
    let (shape, n) = proto_shape(t)?;
    // Raw little-endian bytes in `width`-byte elements, checked against the shape.
    let raw = |width: usize| -> Result<Option<std::slice::ChunksExact<'_, u8>>> {
        if t.raw_data.is_empty() {
            Ok(None)
        } else if Some(t.raw_data.len()) != n.checked_mul(width) {
            Err(bad(format!(
                "raw data has {} bytes, shape {:?} needs {} of {width} bytes",
                t.raw_data.len(),
                shape,
                n
            )))
        } else {
            Ok(Some(t.raw_data.chunks_exact(width)))
        }
    };
    let data = match DataType::try_from(t.data_type).ok() {
        Some(DataType::Float) => TensorData::f32(match raw(4)? {
            Some(c) => c
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            None => t.float_data.clone(),
        }),
        Some(DataType::Int64) => TensorData::i64(match raw(8)? {
            Some(c) => c
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            None => t.int64_data.clone(),
        }),
        Some(DataType::Int32) => TensorData::i64(match raw(4)? {
            Some(c) => c
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            None => t.int32_data.iter().map(|&x| x as i64).collect(),
        }),
        _ => {
            return Err(bad(format!(
                "element type {} is not supported (float32, int32 or int64 only)",
                t.data_type
            )))
        }
    };
    Tensor::new(shape, data).map_err(|e| bad(e.to_string()))
}

/// A bool TensorProto's values as a 0/1 i64 tensor, `None` when `t` is not bool. Bool
/// tensors are read only where an op's value carries them (Constant); they are never stored
/// as initializers.
pub fn bool_from_proto(t: &TensorProto) -> Result<Option<Tensor>> {
    if t.data_type != DataType::Bool as i32 {
        return Ok(None);
    }
    let bad = |reason: String| GraphError::Tensor {
        tensor: t.name.clone(),
        reason,
    };
    let (shape, n) = proto_shape(t)?;
    // One byte per element in raw data, else one int32 per element.
    let vals: Vec<i64> = if !t.raw_data.is_empty() {
        t.raw_data.iter().map(|&b| i64::from(b != 0)).collect()
    } else {
        t.int32_data.iter().map(|&b| i64::from(b != 0)).collect()
    };
    if vals.len() != n {
        return Err(bad(format!(
            "bool data has {} elements, shape {shape:?} needs {n}",
            vals.len()
        )));
    }
    Tensor::i64(shape, vals)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// Converts a tensor to a TensorProto with raw little-endian data.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let (data_type, raw_data) = match t.data() {
        TensorData::F32(v) => (
            DataType::Float,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        TensorData::I64(v) => (
            DataType::Int64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    };
    TensorProto {
        name: name.into(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

/// Exporters of modules with dropout layers (Swin's attention) may name Dropout's optional
/// mask output although nothing reads it; such an output is removed, so the node is the plain
/// one-output Dropout the op table knows. A mask that is read stays (and is refused by name).
fn drop_unread_dropout_masks(nodes: &mut [Node], outputs: &[Io]) {
    let read: std::collections::HashSet<String> = nodes
        .iter()
        .flat_map(|n| n.inputs.iter().cloned())
        .chain(outputs.iter().map(|o| o.name.clone()))
        .collect();
    for n in nodes.iter_mut() {
        if n.op == "Dropout" && n.outputs.len() == 2 && !read.contains(&n.outputs[1]) {
            n.outputs.truncate(1);
        }
    }
}

/// Exporters write equal initializers once and read the other names through Identity
/// nodes (PyTorch does this for freshly initialised BatchNorm scales, biases and running
/// statistics). Those names are distinct tensors of the model: each such Identity becomes an
/// initializer of its own holding the same value, so every name trains or updates on its own
/// (as in PyTorch) and no two BatchNorms write one running statistic.
fn untie_initializer_copies(
    nodes: &mut Vec<Node>,
    initializers: &mut Vec<(String, Tensor)>,
    outputs: &[Io],
) {
    let mut known: HashMap<String, usize> = initializers
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.clone(), i))
        .collect();
    let mut kept = Vec::with_capacity(nodes.len());
    for n in nodes.drain(..) {
        let copy = (n.op == "Identity" && n.inputs.len() == 1 && n.outputs.len() == 1)
            .then(|| known.get(&n.inputs[0]).copied())
            .flatten()
            .filter(|_| !outputs.iter().any(|o| o.name == n.outputs[0]));
        match copy {
            Some(src) => {
                let t = initializers[src].1.clone();
                known.insert(n.outputs[0].clone(), initializers.len());
                initializers.push((n.outputs[0].clone(), t));
            }
            None => kept.push(n),
        }
    }
    *nodes = kept;
}

/// Returns a copy of `model` whose initializers named in `updates` carry the new values;/// Returns a copy of `model` whose initializers named in `updates` carry the new values;
/// every name must exist with the same shape. Everything else stays as it was: this is how
/// an adapted inference model is written.
pub fn with_initializers(
    model: &ModelProto,
    updates: &HashMap<String, Tensor>,
) -> Result<ModelProto> {
    let mut out = model.clone();
    let g = out.graph.as_mut().ok_or(GraphError::NoGraph)?;
    // Names that `Graph::from_model` untied from a shared initializer become initializers
    // (all of them, as there, when an update names one).
    let untie = updates
        .keys()
        .any(|k| !g.initializer.iter().any(|t| &t.name == k));
    loop {
        if !untie {
            break;
        }
        let names: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        let Some(i) = g.node.iter().position(|n| {
            n.op_type == "Identity"
                && n.input.len() == 1
                && n.output.len() == 1
                && names.contains(n.input[0].as_str())
                && !names.contains(n.output[0].as_str())
                && !g.output.iter().any(|o| o.name == n.output[0])
        }) else {
            break;
        };
        let n = g.node.remove(i);
        let mut t = g
            .initializer
            .iter()
            .find(|t| t.name == n.input[0])
            .cloned()
            .expect("checked");
        t.name = n.output[0].clone();
        g.initializer.push(t);
    }
    let mut seen = 0;
    for t in g.initializer.iter_mut() {
        if let Some(new) = updates.get(&t.name) {
            let dims: Vec<i64> = new.shape().iter().map(|&d| d as i64).collect();
            if dims != t.dims {
                return Err(GraphError::Tensor {
                    tensor: t.name.clone(),
                    reason: format!(
                        "new value has shape {:?}, the model's is {:?}",
                        dims, t.dims
                    ),
                });
            }
            *t = tensor_to_proto(&t.name, new);
            seen += 1;
        }
    }
    if seen != updates.len() {
        let names: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        let missing = updates
            .keys()
            .find(|k| !names.contains(k.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(GraphError::Tensor {
            tensor: missing,
            reason: "not an initializer of the model".into(),
        });
    }
    Ok(out)
}
