//! Exporters' deduplicated initializers: PyTorch writes equal tensors once and reads the
//! copies through Identity nodes (tests/fixtures/bn_shared.onnx, made by
//! tests/fixtures/bn_shared.py: three fresh BatchNorm2d layers whose scales, biases and
//! running statistics all collapse onto one all-ones and one all-zeros tensor). The compiled
//! train step must load and run on both engines and agree between them.

use std::collections::HashMap;

use fieldtune_graph::{
    compile_train_step, encode_model, inputs, load_model, BatchNormMode, Optimizer, TrainSpec,
    Trainable,
};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{engines, rel_l2, repo_root, rng, uniform};

fn step_outputs(spec: &TrainSpec) -> Vec<HashMap<String, Tensor>> {
    let model = load_model(&repo_root().join("tests/fixtures/bn_shared.onnx")).expect("model");
    let step = compile_train_step(&model, spec).expect("compile");
    let bytes = encode_model(&step.to_model());
    let (bl, bu) = (spec.batch_labeled, spec.batch_unlabeled);
    let mut r = rng(5);
    let xl = uniform(&mut r, &[bl, 1, 8, 8], -1.0, 1.0);
    let yl = Tensor::i64(vec![bl], (0..bl as i64).map(|i| i % 3).collect()).unwrap();
    let xw = uniform(&mut r, &[bu, 1, 8, 8], -1.0, 1.0);
    let xs = uniform(&mut r, &[bu, 1, 8, 8], -1.0, 1.0);
    let (lr, stp) = (Tensor::scalar_f32(0.1), Tensor::scalar_f32(1.0));
    let mut all = Vec::new();
    for engine in engines() {
        let mut s = engine
            .load(&bytes, "train-step")
            .unwrap_or_else(|e| panic!("load on {:?}: {e}", engine.kind()));
        let mut feeds: Vec<(&str, &Tensor)> = vec![
            (inputs::X_LABELED, &xl),
            (inputs::Y_LABELED, &yl),
            (inputs::X_WEAK, &xw),
            (inputs::X_STRONG, &xs),
            (inputs::LR, &lr),
            (inputs::STEP, &stp),
        ];
        for (n, t) in step.params.iter().chain(&step.state).chain(&step.buffers) {
            feeds.push((n, t));
        }
        let outs = s
            .run(&feeds)
            .unwrap_or_else(|e| panic!("run on {:?}: {e}", engine.kind()));
        all.push(outs.into_iter().collect());
    }
    all
}

#[test]
fn batchnorms_sharing_exporter_deduplicated_tensors_run_on_both_engines() {
    for (trainable, batchnorm) in [
        (Trainable::All, BatchNormMode::Train),
        (Trainable::Bn, BatchNormMode::Train),
        (Trainable::All, BatchNormMode::Frozen),
    ] {
        let spec = TrainSpec {
            batch_labeled: 2,
            batch_unlabeled: 3,
            trainable: trainable.clone(),
            batchnorm,
            // SGD: AdamW turns the float noise of the zero gradients of the convolution
            // biases before batch-statistics BatchNorms into lr-sized steps.
            optimizer: Optimizer::Sgd {
                momentum: 0.9,
                weight_decay: 0.0,
                nesterov: false,
            },
            ..TrainSpec::default()
        };
        if (&trainable, batchnorm) == (&Trainable::All, BatchNormMode::Train) {
            // Every deduplicated name is its own tensor, as in PyTorch: three scales and
            // biases train, three pairs of running statistics update.
            let model = load_model(&repo_root().join("tests/fixtures/bn_shared.onnx")).unwrap();
            let step = compile_train_step(&model, &spec).expect("compile");
            let params: Vec<&str> = step.params.iter().map(|p| p.0.as_str()).collect();
            for l in ["b1", "b2", "b3"] {
                assert!(
                    params.contains(&format!("{l}.weight").as_str()),
                    "{params:?}"
                );
                assert!(params.contains(&format!("{l}.bias").as_str()), "{params:?}");
            }
            assert_eq!(step.buffers.len(), 6, "{:?}", step.buffers);
            // The adapted model is written with each name as its own initializer.
            let updates: HashMap<String, Tensor> = step
                .params
                .iter()
                .chain(&step.buffers)
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect();
            let adapted = fieldtune_graph::with_initializers(&model, &updates).expect("write");
            let g = fieldtune_graph::Graph::from_model(&adapted).unwrap();
            assert!(g.nodes.iter().all(|n| n.op != "Identity"));
            assert!(g.initializers.iter().any(|(n, _)| n == "b3.running_var"));
        }
        let outs = step_outputs(&spec);
        let (ort, tract) = (&outs[0], &outs[1]);
        assert_eq!(ort.len(), tract.len());
        for (name, a) in ort {
            let b = &tract[name];
            let e = rel_l2(b, a, 1.0);
            assert!(
                e < 1e-4,
                "{trainable:?} {batchnorm:?}: output {name} differs between ONNX Runtime and tract by {e:.2e}"
            );
        }
    }
}
