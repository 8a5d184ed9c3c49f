//! Durable file writes: write a temporary file in the same folder, fsync it, rename it over
//! the target, fsync the folder. A crash leaves either the old file or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{AdaptError, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdaptError + '_ {
    move |source| AdaptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Atomically replaces `path` with `bytes`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_target_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir-is-a-file");
        fs::write(&p, b"x").unwrap();
        let err = atomic_write(&p.join("child.bin"), b"y").unwrap_err();
        assert!(err.to_string().contains("missing-dir-is-a-file"), "{err}");
    }
}
