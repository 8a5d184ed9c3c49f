//! The backward of Clip, ReLU and ReLU6 in one pass: the gradient passes where the output lies
//! strictly between the bounds (read off the output, as PyTorch's in-place ReLU6 does).

use crate::{check, par, KernelError, Pool};

/// `dx[i] = dy[i]` where `lo < y[i] < hi`, else 0 (NaN outputs pass nothing). ReLU is
/// `lo = 0, hi = +inf`; an absent bound is the infinity on its side.
pub fn clip_grad(
    pool: &dyn Pool,
    dy: &[f32],
    y: &[f32],
    lo: f32,
    hi: f32,
    dx: &mut [f32],
) -> Result<(), KernelError> {
    check("y", y.len(), dy.len())?;
    check("dx", dx.len(), dy.len())?;
    par::chunks(pool, dx, |off, out| {
        let (g, yr) = (&dy[off..][..out.len()], &y[off..][..out.len()]);
        // `&` on the two comparisons, not `&&`: the short-circuit branch keeps the loop
        // from vectorising (about 5x slower at 4096 elements, tests/benches/kernel_bench.rs).
        for ((o, &g), &v) in out.iter_mut().zip(g).zip(yr) {
            *o = if (v > lo) & (v < hi) { g } else { 0.0 };
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rayon, Serial};

    #[test]
    fn relu6_mask_matches_the_formula() {
        let y = [-1.0, 0.0, 0.5, 6.0, 7.0, f32::NAN, 5.99];
        let dy = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let mut dx = [9.0; 7];
        clip_grad(&Serial, &dy, &y, 0.0, 6.0, &mut dx).unwrap();
        assert_eq!(dx, [0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 7.0]);
    }

    #[test]
    fn relu_and_large_inputs_split_across_threads() {
        let n = crate::PAR_MIN * 3 + 17;
        let y: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let dy: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for p in [&Serial as &dyn Pool, &Rayon(Some(&pool))] {
            let mut dx = vec![f32::NAN; n];
            clip_grad(p, &dy, &y, 0.0, f32::INFINITY, &mut dx).unwrap();
            for i in 0..n {
                assert_eq!(dx[i], if y[i] > 0.0 { dy[i] } else { 0.0 }, "element {i}");
            }
        }
    }

    #[test]
    fn refuses_mismatched_lengths() {
        let mut dx = [0.0; 2];
        let e = clip_grad(&Serial, &[1.0, 2.0], &[1.0], 0.0, 1.0, &mut dx).unwrap_err();
        assert!(e.0.contains("y has 1 elements, expected 2"), "{e}");
    }
}
