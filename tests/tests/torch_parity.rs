//! The whole MNIST CNN with the UDA loss: parameters after 3 optimizer steps of fieldtune's
//! compiled train step, on ONNX Runtime and on tract, against PyTorch autograd + torch.optim
//! (scripts/reference/torch_reference_step.py, Debian's python3-torch) on the same batches.
//! Also the per-channel affine that `--train bn` trains on a folded-BatchNorm export
//! (models/fmnist-cnn-folded), against conv weights frozen and a per-channel scale and shift
//! after each convolution trained by torch; and the pretext tasks (colorize on
//! models/resnet-tiny, an RGB model, with BatchNorm frozen as the reference runs it).

use std::collections::{BTreeMap, HashMap};

use fieldtune_engine::StatefulSession;
use fieldtune_graph::{
    compile_train_step, encode_model, inputs, jigsaw_permutations, load_model, BatchNormMode,
    Colorize, CorruptionTask, Cotta, FeatureConsistency, FeatureDistance, Inpaint, Jigsaw,
    MeanTeacher, Optimizer, PixelLoss, Rotation, TrainSpec, Trainable, Tsa, UdaLoss,
};
use fieldtune_tensor::{st, Tensor};
use fieldtune_tests::{
    engines, reference_python, rel_l2, repo_root, rgb_batch, rng, uda_batch, uniform,
};

const STEPS: usize = 3;
const LR: f32 = 1e-3;

fn norm_rel(a: &Tensor, b: &Tensor) -> f64 {
    rel_l2(a, b, 1e-12)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    a.as_f32()
        .unwrap()
        .iter()
        .zip(b.as_f32().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A step on `bl` anchors and `bu` unlabeled frames with the UDA terms of `loss`; tests add
/// their objective's settings to it.
fn uda_spec(bl: usize, bu: usize, loss: UdaLoss) -> TrainSpec {
    TrainSpec {
        batch_labeled: bl,
        batch_unlabeled: bu,
        loss,
        ..TrainSpec::default()
    }
}

/// The anchors' cross-entropy alone: UDA's unlabeled terms off.
fn anchor_ce() -> UdaLoss {
    UdaLoss {
        consistency_weight: 0.0,
        entropy_weight: 0.0,
        diversity_weight: 0.0,
        ..UdaLoss::default()
    }
}

/// No UDA term at all (the objective under test is the whole loss).
fn no_uda() -> UdaLoss {
    UdaLoss {
        ce_weight: 0.0,
        ..anchor_ce()
    }
}

fn sgd_momentum() -> Optimizer {
    Optimizer::Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    }
}

fn parity(spec: TrainSpec, label: &str) {
    parity_on(spec, label, engines())
}

fn parity_on(spec: TrainSpec, label: &str, engines: Vec<Box<dyn fieldtune_engine::Engine>>) {
    parity_of("models/mnist-cnn/model.onnx", spec, label, engines)
}

fn parity_of(
    model: &str,
    spec: TrainSpec,
    label: &str,
    engines: Vec<Box<dyn fieldtune_engine::Engine>>,
) {
    let root = repo_root();
    let model_path = root.join(model);
    let model = load_model(&model_path).expect("model");
    let spec = TrainSpec {
        target: fieldtune_tests::suite_target(),
        ..spec
    };
    let step = compile_train_step(&model, &spec).expect("compile");
    let bytes = encode_model(&step.to_model());

    // Real batches: labeled MNIST anchors, unlabeled OpenCV digits; the strong view is the
    // weak view plus noise (augmentation itself is not under test here).
    let mut r = rng(7);
    let mut batches = Vec::new();
    let mut aug_views = Vec::new();
    for k in 1..=STEPS {
        // (A labeled batch of one when the spec has none: it is neither fed nor written.)
        let bl = spec.batch_labeled.max(1);
        let [xl, yl, xw, xs] = match step.image {
            [3, side, _] => rgb_batch(bl, spec.batch_unlabeled, side as u32, k, &mut r),
            _ => uda_batch(bl, spec.batch_unlabeled, k, &mut r),
        };
        // CoTTA's augmented teacher views: the weak view plus noise, one per view.
        if let Some(ct) = &spec.cotta {
            let mut data = Vec::new();
            for _ in 0..ct.views {
                let noise = uniform(&mut r, xw.shape(), -0.3, 0.3);
                let w = xw.as_f32().unwrap();
                data.extend(w.iter().zip(noise.as_f32().unwrap()).map(|(a, n)| a + n));
            }
            let mut shape = xw.shape().to_vec();
            shape[0] *= ct.views;
            aug_views.push(Some(Tensor::f32(shape, data).unwrap()));
        } else {
            aug_views.push(None);
        }
        batches.push((xl, yl, xw, xs));
    }

    // PyTorch reference.
    let dir = std::env::temp_dir().join(format!("fieldtune-parity-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut case = BTreeMap::new();
    for (n, t) in &step.params {
        case.insert(n.clone(), t.clone());
    }
    if let Some(j) = &spec.jigsaw {
        let perms = jigsaw_permutations(spec.seed, j.permutations);
        let flat = perms.iter().flatten().map(|&t| t as i64).collect();
        let t = Tensor::i64(vec![perms.len(), 4], flat).unwrap();
        case.insert("jigsaw.permutations".into(), t);
    }
    for (k, (xl, yl, xw, xs)) in batches.iter().enumerate() {
        let k = k + 1;
        if spec.batch_labeled > 0 {
            case.insert(format!("x_labeled.{k}"), xl.clone());
            case.insert(format!("y_labeled.{k}"), yl.clone());
        }
        case.insert(format!("x_weak.{k}"), xw.clone());
        case.insert(format!("x_strong.{k}"), xs.clone());
        if let Some(xa) = &aug_views[k - 1] {
            case.insert(format!("x_teacher_aug.{k}"), xa.clone());
        }
    }
    let meta = HashMap::from([
        ("spec".to_string(), serde_json::to_string(&spec).unwrap()),
        ("lr".to_string(), LR.to_string()),
        ("steps".to_string(), STEPS.to_string()),
    ]);
    std::fs::write(dir.join("case.safetensors"), st::to_bytes(&case, &meta)).unwrap();
    let py = reference_python();
    let out = std::process::Command::new(&py)
        .arg(root.join("scripts/reference/torch_reference_step.py"))
        .arg(&model_path)
        .arg(dir.join("case.safetensors"))
        .arg(dir.join("ref.safetensors"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py} (install python3-torch python3-onnx): {e}"));
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (reference, _) =
        st::from_bytes(&std::fs::read(dir.join("ref.safetensors")).unwrap()).unwrap();
    // The numpy generator of the reference is fieldtune's, bit for bit.
    assert_eq!(
        reference["rng.check"].as_f32().unwrap(),
        fieldtune_graph::random::reference(11, "check", 5, 1000).as_slice(),
        "scripts/reference/rng.py differs from runtime/graph/src/random.rs"
    );

    for engine in engines {
        let session = engine.load(&bytes, "train-step").expect("load");
        let state: HashMap<String, Tensor> =
            step.params.iter().chain(&step.state).cloned().collect();
        let mut s = StatefulSession::new(session, state, step.loops()).expect("stateful");
        let metrics: Vec<&str> = step.metrics.iter().map(String::as_str).collect();
        for (k, (xl, yl, xw, xs)) in batches.iter().enumerate() {
            let k = k + 1;
            let (lr, stp) = (Tensor::scalar_f32(LR), Tensor::scalar_f32(k as f32));
            let mut feeds = vec![
                (inputs::X_LABELED, xl),
                (inputs::Y_LABELED, yl),
                (inputs::X_WEAK, xw),
                (inputs::X_STRONG, xs),
                (inputs::LR, &lr),
                (inputs::STEP, &stp),
            ];
            if let Some(xa) = &aug_views[k - 1] {
                feeds.push((inputs::X_TEACHER_AUG, xa));
            }
            if spec.batch_labeled == 0 {
                feeds.retain(|(n, _)| *n != inputs::X_LABELED && *n != inputs::Y_LABELED);
            }
            let vals = s.step(&feeds, &metrics).expect("step");
            for (name, v) in metrics.iter().zip(vals) {
                let ours = v.as_f32().unwrap()[0];
                let theirs = reference[&format!("term.{name}.{k}")].as_f32().unwrap()[0];
                let rel = (ours - theirs).abs() / theirs.abs().max(1.0);
                // Step 1 starts from identical parameters. Later steps start from parameters
                // that already differ in the last bits, and Adam amplifies that for gradient
                // elements near zero (m/sqrt(v) ~ sign(g)), so they get a looser bound.
                let tol = if k == 1 { 1e-4 } else { 1e-3 };
                assert!(
                    rel < tol,
                    "{label} {:?} step {k}: {name} = {ours}, PyTorch {theirs} (rel {rel:.2e})",
                    engine.kind()
                );
            }
        }
        let mut worst = 0.0f64;
        for (name, p0) in &step.params {
            let ours = s.state(name).unwrap();
            let theirs = &reference[name];
            let rel = norm_rel(ours, theirs);
            let upd = norm_rel(&sub(ours, p0), &sub(theirs, p0));
            let moved = norm_rel(theirs, p0);
            eprintln!(
                "{label} {:?} {name}: |p-p_ref|/|p_ref| = {rel:.2e}, update rel err = {upd:.2e}, max abs diff = {:.2e}, reference moved {moved:.2e}",
                engine.kind(),
                max_abs(ours, theirs)
            );
            assert!(
                rel < 1e-4,
                "{label} {:?} {name}: parameters differ from PyTorch by {rel:.2e} (relative, L2)",
                engine.kind()
            );
            assert!(upd < 1e-2, "{label} {:?} {name}: the 3-step update differs from PyTorch's by {upd:.2e} (relative, L2)", engine.kind());
            worst = worst.max(rel);
        }
        for (name, t0) in step.state.iter().filter(|(n, _)| n.starts_with("teacher.")) {
            // The copy of a parameter no gradient reaches (not in the case, so not in the
            // reference) loops unchanged.
            let Some(theirs) = reference.get(name) else {
                assert_eq!(s.state(name).unwrap(), t0, "{label}: {name} moved");
                continue;
            };
            let rel = norm_rel(s.state(name).unwrap(), theirs);
            assert!(
                rel < 1e-4,
                "{label} {:?} {name}: the mean teacher differs from PyTorch's by {rel:.2e}",
                engine.kind()
            );
            worst = worst.max(rel);
        }
        eprintln!(
            "{label} {:?}: worst parameter relative difference {worst:.2e}",
            engine.kind()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sub(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor::f32(
        a.shape().to_vec(),
        a.as_f32()
            .unwrap()
            .iter()
            .zip(b.as_f32().unwrap())
            .map(|(x, y)| x - y)
            .collect(),
    )
    .unwrap()
}

#[test]
fn adamw_uda_with_tsa_and_information_maximisation_matches_pytorch() {
    let spec = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        loss: UdaLoss {
            tsa: Tsa::Linear,
            tsa_steps: 4,
            ..UdaLoss::default()
        },
        optimizer: Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        ..TrainSpec::default()
    };
    parity(spec, "adamw");
}

#[test]
fn folded_batchnorm_affine_tent_and_uda_match_pytorch() {
    // TENT's objective (entropy only) and UDA with anchors, both on the affine parameters only.
    let tent = TrainSpec {
        batch_labeled: 0,
        batch_unlabeled: 32,
        trainable: Trainable::Bn,
        loss: UdaLoss {
            ce_weight: 0.0,
            consistency_weight: 0.0,
            diversity_weight: 0.0,
            ..UdaLoss::default()
        },
        ..TrainSpec::default()
    };
    let uda = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        trainable: Trainable::Bn,
        ..TrainSpec::default()
    };
    for (spec, label) in [(tent, "folded-tent"), (uda, "folded-uda")] {
        parity_of(
            "models/fmnist-cnn-folded/model.onnx",
            spec,
            label,
            engines(),
        );
    }
}

#[test]
fn sgd_nesterov_textbook_uda_matches_pytorch() {
    let spec = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        loss: UdaLoss {
            tsa: Tsa::Exp,
            tsa_steps: 3,
            entropy_weight: 0.0,
            diversity_weight: 0.0,
            ..UdaLoss::default()
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        ..TrainSpec::default()
    };
    parity(spec, "sgd");
}

#[test]
fn fedprox_proximal_term_matches_pytorch() {
    // SGD, whose update is linear in the gradient (Adam turns the near-zero gradients where
    // the term balances the loss into +-lr steps that amplify rounding), and a large mu: the
    // term (0 at step 1) adds mu * lr = 10% of step 1's gradient to step 2's.
    let spec = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        loss: UdaLoss {
            proximal_mu: 100.0,
            ..UdaLoss::default()
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        ..TrainSpec::default()
    };
    parity(spec, "fedprox");
}

#[test]
fn plain_sgd_uda_with_information_maximisation_matches_pytorch() {
    let spec = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        loss: UdaLoss {
            tsa: Tsa::Log,
            tsa_steps: 5,
            ..UdaLoss::default()
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        },
        ..TrainSpec::default()
    };
    parity(spec, "sgd-im");
}

#[test]
fn mean_teacher_with_fixmatch_pseudo_labels_matches_pytorch() {
    let spec = TrainSpec {
        batch_labeled: 16,
        batch_unlabeled: 24,
        loss: UdaLoss {
            pseudo_label_weight: 1.0,
            pseudo_label_threshold: 0.6,
            ..UdaLoss::default()
        },
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        },
        teacher: Some(MeanTeacher { ema: 0.9 }),
        ..TrainSpec::default()
    };
    parity(spec, "teacher");
}

/// CoTTA: augmentation-averaged mean-teacher targets (some examples above, some below the
/// confidence threshold), the soft cross-entropy, and stochastic restore with p = 0.3 (large,
/// so that a restore mask that differed from the numpy generator's would move many
/// elements), no labeled batch.
#[test]
fn cotta_with_stochastic_restore_matches_pytorch() {
    let spec = TrainSpec {
        optimizer: Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        teacher: Some(MeanTeacher { ema: 0.9 }),
        cotta: Some(Cotta {
            weight: 1.0,
            views: 3,
            confidence_threshold: 0.95,
            restore: 0.3,
        }),
        seed: 5,
        ..uda_spec(0, 24, no_uda())
    };
    // ONNX Runtime only: tract 0.23.9 panics while optimizing the restore streams of the
    // larger parameters (tests/tests/random.rs, large_stream_is_bit_identical_on_tract).
    parity_on(spec, "cotta", vec![Box::new(fieldtune_tests::ort())]);
}

/// Rotation prediction (test-time training's pretext task) with the labeled CE: the head on
/// the classifier's input (the default feature), trained with the whole backbone.
#[test]
fn rotation_prediction_with_labeled_ce_matches_pytorch() {
    let spec = TrainSpec {
        optimizer: sgd_momentum(),
        rotation: Some(Rotation {
            feature: None,
            weight: 0.5,
        }),
        seed: 3,
        ..uda_spec(16, 12, anchor_ce())
    };
    parity(spec, "rotation");
}

/// Feature consistency (cosine) on the pooled last conv map with the full UDA objective
/// (anchor CE, masked KL, information maximisation: the weak view is in the gradient pass).
/// SGD: with Adam the 3-step update of classifier.0.weight differs by ~2% (its near-zero
/// gradient elements, m/sqrt(v) ~ sign(g)), while the parameters agree to 6e-5.
#[test]
fn feature_consistency_with_uda_matches_pytorch() {
    let loss = UdaLoss {
        confidence_threshold: 0.2,
        ..UdaLoss::default()
    };
    let spec = TrainSpec {
        optimizer: Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: true,
        },
        feature_consistency: Some(FeatureConsistency {
            feature: Some("features.5.out".into()),
            weight: 2.0,
            distance: FeatureDistance::Cosine,
        }),
        ..uda_spec(8, 12, loss)
    };
    parity(spec, "feature-consistency-uda");
}

/// Feature consistency (L2 of unit rows) on the classifier's input alone with a mean teacher
/// giving the weak-view features, SGD, no anchors.
#[test]
fn feature_consistency_l2_with_teacher_matches_pytorch() {
    let spec = TrainSpec {
        optimizer: sgd_momentum(),
        teacher: Some(MeanTeacher { ema: 0.9 }),
        feature_consistency: Some(FeatureConsistency {
            feature: None,
            weight: 1.0,
            distance: FeatureDistance::L2,
        }),
        ..uda_spec(0, 12, no_uda())
    };
    parity(spec, "feature-consistency-l2");
}

/// Jigsaw puzzles (5 permutations over a batch of 12: uneven groups) with the labeled CE, the
/// head on the classifier's input, trained with the whole backbone.
#[test]
fn jigsaw_with_labeled_ce_matches_pytorch() {
    let spec = TrainSpec {
        jigsaw: Some(Jigsaw {
            feature: None,
            weight: 0.5,
            permutations: 5,
        }),
        seed: 9,
        ..uda_spec(8, 12, anchor_ce())
    };
    parity(spec, "jigsaw");
}

/// Corrupted-image classification (all five corruptions and none, batch 14: uneven groups)
/// with the labeled CE, the head on the classifier's input; the noise is drawn in the graph
/// per step, the reference draws the same stream.
#[test]
fn corruption_with_labeled_ce_matches_pytorch() {
    let spec = TrainSpec {
        corruption: Some(CorruptionTask {
            weight: 0.5,
            ..CorruptionTask::default()
        }),
        seed: 4,
        ..uda_spec(8, 14, anchor_ce())
    };
    parity(spec, "corruption");
}

/// Masked inpainting with the full UDA objective (anchor CE, masked KL, information
/// maximisation), L2 on the masked pixels, the decoder on the default map (features.5.out,
/// 7x7: depth-to-space by 4); the mask is drawn in the graph per step, the reference draws the
/// same stream.
#[test]
fn inpaint_with_uda_matches_pytorch() {
    let loss = UdaLoss {
        confidence_threshold: 0.2,
        ..UdaLoss::default()
    };
    let spec = TrainSpec {
        optimizer: sgd_momentum(),
        inpaint: Some(Inpaint {
            weight: 2.0,
            ..Inpaint::default()
        }),
        seed: 6,
        ..uda_spec(8, 12, loss)
    };
    parity(spec, "inpaint-uda");
}

/// Inpainting alone (no anchors), L1, 7-pixel patches with ratio 0.3, the decoder on a named
/// 14x14 map (depth-to-space by 2), AdamW.
#[test]
fn inpaint_l1_alone_on_a_named_map_matches_pytorch() {
    let spec = TrainSpec {
        inpaint: Some(Inpaint {
            feature: Some("features.2.out".into()),
            weight: 1.0,
            patch: 7,
            ratio: 0.3,
            loss: PixelLoss::L1,
        }),
        seed: 2,
        ..uda_spec(0, 12, no_uda())
    };
    parity(spec, "inpaint-l1");
}

/// Colorization on an RGB model (models/resnet-tiny, 32x32, photos of
/// data/imagenet-samples) with the full UDA objective, the decoder on the default map (the
/// last 8x8 block output); BatchNorm frozen (running statistics), as the reference runs it.
#[test]
fn colorize_with_uda_on_an_rgb_model_matches_pytorch() {
    let loss = UdaLoss {
        confidence_threshold: 0.0,
        ..UdaLoss::default()
    };
    let spec = TrainSpec {
        optimizer: sgd_momentum(),
        batchnorm: BatchNormMode::Frozen,
        colorize: Some(Colorize {
            weight: 0.5,
            ..Colorize::default()
        }),
        seed: 8,
        ..uda_spec(4, 6, loss)
    };
    parity_of(
        "models/resnet-tiny/model.onnx",
        spec,
        "colorize-uda",
        engines(),
    );
}

/// Colorization alone (no anchors), L1, AdamW, on resnet-tiny.
#[test]
fn colorize_l1_alone_matches_pytorch() {
    let spec = TrainSpec {
        batchnorm: BatchNormMode::Frozen,
        colorize: Some(Colorize {
            feature: None,
            weight: 1.0,
            loss: PixelLoss::L1,
        }),
        ..uda_spec(0, 6, no_uda())
    };
    parity_of(
        "models/resnet-tiny/model.onnx",
        spec,
        "colorize-l1",
        engines(),
    );
}
