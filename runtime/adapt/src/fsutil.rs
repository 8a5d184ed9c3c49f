//! Durable file writes: write a temporary file in the same folder, fsync it, rename it over
//! the target, fsync the folder. A crash leaves either the old file or the new one.
//! [`replace_dir`] does the same for a whole folder; [`refuse_overwrite`] keeps outputs off
//! the inputs.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// The absolute, symlink-free form of `p`, also when `p` does not exist yet: its nearest
/// existing ancestor is canonicalized and the rest appended.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return rest.iter().rev().fold(c, |acc, n| acc.join(n));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// True when `a` and `b` name the same file: the same resolved path, or the same
/// (device, inode) (a hard link).
pub fn same_file(a: &Path, b: &Path) -> bool {
    if resolve(a) == resolve(b) {
        return true;
    }
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuses to write `output` when it is one of `inputs` (by path or by inode), or when an
/// input lies inside it (a folder output is replaced whole). The error names both paths.
pub fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = resolve(output);
    for input in inputs {
        let inp = resolve(input);
        if same_file(output, input) || inp.starts_with(&out) {
            return Err(AdaptError::WouldOverwrite {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Refuses an output folder that exists and holds anything, unless `force` (`--force`): a
/// run does not replace earlier results without being told to. The error names the folder,
/// what it holds and the flag.
pub fn refuse_non_empty(dir: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // missing (made by the run), or not a folder (refused when written)
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(AdaptError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!(
            "exists and is not empty (holds {}); pass --force to replace it whole, or choose another --out",
            names.join(", ")
        )),
    })
}

/// Files an adapted model folder may hold; [`replace_dir`] refuses to replace a folder that
/// holds anything else (it would be lost).
pub const MODEL_DIR_FILES: &[&str] = &[
    "model.onnx",
    "model.toml",
    "checkpoint.safetensors",
    "adapt.json",
];

/// Writes `files` (name, bytes) as the folder `dir`, atomically as a folder: they go into a
/// temporary sibling folder, are fsynced, and the sibling is exchanged with `dir`
/// (renameat2 RENAME_EXCHANGE; where the file system lacks it, the old folder is renamed
/// aside first). At every instant `dir` is the old folder or the new one, never a mix. An
/// existing `dir` may hold only [`MODEL_DIR_FILES`]; leftovers of interrupted runs are removed.
pub fn replace_dir(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    replace_dir_until(dir, files, usize::MAX)
}

/// [`replace_dir`] stopping, as a kill would, before step `stop` (tests walk every step).
fn replace_dir_until(dir: &Path, files: &[(&str, &[u8])], stop: usize) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| AdaptError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("an output folder needs a name"),
        })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent))?;
    if let Ok(m) = fs::symlink_metadata(dir) {
        if !m.is_dir() {
            return Err(AdaptError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other("exists and is not a folder"),
            });
        }
        for e in fs::read_dir(dir).map_err(io(dir))? {
            let n = e.map_err(io(dir))?.file_name();
            if !MODEL_DIR_FILES.iter().any(|f| n == *f) {
                return Err(AdaptError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(format!(
                        "holds {n:?}, which is not part of a model folder; refusing to replace it (choose another --out)"
                    )),
                });
            }
        }
    }
    // Leftovers of an interrupted earlier run: complete old or new copies, never `dir`.
    let stale = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    for e in fs::read_dir(parent).map_err(io(parent))? {
        let e = e.map_err(io(parent))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&stale.0) || n.starts_with(&stale.1) {
            fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
        }
    }
    let tmp = parent.join(format!("{}{}", stale.0, std::process::id()));
    let step = |k: usize| -> Result<()> {
        if k >= stop {
            return Err(AdaptError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(format!("stopped before step {k}")),
            });
        }
        Ok(())
    };
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    for (k, (file, bytes)) in files.iter().enumerate() {
        step(k)?;
        let p = tmp.join(file);
        let mut f = File::create(&p).map_err(io(&p))?;
        f.write_all(bytes).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))?;
    }
    File::open(&tmp)
        .and_then(|d| d.sync_all())
        .map_err(io(&tmp))?;
    step(files.len())?;
    if dir.exists() {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, &tmp, CWD, dir, RenameFlags::EXCHANGE) {
            Ok(()) => {}
            Err(_) => {
                // No RENAME_EXCHANGE here: move the old folder aside, then the new one in.
                let old = parent.join(format!("{}{}", stale.1, std::process::id()));
                fs::rename(dir, &old).map_err(io(dir))?;
                step(files.len() + 1)?;
                fs::rename(&tmp, dir).map_err(io(dir))?;
                fs::rename(&old, &tmp).map_err(io(&old))?;
            }
        }
    } else {
        fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(parent))?;
    step(files.len() + 2)?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_replaced_whole_at_every_step() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("adapted");
        let old: &[(&str, &[u8])] = &[
            ("model.onnx", b"old-onnx"),
            ("checkpoint.safetensors", b"old-ck"),
        ];
        let new: &[(&str, &[u8])] = &[
            ("model.onnx", b"new-onnx"),
            ("model.toml", b"new-toml"),
            ("checkpoint.safetensors", b"new-ck"),
            ("adapt.json", b"{}"),
        ];
        let contents = |p: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(p)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let as_vec = |f: &[(&str, &[u8])]| {
            let mut v: Vec<(String, Vec<u8>)> =
                f.iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect();
            v.sort();
            v
        };
        for stop in 0..=new.len() + 3 {
            replace_dir(&out, old).unwrap();
            assert_eq!(contents(&out), as_vec(old));
            let r = replace_dir_until(&out, new, stop);
            let now = contents(&out);
            assert!(
                now == as_vec(old) || now == as_vec(new),
                "a kill before step {stop} left a mixed folder: {now:?}"
            );
            if r.is_ok() {
                assert_eq!(now, as_vec(new));
                let names: Vec<_> = fs::read_dir(d.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(
                    names,
                    vec![std::ffi::OsString::from("adapted")],
                    "nothing left beside it"
                );
            }
        }
        // The next run clears what an interrupted one left.
        replace_dir(&out, new).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_folder_with_other_files_is_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("notes.txt"), b"mine").unwrap();
        let e = replace_dir(d.path(), &[("model.onnx", b"x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("notes.txt"), "{e}");
        assert_eq!(fs::read(d.path().join("notes.txt")).unwrap(), b"mine");
    }

    #[test]
    fn outputs_on_inputs_are_refused_by_path_link_and_inode() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("m");
        fs::create_dir(&model).unwrap();
        let onnx = model.join("model.onnx");
        fs::write(&onnx, b"onnx").unwrap();
        let e = refuse_overwrite(&model, &[&model]).unwrap_err().to_string();
        assert!(e.contains("would overwrite"), "{e}");
        assert!(refuse_overwrite(&d.path().join("m/../m/model.onnx"), &[&onnx]).is_err());
        assert!(
            refuse_overwrite(d.path(), &[&onnx]).is_err(),
            "a folder holding an input"
        );
        let hard = d.path().join("hard.onnx");
        fs::hard_link(&onnx, &hard).unwrap();
        let e = refuse_overwrite(&hard, &[&onnx]).unwrap_err().to_string();
        assert!(e.contains("hard.onnx") && e.contains("model.onnx"), "{e}");
        let soft = d.path().join("soft");
        std::os::unix::fs::symlink(&model, &soft).unwrap();
        assert!(refuse_overwrite(&soft, &[&model]).is_err());
        refuse_overwrite(&d.path().join("other"), &[&model, &onnx]).unwrap();
        refuse_overwrite(&model.join("train-step.onnx"), &[&model, &onnx]).unwrap();
    }

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
