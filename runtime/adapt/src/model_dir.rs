//! A model is a folder: `model.onnx` plus `model.toml` (input name, shape, normalisation,
//! class names). Adapted models are written as the same kind of folder, plus the
//! safetensors checkpoint of the trained parameters.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fieldtune_frames::{model_toml_path, ModelConfig};
use fieldtune_graph::affine::fold_into_model;
use fieldtune_graph::ir::{Dim, Graph};
use fieldtune_graph::proto::ModelProto;
use fieldtune_graph::{compile_train_step, decode_model, encode_model, TrainSpec, TrainStep};
use fieldtune_tensor::Tensor;

use crate::checkpoint;
use crate::error::{AdaptError, Result};
use crate::fsutil::{refuse_overwrite, replace_dir};

/// File names inside a model folder.
pub const MODEL_ONNX: &str = "model.onnx";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL_TOML: &str = "model.toml";

/// The most classes a bare .onnx may have (its classes are named `0..K-1` from the output's
/// last dimension; a model folder names its own, bounded by model.toml).
pub const MAX_BARE_CLASSES: usize = 1 << 20;

/// Dims as `[?, 10, 1, 1]`.
fn fmt_dims(dims: &[Dim]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", d.join(", "))
}

/// How [`ModelDir::open_path`] normalises input pixels (after scaling them to 0..1).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Normalisation {
    /// As model.toml says; a bare .onnx without one is an error.
    #[default]
    Model,
    /// These per-channel values (one value: every channel), replacing model.toml's.
    Given { mean: Vec<f32>, std: Vec<f32> },
    /// None: the model takes pixels scaled to 0..1 as they are (mean 0, std 1).
    Raw,
    /// The caller reads no images (e.g. it only compiles the train step): model.toml's
    /// values where there is one, else mean 0, std 1.
    Unused,
}

/// A loaded and cross-checked model folder.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub dir: PathBuf,
    /// The ONNX file it was read from (errors and engine labels name it).
    pub onnx: PathBuf,
    pub config: ModelConfig,
    pub model: ModelProto,
    pub bytes: Vec<u8>,
}

impl ModelDir {
    /// Opens `dir`, decodes the ONNX file and checks that model.toml's input, output and
    /// image shape agree with the graph.
    pub fn open(dir: &Path) -> Result<ModelDir> {
        if !dir.is_dir() {
            return Err(AdaptError::ModelDir {
                path: dir.to_path_buf(),
                reason: "not a folder; a model is a folder holding model.onnx and model.toml"
                    .into(),
            });
        }
        Self::described(&dir.join(MODEL_ONNX), &model_toml_path(dir), "")
    }

    /// `onnx` as `toml` describes it: the file is read, and its input, output and image
    /// shape are checked against the graph; a mismatch names both files (and `hint`).
    fn described(onnx: &Path, toml: &Path, hint: &str) -> Result<ModelDir> {
        let bad = |path: &Path, reason: String| AdaptError::ModelDir {
            path: path.to_path_buf(),
            reason: format!("{reason}{hint}"),
        };
        let config = ModelConfig::load(toml)?;
        let bytes = fieldtune_frames::read_regular(onnx)?;
        let model = decode_model(&bytes, onnx)?;
        let graph = Graph::from_model(&model).map_err(|e| bad(onnx, e.to_string()))?;
        let t = toml.display();
        let input = graph
            .inputs
            .iter()
            .find(|i| i.name == config.input)
            .ok_or_else(|| {
                bad(
                    onnx,
                    format!(
                        "{t} names input '{}', but the graph's inputs are: {}",
                        config.input,
                        graph
                            .inputs
                            .iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let want = [
            config.channels as usize,
            config.height as usize,
            config.width as usize,
        ];
        if input.dims.len() != 4 {
            return Err(bad(
                onnx,
                format!(
                    "input '{}' has rank {}, expected NCHW",
                    input.name,
                    input.dims.len()
                ),
            ));
        }
        for (i, w) in want.iter().enumerate() {
            if let Dim::Fixed(d) = input.dims[i + 1] {
                if d != *w {
                    return Err(bad(
                        onnx,
                        format!(
                            "input '{}' is {} but {t} says channels={} height={} width={}",
                            input.name,
                            fmt_dims(&input.dims),
                            config.channels,
                            config.height,
                            config.width
                        ),
                    ));
                }
            }
        }
        let Some(output) = graph.outputs.iter().find(|o| o.name == config.output) else {
            return Err(bad(
                onnx,
                format!(
                    "{t} names output '{}', which the graph does not produce",
                    config.output
                ),
            ));
        };
        // A declared rank other than 2 (an undeclared shape reads as rank 0 and is left to
        // the compiler, whose error names this file too).
        if !output.dims.is_empty() && output.dims.len() != 2 {
            return Err(bad(
                onnx,
                format!(
                    "output '{}' is {}; expected [batch, classes] logits",
                    output.name,
                    fmt_dims(&output.dims)
                ),
            ));
        }
        if let Some(Dim::Fixed(k)) = output.dims.get(1) {
            if *k != config.classes.len() {
                return Err(bad(
                    onnx,
                    format!(
                        "output '{}' has {k} classes but {t} names {}",
                        output.name,
                        config.classes.len()
                    ),
                ));
            }
        }
        Ok(ModelDir {
            dir: onnx.parent().unwrap_or(Path::new(".")).to_path_buf(),
            onnx: onnx.to_path_buf(),
            config,
            model,
            bytes,
        })
    }

    /// Opens a model folder, or a `.onnx` file. A file with a model.toml beside it is read
    /// as that model.toml describes it (said in a log line; the graph is checked against
    /// it). A bare file without one: the input is the graph's first non-initializer input
    /// (float32 NCHW, fixed C, H, W), the output its first output, the classes are named
    /// `0..K-1` from the output's last dimension, and `norm` must say how pixels are
    /// normalised ([`Normalisation::Model`] is an error then: a guess would score silently
    /// wrong). Given values replace model.toml's.
    pub fn open_path(path: &Path, norm: Normalisation) -> Result<ModelDir> {
        let mut m = if path.is_file() {
            let toml = path.parent().map(model_toml_path).filter(|t| t.is_file());
            match toml {
                Some(toml) => {
                    let m = Self::described(
                        path,
                        &toml,
                        " (a model.toml beside a .onnx describes it: fix it, or move the .onnx to its own folder)",
                    )?;
                    tracing::info!(
                        "model: {} as described by {} beside it",
                        path.display(),
                        toml.display()
                    );
                    m
                }
                None => {
                    if matches!(norm, Normalisation::Model) {
                        return Err(AdaptError::ModelDir {
                            path: path.to_path_buf(),
                            reason: format!(
                                "a bare .onnx has no model.toml ({} does not exist), so its input normalisation is unknown: give --mean/--std (e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for torchvision ImageNet models), --raw-input if the model takes pixels scaled to 0..1 as they are, or write that model.toml",
                                path.parent()
                                    .map(model_toml_path)
                                    .unwrap_or_else(|| MODEL_TOML.into())
                                    .display()
                            ),
                        });
                    }
                    Self::from_onnx_file(path)?
                }
            }
        } else {
            Self::open(path)?
        };
        let (mean, std) = match norm {
            Normalisation::Model | Normalisation::Unused => return Ok(m),
            Normalisation::Raw => (vec![0.0], vec![1.0]),
            Normalisation::Given { mean, std } => (mean, std),
        };
        let c = m.config.channels as usize;
        let bad = |what: &str, n: usize| AdaptError::ModelDir {
            path: path.to_path_buf(),
            reason: format!("--{what} has {n} values; the model has {c} channels"),
        };
        let expand = |v: Vec<f32>, what: &str| match v.len() {
            1 => Ok(vec![v[0]; c]),
            n if n == c => Ok(v),
            n => Err(bad(what, n)),
        };
        m.config.mean = expand(mean, "mean")?;
        m.config.std = expand(std, "std")?;
        if m.config.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(AdaptError::ModelDir {
                path: path.to_path_buf(),
                reason: "--std values must be positive".into(),
            });
        }
        Ok(m)
    }

    fn from_onnx_file(onnx: &Path) -> Result<ModelDir> {
        let bad = |reason: String| AdaptError::ModelDir {
            path: onnx.to_path_buf(),
            reason,
        };
        let bytes = fieldtune_frames::read_regular(onnx)?;
        let model = decode_model(&bytes, onnx)?;
        let graph = Graph::from_model(&model).map_err(|e| bad(e.to_string()))?;
        let input = graph
            .inputs
            .first()
            .ok_or_else(|| bad("the graph has no input".into()))?;
        let fixed = |d: &Dim, what: &str| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbolic(s) => Err(bad(format!(
                "input '{}' has a symbolic {what} ('{s}'); give a model folder with model.toml",
                input.name
            ))),
        };
        if input.dims.len() != 4 {
            return Err(bad(format!(
                "input '{}' has rank {}, expected NCHW",
                input.name,
                input.dims.len()
            )));
        }
        // Sides are checked as the dims they are (usize), never narrowed first: 2^40 is 2^40.
        let side = |d: &Dim, what: &str| -> Result<u32> {
            let n = fixed(d, what)?;
            u32::try_from(n)
                .ok()
                .filter(|s| (1..=fieldtune_frames::MAX_FRAME_SIDE).contains(s))
                .ok_or_else(|| {
                    bad(format!(
                        "input '{}' has {what} {n}; it must be 1..={}",
                        input.name,
                        fieldtune_frames::MAX_FRAME_SIDE
                    ))
                })
        };
        let c = fixed(&input.dims[1], "channel count")?;
        let channels = match c {
            1 => 1u8,
            3 => 3u8,
            _ => {
                return Err(bad(format!(
                    "input '{}' has {c} channels; fieldtune reads gray (1) or RGB (3) frames",
                    input.name
                )))
            }
        };
        let (h, w) = (
            side(&input.dims[2], "height")?,
            side(&input.dims[3], "width")?,
        );
        let output = graph
            .outputs
            .first()
            .ok_or_else(|| bad("the graph has no output".into()))?;
        let k = match output.dims.last() {
            Some(Dim::Fixed(k)) if output.dims.len() == 2 => *k,
            _ => {
                return Err(bad(format!(
                    "output '{}' is {}; expected [batch, classes] logits",
                    output.name,
                    fmt_dims(&output.dims)
                )))
            }
        };
        if !(1..=MAX_BARE_CLASSES).contains(&k) {
            return Err(bad(format!(
                "output '{}' has {k} classes; a bare .onnx may have 1..={MAX_BARE_CLASSES} (give a model folder with model.toml naming them)",
                output.name
            )));
        }
        let config = ModelConfig {
            input: input.name.clone(),
            output: output.name.clone(),
            channels,
            height: h,
            width: w,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            classes: (0..k).map(|i| i.to_string()).collect(),
        };
        Ok(ModelDir {
            dir: onnx.parent().unwrap_or(Path::new(".")).to_path_buf(),
            onnx: onnx.to_path_buf(),
            config,
            model,
            bytes,
        })
    }

    /// The label of a session of this model in engine errors and logs: the ONNX file, and
    /// the session's role when there is one (`models/x/model.onnx (live)`).
    pub fn label(&self, role: &str) -> String {
        match role {
            "" => self.onnx.display().to_string(),
            r => format!("{} ({r})", self.onnx.display()),
        }
    }

    /// Compiles the train step of `spec` for this model; errors name the ONNX file.
    pub fn compile_step(&self, spec: &TrainSpec) -> Result<TrainStep> {
        compile_train_step(&self.model, spec).map_err(|e| AdaptError::ModelDir {
            path: self.onnx.clone(),
            reason: e.to_string(),
        })
    }

    /// The ONNX bytes with `params` replacing the matching initializers; per-channel affine
    /// parameters (`--train bn` on a folded-BatchNorm model, `--train affine`) are folded into
    /// their convolutions, so the bytes have this model's graph. Every adapted model that is
    /// written or served (the `adapt` writer, the field runtime's commits) comes from here.
    pub fn with_params(&self, params: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
        Ok(encode_model(&fold_into_model(&self.model, params)?))
    }

    /// The model's float32 initializers by name: what a fleet message may overwrite and a
    /// reply sends (`fieldtune fleet`, the `[fleet]` section of `fieldtune run`).
    pub fn float_initializers(&self) -> Result<HashMap<String, Tensor>> {
        let g = self
            .model
            .graph
            .as_ref()
            .ok_or_else(|| AdaptError::ModelDir {
                path: self.onnx.clone(),
                reason: "the model has no graph".into(),
            })?;
        let mut out = HashMap::new();
        for t in &g.initializer {
            let v = fieldtune_graph::ir::tensor_from_proto(t)?;
            if v.as_f32().is_some() {
                out.insert(t.name.clone(), v);
            }
        }
        Ok(out)
    }

    /// This model with `params` replacing the matching initializers, in its bytes and its
    /// parsed graph: a model to compile a train step from (FedProx's proximal term anchors at
    /// the compiled model's values, i.e. the server's arrays).
    pub fn with_weights(&self, params: &HashMap<String, Tensor>) -> Result<ModelDir> {
        Ok(ModelDir {
            bytes: self.with_params(params)?,
            model: fieldtune_graph::with_initializers(&self.model, params)?,
            ..self.clone()
        })
    }

    /// Writes an adapted model folder to `out`: model.onnx with the new initializers,
    /// model.toml, checkpoint.safetensors with `metadata`, and `extra` files (name, bytes).
    /// The folder is replaced whole ([`replace_dir`]): a kill leaves the old folder or the
    /// new one. `out` may not be this model's own folder, nor hold it.
    pub fn write_adapted(
        &self,
        out: &Path,
        params: &HashMap<String, Tensor>,
        metadata: &HashMap<String, String>,
        extra: &[(&str, &[u8])],
    ) -> Result<()> {
        refuse_overwrite(out, &[&self.dir])?;
        let bytes = self.with_params(params)?;
        let mut meta = metadata.clone();
        meta.insert(
            "source_model_sha256".into(),
            checkpoint::sha256_hex(&self.bytes),
        );
        meta.insert("model_sha256".into(), checkpoint::sha256_hex(&bytes));
        let tensors: BTreeMap<String, Tensor> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let toml = self.config.to_toml_string();
        let ckpt = checkpoint::to_bytes(&tensors, &meta);
        let mut files: Vec<(&str, &[u8])> = vec![
            (MODEL_ONNX, &bytes),
            (MODEL_TOML, toml.as_bytes()),
            (CHECKPOINT, &ckpt),
        ];
        files.extend_from_slice(extra);
        replace_dir(out, &files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldtune_engine::Engine;

    #[test]
    fn engine_errors_name_the_models_own_file() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cnn");
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("field-model");
        std::fs::create_dir(&dir).unwrap();
        for f in [MODEL_ONNX, MODEL_TOML] {
            std::fs::copy(shipped.join(f), dir.join(f)).unwrap();
        }
        let m = ModelDir::open(&dir).unwrap();
        let want = dir.join(MODEL_ONNX).display().to_string();
        assert_eq!(m.label("live"), format!("{want} (live)"));
        let e = fieldtune_engine::TractEngine::new()
            .load(&m.bytes[..m.bytes.len() / 2], &m.label("live"))
            .err()
            .expect("half a model does not load")
            .to_string();
        assert!(e.contains(&format!("{want} (live)")), "{e}");
    }

    /// A copy of the shipped MNIST model folder under `d`, its graph changed by `edit`.
    fn mnist_with(d: &Path, edit: impl FnOnce(&mut fieldtune_graph::proto::GraphProto)) -> PathBuf {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-cnn");
        let dir = d.join("edited");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(shipped.join(MODEL_TOML), dir.join(MODEL_TOML)).unwrap();
        let bytes = std::fs::read(shipped.join(MODEL_ONNX)).unwrap();
        let mut model = decode_model(&bytes, &shipped).unwrap();
        edit(model.graph.as_mut().unwrap());
        std::fs::write(dir.join(MODEL_ONNX), encode_model(&model)).unwrap();
        dir
    }

    fn set_dims(v: &mut fieldtune_graph::proto::ValueInfoProto, dims: &[i64]) {
        use fieldtune_graph::proto::{tensor_shape_proto::dimension::Value as D, type_proto};
        let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            panic!("a tensor type")
        };
        let shape = t.shape.get_or_insert_with(Default::default);
        shape.dim = dims
            .iter()
            .map(|&n| fieldtune_graph::proto::tensor_shape_proto::Dimension {
                value: Some(D::DimValue(n)),
                ..Default::default()
            })
            .collect();
    }

    fn open_error(path: &Path) -> String {
        ModelDir::open_path(path, Normalisation::Raw)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_4d_output_is_called_an_output_naming_it_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = mnist_with(d.path(), |g| set_dims(&mut g.output[0], &[1, 10, 1, 1]));
        let onnx = dir.join(MODEL_ONNX);
        for path in [&dir, &onnx] {
            let e = open_error(path);
            assert!(
                e.contains(&onnx.display().to_string())
                    && e.contains("output 'logits'")
                    && e.contains("[batch, classes]")
                    && !e.contains("input"),
                "{e}"
            );
        }
        // Undeclared, and [batch, 10, 1, 1] when compiled: the compile error names the file too.
        let dir = mnist_with(&d.path().join("undeclared"), |g| {
            use fieldtune_graph::proto::{type_proto, NodeProto, TensorProto};
            g.node.last_mut().unwrap().output[0] = "pre".into();
            g.initializer.push(TensorProto {
                name: "axes".into(),
                dims: vec![2],
                data_type: 7,
                int64_data: vec![2, 3],
                ..Default::default()
            });
            g.node.push(NodeProto {
                name: "unsqueeze".into(),
                op_type: "Unsqueeze".into(),
                input: vec!["pre".into(), "axes".into()],
                output: vec!["logits".into()],
                ..Default::default()
            });
            let Some(type_proto::Value::TensorType(t)) =
                g.output[0].r#type.as_mut().and_then(|t| t.value.as_mut())
            else {
                panic!("a tensor type")
            };
            t.shape = None;
        });
        let m = ModelDir::open(&dir).unwrap();
        let spec = fieldtune_graph::TrainSpec {
            batch_labeled: 2,
            batch_unlabeled: 2,
            ..Default::default()
        };
        let e = m.compile_step(&spec).expect_err("refused").to_string();
        assert!(
            e.contains(&dir.join(MODEL_ONNX).display().to_string())
                && e.contains("output 'logits'")
                && e.contains(", 10, 1, 1]"),
            "{e}"
        );
    }

    #[test]
    fn a_cycle_is_reported_as_a_cycle_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        // The first node reads the last node's output: every node between is on a cycle.
        let dir = mnist_with(d.path(), |g| {
            let last = g.node.last().unwrap().output[0].clone();
            g.node[0].input[0] = last;
        });
        let e = open_error(&dir);
        assert!(
            e.contains(&dir.join(MODEL_ONNX).display().to_string())
                && e.contains("is on a cycle")
                && !e.contains("no node, input or initializer defines"),
            "{e}"
        );
    }

    #[test]
    fn a_bare_onnx_dimension_beyond_u32_is_refused_not_truncated() {
        let d = tempfile::tempdir().unwrap();
        for (dims, what) in [
            ([1i64, 1, 1 << 40, 28], "height"),
            ([1, 1, 28, (1 << 32) + 28], "width"),
            ([1, 1, 28, 9000], "width"),
        ] {
            let dir = mnist_with(&d.path().join(what).join(dims[3].to_string()), |g| {
                set_dims(&mut g.input[0], &dims)
            });
            let onnx = dir.join(MODEL_ONNX);
            // Beside its model.toml: the graph against model.toml; bare: the bound.
            let e = open_error(&onnx);
            assert!(e.contains("model.toml says") && e.contains(&format!("{}", dims[3])));
            std::fs::remove_file(dir.join(MODEL_TOML)).unwrap();
            let e = open_error(&onnx);
            let n = if what == "height" { dims[2] } else { dims[3] };
            assert!(
                e.contains(&onnx.display().to_string())
                    && e.contains(what)
                    && e.contains(&n.to_string())
                    && e.contains("1..="),
                "{dims:?}: {e}"
            );
        }
        // 2^40 classes would be 2^40 class names: refused by the count, before any is made.
        let dir = mnist_with(&d.path().join("classes"), |g| {
            set_dims(&mut g.output[0], &[1, 1 << 40])
        });
        let onnx = dir.join(MODEL_ONNX);
        std::fs::remove_file(dir.join(MODEL_TOML)).unwrap();
        let e = open_error(&onnx);
        assert!(
            e.contains(&onnx.display().to_string())
                && e.contains("output 'logits'")
                && e.contains("1099511627776 classes"),
            "{e}"
        );
    }
}
