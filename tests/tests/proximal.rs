//! FedProx's proximal term (`loss.proximal_mu`) in the compiled train step of the MNIST CNN,
//! on ONNX Runtime and tract, with the parameters fed away from the model's values `w0`:
//! each parameter's gradient gains exactly `mu * (w - w0)` and the loss `mu/2 * ||w - w0||^2`
//! (reported as `proximal`), and the gradients match central finite differences of the loss.
//! PyTorch parity of three steps with the term: tests/tests/torch_parity.rs.

use fieldtune_graph::{compile_train_step, encode_model, load_model, TrainSpec, UdaLoss};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{engines, repo_root, rng, step_feeds, uda_batch, uniform};

const MU: f32 = 0.7;

fn spec(mu: f32) -> TrainSpec {
    TrainSpec {
        batch_labeled: 4,
        batch_unlabeled: 2,
        // The anchors' cross-entropy only: no confidence masks, so the loss is smooth.
        loss: UdaLoss {
            consistency_weight: 0.0,
            entropy_weight: 0.0,
            diversity_weight: 0.0,
            proximal_mu: mu,
            ..UdaLoss::default()
        },
        emit_gradients: true,
        ..TrainSpec::default()
    }
}

fn scalar(outs: &[(String, Tensor)], name: &str) -> f64 {
    let t = &outs.iter().find(|(n, _)| n == name).expect(name).1;
    f64::from(t.as_f32().unwrap()[0])
}

fn out<'a>(outs: &'a [(String, Tensor)], name: &str) -> &'a [f32] {
    outs.iter()
        .find(|(n, _)| n == name)
        .expect(name)
        .1
        .as_f32()
        .unwrap()
}

fn shifted(t: &Tensor, v: &Tensor, s: f32) -> Tensor {
    let d: Vec<f32> = t
        .as_f32()
        .unwrap()
        .iter()
        .zip(v.as_f32().unwrap())
        .map(|(a, b)| a + s * b)
        .collect();
    Tensor::f32(t.shape().to_vec(), d).unwrap()
}

#[test]
fn proximal_gradient_is_exact_and_matches_finite_differences() {
    let model = load_model(&repo_root().join("models/mnist-cnn/model.onnx")).expect("model");
    let plain = compile_train_step(&model, &spec(0.0)).expect("compile");
    let prox = compile_train_step(&model, &spec(MU)).expect("compile");
    assert!(prox.metrics.iter().any(|m| m == "proximal"));
    assert!(!plain.metrics.iter().any(|m| m == "proximal"));
    let mut r = rng(3);
    let batch = uda_batch(4, 2, 1, &mut r);
    let (lr, k) = (Tensor::scalar_f32(1e-3), Tensor::scalar_f32(1.0));
    // w = w0 + delta: the local weights after some steps away from the server's.
    let w: Vec<(String, Tensor)> = prox
        .params
        .iter()
        .map(|(n, w0)| {
            (
                n.clone(),
                shifted(w0, &uniform(&mut r, w0.shape(), -0.05, 0.05), 1.0),
            )
        })
        .collect();
    let mut sq = 0.0f64;
    for ((_, a), (_, w0)) in w.iter().zip(&prox.params) {
        for (x, y) in a.as_f32().unwrap().iter().zip(w0.as_f32().unwrap()) {
            sq += f64::from(x - y).powi(2);
        }
    }
    for engine in engines() {
        let kind = engine.kind();
        let run = |step: &fieldtune_graph::TrainStep, over: Option<(&str, &Tensor)>| {
            let mut s = engine
                .load(&encode_model(&step.to_model()), "proximal step")
                .expect("load");
            let mut feeds = step_feeds(&batch, &lr, &k);
            for (n, t) in w.iter().chain(&step.state) {
                match over {
                    Some((o, v)) if o == n => feeds.push((n.as_str(), v)),
                    _ => feeds.push((n.as_str(), t)),
                }
            }
            s.run(&feeds).expect("run")
        };
        let (base, with) = (run(&plain, None), run(&prox, None));
        // The term's value, and the loss it joins.
        let term = scalar(&with, "proximal");
        let want = f64::from(MU) / 2.0 * sq;
        assert!(
            (term - want).abs() < 1e-4 * want,
            "{kind:?}: proximal {term}, expected {want}"
        );
        let dl = scalar(&with, "loss") - scalar(&base, "loss");
        assert!(
            (dl - want).abs() < 1e-4 * want + 1e-5,
            "{kind:?}: loss grew by {dl}, expected {want}"
        );
        // The gradient gains exactly mu * (w - w0), parameter by parameter.
        for ((name, wi), (_, w0)) in w.iter().zip(&prox.params) {
            let (g0, g1) = (
                out(&base, &format!("grad.{name}")),
                out(&with, &format!("grad.{name}")),
            );
            for (i, ((a, b), (x, y))) in g0
                .iter()
                .zip(g1)
                .zip(wi.as_f32().unwrap().iter().zip(w0.as_f32().unwrap()))
                .enumerate()
            {
                let expect = MU * (x - y);
                assert!(
                    (b - a - expect).abs() <= 1e-5 + 1e-4 * expect.abs(),
                    "{kind:?} {name}[{i}]: gradient grew by {}, mu * (w - w0) = {expect}",
                    b - a
                );
            }
        }
        // Directional derivatives of the loss against central differences.
        for (name, wi) in w.iter().filter(|(n, _)| n.ends_with("weight")).take(2) {
            let g = out(&with, &format!("grad.{name}"));
            let v = uniform(&mut rng(9), wi.shape(), -1.0, 1.0);
            let analytic: f64 = g
                .iter()
                .zip(v.as_f32().unwrap())
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let eps = 1e-2f32;
            let at = |s: f32| scalar(&run(&prox, Some((name, &shifted(wi, &v, s * eps)))), "loss");
            let fd = (at(1.0) - at(-1.0)) / (2.0 * f64::from(eps));
            let err = (analytic - fd).abs() / analytic.abs().max(fd.abs()).max(5e-2);
            assert!(
                err < 1e-2,
                "{kind:?} {name}: analytic {analytic}, numeric {fd}"
            );
        }
    }
}
