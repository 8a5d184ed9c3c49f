//! `adapt --train bn` on a default (BatchNorm-folded) export, models/fmnist-cnn-folded, on both
//! engines: it trains a per-channel affine after each convolution and writes a model with the
//! input's graph (same nodes, same initializer names) whose weights moved.

use std::collections::HashSet;
use std::path::Path;

use fieldtune_graph::load_model;
use fieldtune_graph::proto::ModelProto;

mod common;
use common::{fieldtune, root, text};

/// The anchor images with their contrast squeezed into 100..140, as class folders.
fn low_contrast(dir: &Path) {
    let anchors = root().join("models/fmnist-cnn/anchors");
    for class in std::fs::read_dir(&anchors).unwrap() {
        let class = class.unwrap().path();
        let out = dir.join(class.file_name().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        for img in std::fs::read_dir(&class).unwrap() {
            let img = img.unwrap().path();
            let mut g = image::open(&img).unwrap().to_luma8();
            for p in g.pixels_mut() {
                p.0[0] = 100 + (p.0[0] as u32 * 40 / 255) as u8;
            }
            g.save(out.join(img.file_name().unwrap())).unwrap();
        }
    }
}

/// Each node's op and inputs, and the initializers' names and shapes.
type Structure = (Vec<(String, Vec<String>)>, HashSet<(String, Vec<i64>)>);

fn structure(m: &ModelProto) -> Structure {
    let g = m.graph.as_ref().unwrap();
    (
        g.node
            .iter()
            .map(|n| (n.op_type.clone(), n.input.clone()))
            .collect(),
        g.initializer
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone()))
            .collect(),
    )
}

#[test]
fn adapt_train_bn_on_a_folded_export_writes_the_inputs_graph_on_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("low-contrast");
    low_contrast(&data);
    let src = root().join("models/fmnist-cnn-folded/model.onnx");
    let source = load_model(&src).unwrap();
    for engine in ["ort", "tract"] {
        let out = tmp.path().join(engine);
        let args = [
            "adapt",
            "--model",
            "models/fmnist-cnn-folded",
            "--labeled",
            "models/fmnist-cnn/anchors",
            "--unlabeled",
            data.to_str().unwrap(),
            "--eval",
            data.to_str().unwrap(),
            "--train",
            "bn",
            "--steps",
            "4",
            "--batch",
            "16",
            "--lr",
            "0.003",
            "--engine",
            engine,
            "--out",
            out.to_str().unwrap(),
        ];
        let o = fieldtune(&args);
        let (stdout, err) = text(&o);
        assert!(o.status.success(), "{engine}:\n{stdout}\n{err}");
        let adapted = load_model(&out.join("model.onnx")).unwrap();
        assert_eq!(
            structure(&adapted),
            structure(&source),
            "{engine}: the adapted model's graph differs from the input's"
        );
        // The convolutions' weights moved (the affine was folded into them); fc did not train.
        let inits = |m: &ModelProto| {
            m.graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .map(|t| (t.name.clone(), t.raw_data.clone()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let (a, s) = (inits(&adapted), inits(&source));
        for (name, bytes) in &s {
            let moved = &a[name] != bytes;
            assert_eq!(
                moved,
                name.starts_with("onnx::Conv"),
                "{engine}: initializer {name} moved: {moved}"
            );
        }
        // The checkpoint keeps the trained affine itself (safetensors: u64 header size, JSON).
        let ck = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
        let n = u64::from_le_bytes(ck[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&ck[8..8 + n]);
        assert!(
            header.contains("onnx::Conv_36.affine_scale") && header.contains(".affine_shift"),
            "{engine}: checkpoint header: {header}"
        );
    }
}
