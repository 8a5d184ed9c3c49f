//! The seam every frame source implements, [`FrameSource`], and the frames it lends
//! ([`RawFrame`]). The `source` module re-exports them beside the image-folder source; the
//! `gst` module implements them for GStreamer pipelines.

use fieldtune_frames::Image8;

use crate::error::Result;

/// A borrowed 8-bit frame, rows `stride` bytes apart (`stride >= width * channels`).
#[derive(Clone, Copy, Debug)]
pub struct RawFrame<'a> {
    pub width: u32,
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    pub stride: usize,
    pub data: &'a [u8],
    /// The class, when the source knows it (scoring only, never training).
    pub label: Option<usize>,
}

impl<'a> RawFrame<'a> {
    /// A tightly packed view of an [`Image8`].
    pub fn of(img: &'a Image8, label: Option<usize>) -> RawFrame<'a> {
        RawFrame {
            width: img.width,
            height: img.height,
            channels: img.channels,
            stride: img.width as usize * img.channels as usize,
            data: &img.data,
            label,
        }
    }
}

/// What [`FrameSource::next_frame`] gave.
#[derive(Debug)]
pub enum Next<'a> {
    Frame(RawFrame<'a>),
    /// Nothing yet (a timeout); ask again.
    Idle,
    /// A frame that could not be read (an unreadable, truncated or corrupt file); the run
    /// skips it, counts it, and ends only after `[source] max_bad_frames` in a row.
    Bad {
        /// The file, for sources that read files.
        file: Option<String>,
        /// Why, naming the file.
        reason: String,
    },
    /// The stream ended.
    End,
}

/// Where frames come from. `next_frame` waits at most about 100 ms (then says
/// [`Next::Idle`]) so that the caller can notice a stop request.
pub trait FrameSource: Send {
    /// One line for logs.
    fn describe(&self) -> String;
    /// The next frame, borrowed until the next call.
    fn next_frame(&mut self) -> Result<Next<'_>>;
}
