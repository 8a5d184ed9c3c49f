//! Host [`Tensor`]s to and from ONNX Runtime values, through `ndarray` (ort's `ndarray`
//! feature; both sides use ndarray 0.17).
//!
//! | hand-off | copies |
//! |---|---|
//! | session input ([`input_ref`]) | none: ONNX Runtime reads the tensor's array in place |
//! | owned tensor to a value ([`owned_value`]: resident initial state, `set_state`) | none: the array's buffer moves into the value |
//! | output to a host tensor ([`to_tensor`]) | one: ONNX Runtime owns its output buffers (plus one device-to-host copy for values in GPU memory) |

use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::{EngineError, EngineKind, Tensor, TensorData};

/// A borrowed input value over `t`'s array: no copy (the array is contiguous by
/// [`Tensor`]'s invariant, which ONNX Runtime requires).
pub(super) fn input_ref(t: &Tensor) -> ort::Result<SessionInputValue<'_>> {
    Ok(match t.data() {
        TensorData::F32(a) => TensorRef::from_array_view(a.view())?.into(),
        TensorData::I64(a) => TensorRef::from_array_view(a.view())?.into(),
    })
}

/// An owned value taking `t`'s buffer: no copy (ort keeps the array alive inside the value).
pub(super) fn owned_value(t: Tensor) -> ort::Result<DynValue> {
    Ok(match t.into_data() {
        TensorData::F32(a) => ort::value::Tensor::from_array(a)?.into_dyn(),
        TensorData::I64(a) => ort::value::Tensor::from_array(a)?.into_dyn(),
    })
}

/// Copies an ONNX Runtime output to a host [`Tensor`] (one copy out of ONNX Runtime's
/// buffer, through an `ndarray` view of it), widening small integer and bool types to i64 and
/// double to f32.
pub(super) fn to_tensor(model: &str, name: &str, v: &DynValue) -> Result<Tensor, EngineError> {
    let run_err = |message: String| EngineError::Run {
        model: model.to_string(),
        engine: EngineKind::Ort,
        message: format!("output '{name}': {message}"),
    };
    // A value in device memory (resident state on a GPU) is copied to the host first.
    if let Ok(t) = v.view().downcast::<ort::value::DynTensorValueType>() {
        if !t.memory_info().is_cpu_accessible() {
            let host = t
                .to(ort::memory::AllocationDevice::CPU, 0)
                .map_err(|e| run_err(format!("copy to host: {}", ort_msg(&e))))?;
            return to_tensor(model, name, &host.into_dyn());
        }
    }
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(EngineError::UnsupportedDType {
            model: model.to_string(),
            tensor: name.to_string(),
            dtype: "non-tensor".to_string(),
        });
    };
    // A view of ONNX Runtime's buffer; `to_owned`/`mapv` make the one copy.
    macro_rules! view {
        ($t:ty) => {
            v.try_extract_array::<$t>()
                .map_err(|e| run_err(ort_msg(&e)))?
        };
    }
    macro_rules! ints {
        ($t:ty) => {
            Tensor::from(view!($t).mapv(|x| x as i64))
        };
    }
    use TensorElementType as T;
    Ok(match ty {
        T::Float32 => Tensor::from(view!(f32).to_owned()),
        T::Float64 => Tensor::from(view!(f64).mapv(|x| x as f32)),
        T::Int64 => Tensor::from(view!(i64).to_owned()),
        T::Int32 => ints!(i32),
        T::Int16 => ints!(i16),
        T::Int8 => ints!(i8),
        T::Uint8 => ints!(u8),
        T::Uint16 => ints!(u16),
        T::Uint32 => ints!(u32),
        T::Uint64 => ints!(u64),
        T::Bool => Tensor::from(view!(bool).mapv(i64::from)),
        other => {
            return Err(EngineError::UnsupportedDType {
                model: model.to_string(),
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// ONNX Runtime's messages end in a newline.
pub(super) fn ort_msg(e: &impl std::fmt::Display) -> String {
    e.to_string().trim_end().to_string()
}
