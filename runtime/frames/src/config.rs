//! [`ModelConfig`]: a model folder's `model.toml` (input/output names, input size,
//! normalisation and class names).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{FramesError, ImageShape};

/// Keys of `model.toml`, in file order.
pub const MODEL_TOML_KEYS: [&str; 8] = [
    "input", "output", "channels", "height", "width", "mean", "std", "classes",
];

/// How a model wants its input and names its output; parsed from `model.toml`:
///
/// ```toml
/// input = "input"        # graph input name (float32, NCHW)
/// output = "logits"      # graph output name (class logits)
/// channels = 1           # 1 or 3
/// height = 28
/// width = 28
/// mean = [0.1307]        # per channel, after scaling pixels to 0..1
/// std = [0.3081]
/// classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Graph input name (float32, NCHW).
    pub input: String,
    /// Graph output name (class logits).
    pub output: String,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    pub height: u32,
    pub width: u32,
    /// Per-channel mean, after scaling pixels to 0..1.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (> 0), after scaling pixels to 0..1.
    pub std: Vec<f32>,
    /// Class names; index = class id.
    pub classes: Vec<String>,
}

/// The longest class name, in bytes (names are echoed in errors, predictions and reports).
pub const MAX_CLASS_NAME: usize = 256;

fn config_err(path: &Path, key: Option<&str>, reason: impl Into<String>) -> FramesError {
    FramesError::Config {
        path: path.to_path_buf(),
        key: key.map(str::to_owned),
        reason: reason.into(),
    }
}

fn field<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    path: &Path,
) -> Result<T, FramesError> {
    let value = table
        .get(key)
        .ok_or_else(|| config_err(path, Some(key), "missing"))?;
    value.clone().try_into::<T>().map_err(|e| {
        config_err(
            path,
            Some(key),
            format!("{} (got {})", e.message().trim(), value),
        )
    })
}

impl ModelConfig {
    /// Reads and validates `path` (a `model.toml`). Errors name the file and, where one is
    /// at fault, the key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FramesError> {
        let path = path.as_ref();
        let text = crate::fsread::read_regular_string(path)?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used to name the source in errors.
    pub fn from_toml_str(text: &str, path: impl AsRef<Path>) -> Result<Self, FramesError> {
        let path = path.as_ref();
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| config_err(path, None, e.to_string().trim_end()))?;
        if let Some(key) = table
            .keys()
            .find(|k| !MODEL_TOML_KEYS.contains(&k.as_str()))
        {
            return Err(config_err(
                path,
                Some(key),
                format!(
                    "unknown key, expected one of {}",
                    MODEL_TOML_KEYS.join(", ")
                ),
            ));
        }
        let cfg = ModelConfig {
            input: field(&table, "input", path)?,
            output: field(&table, "output", path)?,
            channels: field(&table, "channels", path)?,
            height: field(&table, "height", path)?,
            width: field(&table, "width", path)?,
            mean: field(&table, "mean", path)?,
            std: field(&table, "std", path)?,
            classes: field(&table, "classes", path)?,
        };
        cfg.validate_as(path)?;
        Ok(cfg)
    }

    /// Checks the invariants: names non-empty, channels 1 or 3, height and width 1 to
    /// [`crate::MAX_FRAME_SIDE`],
    /// `mean`/`std` one finite value per channel with `std > 0`, classes non-empty and
    /// unique.
    pub fn validate(&self) -> Result<(), FramesError> {
        self.validate_as(Path::new("model.toml"))
    }

    fn validate_as(&self, path: &Path) -> Result<(), FramesError> {
        let err = |key: &str, reason: String| Err(config_err(path, Some(key), reason));
        if self.input.is_empty() {
            return err("input", "must not be empty".into());
        }
        if self.output.is_empty() {
            return err("output", "must not be empty".into());
        }
        if self.channels != 1 && self.channels != 3 {
            return err("channels", format!("must be 1 or 3, got {}", self.channels));
        }
        for (key, v) in [("height", self.height), ("width", self.width)] {
            if !(1..=crate::MAX_FRAME_SIDE).contains(&v) {
                return err(
                    key,
                    format!("must be 1..={}, got {v}", crate::MAX_FRAME_SIDE),
                );
            }
        }
        let c = self.channels as usize;
        if self.mean.len() != c {
            return err(
                "mean",
                format!(
                    "needs {c} value(s) (one per channel), got {}",
                    self.mean.len()
                ),
            );
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return err("mean", format!("must be finite, got {m}"));
        }
        if self.std.len() != c {
            return err(
                "std",
                format!(
                    "needs {c} value(s) (one per channel), got {}",
                    self.std.len()
                ),
            );
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return err("std", format!("must be finite and > 0, got {s}"));
        }
        if self.classes.is_empty() {
            return err("classes", "must not be empty".into());
        }
        let mut seen = HashSet::new();
        for name in &self.classes {
            if name.is_empty() {
                return err("classes", "class names must not be empty".into());
            }
            if name.len() > MAX_CLASS_NAME {
                let head: String = name.chars().take(32).collect();
                return err(
                    "classes",
                    format!(
                        "class name {head:?}... is {} bytes; at most {MAX_CLASS_NAME}",
                        name.len()
                    ),
                );
            }
            if !seen.insert(name.as_str()) {
                return err("classes", format!("duplicate class {name:?}"));
            }
        }
        Ok(())
    }

    /// The TOML text of this config, in the schema's key order (for writing an adapted
    /// model folder). [`ModelConfig::from_toml_str`] reads it back unchanged.
    pub fn to_toml_string(&self) -> String {
        // Serialising a struct of strings, integers, floats and string arrays cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Writes [`ModelConfig::to_toml_string`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FramesError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_toml_string()).map_err(|source| FramesError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The input shape the model expects for one image.
    pub fn input_shape(&self) -> ImageShape {
        ImageShape {
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Index of the class called `name`.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }
}

/// The `model.toml` path of a model folder.
pub fn model_toml_path(model_dir: impl AsRef<Path>) -> PathBuf {
    model_dir.as_ref().join("model.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
input = "input"        # graph input name (float32, NCHW)
output = "logits"      # graph output name (class logits)
channels = 1           # 1 or 3
height = 28
width = 28
mean = [0.1307]        # per channel, after scaling pixels to 0..1
std = [0.3081]
classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"#;

    fn parse(text: &str) -> Result<ModelConfig, FramesError> {
        ModelConfig::from_toml_str(text, "models/x/model.toml")
    }

    #[test]
    fn parses_the_documented_example() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.input, "input");
        assert_eq!(cfg.output, "logits");
        assert_eq!(
            cfg.input_shape(),
            ImageShape {
                channels: 1,
                height: 28,
                width: 28
            }
        );
        assert_eq!(cfg.mean, vec![0.1307]);
        assert_eq!(cfg.std, vec![0.3081]);
        assert_eq!(cfg.num_classes(), 10);
        assert_eq!(cfg.class_index("7"), Some(7));
    }

    #[test]
    fn to_toml_string_round_trips() {
        let cfg = parse(GOOD).unwrap();
        let text = cfg.to_toml_string();
        assert!(
            text.starts_with("input = \"input\"\noutput = \"logits\"\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), cfg);
        let rgb = ModelConfig {
            channels: 3,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            ..cfg
        };
        assert_eq!(parse(&rgb.to_toml_string()).unwrap(), rgb);
    }

    /// Replaces the line starting with `key =` by `line` (or removes it when `line` is empty).
    fn with_line(key: &str, line: &str) -> String {
        GOOD.lines()
            .map(|l| {
                if l.starts_with(&format!("{key} =")) {
                    line
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn expect_key_error(text: &str, key: &str) -> String {
        let err = parse(text).expect_err(text);
        match &err {
            FramesError::Config {
                path, key: Some(k), ..
            } => {
                assert_eq!(k, key, "{err}");
                assert_eq!(path, Path::new("models/x/model.toml"));
            }
            other => panic!("expected a config error for {key}, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("models/x/model.toml") && msg.contains(key),
            "{msg}"
        );
        msg
    }

    #[test]
    fn each_bad_field_names_file_and_key() {
        let cases: &[(&str, &str)] = &[
            ("input", "input = \"\""),
            ("input", "input = 3"),
            ("input", ""),
            ("output", "output = [\"a\"]"),
            ("output", ""),
            ("channels", "channels = 2"),
            ("channels", "channels = -1"),
            ("channels", "channels = \"1\""),
            ("channels", ""),
            ("height", "height = 0"),
            ("height", "height = 1.5"),
            ("height", "height = 60000"),
            ("width", "width = 4294967295"),
            ("width", "width = 0"),
            ("width", ""),
            ("mean", "mean = [0.1, 0.2]"),
            ("mean", "mean = 0.1307"),
            ("mean", "mean = [nan]"),
            ("std", "std = [0.0]"),
            ("std", "std = [-0.3]"),
            ("std", "std = []"),
            ("std", "std = [\"x\"]"),
            ("classes", "classes = []"),
            ("classes", "classes = [\"a\", \"b\", \"a\"]"),
            ("classes", "classes = [\"a\", 1]"),
            ("classes", ""),
        ];
        for (key, line) in cases {
            let msg = expect_key_error(&with_line(key, line), key);
            if line.is_empty() {
                assert!(msg.contains("missing"), "{msg}");
            }
        }
    }

    #[test]
    fn a_huge_class_name_is_refused_without_echoing_it() {
        let huge = "x".repeat(10 << 20);
        let msg = expect_key_error(
            &with_line("classes", &format!("classes = [\"a\", \"{huge}\"]")),
            "classes",
        );
        assert!(msg.len() < 300, "{} bytes of message", msg.len());
        assert!(msg.contains("10485760 bytes"), "{msg}");
    }

    #[test]
    fn unknown_key_is_named() {
        let msg = expect_key_error(&format!("{GOOD}\nlayout = \"nhwc\"\n"), "layout");
        assert!(msg.contains("unknown key"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file() {
        let err = parse("input = \"input\nchannels = 1").unwrap_err();
        assert!(matches!(err, FramesError::Config { key: None, .. }));
        assert!(err.to_string().contains("models/x/model.toml"), "{err}");
    }

    #[test]
    fn serde_rejects_unknown_fields_too() {
        let text = format!("{GOOD}\nextra = 1\n");
        assert!(toml::from_str::<ModelConfig>(&text).is_err());
        assert!(toml::from_str::<ModelConfig>(GOOD).is_ok());
    }

    #[test]
    fn load_reads_a_file_and_names_missing_ones() {
        let dir = crate::testutil::TempDir::new("config");
        let path = dir.path().join("model.toml");
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(ModelConfig::load(&path).unwrap(), parse(GOOD).unwrap());
        let missing = dir.path().join("nope.toml");
        let err = ModelConfig::load(&missing).unwrap_err();
        assert!(matches!(err, FramesError::Io { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");
        assert_eq!(model_toml_path(dir.path()), path);
    }
}
