//! Checkpoints: the trained parameters as safetensors, with metadata (model hash, step,
//! metrics) and a SHA-256 over the tensor bytes that is verified on load.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fieldtune_tensor::{st, Tensor, TensorData};
use sha2::{Digest, Sha256};

use crate::error::{AdaptError, Result};
use crate::fsutil::atomic_write;

/// Metadata key holding the tensor checksum.
pub const CHECKSUM_KEY: &str = "fieldtune.sha256";

/// SHA-256 over names, shapes and data of the tensors, in name order.
pub fn tensors_sha256(tensors: &BTreeMap<String, Tensor>) -> String {
    let mut h = Sha256::new();
    for (n, t) in tensors {
        h.update(n.as_bytes());
        for d in t.shape() {
            h.update((*d as u64).to_le_bytes());
        }
        match t.data() {
            TensorData::F32(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
            TensorData::I64(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
        }
    }
    format!("{:x}", h.finalize())
}

/// Hex SHA-256 of bytes (model files).
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes a checkpoint atomically; `metadata` is stored beside the checksum.
pub fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    atomic_write(path, &to_bytes(tensors, metadata))
}

/// The bytes of a checkpoint file: safetensors with `metadata` and the checksum.
pub fn to_bytes(tensors: &BTreeMap<String, Tensor>, metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut meta = metadata.clone();
    meta.insert(CHECKSUM_KEY.into(), tensors_sha256(tensors));
    st::to_bytes(tensors, &meta)
}

/// Reads and verifies a checkpoint.
pub fn load(path: &Path) -> Result<st::Named> {
    let bad = |reason: String| AdaptError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| AdaptError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (tensors, meta) =
        st::from_bytes(&bytes).map_err(|e| bad(format!("{e} (truncated or corrupt?)")))?;
    let want = meta.get(CHECKSUM_KEY).ok_or_else(|| {
        bad(format!(
            "no {CHECKSUM_KEY} in the metadata; not a fieldtune checkpoint"
        ))
    })?;
    let got = tensors_sha256(&tensors);
    if &got != want {
        return Err(bad(format!(
            "checksum mismatch: stored {want}, computed {got}; the file is corrupt"
        )));
    }
    Ok((tensors, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Tensor> {
        BTreeMap::from([(
            "w".to_string(),
            Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]).unwrap(),
        )])
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        save(&p, &sample(), &HashMap::from([("step".into(), "9".into())])).unwrap();
        let (t, m) = load(&p).unwrap();
        assert_eq!(t, sample());
        assert_eq!(m["step"], "9");
    }

    #[test]
    fn flipped_byte_and_truncation_are_detected() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        save(&p, &sample(), &HashMap::new()).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 2] ^= 0x40;
        std::fs::write(&p, &b).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("checksum mismatch") && e.contains("c.safetensors"),
            "{e}"
        );
        std::fs::write(&p, &b[..n - 3]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("c.safetensors"));
    }
}
