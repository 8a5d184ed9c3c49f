//! A plain host tensor: a shape and a dense row-major buffer of `f32` or `i64`.
//!
//! It is the currency between the crates: the graph compiler stores initializers in it,
//! the engines take and return it, checkpoints serialise it. Nothing here computes.

pub mod st;

use std::fmt;

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        })
    }
}

/// The elements of a [`Tensor`], row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A shape and a buffer whose length is the product of the shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// The buffer length does not match the shape.
#[derive(Debug, thiserror::Error)]
#[error("tensor of shape {shape:?} needs {expected} elements, got {got}")]
pub struct ShapeError {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub got: usize,
}

impl Tensor {
    /// A tensor from a shape and data; fails when the lengths disagree.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, ShapeError> {
        let expected: usize = shape.iter().product();
        let got = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        if expected != got {
            return Err(ShapeError {
                shape,
                expected,
                got,
            });
        }
        Ok(Tensor { shape, data })
    }

    /// An `f32` tensor; fails when the lengths disagree.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ShapeError> {
        Self::new(shape, TensorData::F32(data))
    }

    /// An `i64` tensor; fails when the lengths disagree.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self, ShapeError> {
        Self::new(shape, TensorData::I64(data))
    }

    /// A rank-0 `f32` tensor.
    pub fn scalar_f32(v: f32) -> Self {
        Tensor {
            shape: vec![],
            data: TensorData::F32(vec![v]),
        }
    }

    /// An `f32` tensor of zeros.
    pub fn zeros_f32(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: TensorData::F32(vec![0.0; n]),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_data(self) -> TensorData {
        self.data
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// The same data under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Self, ShapeError> {
        Self::new(shape, self.data)
    }

    /// Largest absolute difference to `other`, relative to `max(1, |other|)` element-wise;
    /// `None` when shapes or types differ. Used by parity checks.
    pub fn max_rel_diff(&self, other: &Tensor) -> Option<f32> {
        if self.shape != other.shape {
            return None;
        }
        match (&self.data, &other.data) {
            (TensorData::F32(a), TensorData::F32(b)) => Some(
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                    .fold(0.0, f32::max),
            ),
            (TensorData::I64(a), TensorData::I64(b)) => {
                Some(if a == b { 0.0 } else { f32::INFINITY })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_mismatched_length() {
        let err = Tensor::f32(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert_eq!(err.expected, 6);
        assert_eq!(err.got, 5);
    }

    #[test]
    fn rel_diff_compares_shapes_and_values() {
        let a = Tensor::f32(vec![2], vec![1.0, 100.0]).unwrap();
        let b = Tensor::f32(vec![2], vec![1.0, 101.0]).unwrap();
        assert!((a.max_rel_diff(&b).unwrap() - 1.0 / 101.0).abs() < 1e-7);
        let c = Tensor::f32(vec![1, 2], vec![1.0, 100.0]).unwrap();
        assert!(a.max_rel_diff(&c).is_none());
    }
}
