//! Structure-aware mutations of the binary formats: ONNX (decoded, one field of the model
//! changed, encoded again), safetensors (the header's length, its JSON, or the tensors and
//! metadata re-encoded with a valid checksum) and images (PNG chunks with their CRC fixed,
//! JPEG frame headers).

use std::collections::BTreeMap;

use fieldtune_graph::proto::{
    tensor_shape_proto::{dimension::Value as DimV, Dimension},
    type_proto, ModelProto, StringStringEntryProto,
};
use fieldtune_graph::{decode_model, encode_model};
use fieldtune_tensor::{st, Tensor, TensorData};
use rand::Rng;

use super::mutate::int;
use super::{Corpus, Rng8};

/// Op types the compiler knows, and some it does not.
const OPS: [&str; 24] = [
    "Conv",
    "Relu",
    "MaxPool",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Reshape",
    "Flatten",
    "Transpose",
    "Concat",
    "Slice",
    "Softmax",
    "BatchNormalization",
    "GlobalAveragePool",
    "AveragePool",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Abs",
    "NoSuchOp",
];

/// One change to a decoded ONNX model.
pub fn onnx(d: &[u8], _c: &Corpus, rng: &mut Rng8) -> Option<Vec<u8>> {
    let mut m: ModelProto = decode_model(d, std::path::Path::new("model.onnx")).ok()?;
    let g = m.graph.as_mut()?;
    let names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output).cloned())
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .collect();
    let any_name = |rng: &mut Rng8| {
        if names.is_empty() || rng.gen_bool(0.1) {
            "undefined_value".to_string()
        } else {
            names[rng.gen_range(0..names.len())].clone()
        }
    };
    match rng.gen_range(0..12) {
        0 | 1 if !g.initializer.is_empty() => {
            let i = rng.gen_range(0..g.initializer.len());
            let t = &mut g.initializer[i];
            match rng.gen_range(0..6) {
                0 if !t.dims.is_empty() => {
                    let k = rng.gen_range(0..t.dims.len());
                    t.dims[k] = int(rng);
                }
                1 => t.dims.push(int(rng)),
                2 => {
                    t.dims.pop();
                }
                3 => t.data_type = [0, 1, 2, 6, 7, 10, 11, 16, 99][rng.gen_range(0..9)],
                4 => {
                    let n = rng.gen_range(0..=t.raw_data.len());
                    t.raw_data.truncate(n);
                }
                _ => {
                    t.data_location = Some(1);
                    t.external_data.push(StringStringEntryProto {
                        key: "location".into(),
                        value: "/etc/passwd".into(),
                    });
                }
            }
        }
        2 | 3 => {
            // A graph input's or output's declared shape or type.
            let ios = if rng.gen_bool(0.6) {
                &mut g.input
            } else {
                &mut g.output
            };
            if ios.is_empty() {
                return None;
            }
            let i = rng.gen_range(0..ios.len());
            let Some(type_proto::Value::TensorType(tt)) =
                ios[i].r#type.as_mut().and_then(|t| t.value.as_mut())
            else {
                return None;
            };
            match rng.gen_range(0..5) {
                0 => tt.elem_type = [0, 1, 6, 7, 11][rng.gen_range(0..5)],
                1 => tt.shape = None,
                _ => {
                    let shape = tt.shape.get_or_insert_with(Default::default);
                    let dim = Dimension {
                        denotation: String::new(),
                        value: Some(if rng.gen_bool(0.85) {
                            DimV::DimValue(int(rng))
                        } else {
                            DimV::DimParam("n".into())
                        }),
                    };
                    if shape.dim.is_empty() || rng.gen_bool(0.2) {
                        shape.dim.push(dim);
                    } else {
                        let k = rng.gen_range(0..shape.dim.len());
                        shape.dim[k] = dim;
                    }
                }
            }
        }
        4..=8 if !g.node.is_empty() => {
            let i = rng.gen_range(0..g.node.len());
            let name = any_name(rng);
            let n = &mut g.node[i];
            match rng.gen_range(0..7) {
                0 => n.op_type = OPS[rng.gen_range(0..OPS.len())].into(),
                1 if !n.input.is_empty() => {
                    // Another value (possibly a later one: a cycle), or an empty one.
                    let k = rng.gen_range(0..n.input.len());
                    n.input[k] = if rng.gen_bool(0.1) {
                        String::new()
                    } else {
                        name
                    };
                }
                2 => {
                    if rng.gen_bool(0.5) {
                        n.input.pop();
                    } else {
                        n.input.push(name);
                    }
                }
                3 if !n.output.is_empty() => {
                    let k = rng.gen_range(0..n.output.len());
                    n.output[k] = name;
                }
                4 if !n.attribute.is_empty() => {
                    let k = rng.gen_range(0..n.attribute.len());
                    let a = &mut n.attribute[k];
                    if !a.ints.is_empty() && rng.gen_bool(0.6) {
                        let j = rng.gen_range(0..a.ints.len());
                        a.ints[j] = int(rng);
                    } else if rng.gen_bool(0.5) {
                        a.i = int(rng);
                    } else {
                        a.r#type = rng.gen_range(0..14);
                    }
                }
                5 => n.domain = "com.microsoft".into(),
                _ => {
                    let mut a = n.attribute.first().cloned().unwrap_or_default();
                    a.name = ["axis", "group", "perm", "pads", "strides", "kernel_shape"]
                        [rng.gen_range(0..6)]
                    .into();
                    a.ints = (0..rng.gen_range(0..6)).map(|_| int(rng)).collect();
                    a.i = int(rng);
                    n.attribute.push(a);
                }
            }
        }
        9 if !g.node.is_empty() => {
            let i = rng.gen_range(0..g.node.len());
            match rng.gen_range(0..3) {
                0 => {
                    g.node.remove(i);
                }
                1 => {
                    let n = g.node[i].clone();
                    g.node.insert(rng.gen_range(0..=g.node.len()), n);
                }
                _ => {
                    let j = rng.gen_range(0..g.node.len());
                    g.node.swap(i, j);
                }
            }
        }
        10 => {
            if let Some(o) = m.opset_import.first_mut() {
                o.version = [0, 1, 12, 13, 17, 21, 99, i64::MAX][rng.gen_range(0..8)];
            }
        }
        _ => {
            if rng.gen_bool(0.5) && !g.initializer.is_empty() {
                let i = rng.gen_range(0..g.initializer.len());
                g.initializer.remove(i);
            } else if !g.output.is_empty() {
                let i = rng.gen_range(0..g.output.len());
                g.output[i].name = any_name(rng);
            }
        }
    }
    Some(encode_model(&m))
}

/// One change to a safetensors file: its header length, a header entry (dtype, shape,
/// offsets, metadata), or its tensors and metadata re-encoded with a valid checksum.
pub fn safetensors(d: &[u8], _c: &Corpus, rng: &mut Rng8) -> Option<Vec<u8>> {
    if d.len() < 8 {
        return None;
    }
    let n = u64::from_le_bytes(d[..8].try_into().unwrap());
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    if end > d.len() {
        return None;
    }
    match rng.gen_range(0..10) {
        0 => {
            let mut v = d.to_vec();
            let m = match rng.gen_range(0..4) {
                0 => int(rng) as u64,
                1 => n.wrapping_add(rng.gen_range(1..64)),
                2 => n.saturating_sub(rng.gen_range(1..64)),
                _ => d.len() as u64,
            };
            v[..8].copy_from_slice(&m.to_le_bytes());
            Some(v)
        }
        1..=5 => {
            let mut h: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&d[8..end]).ok()?;
            let keys: Vec<String> = h.keys().cloned().collect();
            if keys.is_empty() {
                return None;
            }
            let k = &keys[rng.gen_range(0..keys.len())];
            let e = h.get_mut(k)?.as_object_mut()?;
            if k == "__metadata__" {
                let mk: Vec<String> = e.keys().cloned().collect();
                if mk.is_empty() {
                    return None;
                }
                let key = &mk[rng.gen_range(0..mk.len())];
                let value = [
                    "18446744073709551615".to_string(),
                    "9007199254740993".to_string(),
                    "-1".into(),
                    "x".into(),
                    String::new(),
                    "{".into(),
                ][rng.gen_range(0..6)]
                .clone();
                e.insert(key.clone(), value.into());
            } else {
                match rng.gen_range(0..4) {
                    0 => {
                        let dt = ["F32", "I64", "F16", "BF16", "U8", "BOOL", "F64", "XX"]
                            [rng.gen_range(0..8)];
                        e.insert("dtype".into(), dt.into());
                    }
                    1 | 2 => {
                        let shape = e.get_mut("shape")?.as_array_mut()?;
                        let v = serde_json::Value::from(int(rng));
                        if shape.is_empty() || rng.gen_bool(0.3) {
                            shape.push(v);
                        } else {
                            let i = rng.gen_range(0..shape.len());
                            shape[i] = v;
                        }
                    }
                    _ => {
                        let offs = e.get_mut("data_offsets")?.as_array_mut()?;
                        if offs.len() == 2 {
                            if rng.gen_bool(0.3) {
                                offs.swap(0, 1);
                            } else {
                                offs[rng.gen_range(0..2)] = int(rng).into();
                            }
                        }
                    }
                }
            }
            let json = serde_json::to_vec(&h).ok()?;
            let mut v = (json.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(&json);
            v.extend_from_slice(&d[end..]);
            Some(v)
        }
        _ => {
            let (mut t, mut meta) = st::from_bytes(d).ok()?;
            meta.remove(fieldtune_adapt::checkpoint::CHECKSUM_KEY);
            semantic(&mut t, &mut meta, rng);
            Some(fieldtune_adapt::checkpoint::to_bytes(&t, &meta))
        }
    }
}

/// Changes that keep the file well-formed (the checksum is recomputed): NaN values, another
/// shape or dtype, a tensor dropped, added or renamed, metadata counters out of range.
fn semantic(
    t: &mut BTreeMap<String, Tensor>,
    meta: &mut std::collections::HashMap<String, String>,
    rng: &mut Rng8,
) {
    let names: Vec<String> = t.keys().cloned().collect();
    let pick = |rng: &mut Rng8| names.get(rng.gen_range(0..names.len().max(1))).cloned();
    match rng.gen_range(0..6) {
        0 => {
            if let Some(n) = pick(rng) {
                if let TensorData::F32(a) = t[&n].data().clone() {
                    let mut a = a;
                    if let Some(x) = a.iter_mut().next() {
                        *x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.gen_range(0..3)];
                    }
                    t.insert(n, Tensor::from(a));
                }
            }
        }
        1 => {
            if let Some(n) = pick(rng) {
                let len = t[&n].len();
                let s = match rng.gen_range(0..3) {
                    0 => vec![len],
                    1 => vec![1, len],
                    _ => vec![len + 1],
                };
                t.insert(n, Tensor::zeros_f32(s));
            }
        }
        2 => {
            if let Some(n) = pick(rng) {
                let len = t[&n].len();
                t.insert(n, Tensor::i64(vec![len], vec![0; len]).unwrap());
            }
        }
        3 => {
            if let Some(n) = pick(rng) {
                let v = t.remove(&n).unwrap();
                if rng.gen_bool(0.5) {
                    t.insert(format!("{n}.renamed"), v);
                }
            }
        }
        4 => {
            t.insert("extra.weight".into(), Tensor::zeros_f32(vec![3]));
        }
        _ => {
            let keys = ["fieldtune.version", "round", "step", "unix_ms", "kind"];
            let k = keys[rng.gen_range(0..keys.len())];
            let v = match rng.gen_range(0..3) {
                0 => u64::MAX.to_string(),
                1 => ((1u64 << 53) + 1).to_string(),
                _ => "-3".to_string(),
            };
            meta.insert(k.into(), v);
        }
    }
}

/// One change to a PNG (a chunk's field, with the CRC made right again so decoders look
/// further) or a JPEG (a frame header's size or component count).
pub fn image(d: &[u8], _c: &Corpus, rng: &mut Rng8) -> Option<Vec<u8>> {
    if d.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(d, rng)
    } else if d.starts_with(&[0xff, 0xd8]) {
        jpeg(d, rng)
    } else {
        None
    }
}

fn png(d: &[u8], rng: &mut Rng8) -> Option<Vec<u8>> {
    // Chunks: (offset of length, length).
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= d.len() {
        let len = u32::from_be_bytes(d[at..at + 4].try_into().unwrap()) as usize;
        if at + 12 + len > d.len() {
            break;
        }
        chunks.push((at, len));
        at += 12 + len;
    }
    let &(off, len) = chunks.get(rng.gen_range(0..chunks.len().max(1)))?;
    let mut v = d.to_vec();
    let is_ihdr = &d[off + 4..off + 8] == b"IHDR";
    if is_ihdr && rng.gen_bool(0.8) {
        // width, height (a bomb: huge dimensions over a tiny stream), depth, colour type,
        // interlace.
        let field = rng.gen_range(0..4);
        let data = off + 8;
        match field {
            0 | 1 => {
                let val =
                    [0u32, 1, 65_535, 60_000, 1 << 20, u32::MAX, 1 << 31][rng.gen_range(0..7)];
                v[data + 4 * field..data + 4 * field + 4].copy_from_slice(&val.to_be_bytes());
            }
            2 => v[data + 8] = [0u8, 1, 2, 4, 8, 16, 3][rng.gen_range(0..7)],
            _ => v[data + 9 + rng.gen_range(0..4)] = [0u8, 2, 3, 4, 6, 7][rng.gen_range(0..6)],
        }
    } else if rng.gen_bool(0.5) && len > 0 {
        let i = off + 8 + rng.gen_range(0..len);
        v[i] ^= 1 << rng.gen_range(0..8);
    } else {
        let new = int(rng) as u32;
        v[off..off + 4].copy_from_slice(&new.to_be_bytes());
        return Some(v);
    }
    let crc = crc32fast::hash(&v[off + 4..off + 8 + len]);
    v[off + 8 + len..off + 12 + len].copy_from_slice(&crc.to_be_bytes());
    Some(v)
}

fn jpeg(d: &[u8], rng: &mut Rng8) -> Option<Vec<u8>> {
    // Start-of-frame markers: FFC0..FFC3; after the length: precision, height, width, count.
    let sof = (0..d.len().saturating_sub(10))
        .find(|&i| d[i] == 0xff && (0xc0..=0xc3).contains(&d[i + 1]))?;
    let mut v = d.to_vec();
    match rng.gen_range(0..4) {
        0 => v[sof + 5..sof + 7].copy_from_slice(&[0xff, 0xff]),
        1 => v[sof + 7..sof + 9].copy_from_slice(&(int(rng) as u16).to_be_bytes()),
        2 => v[sof + 9] = [0u8, 1, 2, 3, 4, 255][rng.gen_range(0..6)],
        _ => v[sof + 4] = [0u8, 8, 12, 16][rng.gen_range(0..4)],
    }
    Some(v)
}
