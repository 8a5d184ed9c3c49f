//! Micro benchmark of the one-pass kernels of tuned train steps (`fieldtune-kernels`) on the
//! calling thread (`threads` 1) and on a rayon pool of one thread per core, at the sizes of the MNIST CNN's and MobileNetV2's
//! layers; median microseconds per call, printed as a table, never asserted (correctness is
//! the kernels' own tests and `gradcheck`). The `ClipGrad &&` row is the mask as it was
//! written before (`lo < y && y < hi`, whose branch keeps the loop from vectorising), kept
//! here to show what the branch-free `&` buys.
//! Run: `cargo bench -p fieldtune-tests --bench kernel_bench`

use std::hint::black_box;
use std::time::Instant;

use fieldtune_kernels::{
    batch_norm_train, batch_norm_train_grad, clip_grad, depthwise_conv_wgrad, max_pool_grad,
    BnGradOut, BnTrainOut, DwShape, DwWindow, Nc, Pool, Rayon, Serial,
};

/// Median microseconds per call of `f`, over 15 batches sized to take about 20 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut calibrate = 0usize;
    while t.elapsed().as_secs_f64() < 0.005 {
        f();
        calibrate += 1;
    }
    let per_batch = (calibrate * 4).max(1);
    let mut us: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    us.sort_by(f64::total_cmp);
    us[us.len() / 2]
}

/// A deterministic sequence in [-scale, scale) plus `shift`.
fn data(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + shift
        })
        .collect()
}

/// The ClipGrad mask as first written: short-circuit `&&`, one branch per element.
fn clip_grad_short_circuit(dy: &[f32], y: &[f32], lo: f32, hi: f32, dx: &mut [f32]) {
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *o = if v > lo && v < hi { g } else { 0.0 };
    }
}

fn row(kernel: &str, threads: usize, shape: &str, elems: usize, us: f64) {
    println!(
        "{kernel:<22} {threads:>7} {shape:<16} {elems:>10} {us:>12.2} {:>8.2}",
        elems as f64 / us / 1e3
    );
}

fn main() {
    println!(
        "{:<22} {:>7} {:<16} {:>10} {:>12} {:>8}",
        "kernel", "threads", "shape", "elements", "us/call", "Gelem/s"
    );
    let rayon = Rayon(None);
    let pools: [&dyn Pool; 2] = [&Serial, &rayon];
    // ReLU6 masks: a small one (where the old `&&` was measured), MNIST's conv outputs at
    // batch 160, MobileNetV2's block-3 expansion at batch 24.
    for (shape, len) in [
        ("4096", 4096usize),
        ("160x32x28x28", 160 * 32 * 28 * 28),
        ("24x144x56x56", 24 * 144 * 56 * 56),
    ] {
        let y = data(len, 1, 4.0, 3.0);
        let dy = data(len, 2, 1.0, 0.0);
        let mut dx = vec![0f32; len];
        let us = time(|| {
            clip_grad_short_circuit(black_box(&dy), black_box(&y), 0.0, 6.0, &mut dx);
            black_box(&dx);
        });
        row("ClipGrad && (before)", 1, shape, len, us);
        for p in pools {
            let us = time(|| {
                clip_grad(p, black_box(&dy), black_box(&y), 0.0, 6.0, &mut dx).unwrap();
                black_box(&dx);
            });
            row("ClipGrad", p.threads(), shape, len, us);
        }
    }
    for (shape, d) in [
        (
            "32x16x24x24",
            Nc {
                n: 32,
                c: 16,
                s: 24 * 24,
            },
        ),
        (
            "24x144x56x56",
            Nc {
                n: 24,
                c: 144,
                s: 56 * 56,
            },
        ),
        (
            "24x960x7x7",
            Nc {
                n: 24,
                c: 960,
                s: 7 * 7,
            },
        ),
    ] {
        let x = data(d.len(), 3, 2.0, 0.5);
        let dy = data(d.len(), 4, 1.0, 0.0);
        let (scale, bias) = (data(d.c, 5, 0.5, 1.0), data(d.c, 6, 0.5, 0.0));
        let (rm, rv) = (vec![0f32; d.c], vec![1f32; d.c]);
        let mut y = vec![0f32; d.len()];
        let (mut mean, mut inv) = (vec![0f32; d.c], vec![0f32; d.c]);
        let (mut nm, mut nv) = (vec![0f32; d.c], vec![0f32; d.c]);
        let mut dx = vec![0f32; d.len()];
        let (mut ds, mut db) = (vec![0f32; d.c], vec![0f32; d.c]);
        for p in pools {
            let us = time(|| {
                let out = BnTrainOut {
                    y: &mut y,
                    mean: &mut mean,
                    inv_std: &mut inv,
                    new_running_mean: &mut nm,
                    new_running_var: &mut nv,
                };
                batch_norm_train(p, &x, d, &scale, &bias, &rm, &rv, 1e-5, 0.9, out).unwrap();
                black_box(&y);
            });
            row("BatchNormTrain", p.threads(), shape, d.len(), us);
            let us = time(|| {
                let out = BnGradOut {
                    dx: &mut dx,
                    dscale: &mut ds,
                    dbias: &mut db,
                };
                batch_norm_train_grad(p, &dy, &x, d, &scale, &mean, &inv, out).unwrap();
                black_box(&dx);
            });
            row("BatchNormTrainGrad", p.threads(), shape, d.len(), us);
        }
    }
    // MaxPool 2x2/2 backward: the MNIST CNN's two pools at batch 160 (ONNX Runtime's
    // whole-tensor indices; every window's first cell).
    for (shape, d, w) in [
        (
            "160x32x28x28",
            Nc {
                n: 160,
                c: 32,
                s: 28 * 28,
            },
            28usize,
        ),
        (
            "160x64x14x14",
            Nc {
                n: 160,
                c: 64,
                s: 14 * 14,
            },
            14,
        ),
    ] {
        let (oh, ow) = (d.s / w / 2, w / 2);
        let indices: Vec<i64> = (0..d.n * d.c)
            .flat_map(|r| {
                (0..oh * ow).map(move |j| (r * d.s + (j / ow) * 2 * w + (j % ow) * 2) as i64)
            })
            .collect();
        let dy = data(indices.len(), 7, 1.0, 0.0);
        let mut dx = vec![0f32; d.len()];
        for p in pools {
            let us = time(|| {
                max_pool_grad(p, black_box(&dy), &indices, d, oh * ow, &mut dx).unwrap();
                black_box(&dx);
            });
            row("MaxPoolGrad", p.threads(), shape, d.len(), us);
        }
    }
    // Depthwise 3x3 weight gradients: MobileNetV2's largest depthwise layers at batch 8
    // (elements: x's). The graph forms they replace are `rule_bench`'s.
    for (shape, c, hw, stride) in [
        ("8x144x56x56 s1", 144, 56usize, 1usize),
        ("8x96x112x112 s2", 96, 112, 2),
        ("8x32x112x112 s1", 32, 112, 1),
    ] {
        let o = (hw + 2 - 3) / stride + 1;
        let d = DwShape {
            n: 8,
            c,
            input: [hw, hw],
            output: [o, o],
        };
        let win = DwWindow {
            kernel: [3, 3],
            strides: [stride; 2],
            dilations: [1, 1],
            pads: [1, 1],
        };
        let x = data(8 * c * hw * hw, 9, 1.0, 0.0);
        let dy = data(8 * c * o * o, 10, 1.0, 0.0);
        let mut dw = vec![0f32; c * 9];
        for p in pools {
            let us = time(|| {
                depthwise_conv_wgrad(p, black_box(&x), black_box(&dy), d, win, &mut dw).unwrap();
                black_box(&dw);
            });
            row("DepthwiseConvWgrad", p.threads(), shape, x.len(), us);
        }
    }
}
