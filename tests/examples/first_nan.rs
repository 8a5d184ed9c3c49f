//! Debug aid: runs the SGD train step on tract with every intermediate exposed and prints
//! the first node whose output holds a NaN.
use fieldtune_engine::{Engine, TractEngine};
use fieldtune_graph::ir::Io;
use fieldtune_graph::{
    compile_train_step, encode_model, load_model, Optimizer, TrainSpec, Tsa, UdaLoss,
};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{digit_batch, repo_root};

fn main() {
    let root = repo_root();
    let model = load_model(&root.join("models/mnist-cnn/model.onnx")).unwrap();
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
    let mut step = compile_train_step(&model, &spec).unwrap();
    let mut outs = Vec::new();
    for n in &step.graph.nodes {
        for o in &n.outputs {
            outs.push(o.clone());
        }
    }
    // expose every float intermediate (shape info is not needed by engines for outputs)
    let only: Vec<String> = std::env::args().skip(1).collect();
    for o in &outs {
        if !only.iter().any(|p| o.starts_with(p.as_str())) {
            continue;
        }
        if !step.graph.outputs.iter().any(|x| &x.name == o) {
            step.graph.outputs.push(Io {
                name: o.clone(),
                elem: fieldtune_graph::ir::Elem::F32,
                dims: vec![],
            });
        }
    }
    let bytes = encode_model(&step.to_model());
    let mut s = TractEngine::new().load(&bytes, "dbg").unwrap();
    let (xl, yl) = digit_batch(&root.join("models/mnist-cnn/anchors"), 16, 3);
    let (xw, _) = digit_batch(&root.join("data/opencv-digits"), 24, 5);
    let lr = Tensor::scalar_f32(1e-3);
    let st = Tensor::scalar_f32(1.0);
    let mut feeds: Vec<(String, Tensor)> = step.params.iter().chain(&step.state).cloned().collect();
    feeds.push(("x_labeled".into(), xl));
    feeds.push(("y_labeled".into(), yl));
    feeds.push(("x_weak".into(), xw.clone()));
    feeds.push(("x_strong".into(), xw));
    feeds.push(("lr".into(), lr));
    feeds.push(("step".into(), st));
    let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let res = s.run(&refs).unwrap();
    let map: std::collections::HashMap<_, _> = res.into_iter().collect();
    for n in &step.graph.nodes {
        for o in &n.outputs {
            if let Some(t) = map.get(o) {
                if let Some(v) = t.as_f32() {
                    if v.iter().any(|x| !x.is_finite()) {
                        println!(
                            "first non-finite: node {} ({}) inputs {:?} -> {o} {:?}",
                            n.name,
                            n.op,
                            n.inputs,
                            t.shape()
                        );
                        for i in &n.inputs {
                            if let Some(t) = map.get(i) {
                                println!(
                                    "  input {i}: {:?} {:?}",
                                    t.shape(),
                                    &t.as_f32().map(|v| &v[..v.len().min(8)])
                                );
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
    println!("no non-finite values in node outputs");
    for o in &step.graph.outputs {
        if let Some(v) = map.get(&o.name).and_then(|t| t.as_f32()) {
            if !o.name.starts_with("new.") {
                println!("{} = {:?}", o.name, &v[..v.len().min(4)]);
            }
        }
    }
}
