//! A model is a folder: `model.onnx` plus `model.toml` (input name, shape, normalisation,
//! class names). Adapted models are written as the same kind of folder, plus the
//! safetensors checkpoint of the trained parameters.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use fieldtune_frames::{model_toml_path, ModelConfig};
use fieldtune_graph::ir::{Dim, Graph};
use fieldtune_graph::proto::ModelProto;
use fieldtune_graph::{decode_model, encode_model, with_initializers};
use fieldtune_tensor::Tensor;

use crate::checkpoint;
use crate::error::{AdaptError, Result};
use crate::fsutil::{refuse_overwrite, replace_dir};

/// File names inside a model folder.
pub const MODEL_ONNX: &str = "model.onnx";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const MODEL_TOML: &str = "model.toml";
/// The most classes a bare `.onnx` file's output may declare (one name is made for each).
pub const MAX_CLASSES: usize = 1 << 20;

/// A loaded and cross-checked model folder.
#[derive(Clone, Debug)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub model: ModelProto,
    pub bytes: Vec<u8>,
}

impl ModelDir {
    /// Opens `dir`, decodes the ONNX file and checks that model.toml's input, output and
    /// image shape agree with the graph.
    pub fn open(dir: &Path) -> Result<ModelDir> {
        let onnx = dir.join(MODEL_ONNX);
        let bad = |path: &Path, reason: String| AdaptError::ModelDir {
            path: path.to_path_buf(),
            reason,
        };
        if !dir.is_dir() {
            return Err(bad(
                dir,
                "not a folder; a model is a folder holding model.onnx and model.toml".into(),
            ));
        }
        let config = ModelConfig::load(model_toml_path(dir))?;
        let bytes = std::fs::read(&onnx).map_err(|source| AdaptError::Io {
            path: onnx.clone(),
            source,
        })?;
        let model = decode_model(&bytes, &onnx)?;
        let graph = Graph::from_model(&model).map_err(|e| bad(&onnx, e.to_string()))?;
        let input = graph
            .inputs
            .iter()
            .find(|i| i.name == config.input)
            .ok_or_else(|| {
                bad(
                    &onnx,
                    format!(
                        "model.toml names input '{}', but the graph's inputs are: {}",
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
                &onnx,
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
                        &onnx,
                        format!(
                            "input '{}' is {:?} but model.toml says channels={} height={} width={}",
                            input.name, input.dims, config.channels, config.height, config.width
                        ),
                    ));
                }
            }
        }
        if !graph.outputs.iter().any(|o| o.name == config.output) {
            return Err(bad(
                &onnx,
                format!(
                    "model.toml names output '{}', which the graph does not produce",
                    config.output
                ),
            ));
        }
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            config,
            model,
            bytes,
        })
    }

    /// Opens a model folder, or a bare `.onnx` file: then the input is the graph's first
    /// non-initializer input (float32 NCHW, fixed C, H, W), the output its first output,
    /// the classes are named `0..K-1` from the output's last dimension, and pixels are only
    /// scaled to 0..1 unless `norm` gives a per-channel (mean, std). For a folder, `norm`
    /// replaces model.toml's values.
    pub fn open_path(path: &Path, norm: Option<(Vec<f32>, Vec<f32>)>) -> Result<ModelDir> {
        let mut m = if path.is_file() {
            Self::from_onnx_file(path)?
        } else {
            Self::open(path)?
        };
        if let Some((mean, std)) = norm {
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
        }
        Ok(m)
    }

    fn from_onnx_file(onnx: &Path) -> Result<ModelDir> {
        let bad = |reason: String| AdaptError::ModelDir {
            path: onnx.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(onnx).map_err(|source| AdaptError::Io {
            path: onnx.to_path_buf(),
            source,
        })?;
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
        let (c, h, w) = (
            fixed(&input.dims[1], "channel count")?,
            fixed(&input.dims[2], "height")?,
            fixed(&input.dims[3], "width")?,
        );
        let side = fieldtune_frames::MAX_FRAME_SIDE as usize;
        if h == 0 || w == 0 || h > side || w > side {
            return Err(bad(format!(
                "input '{}' is {h} x {w} pixels; fieldtune reads 1 to {side} a side",
                input.name
            )));
        }
        if c != 1 && c != 3 {
            return Err(bad(format!(
                "input '{}' has {c} channels; fieldtune reads gray (1) or RGB (3) frames",
                input.name
            )));
        }
        let output = graph
            .outputs
            .first()
            .ok_or_else(|| bad("the graph has no output".into()))?;
        let k = match output.dims.last() {
            Some(Dim::Fixed(k)) if output.dims.len() == 2 && (1..=MAX_CLASSES).contains(k) => *k,
            _ => {
                return Err(bad(format!(
                "output '{}' is {:?}; expected [batch, classes] logits, 1 to {MAX_CLASSES} classes",
                output.name, output.dims
            )))
            }
        };
        let config = ModelConfig {
            input: input.name.clone(),
            output: output.name.clone(),
            channels: c as u8,
            height: h as u32,
            width: w as u32,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            classes: (0..k).map(|i| i.to_string()).collect(),
        };
        Ok(ModelDir {
            dir: onnx.parent().unwrap_or(Path::new(".")).to_path_buf(),
            config,
            model,
            bytes,
        })
    }

    /// The ONNX bytes with `params` replacing the matching initializers.
    pub fn with_params(&self, params: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
        Ok(encode_model(&with_initializers(&self.model, params)?))
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
