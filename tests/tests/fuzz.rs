//! Fuzz targets of the parsers and loaders that read user files, as bounded property tests on
//! the stable toolchain (harness: `fuzzing/mod.rs`). Each target runs a fixed number of seeded
//! cases in a child process under an address-space limit; a panic, a hang or an allocation
//! beyond the limit fails the test and writes the input under `target/tmp/fuzz-failures/`.
//!
//! Longer runs: `FIELDTUNE_FUZZ_CASES=100000 FIELDTUNE_FUZZ_SEED=7 cargo test ... --test fuzz`.

mod fuzzing;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fieldtune_adapt::model_dir::ModelDir;
use fieldtune_board_profile::{check_engines, compare, Host, Profile};
use fieldtune_field::config::Resize;
use fieldtune_field::preprocess::Preprocessor;
use fieldtune_field::source::RawFrame;
use fieldtune_field::store::{misfit, Store};
use fieldtune_field::RunConfig;
use fieldtune_frames::{decode_image, load_image, to_tensor, ModelConfig};
use fieldtune_graph::ir::Graph;
use fieldtune_graph::{
    compile_inference, compile_train_step, decode_model, encode_model, predict_graph, TrainSpec,
};
use fieldtune_tensor::Tensor;
use fuzzing::{formats, mutate, root, Target};

fn files(globs: &[(&str, &[&str])]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (dir, names) in globs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                names.iter().any(|want| {
                    want.strip_prefix('*')
                        .map_or(n == *want, |ext| n.ends_with(ext))
                })
            })
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

fn none() -> Vec<(String, Vec<u8>)> {
    Vec::new()
}

// --- ONNX: decode, IR, the compiler front end (inference, predict and train-step graphs),
// and the model loader for a bare .onnx file.

const ONNX: Target = Target {
    name: "onnx",
    cases: 30000,
    shipped: || {
        files(&[
            ("models/fmnist-cnn", &["model.onnx"]),
            ("models/resnet-tiny", &["model.onnx"]),
            ("tests/fixtures", &["*.onnx"]),
        ])
    },
    made: none,
    mutate: formats::onnx,
    run: |d, work| {
        let Ok(model) = decode_model(d, Path::new("model.onnx")) else {
            return;
        };
        let Ok(g) = Graph::from_model(&model) else {
            return;
        };
        let _ = encode_model(&g.to_model("fuzz"));
        if let (Some(i), Some(o)) = (g.inputs.first(), g.outputs.first()) {
            let _ = compile_inference(&model, &i.name, &o.name, 2);
            let _ = predict_graph(&model, &i.name, &o.name, 2, true, &HashSet::new());
            let spec = TrainSpec {
                input: i.name.clone(),
                output: o.name.clone(),
                batch_labeled: 2,
                batch_unlabeled: 2,
                ..Default::default()
            };
            let _ = compile_train_step(&model, &spec);
        }
        let p = work.join("bare.onnx");
        std::fs::write(&p, d).unwrap();
        let _ = ModelDir::open_path(&p, fieldtune_adapt::Normalisation::Raw);
    },
};

// --- model.toml: parse and validate; what parses prints and parses back to the same.

const MODEL_TOML: Target = Target {
    name: "model-toml",
    cases: 40000,
    shipped: || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
            .unwrap()
            .map(|e| e.unwrap().path().join("model.toml"))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    },
    made: none,
    mutate: mutate::toml_text,
    run: |d, _| {
        let text = String::from_utf8_lossy(d);
        if let Ok(cfg) = ModelConfig::from_toml_str(&text, "model.toml") {
            let printed = cfg.to_toml_string();
            let back = ModelConfig::from_toml_str(&printed, "model.toml")
                .unwrap_or_else(|e| panic!("a printed model.toml does not parse: {e}"));
            assert_eq!(back, cfg, "model.toml changed in a print and parse");
            let _ = (cfg.input_shape(), cfg.num_classes());
        }
    },
};

// --- The run config: parse, board defaults, validation, the round settings, the engine plan;
// what parses prints (`--print-config`) and parses back.

const RUN_CONFIG: Target = Target {
    name: "run-config",
    cases: 50000,
    shipped: || {
        let mut v = files(&[("configs", &["*.toml"])]);
        v.push(root().join("packaging/fieldtune.toml"));
        v
    },
    made: none,
    mutate: mutate::toml_text,
    run: |d, _| {
        let text = String::from_utf8_lossy(d);
        let p = Path::new("run.toml");
        if let Ok(cfg) = RunConfig::from_toml(&text, p) {
            let _ = cfg.adapt_config(p);
            let _ = cfg.engine_plan(p);
            if let Ok(printed) = cfg.to_toml(p) {
                RunConfig::from_toml(&printed, p)
                    .unwrap_or_else(|e| panic!("a printed run config does not parse: {e}"));
            }
        }
    },
};

// --- Board profiles: parse and validate, then the engine and host comparisons.

const BOARD_PROFILE: Target = Target {
    name: "board-profile",
    cases: 50000,
    shipped: || files(&[("boards/profiles", &["*.toml"])]),
    made: none,
    mutate: mutate::toml_text,
    run: |d, _| {
        let text = String::from_utf8_lossy(d);
        if let Ok(p) = Profile::from_toml(&text, "board.toml") {
            let _ = check_engines(&p, true, &["CPUExecutionProvider".to_string()]);
            let _ = compare(&p, &Host::default());
        }
    },
};

// --- Checkpoints: the safetensors codec, the checksum, the store's metadata and the checks
// against a model's parameters.

fn fmnist_params() -> &'static HashMap<String, Tensor> {
    static P: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    P.get_or_init(|| {
        let m = decode_model(
            &std::fs::read(root().join("models/fmnist-cnn/model.onnx")).unwrap(),
            Path::new("model.onnx"),
        )
        .unwrap();
        Graph::from_model(&m)
            .unwrap()
            .initializers
            .into_iter()
            .collect()
    })
}

/// The checkpoints the store writes: the source weights of a shipped model, and an adapted
/// commit over them.
fn made_checkpoints() -> Vec<(String, Vec<u8>)> {
    use fieldtune_field::store::CheckpointMeta;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-made-checkpoints-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let params = fmnist_params();
    let (st, _, _) = Store::open(&dir, "0".repeat(64).as_str(), params).unwrap();
    let mut adapted = params.clone();
    for t in adapted.values_mut() {
        if let Some(v) = t.as_f32_mut() {
            v.iter_mut().for_each(|x| *x *= 0.5);
        }
    }
    let meta = CheckpointMeta {
        version: 1,
        round: 3,
        step: 12,
        kind: "adapted".into(),
        model_sha256: "0".repeat(64),
        metrics: serde_json::json!({"anchor_accuracy": 0.9}),
        unix_ms: 1,
    };
    st.commit(&adapted, &meta).unwrap();
    drop(st);
    let out = ["source.safetensors", "last-good.safetensors"]
        .iter()
        .map(|n| (format!("made:{n}"), std::fs::read(dir.join(n)).unwrap()))
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    out
}

const CHECKPOINT: Target = Target {
    name: "checkpoint",
    cases: 15000,
    shipped: Vec::new,
    made: made_checkpoints,
    mutate: formats::safetensors,
    run: |d, work| {
        let _ = fieldtune_tensor::st::from_bytes(d);
        let p = work.join("last-good.safetensors");
        std::fs::write(&p, d).unwrap();
        if let Ok(s) = Store::inspect(work).read(&p) {
            let _ = misfit(&s, fmnist_params(), true);
            let _ = misfit(&s, fmnist_params(), false);
        }
    },
};

// --- Frames: decoding (PNG, JPEG), conversion and resizing to the model's input, the field's
// preprocessing and the normalised tensor.

fn frame_configs() -> [ModelConfig; 2] {
    let gray = ModelConfig {
        input: "input".into(),
        output: "logits".into(),
        channels: 1,
        height: 28,
        width: 28,
        mean: vec![0.5],
        std: vec![0.25],
        classes: vec!["a".into(), "b".into()],
    };
    let rgb = ModelConfig {
        channels: 3,
        height: 24,
        width: 40,
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
        ..gray.clone()
    };
    [gray, rgb]
}

const FRAMES: Target = Target {
    name: "frames",
    cases: 30000,
    shipped: || {
        let mut v = files(&[
            ("data/mnist/0", &["*.png"]),
            ("data/opencv-digits/7", &["*.png"]),
        ]);
        v.truncate(4);
        v
    },
    made: none,
    mutate: formats::image,
    run: |d, work| {
        let p = work.join("frame.png");
        std::fs::write(&p, d).unwrap();
        let Ok(img) = decode_image(&p) else {
            return;
        };
        for cfg in frame_configs() {
            if let Ok(x) = load_image(&p, &cfg) {
                let _ = to_tensor(&[&x], &cfg);
            }
            for resize in [Resize::Stretch, Resize::CenterCrop] {
                let pre = Preprocessor::new(&cfg, resize);
                let mut out = pre.blank();
                pre.apply(&RawFrame::of(&img, None), &mut out);
            }
        }
    },
};

const TARGETS: [&Target; 6] = [
    &ONNX,
    &MODEL_TOML,
    &RUN_CONFIG,
    &BOARD_PROFILE,
    &CHECKPOINT,
    &FRAMES,
];

/// The child process of every target (does nothing unless the harness started it).
#[test]
fn fuzz_child() {
    fuzzing::child(&TARGETS);
}

/// One test per target.
macro_rules! fuzz_tests {
    ($($test:ident: $target:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                fuzzing::fuzz(&$target);
            }
        )*
    };
}

fuzz_tests!(
    onnx: ONNX,
    model_toml: MODEL_TOML,
    run_config: RUN_CONFIG,
    board_profile: BOARD_PROFILE,
    checkpoint: CHECKPOINT,
    frames: FRAMES,
);
