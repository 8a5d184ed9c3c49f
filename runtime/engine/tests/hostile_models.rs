//! Models that declare inputs no frame or batch could fill: refused when loaded, naming the
//! model and the input, on both engines, instead of planning or allocating for them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fieldtune_engine::EngineError;

#[test]
fn a_huge_declared_input_is_refused_naming_the_model_and_the_input() {
    let huge = model_bytes(
        17,
        vec![node("Relu", &["image"], &["y"], vec![])],
        vec![vi("image", FLOAT, &[1, 1, 60000, 60000])],
        vec![vi("y", FLOAT, &[1, 1, 60000, 60000])],
        vec![],
        vec![],
    );
    // A symbolic batch counts as 1: a 2^40-element image is still refused.
    let symbolic = model_bytes(
        17,
        vec![node("Relu", &["image"], &["y"], vec![])],
        vec![vi("image", FLOAT, &[-1, 1, 1 << 20, 1 << 20])],
        vec![vi("y", FLOAT, &[-1, 1, 1 << 20, 1 << 20])],
        vec![],
        vec![],
    );
    for e in engines() {
        for (bytes, want) in [
            (&huge, "[1, 1, 60000, 60000]"),
            (&symbolic, "[?, 1, 1048576, 1048576]"),
        ] {
            let t0 = Instant::now();
            let err = match e.load(bytes, "models/huge/model.onnx") {
                Err(err @ EngineError::ModelLoad { .. }) => err.to_string(),
                Err(other) => panic!("{:?}: unexpected error {other}", e.kind()),
                Ok(_) => panic!("{:?}: loaded a {want} input", e.kind()),
            };
            assert!(
                err.contains("models/huge/model.onnx")
                    && err.contains("'image'")
                    && err.contains(want)
                    && err.contains("2^28"),
                "{:?}: {err}",
                e.kind()
            );
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", e.kind());
        }
    }
}
