//! The kernels against the naive two-pass formulas in f64.

use super::*;
use crate::Rayon;

/// A deterministic pseudo-random sequence in [-1, 1) scaled and shifted.
fn data(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + shift
        })
        .collect()
}

struct Naive {
    mean: Vec<f64>,
    var: Vec<f64>,
}

fn naive_stats(x: &[f32], d: Nc) -> Naive {
    let m = d.count() as f64;
    let mut mean = vec![0f64; d.c];
    let mut var = vec![0f64; d.c];
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                mean[c] += x[(n * d.c + c) * d.s + s] as f64 / m;
            }
        }
    }
    for n in 0..d.n {
        for c in 0..d.c {
            for s in 0..d.s {
                let t = x[(n * d.c + c) * d.s + s] as f64 - mean[c];
                var[c] += t * t / m;
            }
        }
    }
    Naive { mean, var }
}

fn close(a: f32, b: f64, tol: f64, what: &str) {
    let err = (a as f64 - b).abs();
    assert!(
        err <= tol * (1.0 + b.abs()),
        "{what}: {a} vs {b} (error {err})"
    );
}

fn forward_case(d: Nc, shift: f32) {
    let x = data(d.len(), 1, 3.0, shift);
    let scale = data(d.c, 2, 1.0, 0.5);
    let bias = data(d.c, 3, 1.0, 0.0);
    let rm = data(d.c, 4, 1.0, 0.0);
    let rv = data(d.c, 5, 0.2, 1.0);
    let (eps, mo) = (1e-5f32, 0.9f32);
    let mut y = vec![0.0; d.len()];
    let (mut mean, mut inv, mut nm, mut nv) = (
        vec![0.0; d.c],
        vec![0.0; d.c],
        vec![0.0; d.c],
        vec![0.0; d.c],
    );
    batch_norm_train(
        &Rayon(None),
        &x,
        d,
        &scale,
        &bias,
        &rm,
        &rv,
        eps,
        mo,
        BnTrainOut {
            y: &mut y,
            mean: &mut mean,
            inv_std: &mut inv,
            new_running_mean: &mut nm,
            new_running_var: &mut nv,
        },
    )
    .unwrap();
    let nv_ = naive_stats(&x, d);
    let m = d.count() as f64;
    for c in 0..d.c {
        let is = 1.0 / (nv_.var[c] + eps as f64).sqrt();
        close(mean[c], nv_.mean[c], 1e-6, "mean");
        close(inv[c], is, 1e-5, "inv_std");
        close(
            nm[c],
            rm[c] as f64 * 0.9 + nv_.mean[c] * (1.0 - 0.9f32 as f64),
            1e-6,
            "running mean",
        );
        close(
            nv[c],
            rv[c] as f64 * 0.9 + nv_.var[c] * m / (m - 1.0) * (1.0 - 0.9f32 as f64),
            1e-5,
            "running var",
        );
        for n in 0..d.n {
            for s in 0..d.s {
                let i = (n * d.c + c) * d.s + s;
                let want = (x[i] as f64 - nv_.mean[c]) * is * scale[c] as f64 + bias[c] as f64;
                close(y[i], want, 2e-5, "y");
            }
        }
    }
}

#[test]
fn forward_matches_the_two_pass_formula_small_and_threaded() {
    forward_case(Nc { n: 3, c: 4, s: 5 }, 0.0);
    forward_case(
        Nc {
            n: 8,
            c: 16,
            s: 28 * 28,
        },
        0.3,
    );
    forward_case(Nc { n: 5, c: 3, s: 1 }, 0.0);
}

#[test]
fn variance_does_not_cancel_under_a_large_mean() {
    forward_case(Nc { n: 4, c: 2, s: 300 }, 1000.0);
}

/// The channel's first element far (here 100 deviations) below the others, as a padded
/// corner of a convolution's output can be: the variance keeps float precision. A one-pass
/// `E[t^2] - E[t]^2` shifted by the first element lost three digits here.
#[test]
fn variance_keeps_its_digits_when_the_first_element_is_far_from_the_mean() {
    let d = Nc {
        n: 2,
        c: 3,
        s: 1000,
    };
    let mut x = data(d.len(), 11, 0.01, 10.0);
    for c in 0..d.c {
        x[c * d.s] = 10.0 - 100.0 * 0.01 * (c + 1) as f32;
    }
    let mut y = vec![0.0; d.len()];
    let mut st = vec![vec![0.0; d.c]; 4];
    let [mean, inv, nm, nv] = &mut st[..] else {
        unreachable!()
    };
    let ones = vec![1.0; d.c];
    let zeros = vec![0.0; d.c];
    let eps = 1e-9;
    batch_norm_train(
        &Rayon(None),
        &x,
        d,
        &ones,
        &zeros,
        &zeros,
        &ones,
        eps,
        0.9,
        BnTrainOut {
            y: &mut y,
            mean,
            inv_std: inv,
            new_running_mean: nm,
            new_running_var: nv,
        },
    )
    .unwrap();
    let want = naive_stats(&x, d);
    for (c, (&got, var)) in inv.iter().zip(&want.var).enumerate() {
        let is = 1.0 / (var + eps as f64).sqrt();
        let err = (got as f64 - is).abs() / is;
        assert!(
            err < 1e-6,
            "channel {c}: inv_std {got} vs {is} (relative error {err:.1e})"
        );
    }
}

fn backward_case(d: Nc) {
    let x = data(d.len(), 7, 2.0, 0.4);
    let dy = data(d.len(), 8, 1.0, 0.1);
    let scale = data(d.c, 9, 1.0, 0.5);
    let st = naive_stats(&x, d);
    let eps = 1e-5f64;
    let mean: Vec<f32> = st.mean.iter().map(|&v| v as f32).collect();
    let inv: Vec<f32> = st
        .var
        .iter()
        .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
        .collect();
    let mut dx = vec![0.0; d.len()];
    let (mut ds, mut db) = (vec![0.0; d.c], vec![0.0; d.c]);
    batch_norm_train_grad(
        &Rayon(None),
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
    let m = d.count() as f64;
    for c in 0..d.c {
        let (mut sdy, mut sdyx) = (0f64, 0f64);
        let is = inv[c] as f64;
        let xh = |i: usize| (x[i] as f64 - mean[c] as f64) * is;
        for n in 0..d.n {
            for s in 0..d.s {
                let i = (n * d.c + c) * d.s + s;
                sdy += dy[i] as f64;
                sdyx += dy[i] as f64 * xh(i);
            }
        }
        close(db[c], sdy, 1e-5, "dbias");
        close(ds[c], sdyx, 1e-5, "dscale");
        for n in 0..d.n {
            for s in 0..d.s {
                let i = (n * d.c + c) * d.s + s;
                let want = scale[c] as f64 * is * (dy[i] as f64 - sdy / m - xh(i) * sdyx / m);
                close(dx[i], want, 1e-5, "dx");
            }
        }
    }
}

#[test]
fn backward_matches_the_formula_small_and_threaded() {
    backward_case(Nc { n: 2, c: 3, s: 4 });
    backward_case(Nc {
        n: 8,
        c: 32,
        s: 14 * 14,
    });
    backward_case(Nc { n: 6, c: 5, s: 1 });
}

#[test]
fn refuses_wrong_lengths_by_name() {
    let d = Nc { n: 2, c: 2, s: 2 };
    let x = vec![0.0; 8];
    let mut y = vec![0.0; 8];
    let mut v = [vec![0.0; 2], vec![0.0; 2], vec![0.0; 2], vec![0.0; 3]];
    let [a, b, c, e] = &mut v;
    let err = batch_norm_train(
        &Rayon(None),
        &x,
        d,
        &[1.0; 2],
        &[0.0; 2],
        &[0.0; 2],
        &[1.0; 2],
        1e-5,
        0.9,
        BnTrainOut {
            y: &mut y,
            mean: a,
            inv_std: b,
            new_running_mean: c,
            new_running_var: e,
        },
    )
    .unwrap_err();
    assert!(
        err.0.contains("new_running_var has 3 elements, expected 2"),
        "{err}"
    );
}
