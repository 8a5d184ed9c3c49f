//! `fieldtune demo --rgb`: TENT on MobileNetV2 over the shipped ImageNet photos
//! (data/imagenet-samples) lifts accuracy on the contrast shift on both engines, and the
//! adapted model still recognises the clean photos. Two steps instead of the demo's 20 keep
//! it short (most of the gain is TENT's test-batch statistics; docs/BENCHMARKS.md has the
//! 20-step figures).
//!
//! Needs models/mobilenetv2/model.onnx (14 MB, not committed): `bash scripts/test.sh` exports
//! it, or `/usr/bin/python3 scripts/data/prepare_backbones.py --only mobilenetv2`.

use std::collections::HashMap;

mod common;
use common::{fieldtune, root, text};

/// Runs the demo on `engine` and returns its `result:` line as key -> correct count.
fn demo(engine: &str) -> HashMap<String, usize> {
    let onnx = root().join("models/mobilenetv2/model.onnx");
    assert!(
        onnx.is_file(),
        "{} is missing: export it with `/usr/bin/python3 scripts/data/prepare_backbones.py \
         --only mobilenetv2` (scripts/test.sh does)",
        onnx.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = fieldtune(&[
        "--engine",
        engine,
        "demo",
        "--rgb",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{engine}:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("TENT, test-batch statistics (the result)"),
        "{stdout}"
    );
    assert!(out.join("model.onnx").is_file(), "{stdout}");
    // The steps really trained: the prediction entropy fell.
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapt.json")).unwrap()).unwrap();
    let ent: Vec<f64> = log["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["loss_entropy"].as_f64().unwrap())
        .collect();
    assert!(
        ent.len() == 2 && ent[1] < ent[0],
        "{engine}: entropy {ent:?}"
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
        }
    }
    println!("{engine}: {line}");
    r
}

fn check(engine: &str) {
    let r = demo(engine);
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
