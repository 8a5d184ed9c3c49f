//! The TensorRT engine cache folder as files: which path a load took (built, refitted,
//! loaded from the cache), making a weight-stripped engine refit from new weights, and
//! keeping the folder under a size bound. Plain file operations, tested without a GPU.
//!
//! What ONNX Runtime's TensorRT provider does with the folder (1.18.1 and later, read from its
//! source, not observed here): an engine is cached as `<key>.engine`; with weight-stripped
//! engines on, it builds `<key>.stripped.engine`, refits it from the ONNX file in
//! `trt_onnx_model_folder_path` and writes the refitted engine as `<key>.engine`. A later
//! session that finds `<key>.engine` loads it as it is, without refitting: so before a session
//! of new weights is built, the refitted engines are removed ([`remove_refitted`]) and the
//! stripped one is refitted from the new file.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Which way a TensorRT session's engines came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrtPath {
    /// An engine was built (a new or changed engine file; minutes on a Jetson).
    Built,
    /// A cached weight-stripped engine was refitted from the model's weights.
    Refitted,
    /// Engines were loaded from the cache as they were.
    Cached,
    /// No engine file is there or changed: TensorRT took no node, or there is no cache.
    NoEngine,
}

impl TrtPath {
    /// As events spell it: `build`, `refit`, `cached`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrtPath::Built => "build",
            TrtPath::Refitted => "refit",
            TrtPath::Cached => "cached",
            TrtPath::NoEngine => "none",
        }
    }
}

impl fmt::Display for TrtPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one session on the TensorRT provider was made, and how long its load took.
#[derive(Clone, Debug, PartialEq)]
pub struct TrtBuild {
    /// The session's label.
    pub label: String,
    /// Built, refitted or loaded.
    pub path: TrtPath,
    /// The whole session load (graph partition, engine build or refit, context).
    pub ms: f64,
    /// Whether weight-stripped engines were asked for.
    pub refit: bool,
}

/// The engine files of a cache folder: name -> (size, modification time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheSnapshot(BTreeMap<String, (u64, Option<SystemTime>)>);

fn is_engine(name: &str) -> bool {
    name.ends_with(".engine")
}

fn is_stripped(name: &str) -> bool {
    name.ends_with(".stripped.engine")
}

impl CacheSnapshot {
    /// The `*.engine` files directly in `dir` (a missing folder: none).
    pub fn take(dir: &Path) -> CacheSnapshot {
        let mut files = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(md) = e.metadata() else { continue };
                if md.is_file() && is_engine(&name) {
                    files.insert(name, (md.len(), md.modified().ok()));
                }
            }
        }
        CacheSnapshot(files)
    }

    fn changed<'a>(&'a self, after: &'a CacheSnapshot) -> impl Iterator<Item = &'a str> + 'a {
        after
            .0
            .iter()
            .filter(|(n, v)| self.0.get(*n) != Some(v))
            .map(|(n, _)| n.as_str())
    }
}

/// The path a load took, from the engine files before and after it: a new or changed
/// stripped engine, or (without refit) a new or changed engine, was built; with refit, a new
/// refitted engine alone means a refit; engine files unchanged mean the cache was used.
pub fn classify(before: &CacheSnapshot, after: &CacheSnapshot, refit: bool) -> TrtPath {
    let changed: Vec<&str> = before.changed(after).collect();
    if changed.is_empty() {
        if after.0.is_empty() {
            TrtPath::NoEngine
        } else {
            TrtPath::Cached
        }
    } else if refit && !changed.iter().any(|n| is_stripped(n)) {
        TrtPath::Refitted
    } else {
        TrtPath::Built
    }
}

/// Removes the refitted engines (`*.engine`, not `*.stripped.engine`) directly in `dir`, so
/// that the next session refits the stripped engine from its own weights; returns how many.
pub fn remove_refitted(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_engine(&name) && !is_stripped(&name) && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `bytes` to `path` through a temporary file and a rename (a reader never sees a
/// half-written model).
pub fn write_model(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("onnx.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// What [`evict`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// The files removed, oldest first.
    pub files: Vec<PathBuf>,
    /// Their size.
    pub bytes: u64,
    /// The folder's size afterwards.
    pub kept_bytes: u64,
}

/// Keeps the regular files under `dir` (recursively; links are neither followed nor counted)
/// within `max_bytes`, removing the oldest first (by modification time, then name). A
/// missing folder is empty.
pub fn evict(dir: &Path, max_bytes: u64) -> io::Result<Evicted> {
    let mut files: Vec<(Option<SystemTime>, PathBuf, u64)> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let md = e.metadata()?;
                files.push((md.modified().ok(), e.path(), md.len()));
            }
        }
    }
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut out = Evicted::default();
    for (_, path, len) in files {
        if total <= max_bytes {
            break;
        }
        std::fs::remove_file(&path)?;
        total -= len;
        out.bytes += len;
        out.files.push(path);
    }
    out.kept_bytes = total;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn touch(dir: &Path, name: &str, len: usize, age_s: u64) {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; len]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn classifies_build_refit_and_cache() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let empty = CacheSnapshot::take(dir);
        assert_eq!(classify(&empty, &empty, true), TrtPath::NoEngine);
        // First load with refit: the stripped engine is built, then refitted.
        touch(dir, "k.stripped.engine", 10, 100);
        touch(dir, "k.engine", 50, 100);
        let first = CacheSnapshot::take(dir);
        assert_eq!(classify(&empty, &first, true), TrtPath::Built);
        // New weights: the refitted engine is removed, the stripped one refitted.
        assert_eq!(remove_refitted(dir).unwrap(), 1);
        assert!(dir.join("k.stripped.engine").is_file());
        let before = CacheSnapshot::take(dir);
        touch(dir, "k.engine", 50, 0);
        assert_eq!(
            classify(&before, &CacheSnapshot::take(dir), true),
            TrtPath::Refitted
        );
        // Nothing changed: loaded from the cache.
        let now = CacheSnapshot::take(dir);
        assert_eq!(classify(&now, &now, true), TrtPath::Cached);
        assert_eq!(classify(&now, &now, false), TrtPath::Cached);
        // Without refit any new engine is a build.
        touch(dir, "other.engine", 5, 0);
        assert_eq!(
            classify(&now, &CacheSnapshot::take(dir), false),
            TrtPath::Built
        );
        // Other files (timing caches, profiles) are not engines.
        touch(dir, "k.profile", 5, 0);
        assert_eq!(CacheSnapshot::take(dir).0.len(), 3);
    }

    #[test]
    fn eviction_removes_the_oldest_until_within_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        touch(dir, "old.engine", 100, 300);
        touch(dir, "mid.stripped.engine", 100, 200);
        std::fs::create_dir(dir.join("onnx")).unwrap();
        touch(&dir.join("onnx"), "m.onnx", 100, 100);
        touch(dir, "new.engine", 100, 0);
        let e = evict(dir, 250).unwrap();
        assert_eq!(
            e.files,
            vec![dir.join("old.engine"), dir.join("mid.stripped.engine")]
        );
        assert_eq!((e.bytes, e.kept_bytes), (200, 200));
        assert!(dir.join("new.engine").is_file() && dir.join("onnx/m.onnx").is_file());
        // Within the bound: nothing goes.
        assert!(evict(dir, 200).unwrap().files.is_empty());
        // A missing folder is empty.
        assert_eq!(evict(&dir.join("none"), 0).unwrap(), Evicted::default());
        assert_eq!(remove_refitted(&dir.join("none")).unwrap(), 0);
    }

    #[test]
    fn model_is_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("onnx").join("m.onnx");
        write_model(&p, b"one").unwrap();
        write_model(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path().join("onnx")).unwrap().count(), 1);
    }
}
