//! ONNX Runtime versions: the oldest library this build loads, and the features that need a
//! newer one.
//!
//! fieldtune binds ONNX Runtime's C API at level [`ort::MINOR_VERSION`] (the `ort` crate's
//! `api-NN` feature), so any library from 1.NN on loads; an older one is refused by the
//! loader with a message naming the version it found. Options that only newer libraries
//! understand are listed in [`OrtFeature`] and checked against the loaded library's version
//! (its `OrtGetApiBase()->GetVersionString()`) before they are used: on an older library the
//! caller gets [`EngineError::OrtTooOld`] naming the feature and both versions, never a crash
//! or an "unknown option" from deep inside a provider.

use std::fmt;

use crate::discovery::OrtRuntimeInfo;
use crate::EngineError;

/// The oldest ONNX Runtime this build loads: `(1, ort::MINOR_VERSION)`, the C API level
/// fieldtune is compiled against.
pub const ORT_MIN_VERSION: OrtVersion = OrtVersion::new(1, ort::MINOR_VERSION, 0);

/// The oldest ONNX Runtime the engine tests run against in CI (`.ci/run`). PyPI's CPU
/// wheels ship `libonnxruntime.so` from 1.19.0 on; 1.17 and 1.18 wheels hold only the Python
/// module, so older libraries are supported by the build but not tested here.
pub const ORT_OLDEST_TESTED: OrtVersion = OrtVersion::new(1, 19, 2);

/// A `major.minor.patch` ONNX Runtime version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrtVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version: also the C API level the library offers.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl OrtVersion {
    /// A version from its parts.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        OrtVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `1.19.2`, `1.20` or `1.22.0-dev...` (anything after the numbers is ignored);
    /// `None` when the string does not start with `major.minor`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts
            .next()
            .map(|p| {
                let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(0)
            })
            .unwrap_or(0);
        Some(OrtVersion::new(major, minor, patch))
    }
}

impl fmt::Display for OrtVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A feature fieldtune can use that needs a newer ONNX Runtime than [`ORT_MIN_VERSION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrtFeature {
    /// TensorRT weight-stripped, refittable engines (`trt_weight_stripped_engine_enable` with
    /// `trt_onnx_model_folder_path`): a new weight version refits the cached engine instead
    /// of rebuilding it. Also needs TensorRT 10.
    TrtWeightStrippedEngine,
}

impl OrtFeature {
    /// Every feature, oldest first.
    pub const ALL: [OrtFeature; 1] = [OrtFeature::TrtWeightStrippedEngine];

    /// The first ONNX Runtime release that has it.
    pub const fn min_version(self) -> OrtVersion {
        match self {
            // microsoft/onnxruntime#20412, released in 1.18.1.
            OrtFeature::TrtWeightStrippedEngine => OrtVersion::new(1, 18, 1),
        }
    }

    /// A short name for messages and `fieldtune doctor`.
    pub const fn describe(self) -> &'static str {
        match self {
            OrtFeature::TrtWeightStrippedEngine => {
                "TensorRT weight-stripped engines refitted from new weights"
            }
        }
    }

    /// Whether a library of this version has the feature.
    pub fn available_in(self, version: OrtVersion) -> bool {
        version >= self.min_version()
    }
}

impl fmt::Display for OrtFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ONNX Runtime >= {})",
            self.describe(),
            self.min_version()
        )
    }
}

/// The features a library of this version lacks; for an unparsable version (`unknown`), all.
pub fn ort_lacks(version: &str) -> Vec<OrtFeature> {
    let v = OrtVersion::parse(version);
    OrtFeature::ALL
        .into_iter()
        .filter(|f| v.is_none_or(|v| !f.available_in(v)))
        .collect()
}

impl OrtRuntimeInfo {
    /// The loaded library's version, `None` when it could not be told.
    pub fn parsed_version(&self) -> Option<OrtVersion> {
        OrtVersion::parse(&self.version)
    }

    /// Whether the loaded library has `feature`.
    pub fn supports(&self, feature: OrtFeature) -> bool {
        self.parsed_version()
            .is_some_and(|v| feature.available_in(v))
    }

    /// `Ok` when the loaded library has `feature`, else [`EngineError::OrtTooOld`] naming the
    /// feature, the version it needs and the library found. Call before using the feature.
    pub fn require(&self, feature: OrtFeature) -> Result<(), EngineError> {
        if self.supports(feature) {
            return Ok(());
        }
        Err(EngineError::OrtTooOld {
            feature: feature.describe(),
            needs: feature.min_version().to_string(),
            found: self.version.clone(),
            path: self.location.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_dev_versions() {
        assert_eq!(OrtVersion::parse("1.19.2"), Some(OrtVersion::new(1, 19, 2)));
        assert_eq!(OrtVersion::parse("1.20"), Some(OrtVersion::new(1, 20, 0)));
        assert_eq!(
            OrtVersion::parse("1.22.0-dev20250101"),
            Some(OrtVersion::new(1, 22, 0))
        );
        assert_eq!(OrtVersion::parse("unknown"), None);
        assert_eq!(OrtVersion::parse("1"), None);
    }

    #[test]
    fn orders_by_minor_then_patch() {
        assert!(OrtVersion::new(1, 18, 0) < OrtVersion::new(1, 18, 1));
        assert!(OrtVersion::new(1, 9, 9) < OrtVersion::new(1, 17, 0));
    }

    #[test]
    fn lacks_depends_on_the_version() {
        assert_eq!(
            ort_lacks("1.18.0"),
            vec![OrtFeature::TrtWeightStrippedEngine]
        );
        assert!(ort_lacks("1.18.1").is_empty());
        assert!(ort_lacks("1.31.1").is_empty());
        assert_eq!(ort_lacks("unknown"), OrtFeature::ALL.to_vec());
    }

    #[test]
    fn ci_tests_the_oldest_version_named_here() {
        let ci = include_str!("../../../.ci/run");
        assert!(ci.contains(&format!("ort_oldest={ORT_OLDEST_TESTED}\n")));
    }

    #[test]
    fn minimum_is_the_compiled_api_level() {
        assert_eq!(ORT_MIN_VERSION.major, 1);
        assert_eq!(ORT_MIN_VERSION.minor, ort::MINOR_VERSION);
        assert!(ORT_MIN_VERSION <= ORT_OLDEST_TESTED);
        for f in OrtFeature::ALL {
            assert!(f.min_version() > ORT_MIN_VERSION, "{f} is always available");
        }
    }
}
