//! Backbones (ccexam's USPS CNN, a ResNet-style network, torchvision's MobileNetV2 at 224x224,
//! a tiny torchvision vision transformer): the gradients of one compiled UDA train step, on ONNX Runtime and on tract,
//! against PyTorch autograd (scripts/reference/torch_reference_grad.py) on the same batch, for every
//! parameter, in the all-parameters, BatchNorm-affine-only and head-only modes, with
//! BatchNorm in train mode (batch statistics; running statistics checked too) and frozen.
//!
//! The reference computes in float64. Each gradient tensor must be within 1e-3 (relative
//! L2) of it, or, on a step where float32 arithmetic cannot get that close, within twice the
//! worst error of PyTorch's own float32 autograd on the same batch (MobileNetV2 at batch
//! 2/2/2: PyTorch float32 is up to 3.8e-3 off the float64 gradient in its first layers).
//!
//! The models come from scripts/data/prepare_backbones.py (.ci/run runs it; MobileNetV2's 14 MB
//! export is not committed).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fieldtune_graph::{
    compile_train_step, encode_model, inputs, load_model, BatchNormMode, Optimizer, TrainSpec,
    Trainable, UdaLoss,
};
use fieldtune_tensor::{st, Tensor};
use fieldtune_tests::{axpy, engines, reference_python, repo_root, rng, uniform};
use rand::Rng;

const TOL: f64 = 1e-3;

use fieldtune_tests::rel_l2 as rel;

fn norm(t: &Tensor) -> f64 {
    t.as_f32()
        .unwrap()
        .iter()
        .map(|y| (*y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn model_path(name: &str) -> std::path::PathBuf {
    let p = repo_root().join("models").join(name).join("model.onnx");
    assert!(
        p.exists(),
        "{} is missing: run /usr/bin/python3 scripts/data/prepare_backbones.py",
        p.display()
    );
    p
}

struct Case {
    trainable: Trainable,
    batchnorm: BatchNormMode,
    /// Entropy terms on (the weak view shares the gradient pass) or off (own pass).
    weak_trains: bool,
}

fn reference(
    model: &Path,
    spec: &TrainSpec,
    params: &[(String, Tensor)],
    batch: &[Tensor; 4],
    dir: &Path,
    float32: bool,
) -> HashMap<String, Tensor> {
    let mut case = BTreeMap::new();
    for (n, t) in params {
        case.insert(n.clone(), t.clone());
    }
    for (n, t) in [
        inputs::X_LABELED,
        inputs::Y_LABELED,
        inputs::X_WEAK,
        inputs::X_STRONG,
    ]
    .iter()
    .zip(batch)
    {
        case.insert(n.to_string(), t.clone());
    }
    let meta = HashMap::from([
        ("spec".to_string(), serde_json::to_string(spec).unwrap()),
        ("step".to_string(), "1".to_string()),
    ]);
    let (cp, rp) = (dir.join("case.safetensors"), dir.join("ref.safetensors"));
    std::fs::write(&cp, st::to_bytes(&case, &meta)).unwrap();
    let py = reference_python();
    let mut cmd = std::process::Command::new(&py);
    cmd.arg(repo_root().join("scripts/reference/torch_reference_grad.py"))
        .arg(model)
        .arg(&cp)
        .arg(&rp);
    if float32 {
        cmd.arg("--float32");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py} (install python3-torch python3-onnx): {e}"));
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (t, _) = st::from_bytes(&std::fs::read(&rp).unwrap()).unwrap();
    t.into_iter().collect()
}

/// The allowance of a deep ReLU6 network at a tiny batch (MobileNetV2 at 2/2/2): any float32
/// step, PyTorch's own included, puts some pre-activations within rounding of 0 or 6 on the
/// other side of the mask than float64 does, and each such element moves its tensor's
/// gradient by its full size. Which tensor is hit changes with the batch and with the order
/// of sums, so one tensor may be up to `tensor` off float64, while all gradients together
/// (relative L2 over every tensor) stay within `global`. Measured 2026-12-06 (docs/BENCHMARKS.md
/// "Engine-tuned train steps"): over 6 batches, the portable and tuned steps on both engines
/// were 2.9e-4 to 2.5e-3 off float64 in all gradients together (PyTorch float32 2.9e-4 to
/// 1.9e-3), their worst tensor 1.5e-3 to 6.1e-3, once 1.4e-2 (tuned, ONNX Runtime, one
/// BatchNorm scale, the step's global error 2.1e-3 against portable's 1.9e-3).
struct MaskFlips {
    tensor: f64,
    global: f64,
}

fn parity(name: &str, bl: usize, bu: usize, cases: &[Case], flips: Option<MaskFlips>) {
    let path = model_path(name);
    let model = load_model(&path).expect("model");
    let dir = std::env::temp_dir().join(format!("fieldtune-bb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes_all = None;
    for (ci, case) in cases.iter().enumerate() {
        let spec = TrainSpec {
            batch_labeled: bl,
            batch_unlabeled: bu,
            loss: UdaLoss {
                // Every unlabeled example contributes (random images are rarely confident).
                confidence_threshold: 0.0,
                entropy_weight: if case.weak_trains { 1.0 } else { 0.0 },
                diversity_weight: if case.weak_trains { 1.0 } else { 0.0 },
                ..UdaLoss::default()
            },
            optimizer: Optimizer::Sgd {
                momentum: 0.0,
                weight_decay: 0.0,
                nesterov: false,
            },
            trainable: case.trainable.clone(),
            batchnorm: case.batchnorm,
            emit_gradients: true,
            target: fieldtune_tests::suite_target(),
            ..TrainSpec::default()
        };
        let step = compile_train_step(&model, &spec).expect("compile");
        let convt = step
            .graph
            .nodes
            .iter()
            .filter(|n| n.op == "ConvTranspose")
            .count();
        eprintln!(
            "{name} {:?} bn {:?}: {} params, {} buffers, {} nodes ({convt} ConvTranspose), {:.3} GFLOP per step",
            case.trainable,
            case.batchnorm,
            step.params.len(),
            step.buffers.len(),
            step.graph.nodes.len(),
            step.flops as f64 / 1e9
        );
        match case.trainable {
            Trainable::All => nodes_all = Some(step.graph.nodes.len()),
            Trainable::Head => {
                // Nothing below the head trains: no gradient reaches a convolution.
                assert_eq!(convt, 0, "{name}: head-only step has convolution gradients");
                assert!(step.graph.nodes.len() < nodes_all.expect("all first"));
            }
            _ => {}
        }
        let [c, h, w] = step.image;
        let mut r = rng(11 + ci as u64);
        let xl = uniform(&mut r, &[bl, c, h, w], -1.5, 1.5);
        let yl = Tensor::i64(
            vec![bl],
            (0..bl)
                .map(|_| r.gen_range(0..step.classes as i64))
                .collect(),
        )
        .unwrap();
        let xw = uniform(&mut r, &[bu, c, h, w], -1.5, 1.5);
        let noise = uniform(&mut r, &[bu, c, h, w], -0.3, 0.3);
        let xs = axpy(&xw, &noise, 1.0);
        let batch = [xl, yl, xw, xs];
        let want = reference(&path, &spec, &step.params, &batch, &dir, false);
        let torch32 = reference(&path, &spec, &step.params, &batch, &dir, true);
        let bytes = encode_model(&step.to_model());
        if let Ok(d) = std::env::var("FIELDTUNE_DUMP") {
            std::fs::write(format!("{d}/{name}-{ci}.onnx"), &bytes).unwrap();
        }
        for engine in engines() {
            let mut s = engine.load(&bytes, "train-step").expect("load");
            let (lr, stp) = (Tensor::scalar_f32(0.0), Tensor::scalar_f32(1.0));
            let mut feeds: Vec<(&str, &Tensor)> = vec![
                (inputs::X_LABELED, &batch[0]),
                (inputs::Y_LABELED, &batch[1]),
                (inputs::X_WEAK, &batch[2]),
                (inputs::X_STRONG, &batch[3]),
                (inputs::LR, &lr),
                (inputs::STEP, &stp),
            ];
            for (n, t) in step.params.iter().chain(&step.state).chain(&step.buffers) {
                feeds.push((n, t));
            }
            let outs: HashMap<String, Tensor> = s.run(&feeds).expect("run").into_iter().collect();
            // Tensors whose true gradient is zero (a convolution bias right before a
            // batch-statistics BatchNorm) are compared against the whole gradient's scale.
            let total: f64 = step
                .params
                .iter()
                .map(|(p, _)| norm(&want[&format!("grad.{p}")]).powi(2))
                .sum::<f64>()
                .sqrt();
            let floor = 1e-3 * total;
            let errs: Vec<(&str, f64, f64)> = step
                .params
                .iter()
                .map(|(p, _)| {
                    let key = format!("grad.{p}");
                    (
                        p.as_str(),
                        rel(&outs[&key], &want[&key], floor),
                        rel(&torch32[&key], &want[&key], floor),
                    )
                })
                .collect();
            let worst = errs.iter().map(|e| e.1).fold(0.0, f64::max);
            let worst32 = errs.iter().map(|e| e.2).fold(0.0, f64::max);
            let mut bound = TOL.max(2.0 * worst32);
            if let Some(f) = &flips {
                bound = bound.max(f.tensor);
                let all = |o: &HashMap<String, Tensor>| {
                    let (mut d, mut n) = (0f64, 0f64);
                    for (p, _) in &step.params {
                        let k = format!("grad.{p}");
                        let (a, b) = (o[&k].as_f32().unwrap(), want[&k].as_f32().unwrap());
                        for (x, y) in a.iter().zip(b) {
                            d += ((x - y) as f64).powi(2);
                            n += (*y as f64).powi(2);
                        }
                    }
                    (d / n.max(1e-300)).sqrt()
                };
                let (g, g32) = (all(&outs), all(&torch32));
                eprintln!(
                    "  {:?}: all gradients {g:.2e} off float64 (PyTorch float32 {g32:.2e})",
                    engine.kind()
                );
                assert!(
                    g < f.global.max(2.0 * g32),
                    "{name} {:?} on {:?}: all gradients together are {g:.2e} off PyTorch's float64 gradient (bound {:.1e}; PyTorch float32 {g32:.2e})",
                    case.trainable,
                    engine.kind(),
                    f.global.max(2.0 * g32)
                );
            }
            for (p, e, e32) in &errs {
                assert!(
                    *e < bound,
                    "{name} {:?} {:?} on {:?}: gradient of {p} is {e:.2e} off PyTorch's float64 gradient (relative L2; bound {bound:.1e}; PyTorch float32 on this tensor: {e32:.2e})",
                    case.trainable,
                    case.batchnorm,
                    engine.kind()
                );
            }
            let stat_errs: Vec<(&str, f64, f64)> = step
                .buffers
                .iter()
                .map(|(b, _)| {
                    let key = format!("new.{b}");
                    (
                        b.as_str(),
                        rel(&outs[&key], &want[&key], 1e-6),
                        rel(&torch32[&key], &want[&key], 1e-6),
                    )
                })
                .collect();
            // The batch statistics of deep layers are ill-conditioned in float32 on random
            // inputs: PyTorch's own float32 step is up to ~2e-2 off float64 on MobileNetV2's
            // running means, and another float32 implementation (tract) lands up to ~2.2x that
            // (4.15e-2 vs 1.92e-2 on features.8.conv.0.1, measured 2026-11-29), while the
            // gradients of the same step stay within 1e-3. So the bound is a multiple of
            // PyTorch float32's own worst error, not of a fixed epsilon.
            let stat_bound = 1e-4f64.max(3.0 * stat_errs.iter().map(|e| e.2).fold(0.0, f64::max));
            for (b, e, e32) in &stat_errs {
                assert!(
                    *e < stat_bound,
                    "{name} on {:?}: running statistic {b} is {e:.2e} off PyTorch's float64 value (bound {stat_bound:.1e}; PyTorch float32: {e32:.2e})",
                    engine.kind()
                );
            }
            for m in &step.metrics {
                if let Some(t) = want.get(&format!("term.{m}")) {
                    let (a, b) = (outs[m].as_f32().unwrap()[0], t.as_f32().unwrap()[0]);
                    assert!(
                        (a - b).abs() / b.abs().max(1.0) < 1e-4,
                        "{name} on {:?}: {m} = {a}, PyTorch {b}",
                        engine.kind()
                    );
                }
            }
            eprintln!(
                "  {:?}: worst gradient relative difference to float64 {worst:.2e} over {} tensors (PyTorch float32: {worst32:.2e})",
                engine.kind(),
                step.params.len()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn modes() -> Vec<Case> {
    vec![
        Case {
            trainable: Trainable::All,
            batchnorm: BatchNormMode::Train,
            weak_trains: true,
        },
        Case {
            trainable: Trainable::Bn,
            batchnorm: BatchNormMode::Train,
            weak_trains: true,
        },
        Case {
            trainable: Trainable::Head,
            batchnorm: BatchNormMode::Train,
            weak_trains: true,
        },
        Case {
            trainable: Trainable::All,
            batchnorm: BatchNormMode::Frozen,
            weak_trains: false,
        },
    ]
}

#[test]
fn usps_cnn_matches_pytorch() {
    parity("usps-cnn", 4, 6, &modes(), None);
}

#[test]
fn resnet_tiny_matches_pytorch() {
    let mut m = modes();
    m.push(Case {
        trainable: Trainable::Last(2),
        batchnorm: BatchNormMode::Train,
        weak_trains: false,
    });
    parity("resnet-tiny", 3, 4, &m, None);
}

#[test]
fn mobilenetv2_224_matches_pytorch() {
    parity(
        "mobilenetv2",
        2,
        2,
        &modes()[..3],
        Some(MaskFlips {
            tensor: 2e-2,
            global: 3e-3,
        }),
    );
}

/// The cases of a model without BatchNorm: all parameters, the head, and the last two
/// parameter tensors.
fn no_batchnorm_cases() -> Vec<Case> {
    [Trainable::All, Trainable::Head, Trainable::Last(2)]
        .into_iter()
        .map(|trainable| Case {
            trainable,
            batchnorm: BatchNormMode::Train,
            weak_trains: true,
        })
        .collect()
}

/// A vision transformer (LayerNormalization, exact GELU, softmax attention, class token).
#[test]
fn vit_tiny_matches_pytorch() {
    parity("vit-tiny", 3, 4, &no_batchnorm_cases(), None);
}

/// A ConvNeXt (channel LayerNorm through Transpose, depthwise 7x7 convolutions, channels-last
/// Linear layers with exact GELU, per-channel layer scale).
#[test]
fn convnext_tiny_matches_pytorch() {
    parity("convnext-tiny", 3, 4, &no_batchnorm_cases(), None);
}
