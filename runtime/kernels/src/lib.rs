//! One-pass training kernels for the gradients that standard ONNX spells out in many passes.
//! Pure Rust on f32 slices in NCHW order (`[N, C, S]`, S the product of the spatial
//! dimensions); sums accumulate in f64. Work above [`PAR_MIN`] elements runs on the [`Pool`]
//! the caller passes, the engine's own (ONNX Runtime's intra-op pool, tract's rayon pool),
//! split by channel (statistics), by `[n, c]` row or in contiguous chunks (elementwise
//! passes; whole channels of a depthwise weight gradient). Nothing is allocated per call: every result goes into a slice the caller owns.
//!
//! The engines register these as ops of the [`DOMAIN`] domain (runtime/engine
//! `fieldtune_ops`); `fieldtune-graph` emits them in tuned train steps.

mod batch_norm;
mod clip;
mod depthwise;
mod par;
mod pool;

pub use batch_norm::{batch_norm_train, batch_norm_train_grad, BnGradOut, BnTrainOut};
pub use clip::clip_grad;
pub use depthwise::{depthwise_conv_wgrad, DwShape, DwWindow};
pub use par::{Pool, Rayon, Serial};
pub use pool::max_pool_grad;

/// The ONNX domain of the ops these kernels implement.
pub const DOMAIN: &str = "ai.fieldtune";

/// Below this many elements a kernel runs on the calling thread.
pub const PAR_MIN: usize = 1 << 15;

/// The layout of a tensor seen as `[N, C, S]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nc {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

impl Nc {
    /// `[N, C, ...]` from a shape of rank >= 2; `None` for a lower rank.
    pub fn of(shape: &[usize]) -> Option<Nc> {
        if shape.len() < 2 {
            return None;
        }
        Some(Nc {
            n: shape[0],
            c: shape[1],
            s: shape[2..].iter().product(),
        })
    }

    pub fn len(&self) -> usize {
        self.n * self.c * self.s
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements per channel (N * S).
    pub fn count(&self) -> usize {
        self.n * self.s
    }
}

/// A kernel's refusal: slices whose lengths do not fit the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError(pub String);

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KernelError {}

fn check(what: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError(format!(
            "{what} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

/// A deterministic sequence of `len` values in [-0.5, 0.5) (xorshift) for the kernels' tests.
#[cfg(test)]
fn test_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
