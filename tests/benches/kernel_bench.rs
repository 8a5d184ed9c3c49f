//! Micro benchmark of the one-pass kernels of tuned train steps (`fieldtune-kernels`) on the
//! calling thread and on rayon's pool, at the sizes of the MNIST CNN's and MobileNetV2's
//! layers; median microseconds per call, printed as a table, never asserted (correctness is
//! the kernels' own tests and `gradcheck`). The `ClipGrad &&` row is the mask as it was
//! written before (`lo < y && y < hi`, whose branch keeps the loop from vectorising), kept
//! here to show what the branch-free `&` buys.
//! Run: `cargo bench -p fieldtune-tests --bench kernel_bench`

use std::hint::black_box;
use std::time::Instant;

use fieldtune_kernels::{
    batch_norm_train, batch_norm_train_grad, clip_grad, BnGradOut, BnTrainOut, Nc,
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

fn row(kernel: &str, shape: &str, elems: usize, us: f64) {
    let gbs = (elems * 4 * 3) as f64 / (us * 1e3);
    println!("{kernel:<24} {shape:<18} {elems:>10} {us:>12.2} {gbs:>10.2}");
}

fn main() {
    println!(
        "{:<24} {:<18} {:>10} {:>12} {:>10}",
        "kernel", "shape", "elements", "us/call", "GB/s @12B/el"
    );
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
            clip_grad(black_box(&dy), black_box(&y), 0.0, 6.0, &mut dx).unwrap();
            black_box(&dx);
        });
        row("ClipGrad", shape, len, us);
        let us = time(|| {
            clip_grad_short_circuit(black_box(&dy), black_box(&y), 0.0, 6.0, &mut dx);
            black_box(&dx);
        });
        row("ClipGrad && (before)", shape, len, us);
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
        let mut st = vec![vec![0f32; d.c]; 4];
        let us = time(|| {
            let [m, i, nm, nv] = &mut st[..] else {
                unreachable!()
            };
            batch_norm_train(
                &x,
                d,
                &scale,
                &bias,
                &rm,
                &rv,
                1e-5,
                0.9,
                BnTrainOut {
                    y: &mut y,
                    mean: m,
                    inv_std: i,
                    new_running_mean: nm,
                    new_running_var: nv,
                },
            )
            .unwrap();
            black_box(&y);
        });
        row("BatchNormTrain", shape, d.len(), us);
        let (mean, inv) = (st[0].clone(), st[1].clone());
        let mut dx = vec![0f32; d.len()];
        let (mut ds, mut db) = (vec![0f32; d.c], vec![0f32; d.c]);
        let us = time(|| {
            batch_norm_train_grad(
                &dy,
                &x,
                d,
                &scale,
                &mean,
                &inv,
                BnGradOut {
                    dx: &mut dx,
                    dscale: &mut ds,
                    dbias: &mut db,
                },
            )
            .unwrap();
            black_box(&dx);
        });
        row("BatchNormTrainGrad", shape, d.len(), us);
    }
}
