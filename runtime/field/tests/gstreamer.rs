//! GStreamer sources (feature `gstreamer`; CI installs the packages in .ci/run): a
//! `videotestsrc` pipeline, a real MJPEG/AVI file that the test encodes from shipped digits
//! and reads back through the source and through the whole runtime, and the errors people
//! meet (a missing element, a missing appsink, a V4L2 device that is not there).
#![cfg(feature = "gstreamer")]

mod common;

use std::path::Path;

use common::{config, events, kinds, options, predictions, root};
use fieldtune_adapt::ModelDir;
use fieldtune_engine::{select_engine, EnginePreference, OrtOptions};
use fieldtune_field::config::Resize;
use fieldtune_field::gst::GstSource;
use fieldtune_field::preprocess::Preprocessor;
use fieldtune_field::source::{FrameSource, Next};
use fieldtune_frames::{to_tensor, Dataset};
use gstreamer as gst;
use gstreamer::prelude::*;

/// Reads a source to its end: (width, height, channels, stride, first bytes) per frame.
fn drain(src: &mut dyn FrameSource, max: usize) -> Vec<(u32, u32, u8, usize, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match src.next_frame().expect("frame") {
            Next::Frame(f) => {
                out.push((
                    f.width,
                    f.height,
                    f.channels,
                    f.stride,
                    f.data[..f.stride * f.height as usize].to_vec(),
                ));
                if out.len() == max {
                    break;
                }
            }
            Next::Idle => continue,
            Next::Bad { reason, .. } => panic!("bad frame: {reason}"),
            Next::End => break,
        }
    }
    out
}

/// Runs a pipeline to end of stream.
fn run_to_eos(desc: &str) {
    gst::init().unwrap();
    let p = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{desc}: {}", e.error()),
            _ => {}
        }
    }
    p.set_state(gst::State::Null).unwrap();
}

#[test]
fn videotestsrc_frames_arrive_gray_and_rgb_with_their_stride() {
    for (channels, bpp) in [(1u8, 1usize), (3, 3)] {
        let mut src = GstSource::open(
            "videotestsrc num-buffers=12 pattern=ball ! video/x-raw,width=30,height=20 ! videoconvert ! appsink name=sink sync=false",
            channels,
        )
        .expect("pipeline");
        let frames = drain(&mut src, 100);
        assert_eq!(frames.len(), 12, "every buffer, then end of stream");
        for (w, h, c, stride, data) in &frames {
            assert_eq!((*w, *h, *c), (30, 20, channels));
            // GStreamer pads rows to 4 bytes: 30 gray -> 32, 30 RGB (90) -> 92.
            assert_eq!(*stride, (30 * bpp).div_ceil(4) * 4);
            assert!(
                data.iter().any(|&v| v != data[0]),
                "a picture, not a flat buffer"
            );
        }
        assert_ne!(frames[0].4, frames[11].4, "the ball moves");
    }
}

#[test]
fn an_encoded_video_file_made_here_reads_back_and_classifies() {
    let tmp = tempfile::tempdir().unwrap();
    let model = ModelDir::open(&root().join("models/mnist-cnn")).unwrap();
    // 60 MNIST digits (6 per class, interleaved), as numbered PNG frames.
    let ds = Dataset::labeled(root().join("data/mnist"), &model.config.classes).unwrap();
    let mut picked = Vec::new();
    for k in 0..6 {
        for c in 0..10 {
            let item = ds
                .items()
                .iter()
                .filter(|i| i.label == Some(c))
                .nth(k * 50)
                .unwrap();
            picked.push((item.path.clone(), c));
        }
    }
    for (i, (p, _)) in picked.iter().enumerate() {
        std::fs::copy(p, tmp.path().join(format!("{i:05}.png"))).unwrap();
    }
    let avi = tmp.path().join("digits.avi");
    run_to_eos(&format!(
        "multifilesrc location={}/%05d.png index=0 stop-index={} caps=image/png,framerate=30/1 ! pngdec ! videoconvert ! video/x-raw,format=I420 ! jpegenc quality=95 ! avimux ! filesink location={}",
        tmp.path().display(),
        picked.len() - 1,
        avi.display()
    ));
    assert!(std::fs::metadata(&avi).unwrap().len() > 10_000);

    // Through the source: decode, convert to GRAY8, preprocess, classify.
    let mut src = GstSource::open(
        &format!(
            "filesrc location={} ! decodebin ! videoconvert ! appsink name=sink sync=false",
            avi.display()
        ),
        1,
    )
    .unwrap();
    let pre = Preprocessor::new(&model.config, Resize::Stretch);
    let mut images = Vec::new();
    loop {
        match src.next_frame().unwrap() {
            Next::Frame(f) => {
                let mut img = pre.blank();
                assert!(pre.apply(&f, &mut img));
                images.push(img);
            }
            Next::Idle => continue,
            Next::Bad { reason, .. } => panic!("bad frame: {reason}"),
            Next::End => break,
        }
    }
    assert_eq!(images.len(), picked.len(), "every encoded frame comes back");
    let engine = select_engine(EnginePreference::Auto, OrtOptions::default()).unwrap();
    let mut s = engine.load(&model.bytes, "model.onnx").unwrap();
    let refs: Vec<_> = images.iter().collect();
    let x = to_tensor(&refs, &model.config).unwrap();
    let y = s
        .run_fetch(&[("input", &x)], &["logits"])
        .unwrap()
        .remove(0);
    let correct = y
        .as_f32()
        .unwrap()
        .chunks(10)
        .zip(&picked)
        .filter(|(row, (_, c))| {
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
                .0
                == *c
        })
        .count();
    assert!(
        correct >= 57,
        "{correct}/60 JPEG-compressed digits classified right"
    );

    // Through the whole runtime: a gstreamer source config, predictions for every frame.
    let (cfg, path) = config(
        &format!(
            r#"
model = "@ROOT/models/mnist-cnn"
state_dir = "@TMP/state"
[source]
kind = "gstreamer"
pipeline = "filesrc location={} ! decodebin ! videoconvert ! appsink name=sink"
[pipeline]
when_full = "block"
[output]
path = "@TMP/predictions.jsonl"
[trigger]
drift = false
manual_signal = false
"#,
            avi.display()
        ),
        tmp.path(),
    );
    let summary = fieldtune_field::run(&cfg, &options(&path), None).expect("run");
    assert_eq!(summary.frames, picked.len() as u64, "{summary:?}");
    let lines = predictions(&tmp.path().join("predictions.jsonl"));
    let right = lines
        .iter()
        .zip(&picked)
        .filter(|(l, (_, c))| l.class == *c)
        .count();
    assert!(right >= 57, "{right}/60 through the runtime");
    assert!(kinds(&events(&cfg), "started")[0]
        .str("source")
        .unwrap()
        .contains("filesrc"));
}

#[test]
fn pipeline_mistakes_are_one_clear_error() {
    let e = GstSource::open("videotestsrc ! nosuchelement ! appsink name=sink", 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nosuchelement"), "{e}");
    let e = GstSource::open("videotestsrc ! fakesink", 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("appsink name=sink"), "{e}");
}

/// `fieldtune doctor`'s GStreamer lines: the version, each element found, and each missing
/// one with the package that has it.
#[test]
fn doctor_report_names_present_and_missing_elements() {
    use fieldtune_field::gst::{Element, GstReport, PIPELINE_ELEMENTS};
    let mut wanted = PIPELINE_ELEMENTS.to_vec();
    wanted.push(Element {
        name: "nosuchelement",
        used_for: "nothing",
        package: "no-such-package",
    });
    let report = GstReport::probe(&wanted);
    let text = report.to_string();
    assert!(text.starts_with("GStreamer: 1."), "{text}");
    // CI installs gstreamer1.0-plugins-base and -good (.ci/run).
    for name in [
        "appsink",
        "videoconvert",
        "filesrc",
        "decodebin",
        "videotestsrc",
        "jpegdec",
    ] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(2).eq(["ok", name])),
            "{name} not found:\n{text}"
        );
    }
    assert!(
        text.contains("missing  nosuchelement     nothing: install no-such-package"),
        "{text}"
    );
    assert_eq!(
        report.missing().map(|e| e.name).collect::<Vec<_>>().last(),
        Some(&"nosuchelement")
    );
}

/// V4L2 cameras go through `v4l2src`. This machine has no camera: the test checks the
/// error for a device that is not there and, where /dev/video0 exists, reads frames.
#[test]
fn v4l2_source_reports_a_missing_device_and_reads_one_that_exists() {
    let e = GstSource::open(
        "v4l2src device=/dev/video-not-here ! videoconvert ! appsink name=sink",
        1,
    )
    .err()
    .expect("no such device")
    .to_string();
    assert!(e.contains("v4l2src") && e.contains("video-not-here"), "{e}");
    if Path::new("/dev/video0").exists() {
        let mut src = GstSource::open(
            "v4l2src device=/dev/video0 num-buffers=5 ! videoconvert ! appsink name=sink",
            3,
        )
        .unwrap();
        assert!(!drain(&mut src, 5).is_empty(), "frames from /dev/video0");
        println!("read frames from /dev/video0");
    } else {
        println!("no /dev/video0 here: only the missing-device error was checked");
    }
}
