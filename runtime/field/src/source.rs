//! Frame sources behind one seam, [`FrameSource`]: image folders here, GStreamer pipelines
//! (video files, CSI and USB cameras, V4L2) in [`crate::gst`] behind feature `gstreamer`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fieldtune_frames::{decode_image, Dataset, Image8};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Order, SourceConfig};
use crate::error::Result;
pub use crate::frame::{FrameSource, Next, RawFrame};

/// Image folders played one after the other, at a set rate, optionally looping.
pub struct ImageFolderSource {
    items: Vec<(PathBuf, Option<usize>)>,
    /// With `preload`: each image, or why it did not decode (played as a bad frame).
    preloaded: Option<Vec<std::result::Result<Image8, String>>>,
    current: Image8,
    pos: usize,
    looping: bool,
    period: Option<Duration>,
    next_due: Option<Instant>,
    what: String,
}

impl ImageFolderSource {
    /// Lists (and with `preload`, decodes) the folders of `cfg.paths`. Class folders named
    /// after `classes` give labels; flat folders give none.
    pub fn open(cfg: &SourceConfig, classes: &[String]) -> Result<ImageFolderSource> {
        let mut items = Vec::new();
        for (i, dir) in cfg.paths.iter().enumerate() {
            let ds = Dataset::unlabeled(dir, Some(classes))?;
            let mut part: Vec<(PathBuf, Option<usize>)> = ds
                .items()
                .iter()
                .map(|it| (it.path.clone(), it.label))
                .collect();
            if cfg.order == Order::Shuffled {
                part.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    cfg.seed.wrapping_add(i as u64),
                ));
            }
            if cfg.limit > 0 {
                part.truncate(cfg.limit);
            }
            items.extend(part);
        }
        let preloaded = cfg.preload.then(|| {
            let all: Vec<_> = items
                .iter()
                .map(|(p, _)| decode_image(p).map_err(|e| e.to_string()))
                .collect();
            let bad = all.iter().filter(|r| r.is_err()).count();
            if bad > 0 {
                tracing::warn!("{bad} image(s) do not decode; they will be skipped as bad frames");
            }
            all
        });
        let what = format!(
            "image folders {} ({} images, {}, {}{})",
            cfg.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" + "),
            items.len(),
            match cfg.order {
                Order::Sorted => "sorted".to_string(),
                Order::Shuffled => format!("shuffled, seed {}", cfg.seed),
            },
            if cfg.fps > 0.0 {
                format!("{} fps", cfg.fps)
            } else {
                "unpaced".into()
            },
            if cfg.looping { ", looping" } else { "" }
        );
        Ok(ImageFolderSource {
            items,
            preloaded,
            current: Image8::filled(1, 1, 1, 0),
            pos: 0,
            looping: cfg.looping,
            period: (cfg.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / cfg.fps)),
            next_due: None,
            what,
        })
    }

    /// The play order: (file, label) per frame of one pass.
    pub fn items(&self) -> &[(PathBuf, Option<usize>)] {
        &self.items
    }
}

impl FrameSource for ImageFolderSource {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn next_frame(&mut self) -> Result<Next<'_>> {
        if self.pos == self.items.len() {
            if !self.looping || self.items.is_empty() {
                return Ok(Next::End);
            }
            self.pos = 0;
        }
        if let Some(period) = self.period {
            let now = Instant::now();
            let due = *self.next_due.get_or_insert(now);
            if due > now {
                let wait = due - now;
                if wait > Duration::from_millis(100) {
                    std::thread::sleep(Duration::from_millis(100));
                    return Ok(Next::Idle);
                }
                std::thread::sleep(wait);
            }
            // Frames more than one period late are not made up in a burst.
            self.next_due = Some((due + period).max(now));
        }
        let (path, label) = &self.items[self.pos];
        let label = *label;
        let i = self.pos;
        self.pos += 1;
        let bad = |reason: String| Next::Bad {
            file: Some(path.display().to_string()),
            reason,
        };
        let img = match &self.preloaded {
            Some(all) => match &all[i] {
                Ok(img) => img,
                Err(reason) => return Ok(bad(reason.clone())),
            },
            None => match decode_image(path) {
                Ok(img) => {
                    self.current = img;
                    &self.current
                }
                Err(e) => return Ok(bad(e.to_string())),
            },
        };
        Ok(Next::Frame(RawFrame::of(img, label)))
    }
}

/// Opens the source a config names.
pub fn open_source(
    cfg: &SourceConfig,
    model_channels: u8,
    classes: &[String],
) -> Result<Box<dyn FrameSource>> {
    match cfg.kind {
        crate::config::SourceKind::Folder => Ok(Box::new(ImageFolderSource::open(cfg, classes)?)),
        crate::config::SourceKind::Gstreamer => open_gstreamer(cfg, model_channels),
    }
}

#[cfg(feature = "gstreamer")]
fn open_gstreamer(cfg: &SourceConfig, model_channels: u8) -> Result<Box<dyn FrameSource>> {
    Ok(Box::new(crate::gst::GstSource::open(
        &cfg.pipeline,
        model_channels,
    )?))
}

#[cfg(not(feature = "gstreamer"))]
fn open_gstreamer(_cfg: &SourceConfig, _model_channels: u8) -> Result<Box<dyn FrameSource>> {
    Err(crate::error::FieldError::Source {
        source_name: "gstreamer".into(),
        reason: "this fieldtune was built without GStreamer; rebuild with `cargo build --release --features gstreamer` (needs libgstreamer1.0-dev, libgstreamer-plugins-base1.0-dev)".into(),
    })
}
