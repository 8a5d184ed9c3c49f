//! Deterministic in-graph randomness: a counter-based uniform generator written in standard
//! integer ops (Mul, Add, Mod, Div, ArgMax, Cast to float), so ONNX Runtime, tract, numpy and
//! [`reference`] give bit-identical values; and the training-mode Dropout built on it.
//!
//! Element `i` of the stream `key` at train step `step` (1-based, the train step's float
//! `step` input as an int64, see `step_as_i64`) under the compile-time `seed`:
//!
//! ```text
//! M  = 2^31 - 1
//! s0 = splitmix64(seed ^ fnv1a64(key)) mod M          (compile time)
//! s  = (s0 + step * STEP_MUL) mod M
//! x1 = (i * A1 + s) mod M
//! x2 = (i * A2 + s + C1) mod M
//! x  = (x1 * x2 + C2) mod M
//! y  = (x * A3 + i) mod M
//! z  = (y * x1 + C3) mod M
//! u  = float32(z div 128) * 2^-24                     (in [0, 1), exact in float32)
//! ```
//!
//! Every product stays below 2^63 (all factors < 2^31), so int64 arithmetic is exact
//! everywhere. The int64 chain starts from a literal index constant (8 bytes per element,
//! one per stream size) and from the step rebuilt with ArgMax, never from a Cast or a Range
//! (tract evaluates Cast-to-int64 and Range results as symbolic dimensions, TDim, whose
//! arithmetic differs or overflows for large values).
//! `scripts/reference/rng.py` is the same generator in numpy.

use fieldtune_tensor::Tensor;

use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::ir::{attr, Node};

/// The modulus, the Mersenne prime 2^31 - 1.
pub const MODULUS: i64 = 2_147_483_647;
/// Multiplier of the step in the stream offset.
pub const STEP_MUL: i64 = 1_000_003;
/// Multiplier of the element index.
pub const A1: i64 = 1_103_515_245;
/// Offset of the second sequence.
pub const C1: i64 = 12_345;
/// Multiplier of the element index in the second sequence.
pub const A2: i64 = 1_664_525;
/// Added to the product of the two sequences.
pub const C2: i64 = 1_013_904_223;
/// Multiplier of the third round.
pub const A3: i64 = 69_069;
/// Added in the last round.
pub const C3: i64 = 907_633_385;

/// 64-bit FNV-1a of a string.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in s.as_bytes() {
        h ^= c as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The compile-time offset of stream `key` under `seed`, in [0, M).
pub fn stream_offset(seed: u64, key: &str) -> i64 {
    (splitmix64(seed ^ fnv1a64(key)) % MODULUS as u64) as i64
}

/// The generator on the host: `n` values of stream `key` at `step` (what the graph computes).
pub fn reference(seed: u64, key: &str, step: i64, n: usize) -> Vec<f32> {
    let s = (stream_offset(seed, key) + step.rem_euclid(MODULUS) * STEP_MUL).rem_euclid(MODULUS);
    (0..n as i64)
        .map(|i| {
            let x1 = (i * A1 + s) % MODULUS;
            let x2 = (i * A2 + s + C1) % MODULUS;
            let x = (x1 * x2 + C2) % MODULUS;
            let y = (x * A3 + i) % MODULUS;
            let z = (y * x1 + C3) % MODULUS;
            (z / 128) as f32 * (1.0 / 16_777_216.0)
        })
        .collect()
}

fn i64_scalar(b: &mut Builder, v: i64) -> String {
    b.constant(Tensor::i64(vec![], vec![v]).expect("scalar"))
}

/// The float `step` (an integer below 2^24) as an int64 scalar, without Cast: tract types the
/// output of every Cast to int64 as symbolic dimensions (TDim) and evaluates arithmetic on it
/// differently (large products go wrong), so the integer comes from ArgMax instead. Base-16
/// digits `floor(step / 16^k) mod 16` (exact in float32) are one-hot compared with 0..15, their
/// ArgMax is the digit as int64, and `sum digit_k * 16^k` rebuilds the step.
fn step_as_i64(b: &mut Builder, step: &str) -> Result<String> {
    const DIGITS: usize = 6;
    let pows: Vec<i64> = (0..DIGITS as u32).map(|k| 16i64.pow(k)).collect();
    let div = b.constant(
        Tensor::f32(vec![DIGITS, 1], pows.iter().map(|&p| p as f32).collect()).expect("sized"),
    );
    let q = b.op("Div", &[step, &div], vec![])?;
    let q = b.op("Floor", &[&q], vec![])?;
    let sixteen = b.scalar(16.0);
    let d = b.op("Mod", &[&q, &sixteen], vec![attr::int("fmod", 1)])?;
    let range =
        b.constant(Tensor::f32(vec![1, 16], (0..16).map(|v| v as f32).collect()).expect("sized"));
    let hot = b.op("Equal", &[&d, &range], vec![])?;
    let hot = b.op("Cast", &[&hot], vec![attr::int("to", 1)])?;
    let digit = b.op(
        "ArgMax",
        &[&hot],
        vec![attr::int("axis", 1), attr::int("keepdims", 0)],
    )?;
    let pw = b.constant(Tensor::i64(vec![DIGITS], pows).expect("sized"));
    let parts = b.op("Mul", &[&digit, &pw], vec![])?;
    b.reduce("ReduceSum", &parts, &[0], false)
}

/// Emits uniform [0, 1) values of `shape` from stream `key` at the train step's `step` input
/// (an f32 scalar holding an integer below 2^24).
pub fn uniform(
    b: &mut Builder,
    shape: &[usize],
    step: &str,
    seed: u64,
    key: &str,
) -> Result<String> {
    let n: usize = shape.iter().product();
    if n as u64 >= MODULUS as u64 {
        return Err(GraphError::Spec(format!(
            "random stream '{key}': {n} elements is more than the generator's 2^31 - 1"
        )));
    }
    let m = i64_scalar(b, MODULUS);
    // The element index 0..n as a literal int64 constant, shared by the streams of one size.
    // Not Range, nor a broadcast of small constants: tract derives symbolic expressions
    // (TDim) from those and its optimizer overflows on the generator's large multipliers.
    let index_name = format!("random.index.{n}");
    let idx = if b.value(&index_name).is_some() {
        index_name
    } else {
        b.initializer(
            &index_name,
            Tensor::i64(vec![n], (0..n as i64).collect()).expect("sized"),
        )?
    };
    let stepi = step_as_i64(b, step)?;
    let step_mul = i64_scalar(b, STEP_MUL);
    let s = b.op("Mul", &[&stepi, &step_mul], vec![])?;
    let s = b.op("Mod", &[&s, &m], vec![])?;
    let s0 = i64_scalar(b, stream_offset(seed, key));
    let s = b.op("Add", &[&s, &s0], vec![])?;
    let a1 = i64_scalar(b, A1);
    let x1 = b.op("Mul", &[&idx, &a1], vec![])?;
    let x1 = b.op("Add", &[&x1, &s], vec![])?;
    let x1 = b.op("Mod", &[&x1, &m], vec![])?;
    let a2 = i64_scalar(b, A2);
    let c1 = i64_scalar(b, C1);
    let x2 = b.op("Mul", &[&idx, &a2], vec![])?;
    let x2 = b.op("Add", &[&x2, &s], vec![])?;
    let x2 = b.op("Add", &[&x2, &c1], vec![])?;
    let x2 = b.op("Mod", &[&x2, &m], vec![])?;
    let c2 = i64_scalar(b, C2);
    let x = b.op("Mul", &[&x1, &x2], vec![])?;
    let x = b.op("Add", &[&x, &c2], vec![])?;
    let x = b.op("Mod", &[&x, &m], vec![])?;
    let a3 = i64_scalar(b, A3);
    let y = b.op("Mul", &[&x, &a3], vec![])?;
    let y = b.op("Add", &[&y, &idx], vec![])?;
    let y = b.op("Mod", &[&y, &m], vec![])?;
    let c3 = i64_scalar(b, C3);
    let z = b.op("Mul", &[&y, &x1], vec![])?;
    let z = b.op("Add", &[&z, &c3], vec![])?;
    let x = b.op("Mod", &[&z, &m], vec![])?;
    let d = i64_scalar(b, 128);
    let top = b.op("Div", &[&x, &d], vec![])?;
    let f = b.op("Cast", &[&top], vec![attr::int("to", 1)])?;
    let scale = b.scalar(1.0 / 16_777_216.0);
    let u = b.op("Mul", &[&f, &scale], vec![])?;
    b.reshape(&u, shape)
}

/// Emits `node` (a Dropout whose input names are already resolved) in training form:
/// `y = x * mask / (1 - ratio)`, `mask = u >= ratio` with `u` from [`uniform`] (stream
/// `key`), so the mask is a pure function of (seed, step, key) and the gradient is
/// `dy * mask / (1 - ratio)` through the Mul. The ratio is the constant input 1 (opset 12+)
/// or the `ratio` attribute (default 0.5); `training_mode` is ignored (the train step's
/// gradient pass is training). An optional second output receives the boolean mask.
pub fn dropout(b: &mut Builder, node: &Node, step: &str, seed: u64, key: &str) -> Result<()> {
    let x = node
        .input(0)
        .ok_or_else(|| GraphError::node(node, "input 0 is required"))?
        .to_string();
    let ratio = match node.input(1) {
        Some(r) => {
            let v = b.value(r).and_then(|v| v.konst.as_ref()).and_then(|t| {
                t.as_f32()
                    .map(|d| d.first().copied())
                    .unwrap_or_else(|| None)
            });
            v.ok_or_else(|| {
                GraphError::node(node, format!("ratio input '{r}' must be a float constant"))
            })?
        }
        None => node.float("ratio", 0.5),
    };
    if !(0.0..1.0).contains(&ratio) {
        return Err(GraphError::node(
            node,
            format!("ratio {ratio} is outside [0, 1)"),
        ));
    }
    let y = node.outputs[0].clone();
    let shape = b.shape(&x)?;
    let u = uniform(b, &shape, step, seed, key)?;
    let r = b.scalar(ratio);
    let lt = b.op("Less", &[&u, &r], vec![])?;
    let keep = b.op("Not", &[&lt], vec![])?;
    let kf = b.op("Cast", &[&keep], vec![attr::int("to", 1)])?;
    let s = b.scalar(1.0 / (1.0 - ratio));
    let scaled = b.op("Mul", &[&kf, &s], vec![])?;
    b.add(Node {
        name: format!("{}/train", node.name),
        op: "Mul".into(),
        domain: String::new(),
        inputs: vec![x, scaled],
        outputs: vec![y],
        attrs: vec![],
    })?;
    if let Some(mask_out) = node.outputs.get(1).filter(|m| !m.is_empty()) {
        b.add(Node {
            name: format!("{}/mask", node.name),
            op: "Identity".into(),
            domain: String::new(),
            inputs: vec![keep],
            outputs: vec![mask_out.clone()],
            attrs: vec![],
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_matches_numpy() {
        // scripts/reference/rng.py: uniform(3, "a", 7, (6,)) and
        // uniform(0, "restore/fc.weight", 123456, (4,)), times 2^24.
        let scaled = |v: Vec<f32>| -> Vec<u32> {
            v.into_iter().map(|u| (u * 16_777_216.0) as u32).collect()
        };
        assert_eq!(
            scaled(reference(3, "a", 7, 6)),
            [12917257, 2151385, 13766556, 7263155, 9250432, 12783202]
        );
        assert_eq!(
            scaled(reference(0, "restore/fc.weight", 123456, 4)),
            [12547640, 8522997, 1824563, 2284370]
        );
    }

    #[test]
    fn reference_is_uniform_and_streams_differ() {
        let n = 200_000;
        let u = reference(3, "a", 7, n);
        assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = u.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let mut bins = [0usize; 20];
        for &v in &u {
            bins[(v * 20.0) as usize] += 1;
        }
        let e = n as f64 / 20.0;
        let chi2: f64 = bins.iter().map(|&o| (o as f64 - e).powi(2) / e).sum();
        // 19 degrees of freedom: P(chi2 > 43.8) = 0.001.
        assert!(chi2 < 43.8, "chi2 {chi2} bins {bins:?}");
        assert_ne!(reference(3, "a", 8, 16), reference(3, "a", 7, 16));
        assert_ne!(reference(3, "b", 7, 16), reference(3, "a", 7, 16));
        assert_ne!(reference(4, "a", 7, 16), reference(3, "a", 7, 16));
        // Neighbouring elements and neighbouring steps are uncorrelated.
        let v = reference(3, "a", 8, n);
        let c = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - 0.5) * (*y as f64 - 0.5))
                .sum::<f64>()
                / a.len() as f64
                * 12.0
        };
        assert!(c(&u[1..], &u[..n - 1]).abs() < 0.01);
        assert!(c(&u, &v).abs() < 0.01);
    }
}
