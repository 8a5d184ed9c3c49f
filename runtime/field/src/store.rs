//! The checkpoint store in the state folder:
//!
//! - `source.safetensors`: the model's own weights, written once; never replaced.
//! - `last-good.safetensors`: the weights that passed the gate last (or the source after a
//!   reset); replaced only by an atomic rename of a complete, fsynced file.
//! - `previous.safetensors`: a hard link to the last-good file before the latest commit.
//!
//! Each is a fieldtune checkpoint (safetensors, SHA-256 of the tensors in the metadata,
//! verified on load). On start the store resumes from the newest file that verifies:
//! last-good, then previous, then source. A file that does not verify is moved aside
//! (renamed `*.corrupt-<unix time>`), never deleted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fieldtune_adapt::checkpoint;
use fieldtune_tensor::Tensor;

use crate::error::{io_err, FieldError, Result};

pub const SOURCE: &str = "source.safetensors";
pub const LAST_GOOD: &str = "last-good.safetensors";
pub const PREVIOUS: &str = "previous.safetensors";

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
        Ok(CheckpointMeta {
            version: num("fieldtune.version")?,
            round: num("round")?,
            step: num("step")?,
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
        // The source checkpoint: verify it belongs to this model, or write it.
        let src = dir.join(SOURCE);
        if src.exists() {
            match store.read(&src) {
                Ok(s) => store.check_model(&s)?,
                Err(e) => {
                    report
                        .quarantined
                        .push(store.quarantine(&src, e.to_string())?);
                }
            }
        }
        if !src.exists() {
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
        for name in [LAST_GOOD, PREVIOUS, SOURCE] {
            let p = dir.join(name);
            if !p.exists() {
                continue;
            }
            match store.read(&p) {
                Ok(s) => {
                    store.check_model(&s)?;
                    if let Some(bad) = s
                        .params
                        .keys()
                        .find(|k| !source_params.contains_key(*k))
                        .or_else(|| source_params.keys().find(|k| !s.params.contains_key(*k)))
                    {
                        return Err(FieldError::State {
                            path: p,
                            reason: format!(
                                "tensor `{bad}` does not match the model's trainable parameters"
                            ),
                        });
                    }
                    return Ok((store, s, report));
                }
                Err(e) => report
                    .quarantined
                    .push(store.quarantine(&p, e.to_string())?),
            }
        }
        unreachable!("the source checkpoint was just verified or written")
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
        let to = p.with_extension(format!("safetensors.corrupt-{}", unix_ms() / 1000));
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

    /// Makes `params` the last good weights: the current last-good becomes `previous`
    /// (hard link), then the new file replaces last-good by an atomic rename. A crash at
    /// any point leaves a last-good file that verifies.
    pub fn commit(
        &self,
        params: &HashMap<String, Tensor>,
        meta: &CheckpointMeta,
    ) -> Result<PathBuf> {
        let last = self.dir.join(LAST_GOOD);
        if last.exists() {
            let tmp = self
                .dir
                .join(format!(".{PREVIOUS}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(&last, &tmp).map_err(io_err(&tmp))?;
            let prev = self.dir.join(PREVIOUS);
            std::fs::rename(&tmp, &prev).map_err(io_err(&prev))?;
            // A kill between the rename above and the write below leaves `previous` and
            // `last-good` as one inode; renaming a link onto another link of the same file
            // then does nothing and leaves the temporary behind (POSIX rename), so drop it.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(&tmp)(e));
                }
                _ => {}
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

/// Checks a state folder without changing it: every checkpoint present verifies. Returns
/// (file name, version) of each; used by crash tests and `fieldtune run --check-state`.
pub fn verify_dir(dir: &Path) -> Result<Vec<(String, u64)>> {
    let store = Store::inspect(dir);
    let mut out = Vec::new();
    for name in [SOURCE, LAST_GOOD, PREVIOUS] {
        let p = dir.join(name);
        if p.exists() {
            out.push((name.to_string(), store.read(&p)?.meta.version));
        }
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
