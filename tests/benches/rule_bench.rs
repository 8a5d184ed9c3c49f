//! Micro benchmark of the depthwise weight-gradient forms on both engines: the regrouped Conv
//! (the portable train step's), per-tap sums, and the tuned steps' one-pass
//! `DepthwiseConvWgrad` kernel (an ai.fieldtune op); timings are printed, never asserted (the
//! whole-model train step is `fieldtune bench`); the forms must agree to 1e-3 relative.
//! Run: `cargo bench -p fieldtune-tests --bench rule_bench`

use std::time::Instant;

use fieldtune_graph::autodiff::{depthwise_weight_grad_taps, grouped_weight_grad_conv};
use fieldtune_graph::builder::Builder;
use fieldtune_graph::encode_model;
use fieldtune_graph::infer::ConvWindow;
use fieldtune_graph::ir::{attr, Elem};
use fieldtune_tensor::Tensor;
use fieldtune_tests::{engines, rel_l2, rng, uniform};

/// Median milliseconds of `runs` runs (after one warm-up) of the graph `b` builds, per
/// engine, and the first engine's output.
fn time(b: Builder, feeds: &[(&str, Tensor)], runs: usize) -> (Vec<(String, f64)>, Tensor) {
    let bytes = encode_model(&b.finish("bench").to_model("bench"));
    let mut out = Vec::new();
    let mut first = None;
    for engine in engines() {
        let mut s = engine.load(&bytes, "bench").expect("load");
        let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
        let y = s.run(&refs).expect("run");
        first.get_or_insert_with(|| y[0].1.clone());
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                s.run(&refs).expect("run");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        out.push((format!("{:?}", engine.kind()), ms[runs / 2]));
    }
    (out, first.expect("at least one engine"))
}

fn show(label: &str, a: &[(String, f64)], b: &[(String, f64)], k: &[(String, f64)]) {
    for (((e, x), (_, y)), (_, z)) in a.iter().zip(b).zip(k) {
        println!(
            "{label:<44} {e:<6} Conv {x:8.3} ms   taps {y:8.3} ms ({:.2}x)   kernel {z:8.3} ms ({:.2}x)",
            x / y,
            x / z
        );
    }
}

fn main() {
    // MobileNetV2 224x224's depthwise 3x3 layers at 16 images (channels, input side, stride).
    let layers = [
        (32, 112, 1),
        (96, 112, 2),
        (144, 56, 1),
        (144, 56, 2),
        (192, 28, 1),
        (384, 14, 1),
        (576, 14, 2),
        (960, 7, 1),
    ];
    let nb = 16;
    for (c, hw, s) in layers {
        let o = (hw + 2 - 3) / s + 1;
        let mut r = rng(c as u64);
        let x = uniform(&mut r, &[nb, c, hw, hw], -1.0, 1.0);
        let dy = uniform(&mut r, &[nb, c, o, o], -1.0, 1.0);
        let win = ConvWindow {
            kernel: vec![3, 3],
            strides: vec![s, s],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
        };
        let (xs, ws, ys) = ([nb, c, hw, hw], [c, 1, 3, 3], [nb, c, o, o]);
        let mut res = Vec::new();
        for form in 0..3 {
            let mut b = Builder::new(17);
            b.input("x", Elem::F32, &xs).unwrap();
            b.input("dy", Elem::F32, &ys).unwrap();
            let g = match form {
                0 => grouped_weight_grad_conv(&mut b, "x", "dy", &xs, &ws, &ys, &win, c).unwrap(),
                1 => depthwise_weight_grad_taps(&mut b, "x", "dy", &xs, &ws, &ys, &win).unwrap(),
                _ => {
                    let at = vec![
                        attr::ints("kernel_shape", &[3, 3]),
                        attr::ints("strides", &[s as i64, s as i64]),
                        attr::ints("dilations", &[1, 1]),
                        attr::ints("pads", &[1, 1, 1, 1]),
                    ];
                    b.fused("DepthwiseConvWgrad", &["x", "dy"], (None, 1), at)
                        .unwrap()
                        .swap_remove(0)
                }
            };
            b.output_as(&g, "dw").unwrap();
            res.push(time(b, &[("x", x.clone()), ("dy", dy.clone())], 7));
        }
        let label = format!("depthwise dW C={c} {hw}x{hw} stride {s}");
        let conv = &res[0].1;
        for (form, r) in ["taps", "kernel"].iter().zip(&res[1..]) {
            let rel = rel_l2(&r.1, conv, 1e-6);
            assert!(
                rel <= 1e-3,
                "{label}: {form} and Conv differ by {rel:.2e} (relative L2)"
            );
        }
        show(&label, &res[0].0, &res[1].0, &res[2].0);
    }
}
