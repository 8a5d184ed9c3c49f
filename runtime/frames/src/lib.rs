//! fieldtune-frames: images in, model input out.
//!
//! - [`Image8`]: the 8-bit HWC image type shared with `fieldtune-augment` and `fieldtune-adapt`.
//! - [`ModelConfig`]: a model folder's `model.toml` (graph input/output names, input size,
//!   normalisation, class names).
//! - [`Dataset`]: labeled (`dir/<class>/*.png`) and unlabeled image folders; [`load_image`]
//!   decodes a file to the model's channels and size.
//! - [`to_tensor`]: a batch of images to a normalised NCHW `f32` [`Tensor`].
//! - [`open_regular`], [`read_regular`]: input files read without blocking on a FIFO or
//!   device (refused, naming the file).

use std::path::PathBuf;

use fieldtune_tensor::Tensor;

mod config;
mod dataset;
mod fsread;
mod image8;

pub use config::{model_toml_path, ModelConfig, MAX_CLASS_NAME, MODEL_TOML_KEYS};
pub use dataset::{
    decode_image, is_image_path, load_image, load_images, Dataset, Item, IMAGE_EXTENSIONS,
    MAX_DECODE_BYTES, MAX_FRAME_SIDE,
};
pub use fsread::{open_regular, read_regular, read_regular_string};
pub use image8::{luma, Image8, ImageShape};

/// Everything that can go wrong reading configs, folders and images.
#[derive(Debug, thiserror::Error)]
pub enum FramesError {
    /// A file or folder that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bad `model.toml`; `key` is the offending key when one is at fault.
    #[error("{}: {}{reason}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Config {
        path: PathBuf,
        key: Option<String>,
        reason: String,
    },
    /// A file with an image extension that does not decode.
    #[error("{}: cannot decode image: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
    /// A file without an image extension in an image folder.
    #[error("{}: not an image file (expected .png, .jpg or .jpeg)", path.display())]
    UnsupportedFile { path: PathBuf },
    /// A class folder whose name is not a class of the model.
    #[error("{}: folder {name:?} is not a class of the model (classes: {})", dir.display(), classes.join(", "))]
    UnknownClass {
        dir: PathBuf,
        name: String,
        classes: Vec<String>,
    },
    /// A folder or file where the layout does not allow one.
    #[error("{}: unexpected entry: {reason}", path.display())]
    UnexpectedEntry { path: PathBuf, reason: String },
    /// A folder without any image.
    #[error("{}: no images found", dir.display())]
    EmptyDataset { dir: PathBuf },
    /// An image whose channels or size differ from the model input.
    #[error("image {index} of the batch is {got}, the model expects {expected} (CxHxW)")]
    ShapeMismatch {
        index: usize,
        expected: ImageShape,
        got: ImageShape,
    },
    /// An [`Image8`] whose parts are inconsistent.
    #[error("invalid image: {reason}")]
    InvalidImage { reason: String },
    /// An image that could not be written.
    #[error("{}: cannot write image: {reason}", path.display())]
    Encode { path: PathBuf, reason: String },
}

/// Writes one image, normalised, into `out` (CHW, length `channels * height * width`):
/// `(px / 255 - mean[c]) / std[c]`. Fails when the image's shape is not `cfg`'s; `index` only
/// labels the error.
pub fn write_normalized(
    img: &Image8,
    cfg: &ModelConfig,
    index: usize,
    out: &mut [f32],
) -> Result<(), FramesError> {
    let expected = cfg.input_shape();
    let plane = cfg.height as usize * cfg.width as usize;
    let c = cfg.channels as usize;
    for (key, v) in [("mean", &cfg.mean), ("std", &cfg.std)] {
        if v.len() != c {
            return Err(FramesError::Config {
                path: PathBuf::from("model.toml"),
                key: Some(key.into()),
                reason: format!("needs {c} value(s) (one per channel), got {}", v.len()),
            });
        }
    }
    if img.shape() != expected || !img.is_valid() {
        return Err(FramesError::ShapeMismatch {
            index,
            expected,
            got: img.shape(),
        });
    }
    if out.len() != plane * c {
        return Err(FramesError::InvalidImage {
            reason: format!(
                "output slice holds {} values, needs {}",
                out.len(),
                plane * c
            ),
        });
    }
    for ch in 0..c {
        let (mean, std) = (cfg.mean[ch], cfg.std[ch]);
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for (d, px) in dst.iter_mut().zip(img.data.iter().skip(ch).step_by(c)) {
            // Same f32 operations as torchvision's ToTensor + Normalize.
            *d = (*px as f32 / 255.0 - mean) / std;
        }
    }
    Ok(())
}

/// A batch of images as a normalised NCHW `f32` tensor of shape
/// `[images.len(), channels, height, width]`, each value `(px / 255 - mean[c]) / std[c]`.
/// Every image must already have `cfg`'s channels and size ([`FramesError::ShapeMismatch`]
/// otherwise; see [`load_image`]).
pub fn to_tensor(images: &[&Image8], cfg: &ModelConfig) -> Result<Tensor, FramesError> {
    let per = cfg.channels as usize * cfg.height as usize * cfg.width as usize;
    let mut data = vec![0.0f32; per * images.len()];
    for (i, img) in images.iter().enumerate() {
        write_normalized(img, cfg, i, &mut data[i * per..(i + 1) * per])?;
    }
    let shape = vec![
        images.len(),
        cfg.channels as usize,
        cfg.height as usize,
        cfg.width as usize,
    ];
    Tensor::f32(shape, data).map_err(|e| FramesError::InvalidImage {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests;
