//! What `fieldtune doctor` prints: which engines and accelerators this machine offers.

use std::fmt;
use std::path::Path;

use crate::discovery::{self, OrtAttempt, OrtLocation, OrtRuntimeInfo};
use crate::ort_version::{ort_lacks, OrtFeature, OrtVersion, ORT_MIN_VERSION, ORT_OLDEST_TESTED};
use crate::TRACT_VERSION;

/// CPU architecture and the SIMD features the engines use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// `x86_64`, `aarch64`, ...
    pub arch: &'static str,
    /// Feature name and whether this CPU has it (avx/avx2/fma/avx512f/f16c on x86_64,
    /// neon/fp16/dotprod on aarch64).
    pub features: Vec<(&'static str, bool)>,
}

impl CpuFeatures {
    /// Detects the running CPU's features.
    pub fn detect() -> Self {
        #[allow(unused_mut)]
        let mut features = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            features.push(("avx", std::arch::is_x86_feature_detected!("avx")));
            features.push(("avx2", std::arch::is_x86_feature_detected!("avx2")));
            features.push(("fma", std::arch::is_x86_feature_detected!("fma")));
            features.push(("f16c", std::arch::is_x86_feature_detected!("f16c")));
            features.push(("avx512f", std::arch::is_x86_feature_detected!("avx512f")));
        }
        #[cfg(target_arch = "aarch64")]
        {
            features.push(("neon", std::arch::is_aarch64_feature_detected!("neon")));
            features.push(("fp16", std::arch::is_aarch64_feature_detected!("fp16")));
            features.push((
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ));
        }
        CpuFeatures {
            arch: std::env::consts::ARCH,
            features,
        }
    }

    /// Whether the named feature is present (false when unknown).
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|(n, on)| *n == name && *on)
    }
}

/// One ONNX Runtime library found by discovery and what happened to it.
#[derive(Clone, Debug)]
pub struct CandidateStatus {
    /// Where it is and which discovery step found it.
    pub location: OrtLocation,
    /// `Some(None)` loaded, `Some(Some(msg))` failed, `None` not tried (an earlier one loaded).
    pub tried: Option<Option<String>>,
}

/// Everything `fieldtune doctor` reports.
#[derive(Clone, Debug)]
pub struct DoctorReport {
    /// Places searched for ONNX Runtime, in order.
    pub searched: Vec<String>,
    /// Libraries found, in discovery order, with their outcome.
    pub candidates: Vec<CandidateStatus>,
    /// The loaded ONNX Runtime, or why none loaded.
    pub ort: Result<OrtRuntimeInfo, String>,
    /// Execution providers of the loaded ONNX Runtime (empty when none loaded).
    pub execution_providers: Vec<String>,
    /// The oldest ONNX Runtime this build loads.
    pub ort_min_version: OrtVersion,
    /// The oldest ONNX Runtime CI runs the engine tests on.
    pub ort_oldest_tested: OrtVersion,
    /// Features fieldtune can use that the loaded library is too old for (empty when none
    /// loaded).
    pub ort_lacks: Vec<OrtFeature>,
    /// tract's version (always available).
    pub tract_version: &'static str,
    /// CPU architecture and features.
    pub cpu: CpuFeatures,
}

/// Finds (and loads, once per process) ONNX Runtime and gathers the report.
pub fn doctor_report(ort_lib: Option<&Path>) -> DoctorReport {
    let search = discovery::search_ort(ort_lib);
    let loaded = discovery::ort_runtime(ort_lib);
    let attempts: Vec<OrtAttempt> = match &loaded {
        Ok(rt) => rt.info.attempts.clone(),
        Err(_) => discovery::failed_attempts(),
    };
    let mut candidates: Vec<CandidateStatus> = search
        .candidates
        .iter()
        .map(|loc| CandidateStatus {
            location: loc.clone(),
            tried: attempts
                .iter()
                .find(|a| a.location.path == loc.path)
                .map(|a| a.error.clone()),
        })
        .collect();
    // A library loaded earlier in the process may not be among this search's candidates.
    for a in &attempts {
        if !candidates
            .iter()
            .any(|c| c.location.path == a.location.path)
        {
            candidates.push(CandidateStatus {
                location: a.location.clone(),
                tried: Some(a.error.clone()),
            });
        }
    }
    let (ort, execution_providers, lacks) = match loaded {
        Ok(rt) => {
            let eps = crate::ort_backend::available_providers(&rt);
            (Ok(rt.info.clone()), eps, ort_lacks(&rt.info.version))
        }
        Err(e) => (Err(e.to_string()), Vec::new(), Vec::new()),
    };
    DoctorReport {
        searched: search.searched,
        candidates,
        ort,
        execution_providers,
        ort_min_version: ORT_MIN_VERSION,
        ort_oldest_tested: ORT_OLDEST_TESTED,
        ort_lacks: lacks,
        tract_version: TRACT_VERSION,
        cpu: CpuFeatures::detect(),
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ort {
            Ok(info) => writeln!(
                f,
                "ONNX Runtime: {} from {} ({})",
                info.version,
                info.location.path.display(),
                info.location.source
            )?,
            Err(e) => writeln!(f, "ONNX Runtime: not available: {e}")?,
        }
        writeln!(
            f,
            "  minimum: ONNX Runtime {}.{} (C API level {}); CI tests {} and newer",
            self.ort_min_version.major,
            self.ort_min_version.minor,
            self.ort_min_version.minor,
            self.ort_oldest_tested
        )?;
        if let Ok(info) = &self.ort {
            if self.ort_lacks.is_empty() {
                writeln!(f, "  {} has every feature fieldtune uses", info.version)?;
            }
            for feat in &self.ort_lacks {
                writeln!(f, "  {} lacks: {feat}", info.version)?;
            }
        }
        writeln!(f, "  searched: {}", self.searched.join("; "))?;
        if self.candidates.is_empty() {
            writeln!(f, "  no library found")?;
        }
        for c in &self.candidates {
            let status = match &c.tried {
                Some(None) => "loaded".to_string(),
                Some(Some(e)) => format!("failed: {e}"),
                None => "found, not used".to_string(),
            };
            writeln!(
                f,
                "  {} [{}]: {status}",
                c.location.path.display(),
                c.location.source
            )?;
        }
        if !self.execution_providers.is_empty() {
            writeln!(
                f,
                "  execution providers: {}",
                self.execution_providers.join(", ")
            )?;
        }
        writeln!(f, "tract: {} (CPU, always available)", self.tract_version)?;
        let feats: Vec<String> = self
            .cpu
            .features
            .iter()
            .map(|(n, on)| format!("{n}{}", if *on { "+" } else { "-" }))
            .collect();
        write!(f, "CPU: {} {}", self.cpu.arch, feats.join(" "))
    }
}
