//! safetensors encoding of named tensors (the field's format for weights).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};

use crate::{Tensor, TensorData};

/// Why safetensors bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StError {
    #[error("not a valid safetensors file: {0}")]
    Format(String),
    #[error("tensor '{name}': element type {dtype} is not supported (F32 and I64 only)")]
    Dtype { name: String, dtype: String },
}

/// Encodes tensors (sorted by name) with string metadata.
pub fn to_bytes(tensors: &BTreeMap<String, Tensor>, metadata: &HashMap<String, String>) -> Vec<u8> {
    let raw: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (bytes, dt) = match t.data() {
                TensorData::F32(v) => {
                    (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32)
                }
                TensorData::I64(v) => {
                    (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::I64)
                }
            };
            (n.clone(), bytes, dt, t.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, b, dt, s)| {
            (
                n.clone(),
                TensorView::new(*dt, s.clone(), b).expect("sizes agree by construction"),
            )
        })
        .collect();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    safetensors::serialize(views, &meta).expect("in-memory serialisation cannot fail")
}

/// Named tensors and string metadata, as stored in a safetensors file.
pub type Named = (BTreeMap<String, Tensor>, HashMap<String, String>);

/// Decodes tensors and metadata.
pub fn from_bytes(bytes: &[u8]) -> Result<Named, StError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| StError::Format(e.to_string()))?;
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| StError::Format(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let d = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::f32(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::I64 => TensorData::i64(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            other => {
                return Err(StError::Dtype {
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::new(shape, data).map_err(|e| StError::Format(e.to_string()))?;
        out.insert(name, t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_metadata() {
        let mut t = BTreeMap::new();
        t.insert(
            "w".to_string(),
            Tensor::f32(vec![2, 2], vec![1.0, -2.0, 3.5, 0.0]).unwrap(),
        );
        t.insert(
            "n".to_string(),
            Tensor::i64(vec![3], vec![1, 2, -3]).unwrap(),
        );
        let meta = HashMap::from([("round".to_string(), "7".to_string())]);
        let (back, m) = from_bytes(&to_bytes(&t, &meta)).unwrap();
        assert_eq!(back, t);
        assert_eq!(m["round"], "7");
    }

    #[test]
    fn truncated_bytes_are_an_error() {
        let mut t = BTreeMap::new();
        t.insert("w".to_string(), Tensor::zeros_f32(vec![16]));
        let b = to_bytes(&t, &HashMap::new());
        assert!(from_bytes(&b[..b.len() - 5]).is_err());
        assert!(from_bytes(b"garbage").is_err());
    }
}
