//! A throw-away installation for hostile-input cases: a copy of the shipped digit model, a
//! labeled image folder, a frame folder, a run config and a state folder holding source,
//! last-good and previous checkpoints written by the store; helpers to damage each of them;
//! and a snapshot of the files that must not change.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fieldtune_adapt::checkpoint;
use fieldtune_field::store::{CheckpointMeta, Store};
use fieldtune_graph::ir::Graph;
use fieldtune_tensor::Tensor;

use super::root;

pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// One file's state in a snapshot: its bytes, where a link points, or what else it is.
#[derive(Debug, PartialEq)]
pub enum Entry {
    File(Vec<u8>),
    Link(PathBuf),
    Other(String),
}

fn copy_dir(from: &Path, to: &Path, per_folder: usize) {
    std::fs::create_dir_all(to).unwrap();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut files = 0;
    for p in entries {
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst, per_folder);
        } else if files < per_folder {
            std::fs::copy(&p, dst).unwrap();
            files += 1;
        }
    }
}

/// The digit model's initializers, as the store keeps them.
pub fn model_params(onnx: &Path) -> HashMap<String, Tensor> {
    let m = fieldtune_graph::load_model(onnx).unwrap();
    Graph::from_model(&m)
        .unwrap()
        .initializers
        .into_iter()
        .collect()
}

impl Sandbox {
    /// model/ (model.onnx, model.toml, anchors with 2 images a class), data/ (labeled,
    /// 2 a class), frames/ (4 images), run.toml, state/ (source, last-good, previous).
    pub fn new() -> Sandbox {
        let s = Sandbox {
            dir: tempfile::tempdir().unwrap(),
        };
        let src = root().join("models/mnist-cnn");
        std::fs::create_dir_all(s.path("model")).unwrap();
        for f in ["model.onnx", "model.toml"] {
            std::fs::copy(src.join(f), s.path("model").join(f)).unwrap();
        }
        copy_dir(&src.join("anchors"), &s.path("model/anchors"), 2);
        copy_dir(&root().join("data/opencv-digits"), &s.path("data"), 2);
        let frames = s.path("frames");
        std::fs::create_dir_all(&frames).unwrap();
        for (i, e) in std::fs::read_dir(root().join("data/mnist/3"))
            .unwrap()
            .take(4)
            .enumerate()
        {
            std::fs::copy(e.unwrap().path(), frames.join(format!("f{i}.png"))).unwrap();
        }
        s.write(
            "run.toml",
            "model = \"model\"\nstate_dir = \"state\"\n[source]\npaths = [\"frames\"]\n",
        );
        let onnx = s.path("model/model.onnx");
        let sha = checkpoint::sha256_hex(&std::fs::read(&onnx).unwrap());
        let params = model_params(&onnx);
        let (st, _, _) = Store::open(&s.path("state"), &sha, &params).unwrap();
        let mut adapted = params.clone();
        for t in adapted.values_mut() {
            if let Some(v) = t.as_f32_mut() {
                v.iter_mut().for_each(|x| *x *= 0.999);
            }
        }
        for version in [1, 2] {
            let meta = CheckpointMeta {
                version,
                round: version,
                step: 10 * version,
                kind: "adapted".into(),
                model_sha256: sha.clone(),
                metrics: serde_json::Value::Null,
                unix_ms: 1,
            };
            st.commit(&adapted, &meta).unwrap();
        }
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// Keeps the first `n` bytes of a file.
    pub fn truncate(&self, rel: &str, n: usize) {
        let b = self.read(rel);
        self.write(rel, &b[..n.min(b.len())]);
    }

    /// Drops the last `n` bytes.
    pub fn chop(&self, rel: &str, n: usize) {
        let b = self.read(rel);
        self.write(rel, &b[..b.len().saturating_sub(n)]);
    }

    pub fn remove(&self, rel: &str) {
        let p = self.path(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    /// Replaces `rel` with a symbolic link to `target`.
    pub fn symlink(&self, rel: &str, target: &Path) {
        let p = self.path(rel);
        if std::fs::symlink_metadata(&p).is_ok() {
            self.remove(rel);
        }
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// Replaces `rel` with a FIFO.
    pub fn fifo(&self, rel: &str) {
        let p = self.path(rel);
        if std::fs::symlink_metadata(&p).is_ok() {
            self.remove(rel);
        }
        let ok = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Replaces `rel` with an empty folder.
    pub fn folder(&self, rel: &str) {
        let p = self.path(rel);
        if std::fs::symlink_metadata(&p).is_ok() {
            self.remove(rel);
        }
        std::fs::create_dir_all(p).unwrap();
    }

    /// Replaces the first `from` of a text file with `to` (which must be there).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let t = String::from_utf8(self.read(rel)).unwrap();
        assert!(t.contains(from), "{rel} lacks {from:?}");
        self.write(rel, t.replacen(from, to, 1));
    }

    pub fn append(&self, rel: &str, text: &str) {
        let mut t = self.read(rel);
        t.extend_from_slice(text.as_bytes());
        self.write(rel, t);
    }

    /// Rewrites a checkpoint with `f` applied to its tensors and metadata, and a checksum
    /// that verifies.
    pub fn checkpoint(
        &self,
        rel: &str,
        f: impl FnOnce(&mut BTreeMap<String, Tensor>, &mut HashMap<String, String>),
    ) {
        let (mut t, mut meta) = fieldtune_tensor::st::from_bytes(&self.read(rel)).unwrap();
        meta.remove(checkpoint::CHECKSUM_KEY);
        f(&mut t, &mut meta);
        self.write(rel, checkpoint::to_bytes(&t, &meta));
    }

    /// Rewrites model.onnx with `f` applied to its graph.
    pub fn graph(&self, f: impl FnOnce(&mut Graph)) {
        let p = self.path("model/model.onnx");
        let mut g = Graph::from_model(&fieldtune_graph::load_model(&p).unwrap()).unwrap();
        f(&mut g);
        self.write(
            "model/model.onnx",
            fieldtune_graph::encode_model(&g.to_model("hostile")),
        );
    }

    /// Rewrites model.onnx with `f` applied to its protobuf message.
    pub fn proto(&self, f: impl FnOnce(&mut fieldtune_graph::proto::ModelProto)) {
        let mut m = fieldtune_graph::load_model(&self.path("model/model.onnx")).unwrap();
        f(&mut m);
        self.write("model/model.onnx", fieldtune_graph::encode_model(&m));
    }

    /// Every entry under `rels` (recursively), without following links or reading FIFOs.
    pub fn snapshot(&self, rels: &[&str]) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        for rel in rels {
            self.walk(&self.path(rel), &mut out);
        }
        out
    }

    fn walk(&self, p: &Path, out: &mut BTreeMap<String, Entry>) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        let name = p
            .strip_prefix(self.dir.path())
            .unwrap()
            .display()
            .to_string();
        let ft = m.file_type();
        if ft.is_symlink() {
            out.insert(name, Entry::Link(std::fs::read_link(p).unwrap()));
        } else if ft.is_dir() {
            let mut kids: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            kids.sort();
            out.insert(name, Entry::Other("folder".into()));
            for k in kids {
                self.walk(&k, out);
            }
        } else if ft.is_file() {
            out.insert(name, Entry::File(std::fs::read(p).unwrap()));
        } else {
            out.insert(name, Entry::Other(format!("{ft:?}")));
        }
    }
}
