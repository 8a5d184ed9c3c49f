//! A host tensor: an `ndarray` array of `f32` or `i64`, always in standard (row-major,
//! contiguous) layout.
//!
//! It is the currency between the crates: the graph compiler stores initializers in it,
//! the engines take and return it, checkpoints serialise it. Nothing here computes.
//!
//! The arrays are [`ndarray`] 0.17's, the version `ort` (feature `ndarray`) and tract
//! (`tract_ndarray`) are built against, so the engines borrow or take them without conversion.
//! Standard layout is an invariant: [`Tensor::as_f32`] and friends hand out plain slices, and
//! ONNX Runtime reads the buffer in place.

pub mod st;

use std::fmt;

pub use ndarray;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};

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

/// The elements of a [`Tensor`]. Inside a tensor the array has the tensor's shape and standard
/// layout; given to [`Tensor::new`], any array is read in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

impl TensorData {
    /// A flat (1-D) `f32` buffer, for [`Tensor::new`] to shape.
    pub fn f32(v: Vec<f32>) -> Self {
        TensorData::F32(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"))
    }

    /// A flat (1-D) `i64` buffer, for [`Tensor::new`] to shape.
    pub fn i64(v: Vec<i64>) -> Self {
        TensorData::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D"))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(a) => a.len(),
            TensorData::I64(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same elements, in row-major order, under `shape` (same element count) and in
    /// standard layout; moves the buffer when it is already contiguous, copies otherwise.
    fn into_shape(self, shape: &[usize]) -> Self {
        match self {
            TensorData::F32(a) => TensorData::F32(standard(a, shape)),
            TensorData::I64(a) => TensorData::I64(standard(a, shape)),
        }
    }
}

fn standard<T: Clone>(a: ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    let a = if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    };
    a.into_shape_with_order(IxDyn(shape))
        .expect("standard layout and equal element counts reshape")
}

fn slice_of<T>(a: &ArrayD<T>) -> &[T] {
    a.as_slice().expect("tensor arrays are in standard layout")
}

/// A shape and its elements: an `f32` or `i64` array in standard layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
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
    /// A tensor from a shape and data read in row-major order; fails when the element counts
    /// disagree. The buffer moves in without a copy unless the array is not contiguous.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Self, ShapeError> {
        let expected: usize = shape.iter().product();
        let got = data.len();
        if expected != got {
            return Err(ShapeError {
                shape,
                expected,
                got,
            });
        }
        Ok(Tensor {
            data: data.into_shape(&shape),
        })
    }

    /// An `f32` tensor; fails when the lengths disagree.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, ShapeError> {
        Self::new(shape, TensorData::f32(data))
    }

    /// An `i64` tensor; fails when the lengths disagree.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Self, ShapeError> {
        Self::new(shape, TensorData::i64(data))
    }

    /// A rank-0 `f32` tensor.
    pub fn scalar_f32(v: f32) -> Self {
        Tensor {
            data: TensorData::F32(ArrayD::from_elem(IxDyn(&[]), v)),
        }
    }

    /// An `f32` tensor of zeros.
    pub fn zeros_f32(shape: Vec<usize>) -> Self {
        Tensor {
            data: TensorData::F32(ArrayD::zeros(IxDyn(&shape))),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match &self.data {
            TensorData::F32(a) => a.shape(),
            TensorData::I64(a) => a.shape(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
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

    /// The elements in row-major order; `None` for an `i64` tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(a) => Some(slice_of(a)),
            TensorData::I64(_) => None,
        }
    }

    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            TensorData::F32(a) => Some(
                a.as_slice_mut()
                    .expect("tensor arrays are in standard layout"),
            ),
            TensorData::I64(_) => None,
        }
    }

    /// The elements in row-major order; `None` for an `f32` tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(a) => Some(slice_of(a)),
            TensorData::F32(_) => None,
        }
    }

    /// A view of the `f32` array (no copy); `None` for an `i64` tensor.
    pub fn as_array_f32(&self) -> Option<ArrayViewD<'_, f32>> {
        match &self.data {
            TensorData::F32(a) => Some(a.view()),
            TensorData::I64(_) => None,
        }
    }

    /// A mutable view of the `f32` array (no copy); `None` for an `i64` tensor.
    pub fn as_array_f32_mut(&mut self) -> Option<ArrayViewMutD<'_, f32>> {
        match &mut self.data {
            TensorData::F32(a) => Some(a.view_mut()),
            TensorData::I64(_) => None,
        }
    }

    /// A view of the `i64` array (no copy); `None` for an `f32` tensor.
    pub fn as_array_i64(&self) -> Option<ArrayViewD<'_, i64>> {
        match &self.data {
            TensorData::I64(a) => Some(a.view()),
            TensorData::F32(_) => None,
        }
    }

    /// The `f32` array (moved out, no copy), or the tensor back when it holds `i64`.
    pub fn into_array_f32(self) -> Result<ArrayD<f32>, Tensor> {
        match self.data {
            TensorData::F32(a) => Ok(a),
            data => Err(Tensor { data }),
        }
    }

    /// The `i64` array (moved out, no copy), or the tensor back when it holds `f32`.
    pub fn into_array_i64(self) -> Result<ArrayD<i64>, Tensor> {
        match self.data {
            TensorData::I64(a) => Ok(a),
            data => Err(Tensor { data }),
        }
    }

    /// The same data under another shape with the same element count.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Self, ShapeError> {
        Self::new(shape, self.data)
    }

    /// Largest absolute difference to `other`, relative to `max(1, |other|)` element-wise;
    /// `None` when shapes or types differ. Used by parity checks.
    pub fn max_rel_diff(&self, other: &Tensor) -> Option<f32> {
        if self.shape() != other.shape() {
            return None;
        }
        match (&self.data, &other.data) {
            (TensorData::F32(a), TensorData::F32(b)) => Some(
                slice_of(a)
                    .iter()
                    .zip(slice_of(b))
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

/// Takes the array's buffer without a copy when it is in standard layout (copies otherwise).
impl From<ArrayD<f32>> for Tensor {
    fn from(a: ArrayD<f32>) -> Self {
        let shape = a.shape().to_vec();
        Tensor {
            data: TensorData::F32(a).into_shape(&shape),
        }
    }
}

/// Takes the array's buffer without a copy when it is in standard layout (copies otherwise).
impl From<ArrayD<i64>> for Tensor {
    fn from(a: ArrayD<i64>) -> Self {
        let shape = a.shape().to_vec();
        Tensor {
            data: TensorData::I64(a).into_shape(&shape),
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

    #[test]
    fn vec_moves_into_the_array_without_a_copy() {
        let v = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ptr = v.as_ptr();
        let t = Tensor::f32(vec![2, 3], v).unwrap();
        assert_eq!(t.as_f32().unwrap().as_ptr(), ptr);
        let a = t.into_array_f32().unwrap();
        assert_eq!(a.as_ptr(), ptr);
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a[[1, 0]], 4.0);
        let back = Tensor::from(a);
        assert_eq!(back.as_f32().unwrap().as_ptr(), ptr);
    }

    #[test]
    fn non_standard_arrays_become_row_major() {
        // A transposed owned array: Fortran order in memory.
        let a = ndarray::Array2::from_shape_vec((2, 3), vec![1i64, 2, 3, 4, 5, 6])
            .unwrap()
            .reversed_axes()
            .into_dyn();
        let t = Tensor::from(a);
        assert_eq!(t.shape(), &[3, 2]);
        assert_eq!(t.as_i64().unwrap(), &[1, 4, 2, 5, 3, 6]);
        let r = t.reshaped(vec![6]).unwrap();
        assert_eq!(r.as_array_i64().unwrap()[[1]], 4);
        assert!(r.into_array_f32().is_err());
    }

    #[test]
    fn scalar_and_zeros_keep_their_shapes() {
        let s = Tensor::scalar_f32(2.5);
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.as_f32().unwrap(), &[2.5]);
        let z = Tensor::zeros_f32(vec![2, 0, 3]);
        assert!(z.is_empty());
        assert_eq!(z.as_f32().unwrap(), &[] as &[f32]);
        let mut m = Tensor::zeros_f32(vec![2, 2]);
        m.as_array_f32_mut().unwrap()[[1, 1]] = 3.0;
        assert_eq!(m.as_f32().unwrap(), &[0.0, 0.0, 0.0, 3.0]);
    }
}
