//! The engine crate's one error type.

use std::path::PathBuf;

use fieldtune_tensor::DType;

use crate::EngineKind;

/// Formats a model-declared shape: static dims as numbers, dynamic dims as `?`.
pub(crate) fn fmt_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Everything that can go wrong while finding an engine, loading a model or running it.
///
/// `model` fields hold the label the caller passed to [`crate::Engine::load`] (a file name or
/// a graph name), `tensor` fields the ONNX input or output name.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No ONNX Runtime library was found in any of the places discovery looks.
    #[error(
        "ONNX Runtime not found (looked in: {}); run scripts/install-ort.sh, pass --ort-lib or set ORT_DYLIB_PATH",
        searched.join(", ")
    )]
    OrtNotFound {
        /// Every place that was searched, in order.
        searched: Vec<String>,
    },

    /// An ONNX Runtime library was found but could not be loaded (wrong architecture, too old,
    /// missing dependencies).
    #[error("ONNX Runtime at {} could not be loaded: {message}", path.display())]
    OrtLoad {
        /// The library that failed to load.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },

    /// ONNX Runtime was initialised earlier in this process from another library; it can only
    /// be loaded once.
    #[error(
        "ONNX Runtime is already loaded from {} in this process; cannot switch to {}",
        loaded.display(),
        requested.display()
    )]
    OrtAlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The library that was asked for.
        requested: PathBuf,
    },

    /// A feature was asked for that the loaded ONNX Runtime is too old to have
    /// ([`crate::OrtFeature`]).
    #[error("{feature} need ONNX Runtime >= {needs}; the library at {} is {found}", path.display())]
    OrtTooOld {
        /// What was asked for.
        feature: &'static str,
        /// The first version that has it.
        needs: String,
        /// The loaded library's version.
        found: String,
        /// The loaded library.
        path: PathBuf,
    },

    /// An execution provider was requested but is not compiled into the loaded ONNX Runtime,
    /// or failed to register for a model (missing CUDA/cuDNN/TensorRT libraries, bad device).
    #[error("execution provider {provider} unavailable{}: {message}", model.as_deref().map(|m| format!(" for model '{m}'")).unwrap_or_default())]
    ExecutionProvider {
        /// ONNX Runtime's name of the provider, e.g. `CUDAExecutionProvider`.
        provider: String,
        /// The model being loaded, when the failure happened at load time.
        model: Option<String>,
        /// What ONNX Runtime said.
        message: String,
    },

    /// The model bytes could not be parsed or compiled by the engine.
    #[error("{engine} could not load model '{model}': {message}")]
    ModelLoad {
        /// The model label.
        model: String,
        /// The engine that tried.
        engine: EngineKind,
        /// The engine's message.
        message: String,
    },

    /// A model file could not be read.
    #[error("could not read model file {}: {source}", path.display())]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An input was given that the model does not have.
    #[error("model '{model}' has no input named '{tensor}' (inputs: {})", expected.join(", "))]
    UnknownInput {
        /// The model label.
        model: String,
        /// The name given.
        tensor: String,
        /// The model's input names.
        expected: Vec<String>,
    },

    /// The same input was given twice.
    #[error("input '{tensor}' of model '{model}' was given more than once")]
    DuplicateInput {
        /// The model label.
        model: String,
        /// The input name.
        tensor: String,
    },

    /// A model input was not given.
    #[error(
        "model '{model}' needs input '{tensor}' of shape {}, which was not given",
        fmt_dims(shape)
    )]
    MissingInput {
        /// The model label.
        model: String,
        /// The missing input.
        tensor: String,
        /// Its declared shape.
        shape: Vec<Option<usize>>,
    },

    /// An output was asked for that the model does not have.
    #[error("model '{model}' has no output named '{tensor}' (outputs: {})", expected.join(", "))]
    UnknownOutput {
        /// The model label.
        model: String,
        /// The name asked for.
        tensor: String,
        /// The model's output names.
        expected: Vec<String>,
    },

    /// An input has the wrong element type.
    #[error("input '{tensor}' of model '{model}' expects {expected}, got {got}")]
    DTypeMismatch {
        /// The model label.
        model: String,
        /// The input name.
        tensor: String,
        /// Declared element type.
        expected: DType,
        /// Given element type.
        got: DType,
    },

    /// An input has the wrong rank or a static dimension differs.
    #[error(
        "input '{tensor}' of model '{model}' expects shape {}, got {got:?}",
        fmt_dims(expected)
    )]
    ShapeMismatch {
        /// The model label.
        model: String,
        /// The input name.
        tensor: String,
        /// Declared shape (`None` = dynamic).
        expected: Vec<Option<usize>>,
        /// Given shape.
        got: Vec<usize>,
    },

    /// A tensor uses an element type that [`fieldtune_tensor::Tensor`] cannot carry.
    #[error("tensor '{tensor}' of model '{model}' has element type {dtype}, which fieldtune does not exchange (only f32 and i64 inputs)")]
    UnsupportedDType {
        /// The model label.
        model: String,
        /// The tensor name.
        tensor: String,
        /// The ONNX element type.
        dtype: String,
    },

    /// Running the model failed inside the engine.
    #[error("{engine} failed to run model '{model}': {message}")]
    Run {
        /// The model label.
        model: String,
        /// The engine.
        engine: EngineKind,
        /// The engine's message.
        message: String,
    },

    /// A resident-state configuration or update is inconsistent with the model.
    #[error("state '{tensor}' of model '{model}': {message}")]
    State {
        /// The model label.
        model: String,
        /// The state tensor (input) name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_error_names_tensor_and_both_shapes() {
        let e = EngineError::ShapeMismatch {
            model: "m".into(),
            tensor: "input".into(),
            expected: vec![None, Some(1), Some(28), Some(28)],
            got: vec![2, 3, 28, 28],
        };
        let s = e.to_string();
        assert!(s.contains("'input'"), "{s}");
        assert!(s.contains("[?, 1, 28, 28]"), "{s}");
        assert!(s.contains("[2, 3, 28, 28]"), "{s}");
    }

    #[test]
    fn not_found_lists_places() {
        let e = EngineError::OrtNotFound {
            searched: vec!["a".into(), "b".into()],
        };
        let s = e.to_string();
        assert!(
            s.starts_with("ONNX Runtime not found (looked in: a, b)"),
            "{s}"
        );
        assert!(s.contains("scripts/install-ort.sh"), "{s}");
    }
}
