//! MaxPool's backward from the forward's indices in one pass: each output cell's gradient
//! goes to the input cell its window picked, summed where windows overlap.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{check, par, KernelError, Nc, Pool};

/// `dx[n, c, i % S] += dy[n, c, j]` for every output cell `j` of every `[n, c]` plane, with
/// `i = indices[n, c, j]` the forward MaxPool's index of the input cell its window picked;
/// dx is 0 elsewhere. `d` is x's layout (`S = H * W`), `out_plane` the output cells per
/// plane. Both engines' index conventions give the same cell: ONNX Runtime counts across the
/// whole tensor (`(n * C + c) * S + h * W + w`), tract within the plane (`h * W + w`), and
/// the remainder by S is the plane-local cell of either. Each task owns whole planes of dx
/// (zeroes them, then adds), so the sums never race. A negative index is refused.
pub fn max_pool_grad(
    pool: &dyn Pool,
    dy: &[f32],
    indices: &[i64],
    d: Nc,
    out_plane: usize,
    dx: &mut [f32],
) -> Result<(), KernelError> {
    let planes = d.n * d.c;
    check("dy", dy.len(), planes * out_plane)?;
    check("indices", indices.len(), planes * out_plane)?;
    check("dx", dx.len(), d.len())?;
    if d.s == 0 {
        return Ok(());
    }
    let plane = d.s as u64;
    let negative = AtomicBool::new(false);
    par::rows(pool, dx, d.s, |r, row| {
        row.fill(0.0);
        let off = r * out_plane;
        let (g, idx) = (&dy[off..][..out_plane], &indices[off..][..out_plane]);
        for (&g, &i) in g.iter().zip(idx) {
            match u64::try_from(i) {
                Ok(i) => row[(i % plane) as usize] += g,
                Err(_) => negative.store(true, Ordering::Relaxed),
            }
        }
    });
    if negative.load(Ordering::Relaxed) {
        return Err(KernelError(
            "indices holds a negative index (not a MaxPool Indices output)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_data as data, Rayon, Serial};

    /// MaxPool 2-D (no padding, no dilation) with both engines' indices: (y, ORT's
    /// whole-tensor index, tract's plane-local index), first maximum of each window.
    fn max_pool(
        x: &[f32],
        d: Nc,
        w: usize,
        k: usize,
        stride: usize,
    ) -> (usize, Vec<i64>, Vec<i64>) {
        let h = d.s / w;
        let (oh, ow) = ((h - k) / stride + 1, (w - k) / stride + 1);
        let (mut flat, mut local) = (Vec::new(), Vec::new());
        for r in 0..d.n * d.c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = (f32::NEG_INFINITY, 0usize);
                    for a in 0..k {
                        for b in 0..k {
                            let cell = (i * stride + a) * w + j * stride + b;
                            if x[r * d.s + cell] > best.0 {
                                best = (x[r * d.s + cell], cell);
                            }
                        }
                    }
                    flat.push((r * d.s + best.1) as i64);
                    local.push(best.1 as i64);
                }
            }
        }
        (oh * ow, flat, local)
    }

    #[test]
    fn matches_the_naive_scatter_for_both_index_conventions_and_overlaps() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let rayon = Rayon(Some(&pool));
        // (layout, width, kernel, stride): disjoint 2x2/2, overlapping 3x3/1 and 3x3/2,
        // and one large enough to split across threads.
        for (d, w, k, st) in [
            (
                Nc {
                    n: 2,
                    c: 3,
                    s: 6 * 6,
                },
                6,
                2,
                2,
            ),
            (
                Nc {
                    n: 2,
                    c: 2,
                    s: 5 * 7,
                },
                7,
                3,
                1,
            ),
            (
                Nc {
                    n: 1,
                    c: 4,
                    s: 7 * 7,
                },
                7,
                3,
                2,
            ),
            (
                Nc {
                    n: 16,
                    c: 32,
                    s: 28 * 28,
                },
                28,
                2,
                2,
            ),
        ] {
            let x = data(d.len(), 7);
            let (op, flat, local) = max_pool(&x, d, w, k, st);
            let dy = data(flat.len(), 8);
            let mut want = vec![0f32; d.len()];
            for (j, &i) in flat.iter().enumerate() {
                want[i as usize] += dy[j];
            }
            for p in [&Serial as &dyn Pool, &rayon] {
                for idx in [&flat, &local] {
                    let mut dx = vec![f32::NAN; d.len()];
                    max_pool_grad(p, &dy, idx, d, op, &mut dx).unwrap();
                    assert_eq!(dx, want, "{d:?} k{k} s{st}, {} threads", p.threads());
                }
            }
        }
    }

    #[test]
    fn refuses_wrong_lengths_and_negative_indices_by_name() {
        let d = Nc { n: 1, c: 1, s: 4 };
        let mut dx = [0.0; 4];
        let e = max_pool_grad(&Serial, &[1.0], &[0, 1], d, 1, &mut dx).unwrap_err();
        assert!(e.0.contains("indices has 2 elements, expected 1"), "{e}");
        let e = max_pool_grad(&Serial, &[1.0], &[-1], d, 1, &mut dx).unwrap_err();
        assert!(e.0.contains("negative index"), "{e}");
    }
}
