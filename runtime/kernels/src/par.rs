//! The two ways a kernel splits its work: per channel (statistics into two per-channel
//! outputs) and per `[n, c]` row (elementwise passes).

use rayon::prelude::*;

use crate::PAR_MIN;

/// `(a[c], b[c]) = f(c)` for every channel; on the pool when `total` (the elements `f` reads
/// in all) reaches [`PAR_MIN`].
pub fn channels<F>(a: &mut [f32], b: &mut [f32], total: usize, f: F)
where
    F: Fn(usize) -> (f32, f32) + Sync + Send,
{
    let set = |(c, (a, b)): (usize, (&mut f32, &mut f32))| (*a, *b) = f(c);
    if total >= PAR_MIN && a.len() > 1 {
        a.par_iter_mut()
            .zip(b.par_iter_mut())
            .enumerate()
            .for_each(set);
    } else {
        a.iter_mut().zip(b.iter_mut()).enumerate().for_each(set);
    }
}

/// `f(r, row)` for each row of `s` elements of `out` (row `r` is `[n, c]` with
/// `r = n * C + c`); on the pool for outputs of at least [`PAR_MIN`] elements.
pub fn rows<F>(out: &mut [f32], s: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if s == 0 {
        return;
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(s)
            .with_min_len((PAR_MIN / 4 / s).max(1))
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        out.chunks_mut(s).enumerate().for_each(|(r, row)| f(r, row));
    }
}

/// Elementwise chunks of `out` with their offset; on the pool for large outputs.
pub fn chunks<F>(out: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    const CHUNK: usize = 1 << 13;
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, c)| f(i * CHUNK, c));
    } else if !out.is_empty() {
        f(0, out);
    }
}
