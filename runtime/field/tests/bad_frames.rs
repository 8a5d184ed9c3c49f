//! Bad frames in a folder source: a truncated PNG and a FIFO among good ones are skipped (the
//! FIFO without blocking) and counted (a `frame_skipped` event, the summary) and the run goes
//! on; `[source] max_bad_frames` bad frames in a row stop it with an error naming the last
//! file.

mod common;

use std::path::{Path, PathBuf};

use common::{config, events, kinds, options, root};

/// `n` good digits, a truncated PNG (`0004-bad.png`) and a FIFO (`0006-fifo.png`) in `dir`;
/// returns the truncated file.
fn folder_with_a_truncated_png(dir: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let c = i % 10;
        let src = root().join(format!("data/opencv-digits/{c}/{:04}.png", c * 500 + i));
        std::fs::copy(&src, dir.join(format!("{i:04}.png"))).unwrap();
    }
    let bytes = std::fs::read(root().join("data/opencv-digits/3/1500.png")).unwrap();
    let bad = dir.join("0004-bad.png");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let fifo = dir.join("0006-fifo.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    bad
}

const RUN: &str = r#"
model = "@ROOT/models/mnist-cnn"
state_dir = "@TMP/state"
[source]
paths = ["@TMP/frames"]
fps = 0.0
loop = true
max_bad_frames = 5
PRELOAD
[pipeline]
when_full = "block"
max_frames = 60
[output]
path = "none"
[trigger]
drift = false
manual_signal = false
min_replay = 8
"#;

#[test]
fn a_truncated_png_in_a_looping_folder_is_skipped_and_counted() {
    for preload in ["preload = false", "preload = true"] {
        let tmp = tempfile::tempdir().unwrap();
        let bad = folder_with_a_truncated_png(&tmp.path().join("frames"), 9);
        let (cfg, path) = config(&RUN.replace("PRELOAD", preload), tmp.path());
        let summary = fieldtune_field::run(&cfg, &options(&path), None)
            .unwrap_or_else(|e| panic!("{preload}: the run ended on a bad frame: {e}"));
        assert_eq!(summary.frames, 60, "{preload}");
        // 60 good frames take 7 passes of 9 good and 2 bad.
        assert!(summary.bad_frames >= 12, "{preload}: {summary:?}");
        assert!(summary.table().contains("bad frames skipped"), "{preload}");
        let ev = events(&cfg);
        let skipped = kinds(&ev, "frame_skipped");
        assert!(!skipped.is_empty(), "{preload}: no frame_skipped event");
        let name = bad.display().to_string();
        assert_eq!(skipped[0].str("file"), Some(name.as_str()), "{preload}");
        assert!(
            skipped[0].str("reason").unwrap().contains("0004-bad.png"),
            "{preload}: {:?}",
            skipped[0]
        );
        assert_eq!(skipped[0].u64("in_a_row"), Some(1), "{preload}");
        let fifo = skipped
            .iter()
            .find(|e| e.str("file").is_some_and(|f| f.ends_with("0006-fifo.png")))
            .unwrap_or_else(|| panic!("{preload}: the FIFO was not skipped"));
        assert!(fifo.str("reason").unwrap().contains("FIFO"), "{fifo:?}");
        let stopped = kinds(&ev, "stopped");
        assert_eq!(
            stopped[0].u64("bad_frames"),
            Some(summary.bad_frames),
            "{preload}"
        );
    }
}

#[test]
fn a_folder_of_bad_frames_stops_the_run_naming_the_last_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("frames");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("{i}.png")), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    }
    let (cfg, path) = config(&RUN.replace("PRELOAD", ""), tmp.path());
    let e = fieldtune_field::run(&cfg, &options(&path), None)
        .expect_err("a folder of bad frames must stop the run")
        .to_string();
    assert!(
        e.contains("5 bad frames in a row") && e.contains("source.max_bad_frames"),
        "{e}"
    );
    assert!(e.contains("1.png"), "the last file is named: {e}");
    assert_eq!(kinds(&events(&cfg), "frame_skipped").len(), 4);
}
