//! Where a kernel runs its parallel work ([`Pool`]: the engine's own thread pool) and the
//! ways it splits that work: per channel (statistics into two per-channel outputs), per
//! `[n, c]` row and in elementwise chunks. Each split hands every task a contiguous part of
//! the output (from slots on the stack: nothing is allocated, nothing unsafe).

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::PAR_MIN;

/// A thread pool a kernel runs its tasks on: the engine's own (ONNX Runtime's intra-op pool
/// for its custom ops, tract's rayon pool for its ops), so that a kernel never starts
/// threads beside the engine's.
pub trait Pool {
    /// Threads the pool runs tasks on (1: the calling thread only).
    fn threads(&self) -> usize;

    /// Runs `f(i)` for every `i` in `0..tasks`, in any order and possibly at once; returns
    /// when all have run.
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
}

/// Everything on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Pool for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(f);
    }
}

/// A rayon pool: the given one, or rayon's global pool for `None`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rayon<'a>(pub Option<&'a rayon::ThreadPool>);

impl Pool for Rayon<'_> {
    fn threads(&self) -> usize {
        self.0
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let run = || (0..tasks).into_par_iter().for_each(f);
        match self.0 {
            Some(p) => p.install(run),
            None => run(),
        }
    }
}

/// Tasks per thread: a few, so that a thread the host preempts holds up less of the work.
const TASKS_PER_THREAD: usize = 4;

/// How many tasks to make of `units` units of work of `total` elements in all: 1 below
/// [`PAR_MIN`] elements or on one thread.
fn tasks(pool: &dyn Pool, units: usize, total: usize) -> usize {
    let threads = pool.threads();
    if total < PAR_MIN || threads < 2 || units < 2 {
        return 1;
    }
    (threads * TASKS_PER_THREAD)
        .min(MAX_TASKS)
        .min(units)
        .min(total.div_ceil(PAR_MIN / 4))
        .max(1)
}

/// Task `i`'s share of `0..len` split into `tasks` contiguous ranges.
fn share(len: usize, tasks: usize, i: usize) -> Range<usize> {
    let (base, extra) = (len / tasks, len % tasks);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// At most this many tasks per split: each task's part of the output waits in a slot on the
/// stack ([`parts`]), so that splitting allocates nothing.
const MAX_TASKS: usize = 64;

/// One task's part of an output: its first unit and its elements.
type Slot<'a> = Mutex<Option<(usize, &'a mut [f32])>>;

/// `out` cut into `t` contiguous parts of whole units of `unit` elements (the last unit may
/// be short), task `i`'s part in slot `i`.
fn parts(out: &mut [f32], unit: usize, t: usize) -> [Slot<'_>; MAX_TASKS] {
    let units = out.len().div_ceil(unit);
    let mut slots: [Slot<'_>; MAX_TASKS] = std::array::from_fn(|_| Mutex::new(None));
    let mut rest = out;
    for (i, slot) in slots.iter_mut().enumerate().take(t) {
        let r = share(units, t, i);
        let len = (r.end * unit).min(r.start * unit + rest.len()) - r.start * unit;
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len);
        *slot.get_mut().unwrap_or_else(|p| p.into_inner()) = Some((r.start, mine));
        rest = tail;
    }
    slots
}

/// Task `i`'s part, taken out of its slot (each task runs once).
fn take<'a>(slots: &[Slot<'a>], i: usize) -> (usize, &'a mut [f32]) {
    slots[i]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .expect("each task runs once")
}

/// `(a[c], b[c]) = f(c)` for every channel; on the pool when `total` (the elements `f` reads
/// in all) reaches [`PAR_MIN`].
pub fn channels<F>(pool: &dyn Pool, a: &mut [f32], b: &mut [f32], total: usize, f: F)
where
    F: Fn(usize) -> (f32, f32) + Sync,
{
    assert_eq!(a.len(), b.len(), "one value of each output per channel");
    let t = tasks(pool, a.len(), total);
    let (sa, sb) = (parts(a, 1, t), parts(b, 1, t));
    pool.for_each(t, &|i| {
        let ((first, a), (_, b)) = (take(&sa, i), take(&sb, i));
        for (k, (a, b)) in a.iter_mut().zip(b).enumerate() {
            (*a, *b) = f(first + k);
        }
    });
}

/// `f(r, row)` for each row of `s` elements of `out` (row `r` is `[n, c]` with
/// `r = n * C + c`); on the pool for outputs of at least [`PAR_MIN`] elements.
pub fn rows<F>(pool: &dyn Pool, out: &mut [f32], s: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let work = out.len();
    rows_of_work(pool, out, s, work, f)
}

/// [`rows`] for rows whose work is not their length: on the pool when `work` (the elements
/// `f` reads in all) reaches [`PAR_MIN`] (a depthwise weight gradient's output is small,
/// its inputs large).
pub fn rows_of_work<F>(pool: &dyn Pool, out: &mut [f32], s: usize, work: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if s == 0 {
        return;
    }
    let t = tasks(pool, out.len() / s, work);
    let slots = parts(out, s, t);
    pool.for_each(t, &|i| {
        let (first, mine) = take(&slots, i);
        for (k, row) in mine.chunks_mut(s).enumerate() {
            f(first + k, row);
        }
    });
}

/// Elementwise: `f(offset, part)` over contiguous parts of `out`; on the pool for large
/// outputs. Parts are whole blocks of 64 elements (but the last), so each starts aligned to
/// the vector width when `out` does.
pub fn chunks<F>(pool: &dyn Pool, out: &mut [f32], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    const BLOCK: usize = 64;
    if out.is_empty() {
        return;
    }
    let t = tasks(pool, out.len().div_ceil(BLOCK), out.len());
    let slots = parts(out, BLOCK, t);
    pool.for_each(t, &|i| {
        let (first, part) = take(&slots, i);
        f(first * BLOCK, part);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_range_once_in_order() {
        for (len, t) in [(10, 3), (3, 3), (7, 1), (100, 8)] {
            let mut next = 0;
            for i in 0..t {
                let r = share(len, t, i);
                assert_eq!(r.start, next, "len {len}, {t} tasks, task {i}");
                assert!(r.len() >= len / t && r.len() <= len / t + 1);
                next = r.end;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn every_split_visits_each_element_once_on_a_pool() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let rayon = Rayon(Some(&pool));
        for p in [&Serial as &dyn Pool, &rayon] {
            let n = PAR_MIN * 2 + 65;
            let mut out = vec![0f32; n];
            chunks(p, &mut out, |off, part| {
                for (k, v) in part.iter_mut().enumerate() {
                    *v += (off + k) as f32;
                }
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
            let s = 37;
            let mut out = vec![0f32; s * (PAR_MIN / s + 11)];
            rows(p, &mut out, s, |r, row| {
                row.iter_mut().for_each(|v| *v += r as f32)
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == (i / s) as f32));
            let (mut a, mut b) = (vec![0f32; 301], vec![0f32; 301]);
            channels(p, &mut a, &mut b, PAR_MIN, |c| (c as f32, -(c as f32)));
            assert!((0..301).all(|c| a[c] == c as f32 && b[c] == -(c as f32)));
        }
    }
}
