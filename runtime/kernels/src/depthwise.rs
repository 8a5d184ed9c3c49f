//! The weight gradient of a 2-D depthwise convolution (one filter per channel, multiplier 1)
//! in one pass over x and dy per channel: each task owns whole channels of dW, and sums every
//! kernel tap of its channel plane by plane while the plane is in cache.

use crate::{check, par, KernelError, Pool};

/// The window of a 2-D depthwise convolution: kernel, strides and dilations per spatial axis
/// (height, width), and the begin pads (top, left). The end pads need not be given: dy's
/// size says which output positions exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwWindow {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 2],
}

/// The shapes of one depthwise weight gradient: x `[N, C, H, W]`, dy `[N, C, OH, OW]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwShape {
    pub n: usize,
    pub c: usize,
    /// x's spatial size (H, W).
    pub input: [usize; 2],
    /// dy's spatial size (OH, OW).
    pub output: [usize; 2],
}

/// Taps summed at once per channel (one f64 accumulator each, on the stack): a 3x3 or 4x4
/// kernel in one sweep of the channel's planes, larger kernels in several.
const TAP_BLOCK: usize = 16;

/// `dw[c, 0, i, j] = sum over n, oy, ox of dy[n, c, oy, ox] * x[n, c, oy * sy - py + i * dy_,
/// ox * sx - px + j * dx_]` (zero outside x), for every channel `c` and kernel tap `(i, j)`:
/// the weight gradient of a depthwise convolution (group = C in = C out). dw is `[C, 1, KH,
/// KW]`. Each output row of a tap is summed in f32 (vectorisable), rows accumulate in f64.
/// Channels are split across the pool's threads.
pub fn depthwise_conv_wgrad(
    pool: &dyn Pool,
    x: &[f32],
    dy: &[f32],
    d: DwShape,
    win: DwWindow,
    dw: &mut [f32],
) -> Result<(), KernelError> {
    let [h, w] = d.input;
    let [oh, ow] = d.output;
    let kk = win.kernel[0] * win.kernel[1];
    if win.strides.contains(&0) || win.dilations.contains(&0) {
        return Err(KernelError(format!(
            "strides {:?} and dilations {:?} must be at least 1",
            win.strides, win.dilations
        )));
    }
    check("x", x.len(), d.n * d.c * h * w)?;
    check("dy", dy.len(), d.n * d.c * oh * ow)?;
    check("dw", dw.len(), d.c * kk)?;
    if kk == 0 {
        return Ok(());
    }
    // Work per channel: every tap meets at most every output cell of every image.
    let work = d.n * d.c * oh * ow * kk;
    par::rows_of_work(pool, dw, kk, work, |c, row| {
        for (b, block) in row.chunks_mut(TAP_BLOCK).enumerate() {
            let mut acc = [0f64; TAP_BLOCK];
            for n in 0..d.n {
                let plane = n * d.c + c;
                let xp = &x[plane * h * w..][..h * w];
                let gp = &dy[plane * oh * ow..][..oh * ow];
                for (t, a) in acc.iter_mut().enumerate().take(block.len()) {
                    let tap = b * TAP_BLOCK + t;
                    let (i, j) = (tap / win.kernel[1], tap % win.kernel[1]);
                    *a += plane_tap(xp, gp, d, win, (i, j));
                }
            }
            for (o, a) in block.iter_mut().zip(acc) {
                *o = a as f32;
            }
        }
    });
    Ok(())
}

/// The output positions `lo..hi` along one axis whose input cell `o * stride + offset` lies in
/// `0..len`.
fn valid(out: usize, len: usize, stride: usize, offset: i64) -> (usize, usize) {
    let (s, len) = (stride as i64, len as i64);
    let lo = if offset < 0 { (-offset + s - 1) / s } else { 0 };
    let hi = if offset >= len {
        0
    } else {
        (len - 1 - offset) / s + 1
    };
    let hi = hi.min(out as i64);
    (lo as usize, (hi.max(lo)) as usize)
}

/// One image-plane's share of tap `(i, j)`: the sum of `dy[oy, ox] * x[oy * sy + oi, ox * sx +
/// oj]` over the output cells whose input cell lies inside the plane.
fn plane_tap(xp: &[f32], gp: &[f32], d: DwShape, win: DwWindow, (i, j): (usize, usize)) -> f64 {
    let ([h, w], [oh, ow]) = (d.input, d.output);
    let [sy, sx] = win.strides;
    let oi = (i * win.dilations[0]) as i64 - win.pads[0] as i64;
    let oj = (j * win.dilations[1]) as i64 - win.pads[1] as i64;
    let (y0, y1) = valid(oh, h, sy, oi);
    let (x0, x1) = valid(ow, w, sx, oj);
    if x0 >= x1 {
        return 0.0;
    }
    let len = x1 - x0;
    let mut total = 0f64;
    for oy in y0..y1 {
        let iy = (oy as i64 * sy as i64 + oi) as usize;
        let ix = (x0 as i64 * sx as i64 + oj) as usize;
        let g = &gp[oy * ow + x0..][..len];
        let xr = &xp[iy * w + ix..];
        total += if sx == 1 {
            dot(g, &xr[..len]) as f64
        } else {
            dot_strided(g, xr, sx) as f64
        };
    }
    total
}

/// `sum a[k] * b[k]` in eight f32 lanes (vectorisable).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| p * q)
        .sum();
    for (p, q) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += p[k] * q[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `sum a[k] * b[k * stride]` in eight f32 lanes.
fn dot_strided(a: &[f32], b: &[f32], stride: usize) -> f32 {
    let mut lanes = [0f32; 8];
    let mut k = 0;
    while k + 8 <= a.len() {
        for l in 0..8 {
            lanes[l] += a[k + l] * b[(k + l) * stride];
        }
        k += 8;
    }
    let mut tail = 0f32;
    while k < a.len() {
        tail += a[k] * b[k * stride];
        k += 1;
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_data as data, Rayon, Serial};

    /// The definition, cell by cell, in f64.
    fn naive(x: &[f32], dy: &[f32], d: DwShape, win: DwWindow) -> Vec<f32> {
        let ([h, w], [oh, ow]) = (d.input, d.output);
        let [kh, kw] = win.kernel;
        let mut out = vec![0f32; d.c * kh * kw];
        for c in 0..d.c {
            for i in 0..kh {
                for j in 0..kw {
                    let mut s = 0f64;
                    for n in 0..d.n {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * win.strides[0] + i * win.dilations[0]) as i64
                                    - win.pads[0] as i64;
                                let ix = (ox * win.strides[1] + j * win.dilations[1]) as i64
                                    - win.pads[1] as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let p = n * d.c + c;
                                s += dy[(p * oh + oy) * ow + ox] as f64
                                    * x[(p * h + iy as usize) * w + ix as usize] as f64;
                            }
                        }
                    }
                    out[(c * kh + i) * kw + j] = s as f32;
                }
            }
        }
        out
    }

    /// Output size of the forward convolution (pads begin and end).
    fn out_size(len: usize, k: usize, s: usize, dl: usize, p0: usize, p1: usize) -> usize {
        (len + p0 + p1 - ((k - 1) * dl + 1)) / s + 1
    }

    #[test]
    fn matches_the_definition_on_strides_pads_dilations_and_odd_sizes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let rayon = Rayon(Some(&pool));
        // (n, c, h, w, kernel, stride, dilation, pads top/left, pads bottom/right)
        let cases = [
            (2, 3, 8, 8, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
            (2, 5, 9, 7, [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
            (1, 4, 11, 13, [5, 5], [1, 1], [1, 1], [2, 2], [2, 2]),
            (3, 2, 10, 9, [3, 3], [1, 1], [2, 2], [2, 2], [2, 2]),
            (2, 3, 7, 11, [3, 5], [2, 1], [1, 2], [0, 3], [2, 1]),
            (1, 2, 5, 5, [7, 7], [1, 1], [1, 1], [3, 3], [3, 3]),
            // Large enough to split across threads; rows longer than 8 lanes at stride 2.
            (4, 40, 30, 30, [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
            (4, 40, 28, 28, [3, 3], [1, 1], [1, 1], [1, 1], [1, 1]),
        ];
        for (n, c, h, w, k, s, dl, p0, p1) in cases {
            let oh = out_size(h, k[0], s[0], dl[0], p0[0], p1[0]);
            let ow = out_size(w, k[1], s[1], dl[1], p0[1], p1[1]);
            let d = DwShape {
                n,
                c,
                input: [h, w],
                output: [oh, ow],
            };
            let win = DwWindow {
                kernel: k,
                strides: s,
                dilations: dl,
                pads: p0,
            };
            let x = data(n * c * h * w, 3);
            let dy = data(n * c * oh * ow, 4);
            let want = naive(&x, &dy, d, win);
            for p in [&Serial as &dyn Pool, &rayon] {
                let mut dw = vec![f32::NAN; want.len()];
                depthwise_conv_wgrad(p, &x, &dy, d, win, &mut dw).unwrap();
                for (k, (g, e)) in dw.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "{d:?} {win:?}, {} threads: dw[{k}] = {g}, expected {e}",
                        p.threads()
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_wrong_lengths_and_zero_strides_by_name() {
        let d = DwShape {
            n: 1,
            c: 2,
            input: [3, 3],
            output: [3, 3],
        };
        let win = DwWindow {
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1],
        };
        let (x, dy) = (vec![0f32; 18], vec![0f32; 18]);
        let mut dw = vec![0f32; 17];
        let e = depthwise_conv_wgrad(&Serial, &x, &dy, d, win, &mut dw).unwrap_err();
        assert!(e.0.contains("dw has 17 elements, expected 18"), "{e}");
        let mut dw = vec![0f32; 18];
        let e = depthwise_conv_wgrad(&Serial, &x[1..], &dy, d, win, &mut dw).unwrap_err();
        assert!(e.0.contains("x has 17 elements, expected 18"), "{e}");
        let bad = DwWindow {
            strides: [0, 1],
            ..win
        };
        let e = depthwise_conv_wgrad(&Serial, &x, &dy, d, bad, &mut dw).unwrap_err();
        assert!(e.0.contains("strides [0, 1]"), "{e}");
    }
}
