//! GStreamer frame source (feature `gstreamer`): any pipeline that ends in
//! `appsink name=sink`. fieldtune sets the sink's caps to raw GRAY8 (1-channel models) or
//! RGB (3-channel models), so the pipeline must convert to them (`videoconvert`).
//!
//! Pipelines (see docs/FIELD.md):
//! - video file: `filesrc location=clip.mp4 ! decodebin ! videoconvert ! appsink name=sink`
//! - Jetson CSI camera: `nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1
//!   ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink`
//! - USB / V4L2 camera: `v4l2src device=/dev/video0 ! videoconvert ! appsink name=sink`
//! - test pattern: `videotestsrc is-live=true ! videoconvert ! appsink name=sink`

use std::fmt;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::error::{FieldError, Result};
use crate::frame::{FrameSource, Next, RawFrame};

/// A running GStreamer pipeline whose `appsink name=sink` hands out frames.
pub struct GstSource {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    channels: u8,
    current: Option<gst_video::VideoFrame<gst_video::video_frame::Readable>>,
    description: String,
    ended: bool,
}

fn err(pipeline: &str, reason: impl Into<String>) -> FieldError {
    FieldError::Source {
        source_name: format!("gstreamer `{pipeline}`"),
        reason: reason.into(),
    }
}

impl GstSource {
    /// Parses and starts `pipeline`; its `appsink name=sink` gets GRAY8 (`channels` 1) or
    /// RGB (`channels` 3) caps. Errors (bad syntax, missing element, device that cannot
    /// open) name the pipeline.
    pub fn open(pipeline: &str, channels: u8) -> Result<GstSource> {
        gst::init().map_err(|e| err(pipeline, format!("GStreamer init failed: {e}")))?;
        let element = gst::parse::launch(pipeline).map_err(|e| err(pipeline, e.to_string()))?;
        let pipe = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| err(pipeline, "not a pipeline (give elements linked with `!`)"))?;
        let sink = pipe
            .by_name("sink")
            .ok_or_else(|| {
                err(
                    pipeline,
                    "no element named `sink`; end the pipeline with `appsink name=sink`",
                )
            })?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| err(pipeline, "the element named `sink` is not an appsink"))?;
        let format = if channels == 1 {
            gst_video::VideoFormat::Gray8
        } else {
            gst_video::VideoFormat::Rgb
        };
        sink.set_caps(Some(
            &gst_video::VideoCapsBuilder::new().format(format).build(),
        ));
        sink.set_max_buffers(4);
        let started = pipe.set_state(gst::State::Playing).map_err(|_| {
            let why = Self::bus_error(&pipe)
                .unwrap_or_else(|| "cannot start (state change to PLAYING failed)".into());
            let _ = pipe.set_state(gst::State::Null);
            err(pipeline, why)
        })?;
        // Live sources (cameras) must not be held up: the sink keeps the newest frames and
        // drops older ones. Files and other non-live sources wait for the consumer instead,
        // so playback loses nothing.
        let live = started == gst::StateChangeSuccess::NoPreroll;
        sink.set_drop(live);
        // Surface errors that happen while prerolling (a device that does not open).
        let (res, _, _) = pipe.state(gst::ClockTime::from_seconds(5));
        if res.is_err() {
            let why = Self::bus_error(&pipe).unwrap_or_else(|| "cannot start".into());
            let _ = pipe.set_state(gst::State::Null);
            return Err(err(pipeline, why));
        }
        Ok(GstSource {
            pipeline: pipe,
            sink,
            channels,
            current: None,
            description: format!(
                "gstreamer `{pipeline}` ({}, {})",
                if channels == 1 { "GRAY8" } else { "RGB" },
                if live {
                    "live: newest frames kept"
                } else {
                    "not live: lossless"
                }
            ),
            ended: false,
        })
    }

    fn bus_error(pipe: &gst::Pipeline) -> Option<String> {
        let bus = pipe.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                let src = e
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                return Some(format!("{src}: {}", e.error()));
            }
        }
        None
    }
}

impl FrameSource for GstSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn next_frame(&mut self) -> Result<Next<'_>> {
        if self.ended {
            return Ok(Next::End);
        }
        self.current = None;
        match self
            .sink
            .try_pull_sample(gst::ClockTime::from_mseconds(100))
        {
            Some(sample) => {
                let caps = sample
                    .caps()
                    .ok_or_else(|| err(&self.description, "sample without caps"))?;
                let info = gst_video::VideoInfo::from_caps(caps)
                    .map_err(|e| err(&self.description, format!("caps {caps}: {e}")))?;
                let buffer = sample
                    .buffer_owned()
                    .ok_or_else(|| err(&self.description, "sample without buffer"))?;
                let frame = gst_video::VideoFrame::from_buffer_readable(buffer, &info)
                    .map_err(|_| err(&self.description, "cannot map the frame"))?;
                self.current = Some(frame);
                let f = self.current.as_ref().expect("just set");
                let stride = f.plane_stride()[0] as usize;
                let data = f
                    .plane_data(0)
                    .map_err(|e| err(&self.description, e.to_string()))?;
                Ok(Next::Frame(RawFrame {
                    width: f.width(),
                    height: f.height(),
                    channels: self.channels,
                    stride,
                    data,
                    label: None,
                }))
            }
            None => {
                if self.sink.is_eos() {
                    self.ended = true;
                    return Ok(Next::End);
                }
                if let Some(e) = Self::bus_error(&self.pipeline) {
                    return Err(err(&self.description, e));
                }
                std::thread::sleep(Duration::from_millis(1));
                Ok(Next::Idle)
            }
        }
    }
}

impl Drop for GstSource {
    fn drop(&mut self) {
        self.current = None;
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A GStreamer element the documented pipelines use: its name, what it is for, and the
/// Debian/Ubuntu package that has it.
#[derive(Clone, Copy, Debug)]
pub struct Element {
    pub name: &'static str,
    pub used_for: &'static str,
    pub package: &'static str,
}

/// The elements `fieldtune doctor` looks for: those of the pipelines in docs/FIELD.md and
/// docs/JETSON.md (files, USB and CSI cameras, the test pattern).
pub const PIPELINE_ELEMENTS: &[Element] = &[
    el(
        "appsink",
        "every pipeline's end",
        "gstreamer1.0-plugins-base",
    ),
    el(
        "videoconvert",
        "every pipeline (to GRAY8/RGB)",
        "gstreamer1.0-plugins-base",
    ),
    el("filesrc", "video files", "libgstreamer1.0-0"),
    el("decodebin", "video files", "gstreamer1.0-plugins-base"),
    el(
        "jpegdec",
        "MJPEG files and cameras",
        "gstreamer1.0-plugins-good",
    ),
    el("v4l2src", "USB / V4L2 cameras", "gstreamer1.0-plugins-good"),
    el("videotestsrc", "test pattern", "gstreamer1.0-plugins-base"),
    el(
        "nvarguscamerasrc",
        "Jetson CSI cameras",
        "nvidia-l4t-gstreamer (JetPack)",
    ),
    el(
        "nvvidconv",
        "Jetson CSI cameras",
        "nvidia-l4t-gstreamer (JetPack)",
    ),
];

const fn el(name: &'static str, used_for: &'static str, package: &'static str) -> Element {
    Element {
        name,
        used_for,
        package,
    }
}

/// What `fieldtune doctor` says about GStreamer: the library's version and which elements
/// are there.
#[derive(Clone, Debug)]
pub struct GstReport {
    /// `Ok(version)`, or why GStreamer could not be initialised.
    pub version: std::result::Result<String, String>,
    /// Each element looked for and whether its factory was found.
    pub elements: Vec<(Element, bool)>,
}

impl GstReport {
    /// Initialises GStreamer (scanning its plugins) and looks each element's factory up.
    pub fn probe(elements: &[Element]) -> GstReport {
        if let Err(e) = gst::init() {
            return GstReport {
                version: Err(e.to_string()),
                elements: elements.iter().map(|e| (*e, false)).collect(),
            };
        }
        GstReport {
            version: Ok({
                let (major, minor, micro, _) = gst::version();
                format!("{major}.{minor}.{micro}")
            }),
            elements: elements
                .iter()
                .map(|e| (*e, gst::ElementFactory::find(e.name).is_some()))
                .collect(),
        }
    }

    /// The elements not found.
    pub fn missing(&self) -> impl Iterator<Item = &Element> {
        self.elements.iter().filter(|(_, ok)| !ok).map(|(e, _)| e)
    }
}

impl fmt::Display for GstReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Ok(v) => writeln!(f, "GStreamer: {v}")?,
            Err(e) => {
                return write!(
                    f,
                    "GStreamer: cannot initialise ({e}); folder sources work without it"
                )
            }
        }
        for (e, ok) in &self.elements {
            if *ok {
                writeln!(f, "  ok       {:<17} {}", e.name, e.used_for)?;
            } else {
                writeln!(
                    f,
                    "  missing  {:<17} {}: install {}",
                    e.name, e.used_for, e.package
                )?;
            }
        }
        let missing = self.missing().count();
        write!(
            f,
            "  {missing} of {} elements missing (pipelines naming them fail at start; folder sources need none)",
            self.elements.len()
        )
    }
}
