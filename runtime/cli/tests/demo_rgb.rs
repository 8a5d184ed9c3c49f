//! `fieldtune demo --rgb`: TENT on MobileNetV2 over the shipped ImageNet photos
//! (data/imagenet-samples) lifts accuracy on the contrast shift on both engines, and the
//! adapted model still recognises the clean photos. Two steps instead of the demo's 20 keep
//! it short (most of the gain is TENT's test-batch statistics; docs/BENCHMARKS.md has the
//! 20-step figures).
//!
//! `--config FILE` runs another recipe in TENT's place: colorization (configs/rgb-colorize.toml)
//! trains on the RGB model and is refused on a grayscale one.
//!
//! Needs models/mobilenetv2/model.onnx (14 MB, not committed): `bash scripts/test.sh` exports
//! it, or `/usr/bin/python3 scripts/data/prepare_backbones.py --only mobilenetv2`.

use std::collections::HashMap;

mod common;
use common::{fieldtune, root, text};

/// Runs the demo on `engine` (with `extra` arguments) for two steps, checks that the loss term
/// `metric` fell and that the table names `method`, and returns its `result:` line as key ->
/// correct count.
fn demo(engine: &str, extra: &[&str], metric: &str, method: &str) -> HashMap<String, usize> {
    let onnx = root().join("models/mobilenetv2/model.onnx");
    assert!(
        onnx.is_file(),
        "{} is missing: export it with `/usr/bin/python3 scripts/data/prepare_backbones.py \
         --only mobilenetv2` (scripts/test.sh does)",
        onnx.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut args = vec![
        "--engine",
        engine,
        "demo",
        "--rgb",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = fieldtune(&args);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{engine}:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{method}, test-batch statistics (the result)")),
        "{stdout}"
    );
    assert!(out.join("model.onnx").is_file(), "{stdout}");
    // The steps really trained: the objective's loss term fell (the same photos each step).
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapt.json")).unwrap()).unwrap();
    let loss: Vec<f64> = log["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h[metric]
                .as_f64()
                .unwrap_or_else(|| panic!("{engine}: no {metric} in {h}"))
        })
        .collect();
    assert!(
        loss.len() == 2 && loss[1] < loss[0] && loss.iter().all(|l| l.is_finite()),
        "{engine}: {metric} {loss:?}"
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result: "))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    let mut r = HashMap::new();
    for kv in line.split(' ') {
        let (k, v) = kv.split_once('=').unwrap();
        if let Some((correct, count)) = v.split_once('/') {
            assert_eq!(count, "20", "{line}");
            r.insert(k.to_string(), correct.parse().unwrap());
        } else if k == "engine" {
            assert_eq!(v, engine, "{line}");
        } else if k == "method" {
            assert_eq!(v, method, "{line}");
        }
    }
    println!("{engine}: {line}");
    r
}

fn check(engine: &str) {
    let r = demo(engine, &[], "loss_entropy", "TENT");
    // The contrast shift breaks the source model (1/20); TENT brings accuracy back (11/20).
    assert!(r["before"] <= 5, "{engine}: {r:?}");
    assert!(r["after"] >= r["before"] + 4, "{engine}: {r:?}");
    assert!(r["after"] + 1 >= r["bn_only"], "{engine}: {r:?}");
    // The clean photos are still recognised (MobileNetV2 gets 18/20 of them).
    assert!(r["clean_before"] >= 16, "{engine}: {r:?}");
    assert!(r["clean_after"] + 2 >= r["clean_before"], "{engine}: {r:?}");
}

#[test]
fn rgb_demo_tent_lifts_the_contrast_shift_on_onnx_runtime() {
    check("ort");
}

#[test]
fn rgb_demo_tent_lifts_the_contrast_shift_on_tract() {
    check("tract");
}

/// configs/rgb-colorize.toml on the RGB demo: the decoder head and the BatchNorm affines train
/// (the chroma loss falls) and the clean photos keep their accuracy. The same file's colorize
/// section is refused on the grayscale MNIST CNN (all weights training: that CNN has no
/// BatchNorm), and the demo refuses a settings file that needs labeled anchors.
#[test]
fn rgb_demo_runs_colorize_from_a_config_and_refuses_it_on_grayscale() {
    let r = demo(
        "ort",
        &["--config", "configs/rgb-colorize.toml"],
        "loss_colorize",
        "rgb-colorize",
    );
    assert!(r["clean_before"] >= 16, "{r:?}");
    assert!(r["clean_after"] + 3 >= r["clean_before"], "{r:?}");

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gray");
    let o = fieldtune(&[
        "adapt",
        "--engine",
        "ort",
        "--config",
        "configs/rgb-colorize.toml",
        "--train",
        "all",
        "--model",
        "models/mnist-cnn",
        "--unlabeled",
        "data/opencv-digits",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("colorize needs an RGB model") && stderr.contains("has 1 channel"),
        "{stderr}"
    );
    assert!(!out.join("model.onnx").exists());

    let o = fieldtune(&[
        "demo",
        "--rgb",
        "--config",
        "configs/adapt-uda-im-jigsaw.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("configs/adapt-uda-im-jigsaw.toml")
            && stderr.contains("the RGB demo has none"),
        "{stderr}"
    );
}
