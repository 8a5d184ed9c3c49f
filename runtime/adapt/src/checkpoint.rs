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
    let bytes = read_regular(path)?;
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

/// Reads a file that must be a regular file, without following a symbolic link
/// (`O_NOFOLLOW`) and without blocking on a FIFO or device (`O_NONBLOCK`, then refused).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use rustix::fs::{fstat, open, FileType, Mode, OFlags};
    use std::io::Read;
    let io = |source: std::io::Error| AdaptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: &str| AdaptError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let fd = match open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(bad(
                "is a symbolic link; state files are not read through links",
            ))
        }
        Err(e) => return Err(io(e.into())),
    };
    let st = fstat(&fd).map_err(|e| io(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad(
            "is not a regular file (a FIFO, device or folder); refused",
        ));
    }
    let mut f = std::fs::File::from(fd);
    let mut bytes = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0));
    f.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
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

    #[test]
    fn links_and_fifos_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        save(&p, &sample(), &HashMap::new()).unwrap();
        let link = d.path().join("link.safetensors");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = load(&link).unwrap_err().to_string();
        assert!(
            e.contains("link.safetensors") && e.contains("symbolic link"),
            "{e}"
        );
        let fifo = d.path().join("fifo.safetensors");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = load(&fifo).unwrap_err().to_string();
        assert!(
            e.contains("fifo.safetensors") && e.contains("regular"),
            "{e}"
        );
    }
}
