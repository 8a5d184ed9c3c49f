//! Test helpers: a self-deleting temporary folder and PNG/JPEG writers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Image8;

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "fieldtune-frames-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `img` to `path` (format from the extension), creating parent folders.
pub fn write(path: &Path, img: &Image8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    img.save(path).unwrap();
}

/// A small gray image whose pixels encode `seed`.
pub fn gray(w: u32, h: u32, seed: u8) -> Image8 {
    let data = (0..w * h)
        .map(|i| seed.wrapping_add((i * 7) as u8))
        .collect();
    Image8::new(w, h, 1, data).unwrap()
}
