//! The checkpoint store in the state folder:
//!
//! - `source.safetensors`: the model's own weights, written once; never replaced.
//! - `last-good.safetensors`: the weights that passed the gate last (or the source after a
//!   reset); replaced only by an atomic rename of a complete, fsynced file.
//! - `previous.safetensors`: a separate, complete copy of the last-good file before the
//!   latest commit (never a hard link: one damaged inode must not take out both).
//!
//! Each is a fieldtune checkpoint (safetensors, SHA-256 of the tensors in the metadata,
//! verified on load). On start the store resumes from the newest file that verifies and fits
//! the model (the same tensor names, shapes and dtypes as the model's parameters, every value
//! finite, counters in range): last-good, then previous, then source. A file that does not is
//! moved aside (renamed `*.corrupt-<unix time>`), never deleted. State files are read without
//! following symbolic links, and anything but a regular file is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fieldtune_adapt::checkpoint;
use fieldtune_tensor::Tensor;

use crate::error::{io_err, FieldError, Result};

pub const SOURCE: &str = "source.safetensors";
pub const LAST_GOOD: &str = "last-good.safetensors";
pub const PREVIOUS: &str = "previous.safetensors";

/// Largest version, round and step a checkpoint may carry (2^53): far above any real run,
/// far enough below `u64::MAX` that adding one never wraps.
pub const MAX_COUNTER: u64 = 1 << 53;

/// Why `s` does not fit `want` (the model's parameters): a missing or extra tensor, another
/// shape or dtype, or a value that is not finite. With `exact` false, tensors of `want` that
/// `s` lacks are allowed (`want` is every initializer of the model).
pub fn misfit(s: &Stored, want: &HashMap<String, Tensor>, exact: bool) -> Option<String> {
    let mut names: Vec<&String> = s.params.keys().collect();
    names.sort();
    for n in names {
        let t = &s.params[n];
        let Some(w) = want.get(n) else {
            return Some(format!("holds tensor `{n}`, which the model does not have"));
        };
        if t.shape() != w.shape() || t.dtype() != w.dtype() {
            return Some(format!(
                "tensor `{n}` is {:?} {:?}; the model's is {:?} {:?}",
                t.dtype(),
                t.shape(),
                w.dtype(),
                w.shape()
            ));
        }
        if t.as_f32().is_some_and(|v| v.iter().any(|x| !x.is_finite())) {
            return Some(format!("tensor `{n}` holds NaN or infinite values"));
        }
    }
    if exact {
        let mut missing: Vec<&String> =
            want.keys().filter(|k| !s.params.contains_key(*k)).collect();
        missing.sort();
        if let Some(n) = missing.first() {
            return Some(format!("lacks tensor `{n}` of the model"));
        }
    }
    None
}

/// The largest checkpoint file that can hold `params`: their bytes plus room for the header
/// and metadata (16 MiB).
pub fn size_limit(params: &HashMap<String, Tensor>) -> u64 {
    let data: u64 = params.values().map(|t| 8 * t.len() as u64).sum();
    data + (16 << 20)
}

/// Whether a state file is present: as a name, without following a link (a dangling link is
/// present too, and is refused and moved aside when read).
fn present(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Metadata of a stored set of weights.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointMeta {
    /// 0 = source weights; +1 per commit or reset.
    pub version: u64,
    /// Rounds run (in all processes) when it was written.
    pub round: u64,
    /// Optimizer steps behind these weights since the source (0 after a reset).
    pub step: u64,
    /// `source`, `adapted` or `reset`.
    pub kind: String,
    /// SHA-256 of the source model.onnx these weights belong to.
    pub model_sha256: String,
    /// The gate's metrics, JSON.
    pub metrics: serde_json::Value,
    pub unix_ms: u64,
}

impl CheckpointMeta {
    fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("fieldtune.version".into(), self.version.to_string()),
            ("round".into(), self.round.to_string()),
            ("step".into(), self.step.to_string()),
            ("kind".into(), self.kind.clone()),
            ("source_model_sha256".into(), self.model_sha256.clone()),
            ("metrics".into(), self.metrics.to_string()),
            ("unix_ms".into(), self.unix_ms.to_string()),
        ])
    }

    fn from_map(m: &HashMap<String, String>, path: &Path) -> Result<CheckpointMeta> {
        let get = |k: &str| {
            m.get(k).cloned().ok_or_else(|| FieldError::State {
                path: path.into(),
                reason: format!("metadata has no `{k}`; not a fieldtune field checkpoint"),
            })
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?.parse().map_err(|_| FieldError::State {
                path: path.into(),
                reason: format!("metadata `{k}` is not a number"),
            })
        };
        let counter = |k: &str| -> Result<u64> {
            let v = num(k)?;
            if v > MAX_COUNTER {
                return Err(FieldError::State {
                    path: path.into(),
                    reason: format!("metadata `{k}` is {v}, above {MAX_COUNTER}; corrupt"),
                });
            }
            Ok(v)
        };
        Ok(CheckpointMeta {
            version: counter("fieldtune.version")?,
            round: counter("round")?,
            step: counter("step")?,
            kind: get("kind")?,
            model_sha256: get("source_model_sha256")?,
            metrics: serde_json::from_str(&get("metrics")?).unwrap_or(serde_json::Value::Null),
            unix_ms: num("unix_ms")?,
        })
    }
}

/// Weights and their metadata.
#[derive(Clone, Debug)]
pub struct Stored {
    pub params: HashMap<String, Tensor>,
    pub meta: CheckpointMeta,
    pub path: PathBuf,
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// Files that did not verify and were moved aside: (file, where it went, why).
    pub quarantined: Vec<(PathBuf, PathBuf, String)>,
    /// Leftover temporary files of interrupted writes that were removed.
    pub removed_temporaries: Vec<PathBuf>,
}

/// The state folder's checkpoints. Holds an exclusive lock on `<dir>/.lock` while alive,
/// so two processes never share a state folder.
pub struct Store {
    dir: PathBuf,
    model_sha256: String,
    _lock: Option<std::fs::File>,
}

fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let p = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io_err(&p))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        FieldError::State {
            path: dir.into(),
            reason: "another fieldtune process is using this state folder".into(),
        }
    })?;
    Ok(f)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (creating) `dir` for the model whose model.onnx hashes to `model_sha256`,
    /// writes the source checkpoint if missing, and returns the weights to resume from.
    /// A checkpoint of another model is an error (nothing is changed).
    pub fn open(
        dir: &Path,
        model_sha256: &str,
        source_params: &HashMap<String, Tensor>,
    ) -> Result<(Store, Stored, OpenReport)> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(FieldError::State {
                path: dir.into(),
                reason: format!(
                    "state_dir is a symbolic link (to {}); give the folder itself",
                    std::fs::read_link(dir)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into())
                ),
            });
        }
        let store = Store {
            dir: dir.to_path_buf(),
            model_sha256: model_sha256.to_string(),
            _lock: Some(lock_dir(dir)?),
        };
        let mut report = OpenReport::default();
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let p = e.map_err(io_err(dir))?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') && name.contains(".safetensors.tmp-") {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
                report.removed_temporaries.push(p);
            }
        }
        // Reads `p` and checks it against this model; Err(reason) when it must be moved aside.
        let limit = size_limit(source_params);
        let fits = |p: &Path| -> Result<std::result::Result<Stored, String>> {
            let len = std::fs::symlink_metadata(p).map_or(0, |m| m.len());
            if len > limit {
                // Refused before it is read: a huge garbage file costs no memory.
                return Ok(Err(format!(
                    "is {len} bytes; a checkpoint of this model is at most {limit}"
                )));
            }
            match store.read(p) {
                Ok(s) => {
                    store.check_model(&s)?;
                    Ok(match misfit(&s, source_params, true) {
                        None => Ok(s),
                        Some(why) => Err(why),
                    })
                }
                Err(e) => Ok(Err(e.to_string())),
            }
        };
        // The source checkpoint: verify it belongs to this model, or write it.
        let src = dir.join(SOURCE);
        if present(&src) {
            if let Err(why) = fits(&src)? {
                report.quarantined.push(store.quarantine(&src, why)?);
            }
        }
        if !present(&src) {
            store.write(
                &src,
                source_params,
                &CheckpointMeta {
                    version: 0,
                    round: 0,
                    step: 0,
                    kind: "source".into(),
                    model_sha256: model_sha256.into(),
                    metrics: serde_json::Value::Null,
                    unix_ms: unix_ms(),
                },
            )?;
        }
        store.separate_previous()?;
        for name in [LAST_GOOD, PREVIOUS, SOURCE] {
            let p = dir.join(name);
            if !present(&p) {
                continue;
            }
            match fits(&p)? {
                Ok(s) => return Ok((store, s, report)),
                Err(why) => report.quarantined.push(store.quarantine(&p, why)?),
            }
        }
        Err(FieldError::State {
            path: src,
            reason: "the source checkpoint just written does not read back".into(),
        })
    }

    /// Makes `previous` a separate copy where it shares last-good's inode (what a kill
    /// between link and rename left in older versions).
    fn separate_previous(&self) -> Result<()> {
        let (last, prev) = (self.dir.join(LAST_GOOD), self.dir.join(PREVIOUS));
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (
            std::fs::symlink_metadata(&last),
            std::fs::symlink_metadata(&prev),
        ) {
            if a.is_file() && a.dev() == b.dev() && a.ino() == b.ino() {
                let bytes = checkpoint::read_regular(&last)?;
                fieldtune_adapt::fsutil::atomic_write(&prev, &bytes)?;
            }
        }
        Ok(())
    }

    fn check_model(&self, s: &Stored) -> Result<()> {
        if s.meta.model_sha256 != self.model_sha256 {
            return Err(FieldError::State {
                path: s.path.clone(),
                reason: format!(
                    "belongs to another model (model.onnx sha256 {}, this one is {}); give this model its own state_dir",
                    s.meta.model_sha256, self.model_sha256
                ),
            });
        }
        Ok(())
    }

    fn quarantine(&self, p: &Path, why: String) -> Result<(PathBuf, PathBuf, String)> {
        let stamp = unix_ms() / 1000;
        let mut to = p.with_extension(format!("safetensors.corrupt-{stamp}"));
        let mut n = 1;
        while present(&to) {
            to = p.with_extension(format!("safetensors.corrupt-{stamp}-{n}"));
            n += 1;
        }
        std::fs::rename(p, &to).map_err(io_err(p))?;
        tracing::error!("{}: {why}; moved to {}", p.display(), to.display());
        Ok((p.to_path_buf(), to, why))
    }

    /// Reads and verifies one checkpoint file.
    pub fn read(&self, p: &Path) -> Result<Stored> {
        let (tensors, meta) = checkpoint::load(p)?;
        let meta = CheckpointMeta::from_map(&meta, p)?;
        Ok(Stored {
            params: tensors.into_iter().collect(),
            meta,
            path: p.to_path_buf(),
        })
    }

    fn write(
        &self,
        p: &Path,
        params: &HashMap<String, Tensor>,
        meta: &CheckpointMeta,
    ) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        checkpoint::save(p, &tensors, &meta.to_map())?;
        Ok(())
    }

    /// Makes `params` the last good weights: a copy of the current last-good (when it
    /// verifies) becomes `previous` (its own file, written and renamed atomically), then the
    /// new file replaces last-good by an atomic rename. A crash at any point leaves a
    /// last-good file that verifies, and `previous` never shares its inode.
    pub fn commit(
        &self,
        params: &HashMap<String, Tensor>,
        meta: &CheckpointMeta,
    ) -> Result<PathBuf> {
        let last = self.dir.join(LAST_GOOD);
        if present(&last) {
            let prev = self.dir.join(PREVIOUS);
            match checkpoint::load(&last).and_then(|_| checkpoint::read_regular(&last)) {
                Ok(bytes) => fieldtune_adapt::fsutil::atomic_write(&prev, &bytes)?,
                Err(_) => tracing::warn!(
                    "{} does not read back; {} keeps its older copy",
                    last.display(),
                    prev.display()
                ),
            }
        }
        self.write(&last, params, meta)?;
        Ok(last)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Store {
    /// A read-only view of a state folder (no lock, nothing written): for inspection.
    pub fn inspect(dir: &Path) -> Store {
        Store {
            dir: dir.into(),
            model_sha256: String::new(),
            _lock: None,
        }
    }
}

/// Checks a state folder without changing it: every checkpoint present verifies (checksum,
/// counters, finite values) and holds the same tensors (names, shapes, dtypes) as
/// `source.safetensors`. Returns (file name, version) of each; used by crash tests.
pub fn verify_dir(dir: &Path) -> Result<Vec<(String, u64)>> {
    verify_dir_for(dir, None)
}

/// [`verify_dir`], and with `model` (its model.onnx SHA-256 and its initializers) also that
/// every checkpoint belongs to that model and each tensor matches the model's initializer of
/// that name: the checks a start makes. `fieldtune run --check-state` uses it.
pub fn verify_dir_for(
    dir: &Path,
    model: Option<(&str, &HashMap<String, Tensor>)>,
) -> Result<Vec<(String, u64)>> {
    let store = Store::inspect(dir);
    let mut out = Vec::new();
    let mut source: Option<HashMap<String, Tensor>> = None;
    for name in [SOURCE, LAST_GOOD, PREVIOUS] {
        let p = dir.join(name);
        if !present(&p) {
            continue;
        }
        let bad = |reason: String| FieldError::State {
            path: p.clone(),
            reason,
        };
        if let Some((_, inits)) = model {
            let (len, limit) = (
                std::fs::symlink_metadata(&p).map_or(0, |m| m.len()),
                size_limit(inits),
            );
            if len > limit {
                return Err(bad(format!(
                    "is {len} bytes; a checkpoint of this model is at most {limit}"
                )));
            }
        }
        let s = store.read(&p)?;
        if let Some((sha, inits)) = model {
            if s.meta.model_sha256 != sha {
                return Err(bad(format!(
                    "belongs to another model (model.onnx sha256 {}, this one is {sha})",
                    s.meta.model_sha256
                )));
            }
            if let Some(why) = misfit(&s, inits, false) {
                return Err(bad(why));
            }
        }
        match &source {
            Some(src) => {
                if let Some(why) = misfit(&s, src, true) {
                    return Err(bad(format!("{why} (compared with {SOURCE})")));
                }
            }
            None => {
                if let Some(why) = misfit(&s, &s.params, true) {
                    return Err(bad(why));
                }
                source = Some(s.params.clone());
            }
        }
        out.push((name.to_string(), s.meta.version));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: f32) -> HashMap<String, Tensor> {
        HashMap::from([(
            "w".to_string(),
            Tensor::f32(vec![2], vec![v, v + 1.0]).unwrap(),
        )])
    }

    fn meta(version: u64) -> CheckpointMeta {
        CheckpointMeta {
            version,
            round: version,
            step: 10 * version,
            kind: "adapted".into(),
            model_sha256: "abc".into(),
            metrics: serde_json::json!({"anchor_accuracy": 0.99}),
            unix_ms: 1,
        }
    }

    #[test]
    fn resumes_from_the_last_commit_and_keeps_previous_and_source() {
        let d = tempfile::tempdir().unwrap();
        let (s, start, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        assert_eq!(start.meta.version, 0);
        assert_eq!(start.meta.kind, "source");
        s.commit(&params(1.0), &meta(1)).unwrap();
        s.commit(&params(2.0), &meta(2)).unwrap();
        drop(s);
        let (_, again, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        assert_eq!(again.meta, meta(2));
        assert_eq!(again.params, params(2.0));
        assert!(rep.quarantined.is_empty());
        let v = verify_dir(d.path()).unwrap();
        assert_eq!(
            v,
            vec![
                ("source.safetensors".into(), 0),
                ("last-good.safetensors".into(), 2),
                ("previous.safetensors".into(), 1)
            ]
        );
    }

    #[test]
    fn a_commit_after_a_kill_between_link_and_write_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let (s, _, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        s.commit(&params(1.0), &meta(1)).unwrap();
        // What a kill -9 right after `previous` was linked leaves: one inode, two names.
        let (last, prev) = (d.path().join(LAST_GOOD), d.path().join(PREVIOUS));
        let _ = std::fs::remove_file(&prev);
        std::fs::hard_link(&last, &prev).unwrap();
        s.commit(&params(2.0), &meta(2)).unwrap();
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(names.is_empty(), "left over: {names:?}");
        let v = verify_dir(d.path()).unwrap();
        assert_eq!(v[1], ("last-good.safetensors".into(), 2));
        assert_eq!(v[2], ("previous.safetensors".into(), 1));
    }

    #[test]
    fn a_corrupt_last_good_is_moved_aside_and_previous_is_used() {
        let d = tempfile::tempdir().unwrap();
        let (s, _, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        s.commit(&params(1.0), &meta(1)).unwrap();
        s.commit(&params(2.0), &meta(2)).unwrap();
        drop(s);
        let last = d.path().join(LAST_GOOD);
        let mut b = std::fs::read(&last).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        std::fs::write(&last, &b).unwrap();
        std::fs::write(d.path().join(".last-good.safetensors.tmp-99"), b"partial").unwrap();
        let (_, got, rep) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        assert_eq!(got.meta.version, 1);
        assert_eq!(rep.quarantined.len(), 1);
        assert!(
            rep.quarantined[0].2.contains("checksum"),
            "{:?}",
            rep.quarantined
        );
        assert!(rep.quarantined[0].1.exists(), "kept, not deleted");
        assert_eq!(rep.removed_temporaries.len(), 1);
    }

    #[test]
    fn another_models_state_is_refused_untouched() {
        let d = tempfile::tempdir().unwrap();
        let (s, _, _) = Store::open(d.path(), "abc", &params(0.0)).unwrap();
        s.commit(&params(1.0), &meta(1)).unwrap();
        let e = Store::open(d.path(), "abc", &params(0.0))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another fieldtune process"), "{e}");
        drop(s);
        let e = Store::open(d.path(), "other", &params(0.0))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("another model") && e.contains("source.safetensors"),
            "{e}"
        );
        assert_eq!(verify_dir(d.path()).unwrap().len(), 2);
    }
}
