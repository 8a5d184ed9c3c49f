//! The engine plan and the serving fallback end to end, on the shipped model and digits, with
//! `inference = "ort:cpu"` as the primary (ONNX Runtime, scripts/install-ort.sh) and tract as
//! the fallback; `[fault] inference_errors` makes the primary's runs fail on chosen frames.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use common::{config, events, kinds, options, predictions, stop_when, Line};
use fieldtune_adapt::{checkpoint, predict, ModelDir};
use fieldtune_engine::{Engine, TractEngine};
use fieldtune_field::source::ImageFolderSource;
use fieldtune_field::RunConfig;
use fieldtune_frames::load_image;

const HEAD: &str = r#"
model = "@ROOT/models/mnist-cnn"
state_dir = "@TMP/state"
[output]
path = "@TMP/predictions.jsonl"
[pipeline]
when_full = "block"
output_queue = 8192
stats_every_s = 0.5
"#;

fn no_rounds() -> &'static str {
    "[trigger]\ndrift = false\nmanual_signal = false\n"
}

/// Every frame the source gave was answered exactly once: ids 0..n, each once.
fn answered_once(lines: &[Line], n: u64) {
    let ids: HashSet<u64> = lines.iter().map(|l| l.frame).collect();
    assert_eq!(lines.len() as u64, n, "count in = count out");
    assert_eq!(ids.len(), lines.len(), "a frame answered twice");
    assert_eq!(ids, (0..n).collect::<HashSet<u64>>(), "frame ids");
}

/// Images of the stream, in stream order.
fn stream_images(cfg: &RunConfig) -> (ModelDir, Vec<fieldtune_frames::Image8>) {
    let model = ModelDir::open(&cfg.model).unwrap();
    let order = ImageFolderSource::open(&cfg.source, &model.config.classes).unwrap();
    let images = order
        .items()
        .iter()
        .map(|(p, _)| load_image(p, &model.config).unwrap())
        .collect();
    (model, images)
}

fn tract_classes(
    bytes: &[u8],
    model: &ModelDir,
    images: &[fieldtune_frames::Image8],
) -> Vec<usize> {
    let mut s = TractEngine::with_threads(1).load(bytes, "check").unwrap();
    predict(s.as_mut(), &model.config, images, 500)
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect()
}

#[test]
fn a_failing_primary_falls_back_to_tract_without_losing_a_frame_and_comes_back() {
    let stream = r#"
[source]
paths = ["@ROOT/data/mnist"]
order = "shuffled"
seed = 3
fps = 0.0
limit = 1200
preload = true
"#;
    let engine = r#"
[engine]
inference = "ort:cpu"
fallback = "tract"
retry_s = 0.001
"#;
    // The same stream twice: with the primary failing on frames 200..=700, and without.
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}{stream}{}{engine}[fault]\ninference_errors = [[200, 700]]\n",
        no_rounds()
    );
    let (cfg, path) = config(&text, tmp.path());
    let summary = fieldtune_field::run(&cfg, &options(&path), None).expect("run");
    let clean_tmp = tempfile::tempdir().unwrap();
    let (clean_cfg, clean_path) = config(
        &format!("{HEAD}{stream}{}{engine}", no_rounds()),
        clean_tmp.path(),
    );
    let clean = fieldtune_field::run(&clean_cfg, &options(&clean_path), None).expect("clean run");

    let lines = predictions(&tmp.path().join("predictions.jsonl"));
    answered_once(&lines, 1200);
    assert_eq!(summary.frames, 1200);
    assert_eq!((summary.capture_dropped, summary.output_dropped), (0, 0));
    assert_eq!(summary.inference_errors, 0, "every failed run was answered");

    let ev = events(&cfg);
    let fb = kinds(&ev, "engine_fallback");
    let back = kinds(&ev, "engine_restored");
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0].u64("frame"), Some(200), "{:?}", fb[0]);
    assert_eq!(fb[0].str("role"), Some("inference"));
    assert!(fb[0].str("reason").unwrap().contains("injected fault"));
    assert!(fb[0].str("to").unwrap().contains("tract"));
    assert_eq!(back.len(), 1, "{back:?}");
    let restored_at = back[0].u64("frame").unwrap();
    assert!(
        (701..1200).contains(&restored_at),
        "restored at {restored_at}"
    );
    let on_fallback = restored_at - 200;
    assert_eq!(back[0].u64("fallback_frames"), Some(on_fallback));

    // Frames per engine: the fallback answered exactly the episode.
    let per: BTreeMap<String, u64> = summary.frames_by_engine.clone();
    assert_eq!(per.values().sum::<u64>(), 1200, "{per:?}");
    let tract: Vec<_> = per.iter().filter(|(k, _)| k.contains("tract")).collect();
    assert_eq!(tract.len(), 1, "{per:?}");
    assert_eq!(*tract[0].1, on_fallback, "{per:?}");
    assert_eq!((summary.fallbacks, summary.restores), (1, 1));
    assert!(summary.table().contains("frames per engine"));

    // Live accuracy during the fallback equals the primary's on the same frames.
    let clean_lines = predictions(&clean_tmp.path().join("predictions.jsonl"));
    answered_once(&clean_lines, 1200);
    let by_frame: HashMap<u64, &Line> = clean_lines.iter().map(|l| (l.frame, l)).collect();
    let episode: Vec<&Line> = lines
        .iter()
        .filter(|l| (200..restored_at).contains(&l.frame))
        .collect();
    let acc = |ls: &[&Line]| {
        ls.iter().filter(|l| Some(l.class) == l.label).count() as f64 / ls.len() as f64
    };
    let primary: Vec<&Line> = episode.iter().map(|l| by_frame[&l.frame]).collect();
    let differ = episode
        .iter()
        .filter(|l| by_frame[&l.frame].class != l.class)
        .count();
    println!(
        "fallback frames {}: accuracy tract {:.4}, primary {:.4}, classes differ on {differ}",
        episode.len(),
        acc(&episode),
        acc(&primary)
    );
    assert_eq!(
        differ, 0,
        "tract and ONNX Runtime disagree on {differ} frames"
    );
    assert_eq!(acc(&episode), acc(&primary));
    assert!(clean.frames_by_engine.keys().all(|k| !k.contains("tract")));
}

#[test]
fn a_commit_during_fallback_reaches_the_fallback_session() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{HEAD}
[source]
paths = ["@ROOT/data/opencv-digits"]
order = "shuffled"
seed = 1
fps = 300.0
limit = 1000
loop = true
preload = true
[trigger]
drift = false
manual_signal = false
every_frames = 400
min_replay = 256
cooldown_frames = 100000000
[adapt]
steps = 20
[engine]
inference = "ort:cpu"
fallback = "tract"
retry_s = 0.5
[fault]
inference_errors = [[50, 1000000000]]
"#
    );
    let (cfg, path) = config(&text, tmp.path());
    // The stream loops until 300 frames were answered after the commit (or a bound passes).
    let (stop, watcher) = stop_when(tmp.path().join("predictions.jsonl"), "\"version\":1", 300);
    let summary = fieldtune_field::run(&cfg, &options(&path), Some(stop)).expect("run");
    watcher.join().unwrap();
    let lines = predictions(&tmp.path().join("predictions.jsonl"));
    answered_once(&lines, summary.frames);
    let ev = events(&cfg);
    assert_eq!(kinds(&ev, "engine_fallback").len(), 1);
    assert!(kinds(&ev, "engine_restored").is_empty());
    let committed = kinds(&ev, "committed");
    assert_eq!(
        committed.len(),
        1,
        "one round, committed: {:?}",
        kinds(&ev, "rolled_back")
    );
    assert_eq!(summary.final_version, 1);

    // Frames served after the commit (all on the fallback) are the committed weights'
    // answers, not the source weights'.
    let (model, images) = stream_images(&cfg);
    let (weights, _) = checkpoint::load(&cfg.state_dir.join("last-good.safetensors")).unwrap();
    let weights: HashMap<_, _> = weights.into_iter().collect();
    let after: Vec<&Line> = lines.iter().filter(|l| l.version == 1).collect();
    assert!(
        after.len() >= 300,
        "{} frames after the commit",
        after.len()
    );
    assert!(after.iter().all(|l| l.frame > 50));
    let imgs: Vec<_> = after
        .iter()
        .map(|l| images[l.frame as usize % images.len()].clone())
        .collect();
    let committed_classes = tract_classes(&model.with_params(&weights).unwrap(), &model, &imgs);
    let source_classes = tract_classes(&model.bytes, &model, &imgs);
    let live: Vec<usize> = after.iter().map(|l| l.class).collect();
    assert_eq!(
        live, committed_classes,
        "the fallback serves the committed weights"
    );
    assert_ne!(
        committed_classes, source_classes,
        "the check cannot tell the versions apart"
    );
}

fn small_stream(extra: &str, tmp: &Path) -> (RunConfig, std::path::PathBuf) {
    config(
        &format!(
            "{HEAD}[source]\npaths = [\"@ROOT/data/mnist\"]\nfps = 0.0\nlimit = 40\npreload = true\n{}{extra}",
            no_rounds()
        ),
        tmp,
    )
}

#[test]
fn a_missing_provider_fails_at_start_or_starts_on_tract_as_the_config_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, path) = small_stream(
        "[engine]\ninference = \"ort:cuda\"\nfallback = \"none\"\n",
        tmp.path(),
    );
    let err = fieldtune_field::run(&cfg, &options(&path), None)
        .expect_err("no CUDA here")
        .to_string();
    println!("{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains("engine.inference") && err.contains("CUDAExecutionProvider"),
        "{err}"
    );
    assert!(
        !tmp.path().join("predictions.jsonl").exists()
            || predictions(&tmp.path().join("predictions.jsonl")).is_empty()
    );

    let tmp = tempfile::tempdir().unwrap();
    let (cfg, path) = small_stream(
        "[engine]\ninference = \"ort:cuda\"\nfallback = \"tract\"\n",
        tmp.path(),
    );
    let summary = fieldtune_field::run(&cfg, &options(&path), None).expect("starts on tract");
    assert_eq!(summary.frames, 40);
    assert!(summary.engine.contains("tract"), "{}", summary.engine);
    let ev = events(&cfg);
    let fb = kinds(&ev, "engine_fallback");
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0].str("from"), Some("ort:cuda:0"));
    assert!(fb[0]
        .str("reason")
        .unwrap()
        .contains("CUDAExecutionProvider"));
    assert!(fb[0].u64("frame").is_none(), "at start: {:?}", fb[0]);
    // The fallback event comes before serving starts.
    let first_started = ev.iter().position(|e| e.event == "started").unwrap();
    let first_fb = ev
        .iter()
        .position(|e| e.event == "engine_fallback")
        .unwrap();
    assert!(first_fb < first_started);
}

#[test]
fn a_failed_train_step_rolls_back_and_the_next_round_trains_on_the_train_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{HEAD}
[source]
paths = ["@ROOT/data/opencv-digits"]
order = "shuffled"
seed = 2
fps = 300.0
limit = 1000
loop = true
preload = true
[trigger]
drift = false
manual_signal = false
every_frames = 300
min_replay = 256
cooldown_frames = 0
[adapt]
steps = 3
[engine]
inference = "ort:cpu"
train = "ort:cpu"
train_fallback = "tract"
[fault]
train_error_rounds = [1]
"#
    );
    let (cfg, path) = config(&text, tmp.path());
    // The stream loops until a second round ended (or a bound passes).
    let (stop, watcher) = stop_when(cfg.events_path(), "\"event\":\"round_ended\"", 2);
    fieldtune_field::run(&cfg, &options(&path), Some(stop)).expect("run");
    watcher.join().unwrap();
    let ev = events(&cfg);
    let ended = kinds(&ev, "round_ended");
    assert!(ended.len() >= 2, "{ended:?}");
    let err = ended[0].str("error").expect("round 1 failed with an error");
    assert!(err.contains("injected fault in round 1"), "{err}");
    let rolled = kinds(&ev, "rolled_back");
    assert!(rolled[0].fields["reasons"][0]
        .as_str()
        .unwrap()
        .contains("injected fault"));
    assert_eq!(rolled[0].u64("round"), Some(1));
    let fb = kinds(&ev, "engine_fallback");
    assert_eq!(fb.len(), 1, "{fb:?}");
    assert_eq!(fb[0].str("role"), Some("train"));
    assert_eq!(
        (fb[0].str("from"), fb[0].str("to")),
        (Some("ort:cpu"), Some("tract"))
    );
    assert_eq!(fb[0].u64("round"), Some(1));
    // Round 2 trained (on tract) and reached the gate.
    assert!(ended[1].str("error").is_none(), "{:?}", ended[1]);
    assert!(ended[1].fields.contains_key("gate"), "{:?}", ended[1]);
    // Serving never stopped: the live model stayed the source's through the failure.
    let lines = predictions(&tmp.path().join("predictions.jsonl"));
    answered_once(&lines, lines.len() as u64);
}

#[test]
fn missed_deadlines_in_a_row_move_serving_to_the_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    // Paced at 100 fps so that frames keep arriving after the retry interval: the frames
    // queued during the stalls are answered by tract (well inside 30 ms of the fallback), and
    // a later frame's probe of the primary restores it.
    let (cfg, path) = config(
        &format!(
            "{HEAD}[source]\npaths = [\"@ROOT/data/mnist\"]\nfps = 100.0\nlimit = 80\npreload = true\n{}{}",
            no_rounds(),
            "[engine]\ninference = \"ort:cpu\"\nfallback = \"tract\"\nretry_s = 0.03\ninference_deadline_ms = 20.0\ndeadline_misses = 3\n[fault]\ninference_stalls = [[10, 14]]\ninference_stall_ms = 80\n"
        ),
        tmp.path(),
    );
    let summary = fieldtune_field::run(&cfg, &options(&path), None).expect("run");
    let lines = predictions(&tmp.path().join("predictions.jsonl"));
    answered_once(&lines, 80);
    let ev = events(&cfg);
    let fb = kinds(&ev, "engine_fallback");
    assert!(!fb.is_empty());
    let reason = fb[0].str("reason").unwrap();
    assert!(reason.contains("deadline"), "{reason}");
    // Frames 10, 11, 12 were late (answered by the primary); the fallback takes frame 13.
    assert_eq!(fb[0].u64("frame"), Some(13), "{:?}", fb[0]);
    assert!(!kinds(&ev, "engine_restored").is_empty());
    assert!(summary.frames_by_engine.keys().any(|k| k.contains("tract")));
}

#[test]
fn gpu_keys_leave_a_cpu_run_as_it_is() {
    // gpu_memory_mb, trt_fp16 and trt_refit concern CUDA and TensorRT sessions only: a run on
    // ONNX Runtime's CPU provider starts and serves with them set, and no trt_engine event
    // appears. The cache bound still applies to the folder at start.
    let tmp = tempfile::tempdir().unwrap();
    let trt = tmp.path().join("trt");
    std::fs::create_dir_all(&trt).unwrap();
    std::fs::write(trt.join("old.engine"), vec![0u8; 3 << 20]).unwrap();
    let (cfg, path) = small_stream(
        &format!(
            "[engine]\ninference = \"ort:cpu\"\ntrain = \"ort:cpu\"\ngpu_memory_mb = 256\ntrt_fp16 = true\ntrt_refit = true\ntrt_cache = \"{}\"\ntrt_cache_max_mb = 1\n",
            trt.display()
        ),
        tmp.path(),
    );
    let summary = fieldtune_field::run(&cfg, &options(&path), None).expect("runs on the CPU");
    assert_eq!(summary.frames, 40);
    assert!(
        summary.engine.contains("ONNX Runtime"),
        "{}",
        summary.engine
    );
    answered_once(&predictions(&tmp.path().join("predictions.jsonl")), 40);
    let ev = events(&cfg);
    assert!(kinds(&ev, "trt_engine").is_empty());
    assert!(kinds(&ev, "engine_fallback").is_empty());
    assert!(!trt.join("old.engine").exists(), "over trt_cache_max_mb");
}
