//! Image folders: labeled (`dir/<class>/*.png`) and unlabeled (flat or class folders),
//! and decoding to model-sized [`Image8`]s.

use std::fs;
use std::path::{Path, PathBuf};

use image::ImageReader;

use crate::{FramesError, Image8, ModelConfig};

/// File extensions (case-insensitive) treated as images.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` has an image extension ([`IMAGE_EXTENSIONS`]).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FramesError + '_ {
    move |source| FramesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Decodes `path` (format sniffed from the content), converts it to `cfg.channels`
/// (RGB to gray with PIL's luma formula, gray to RGB by repetition; alpha dropped) and
/// resizes it to `cfg.height x cfg.width` with a triangle (bilinear) filter when the size
/// differs.
pub fn load_image(path: impl AsRef<Path>, cfg: &ModelConfig) -> Result<Image8, FramesError> {
    let path = path.as_ref();
    let img = decode_image(path)?.with_channels(cfg.channels);
    Ok(img.resized(cfg.width, cfg.height))
}

/// The largest frame side decoded (8K video is 7680 wide); a file declaring more is refused
/// from its header, before pixels are decoded or memory is reserved for them.
pub const MAX_FRAME_SIDE: u32 = 8192;
/// The most memory one decode may reserve (an 8192 x 8192 RGB frame fits).
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decodes `path` at its own size: gray sources (any bit depth, alpha dropped) become 1
/// channel, colour sources 3 channels. Frames over [`MAX_FRAME_SIDE`] on a side or
/// [`MAX_DECODE_BYTES`] are refused.
pub fn decode_image(path: impl AsRef<Path>) -> Result<Image8, FramesError> {
    let path = path.as_ref();
    let decode_err = |reason: String| FramesError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_FRAME_SIDE);
    limits.max_image_height = Some(MAX_FRAME_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let file = crate::fsread::open_regular(path)?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err(
            "unrecognised image format (expected PNG or JPEG)".into(),
        ));
    }
    reader.limits(limits);
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    Ok(if img.color().has_color() {
        Image8::from(img.to_rgb8())
    } else {
        Image8::from(img.to_luma8())
    })
}

/// One dataset entry: an image file and, when known, its class index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub label: Option<usize>,
}

/// A list of image files from one folder, sorted by path, with optional labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    root: PathBuf,
    items: Vec<Item>,
}

/// Sorted, non-hidden entries of `dir`, split into (directories, files).
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), FramesError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_hidden(&path) {
            continue;
        }
        // `metadata` follows symlinks, so linked folders and files work.
        if fs::metadata(&path).map_err(io_err(&path))?.is_dir() {
            dirs.push(path);
        } else {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

/// The image files of a folder that must hold only images (no subfolders, no other files).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, FramesError> {
    let (dirs, files) = list_dir(dir)?;
    if let Some(d) = dirs.first() {
        return Err(FramesError::UnexpectedEntry {
            path: d.clone(),
            reason: "a folder inside a folder of images".into(),
        });
    }
    check_images(&files)?;
    Ok(files)
}

fn check_images(files: &[PathBuf]) -> Result<(), FramesError> {
    match files.iter().find(|f| !is_image_path(f)) {
        Some(f) => Err(FramesError::UnsupportedFile { path: f.clone() }),
        None => Ok(()),
    }
}

fn class_folders(
    dir: &Path,
    dirs: Vec<PathBuf>,
    classes: &[String],
) -> Result<Vec<Item>, FramesError> {
    let mut items = Vec::new();
    for d in dirs {
        let name = d.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let label =
            classes
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| FramesError::UnknownClass {
                    dir: dir.to_path_buf(),
                    name: d
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    classes: classes.to_vec(),
                })?;
        items.extend(image_files(&d)?.into_iter().map(|path| Item {
            path,
            label: Some(label),
        }));
    }
    Ok(items)
}

impl Dataset {
    /// Loads `dir/<class>/*.{png,jpg,jpeg}`. Every folder must be named after one of
    /// `classes` (missing classes are fine); files directly in `dir` are an error, as are
    /// non-image files. Hidden entries (names starting with `.`) are ignored.
    pub fn labeled(dir: impl AsRef<Path>, classes: &[String]) -> Result<Self, FramesError> {
        let dir = dir.as_ref();
        let (dirs, files) = list_dir(dir)?;
        if let Some(f) = files.first() {
            return Err(FramesError::UnexpectedEntry {
                path: f.clone(),
                reason: "a labeled dataset holds class folders only".into(),
            });
        }
        let items = class_folders(dir, dirs, classes)?;
        Self::finish(dir, items)
    }

    /// Loads either a flat folder of images (no labels) or class folders. With class folders
    /// and `Some(classes)`, labels are kept (for scoring only) and every folder must name a
    /// class; with `None` they are read without labels. Mixing images and folders is an
    /// error. Hidden entries are ignored.
    pub fn unlabeled(
        dir: impl AsRef<Path>,
        classes: Option<&[String]>,
    ) -> Result<Self, FramesError> {
        let dir = dir.as_ref();
        let (dirs, files) = list_dir(dir)?;
        let items = match (dirs.is_empty(), files.is_empty()) {
            (true, _) => {
                check_images(&files)?;
                files
                    .into_iter()
                    .map(|path| Item { path, label: None })
                    .collect()
            }
            (false, true) => match classes {
                Some(classes) => class_folders(dir, dirs, classes)?,
                None => {
                    let mut items = Vec::new();
                    for d in dirs {
                        items.extend(
                            image_files(&d)?
                                .into_iter()
                                .map(|path| Item { path, label: None }),
                        );
                    }
                    items
                }
            },
            (false, false) => {
                return Err(FramesError::UnexpectedEntry {
                    path: files[0].clone(),
                    reason: format!(
                    "{} mixes image files and folders; use either a flat folder or class folders",
                    dir.display()
                ),
                })
            }
        };
        Self::finish(dir, items)
    }

    /// A dataset from explicit items (e.g. a filtered or re-ordered copy); fails when empty.
    pub fn from_items(root: impl AsRef<Path>, items: Vec<Item>) -> Result<Self, FramesError> {
        Self::finish(root.as_ref(), items)
    }

    fn finish(dir: &Path, mut items: Vec<Item>) -> Result<Self, FramesError> {
        if items.is_empty() {
            return Err(FramesError::EmptyDataset {
                dir: dir.to_path_buf(),
            });
        }
        items.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Dataset {
            root: dir.to_path_buf(),
            items,
        })
    }

    /// The folder this dataset was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries, sorted by path.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Number of images (never 0).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Always false: an empty folder is an error at load time.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The labels, in item order.
    pub fn labels(&self) -> Vec<Option<usize>> {
        self.items.iter().map(|i| i.label).collect()
    }

    /// Whether every item has a label.
    pub fn is_fully_labeled(&self) -> bool {
        self.items.iter().all(|i| i.label.is_some())
    }

    /// Decodes every image with [`load_image`], in item order, on all cores. For small
    /// datasets (everything is held in memory).
    pub fn load_all(&self, cfg: &ModelConfig) -> Result<Vec<Image8>, FramesError> {
        let paths: Vec<&Path> = self.items.iter().map(|i| i.path.as_path()).collect();
        load_images(&paths, cfg)
    }
}

/// Decodes `paths` with [`load_image`] in parallel (scoped threads), keeping the order; the
/// error reported is the one of the first failing path.
pub fn load_images(paths: &[&Path], cfg: &ModelConfig) -> Result<Vec<Image8>, FramesError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    if threads <= 1 || paths.len() < 64 {
        return paths.iter().map(|p| load_image(p, cfg)).collect();
    }
    let chunk = paths.len().div_ceil(threads);
    let results: Vec<Result<Vec<Image8>, FramesError>> = std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|p| load_image(p, cfg)).collect()))
            .collect();
        handles
            .into_iter()
            .zip(paths.chunks(chunk))
            .map(|(h, part)| {
                h.join().unwrap_or_else(|_| {
                    Err(FramesError::Decode {
                        path: part.first().map(|p| p.to_path_buf()).unwrap_or_default(),
                        reason: "decoder thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(paths.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}
