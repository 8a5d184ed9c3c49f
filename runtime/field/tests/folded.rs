//! The field runtime on a folded-BatchNorm export (models/fmnist-cnn-folded): its rounds train
//! the per-channel affine that `bn` inserts after each convolution, the checkpoint keeps that
//! affine, and the committed version that is served is the affine folded into the convolution
//! weights (`ModelDir::with_params`, whose graph tests/tests/affine.rs checks), on ONNX Runtime.

mod common;

use std::collections::HashMap;

use common::{config, events, kinds, options, stop_when};
use fieldtune_adapt::{checkpoint, predict, ModelDir};
use fieldtune_engine::{Engine, TractEngine};
use fieldtune_field::source::ImageFolderSource;
use fieldtune_frames::load_image;

#[test]
fn rounds_on_a_folded_export_train_the_affine_and_serve_it_folded() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, path) = config(
        r#"
model = "@ROOT/models/fmnist-cnn-folded"
anchors = "@ROOT/models/fmnist-cnn/anchors"
state_dir = "@TMP/state"
[output]
path = "@TMP/predictions.jsonl"
[pipeline]
when_full = "block"
output_queue = 8192
[source]
paths = ["@ROOT/models/fmnist-cnn/anchors"]
order = "shuffled"
seed = 1
fps = 300.0
loop = true
preload = true
[trigger]
drift = false
manual_signal = false
every_frames = 150
min_replay = 64
cooldown_frames = 100000000
[adapt]
trainable = "bn"
steps = 10
[engine]
inference = "ort:cpu"
"#,
        tmp.path(),
    );
    // The stream loops until 100 frames were answered after a commit (or a bound passes).
    let (stop, watcher) = stop_when(tmp.path().join("predictions.jsonl"), "\"version\":1", 100);
    let summary = fieldtune_field::run(&cfg, &options(&path), Some(stop)).expect("run");
    watcher.join().unwrap();
    let ev = events(&cfg);
    assert!(
        !kinds(&ev, "committed").is_empty(),
        "no round committed: {:?}",
        kinds(&ev, "rolled_back")
    );
    assert!(summary.final_version >= 1);

    // The checkpoint holds the trained affine, not convolution weights.
    let (weights, _) = checkpoint::load(&cfg.state_dir.join("last-good.safetensors")).unwrap();
    let weights: HashMap<_, _> = weights.into_iter().collect();
    assert!(
        weights.keys().all(|k| k.contains(".affine_s")) && weights.len() == 6,
        "{:?}",
        weights.keys()
    );
    // What version 1 served is that affine folded into the convolutions.
    let model = ModelDir::open(&cfg.model).unwrap();
    let bytes = model.with_params(&weights).unwrap();
    let order = ImageFolderSource::open(&cfg.source, &model.config.classes).unwrap();
    let images: Vec<_> = order
        .items()
        .iter()
        .map(|(p, _)| load_image(p, &model.config).unwrap())
        .collect();
    // (frame, class) of each frame version 1 answered (labels are class names here).
    let v1: Vec<(usize, usize)> = std::fs::read_to_string(tmp.path().join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["version"] == 1)
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap() as usize;
            (n("frame"), n("class_id"))
        })
        .collect();
    assert!(v1.len() >= 100, "{} frames of version 1", v1.len());
    let imgs: Vec<_> = v1
        .iter()
        .map(|(f, _)| images[f % images.len()].clone())
        .collect();
    let mut s = TractEngine::with_threads(1).load(&bytes, "check").unwrap();
    let want: Vec<usize> = predict(s.as_mut(), &model.config, &imgs, 500)
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    let live: Vec<usize> = v1.iter().map(|l| l.1).collect();
    assert_eq!(live, want, "version 1 serves the folded weights");
}
