//! Train-mode BatchNormalization: batch statistics, normalisation and the running-statistics
//! update in one kernel, and its backward with one pass over x and dy per channel.

use crate::{check, par, KernelError, Nc, Pool};

/// Where [`batch_norm_train`] writes: `y` like x; per channel the batch mean, `1 / sqrt(var +
/// eps)` (biased variance), and the next running mean and variance.
pub struct BnTrainOut<'a> {
    pub y: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub inv_std: &'a mut [f32],
    pub new_running_mean: &'a mut [f32],
    pub new_running_var: &'a mut [f32],
}

/// `(sum of f(v), sum of f(v)^2)` over channel `c`'s elements `v`, in f32 over runs of 64
/// elements (vectorisable) accumulated in f64.
fn sums(x: &[f32], d: Nc, c: usize, f: impl Fn(f32) -> f32) -> (f64, f64) {
    let (mut s1, mut s2) = (0f64, 0f64);
    for n in 0..d.n {
        let row = &x[(n * d.c + c) * d.s..][..d.s];
        for run in row.chunks(64) {
            let (mut a, mut b) = (0f32, 0f32);
            for &v in run {
                let t = f(v);
                a += t;
                b += t * t;
            }
            s1 += a as f64;
            s2 += b as f64;
        }
    }
    (s1, s2)
}

/// Per channel (mean, biased variance), in two passes: the mean, then the sums of `x - mean`
/// and its square (the corrected two-pass formula: the first sum takes out the rounding of
/// the mean). The one-pass form `E[t^2] - E[t]^2` cancels whenever the shift it subtracts is
/// far from the mean: with the channel's first element as shift, a padded corner of a
/// convolution's output several deviations away cost MobileNetV2 digits of its variances and
/// (ReLU6 masks flipping downstream) its gradients' agreement with float64.
fn moments(x: &[f32], d: Nc, c: usize) -> (f64, f64) {
    let cnt = d.count() as f64;
    let mean = sums(x, d, c, |v| v).0 / cnt;
    let mu = mean as f32;
    let (s1, s2) = sums(x, d, c, |v| v - mu);
    let m = s1 / cnt;
    (mu as f64 + m, (s2 / cnt - m * m).max(0.0))
}

/// PyTorch's `BatchNorm` in training mode (ONNX `momentum` convention):
/// `y = (x - mean) / sqrt(var + eps) * scale + bias` with the batch's mean and biased variance;
/// `running_mean' = running_mean * momentum + mean * (1 - momentum)` and
/// `running_var' = running_var * momentum + var * n / (n - 1) * (1 - momentum)` (unbiased).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    pool: &dyn Pool,
    x: &[f32],
    d: Nc,
    scale: &[f32],
    bias: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    momentum: f32,
    out: BnTrainOut<'_>,
) -> Result<(), KernelError> {
    check("x", x.len(), d.len())?;
    check("y", out.y.len(), d.len())?;
    for (what, len) in [
        ("scale", scale.len()),
        ("bias", bias.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
        ("mean", out.mean.len()),
        ("inv_std", out.inv_std.len()),
        ("new_running_mean", out.new_running_mean.len()),
        ("new_running_var", out.new_running_var.len()),
    ] {
        check(what, len, d.c)?;
    }
    if d.count() == 0 {
        return Err(KernelError("BatchNormTrain over an empty batch".into()));
    }
    let cnt = d.count();
    par::channels(pool, out.mean, out.new_running_var, d.len(), |c| {
        let (m, v) = moments(x, d, c);
        (m as f32, v as f32)
    });
    // new_running_var holds the biased batch variance until here.
    let unbiased = if cnt > 1 {
        cnt as f64 / (cnt - 1) as f64
    } else {
        1.0
    };
    let mo = momentum as f64;
    for c in 0..d.c {
        let var = out.new_running_var[c] as f64;
        out.inv_std[c] = (1.0 / (var + eps as f64).sqrt()) as f32;
        out.new_running_mean[c] =
            (running_mean[c] as f64 * mo + out.mean[c] as f64 * (1.0 - mo)) as f32;
        out.new_running_var[c] = (running_var[c] as f64 * mo + var * unbiased * (1.0 - mo)) as f32;
    }
    let (mean, inv_std) = (&*out.mean, &*out.inv_std);
    par::rows(pool, out.y, d.s, |r, row| {
        let c = r % d.c;
        // (x - mean) first: x * k + (bias - mean * k) cancels in f32 when the mean is large.
        let (k, mu, b) = (scale[c] * inv_std[c], mean[c], bias[c]);
        let xr = &x[r * d.s..][..d.s];
        for (y, &v) in row.iter_mut().zip(xr) {
            *y = (v - mu) * k + b;
        }
    });
    Ok(())
}

/// Where [`batch_norm_train_grad`] writes: `dx` like x, `dscale` and `dbias` per channel.
pub struct BnGradOut<'a> {
    pub dx: &'a mut [f32],
    pub dscale: &'a mut [f32],
    pub dbias: &'a mut [f32],
}

/// The backward of [`batch_norm_train`] (batch statistics, so the statistics' own gradients
/// are included): with `xhat = (x - mean) * inv_std` and `m` elements per channel,
/// `dbias = sum(dy)`, `dscale = sum(dy * xhat)` (one pass over x and dy per channel) and
/// `dx = scale * inv_std * (dy - dbias / m - xhat * dscale / m)`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_grad(
    pool: &dyn Pool,
    dy: &[f32],
    x: &[f32],
    d: Nc,
    scale: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    out: BnGradOut<'_>,
) -> Result<(), KernelError> {
    check("dy", dy.len(), d.len())?;
    check("x", x.len(), d.len())?;
    check("dx", out.dx.len(), d.len())?;
    for (what, len) in [
        ("scale", scale.len()),
        ("mean", mean.len()),
        ("inv_std", inv_std.len()),
        ("dscale", out.dscale.len()),
        ("dbias", out.dbias.len()),
    ] {
        check(what, len, d.c)?;
    }
    if d.count() == 0 {
        return Err(KernelError("BatchNormTrainGrad over an empty batch".into()));
    }
    par::channels(pool, out.dscale, out.dbias, 2 * d.len(), |c| {
        let (mut sdy, mut sdyx) = (0f64, 0f64);
        let mu = mean[c];
        for n in 0..d.n {
            let off = (n * d.c + c) * d.s;
            let (g, xr) = (&dy[off..][..d.s], &x[off..][..d.s]);
            for (gr, xr) in g.chunks(64).zip(xr.chunks(64)) {
                let (mut a, mut b) = (0f32, 0f32);
                for (&g, &v) in gr.iter().zip(xr) {
                    a += g;
                    b += g * (v - mu);
                }
                sdy += a as f64;
                sdyx += b as f64;
            }
        }
        ((sdyx * inv_std[c] as f64) as f32, sdy as f32)
    });
    let m = d.count() as f32;
    let (dscale, dbias) = (&*out.dscale, &*out.dbias);
    par::rows(pool, out.dx, d.s, |r, row| {
        let c = r % d.c;
        let (is, mu) = (inv_std[c], mean[c]);
        let k = scale[c] * is;
        let mb = dbias[c] / m;
        let ms = dscale[c] / m * is;
        let off = r * d.s;
        let (g, xr) = (&dy[off..][..d.s], &x[off..][..d.s]);
        for ((o, &g), &v) in row.iter_mut().zip(g).zip(xr) {
            *o = k * (g - mb - (v - mu) * ms);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests;
