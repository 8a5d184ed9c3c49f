//! [`EnginePlan`]: the `[engine]` section parsed into what each role (inference, train) runs
//! on and where serving falls back. Parsing checks the forms; [`EngineSpec::Auto`] is resolved
//! at start, against the board profile and the ONNX Runtime library found
//! (`runtime::options`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldtune_engine::{ExecutionProvider, GpuOptions, TrtRefit};

use super::{gt, RunConfig};
use crate::error::{FieldError, Result};

/// What one role runs on, as the config spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineSpec {
    /// The board profile's engines, limited to what this machine has.
    Auto,
    /// tract (pure Rust, CPU).
    Tract,
    /// ONNX Runtime with these providers, in priority order; each must register.
    Ort(Vec<ExecutionProvider>),
}

impl EngineSpec {
    /// Parses `auto`, `tract` or `ort:P[,P..]` (P: `cpu`, `cuda[:N]`, `tensorrt[:N]`).
    /// TensorRT providers get `trt_cache`. TensorRT needs CUDA after it in the chain
    /// (ONNX Runtime's TensorRT provider hands the nodes it cannot take to CUDA).
    pub fn parse(s: &str, trt_cache: Option<&Path>) -> std::result::Result<EngineSpec, String> {
        match s.trim() {
            "auto" => Ok(EngineSpec::Auto),
            "tract" => Ok(EngineSpec::Tract),
            other => {
                let Some(chain) = other.strip_prefix("ort:") else {
                    return Err(format!(
                        "'{other}': expected \"auto\", \"tract\" or \"ort:PROVIDERS\" (e.g. \"ort:cpu\", \"ort:cuda\", \"ort:tensorrt,cuda\")"
                    ));
                };
                let eps = ExecutionProvider::parse_chain(chain, trt_cache)?;
                let trt = eps
                    .iter()
                    .position(|p| matches!(p, ExecutionProvider::TensorRt { .. }));
                let cuda = eps
                    .iter()
                    .position(|p| matches!(p, ExecutionProvider::Cuda { .. }));
                if let Some(t) = trt {
                    if cuda.is_none_or(|c| c <= t) {
                        return Err(format!(
                            "'{other}': tensorrt needs cuda after it (\"ort:tensorrt,cuda\"): ONNX Runtime's TensorRT provider needs the CUDA provider for the nodes TensorRT does not take"
                        ));
                    }
                }
                Ok(EngineSpec::Ort(eps))
            }
        }
    }

    /// Whether a GPU provider is asked for.
    pub fn wants_gpu(&self) -> bool {
        match self {
            EngineSpec::Ort(eps) => eps.iter().any(|p| !matches!(p, ExecutionProvider::Cpu)),
            _ => false,
        }
    }
}

impl fmt::Display for EngineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineSpec::Auto => f.write_str("auto"),
            EngineSpec::Tract => f.write_str("tract"),
            EngineSpec::Ort(eps) => {
                let names: Vec<String> = eps.iter().map(|p| p.to_string()).collect();
                write!(f, "ort:{}", names.join(","))
            }
        }
    }
}

/// The engine plan of a run: `[engine]`, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct EnginePlan {
    pub inference: EngineSpec,
    pub train: EngineSpec,
    /// Serving falls back to tract (false: a failing primary is an error).
    pub fallback_tract: bool,
    /// The engine of the round after a failed train step, if any.
    pub train_fallback: Option<EngineSpec>,
    /// Between probes of a failed primary.
    pub retry: Duration,
    /// Per-frame deadline of the primary, if any.
    pub deadline: Option<Duration>,
    /// Missed deadlines in a row that count as a failure.
    pub deadline_misses: u32,
    pub trt_cache: Option<PathBuf>,
    /// Bound of `trt_cache` in MiB (0: none).
    pub trt_cache_max_mb: u64,
    /// TensorRT serves FP16 engines.
    pub trt_fp16: bool,
    /// Weight-stripped TensorRT engines, refitted at each new version.
    pub trt_refit: bool,
    /// CUDA arena limit (MiB; 0: the library's default).
    pub gpu_memory_mb: u64,
}

/// The role an engine is made for: the GPU options differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Inference,
    Train,
}

impl RunConfig {
    /// Parses `[engine]`; errors name the file and the key.
    pub fn engine_plan(&self, path: &Path) -> Result<EnginePlan> {
        let bad = |key: &str, reason: String| FieldError::Config {
            path: path.into(),
            key: Some(format!("engine.{key}")),
            reason,
        };
        let e = &self.engine;
        let trt_cache = (!e.trt_cache.as_os_str().is_empty()).then(|| e.trt_cache.clone());
        let spec = |key: &str, s: &str| {
            EngineSpec::parse(s, trt_cache.as_deref()).map_err(|r| bad(key, r))
        };
        let inference = spec("inference", &e.inference)?;
        let train = spec("train", &e.train)?;
        let fallback_tract = match e.fallback.as_str() {
            "tract" => true,
            "none" => false,
            other => {
                return Err(bad(
                    "fallback",
                    format!("'{other}': expected \"tract\" or \"none\""),
                ))
            }
        };
        let train_fallback = match e.train_fallback.trim() {
            "" => None,
            s => match spec("train_fallback", s)? {
                EngineSpec::Auto => {
                    return Err(bad(
                        "train_fallback",
                        "'auto': name the engine (\"ort:cpu\" or \"tract\")".into(),
                    ))
                }
                x => Some(x),
            },
        };
        if !(gt(e.retry_s, 0.0) && e.retry_s.is_finite()) {
            return Err(bad(
                "retry_s",
                format!("{}: must be > 0 seconds", e.retry_s),
            ));
        }
        if !(e.inference_deadline_ms >= 0.0 && e.inference_deadline_ms.is_finite()) {
            return Err(bad(
                "inference_deadline_ms",
                format!("{}: must be >= 0 (0: no deadline)", e.inference_deadline_ms),
            ));
        }
        if e.trt_refit && trt_cache.is_none() {
            return Err(bad(
                "trt_refit",
                "needs engine.trt_cache: the weight-stripped engines are kept there".into(),
            ));
        }
        if e.deadline_misses == 0 {
            return Err(bad("deadline_misses", "must be at least 1".into()));
        }
        Ok(EnginePlan {
            inference,
            train,
            fallback_tract,
            train_fallback,
            retry: Duration::from_secs_f64(e.retry_s),
            deadline: (e.inference_deadline_ms > 0.0)
                .then(|| Duration::from_secs_f64(e.inference_deadline_ms / 1e3)),
            deadline_misses: e.deadline_misses,
            trt_cache,
            trt_cache_max_mb: e.trt_cache_max_mb,
            trt_fp16: e.trt_fp16,
            trt_refit: e.trt_refit,
            gpu_memory_mb: e.gpu_memory_mb,
        })
    }
}

impl EnginePlan {
    /// The GPU provider options of a role's sessions: the CUDA arena limit for every role;
    /// TensorRT FP16 and refit for serving only (train steps take their weights as inputs,
    /// there is nothing to refit). Refit writes the model as `<trt_cache>/onnx/<model>.onnx`:
    /// one name per model, so one engine per graph whatever the weights. CPU and tract
    /// sessions ignore all of it.
    pub fn gpu_options(&self, role: Role, model: &str) -> GpuOptions {
        let mut g = GpuOptions::default().with_cuda_mem_limit_mb(self.gpu_memory_mb);
        if role == Role::Inference {
            g.trt_fp16 = self.trt_fp16;
            g.trt_refit = match (&self.trt_cache, self.trt_refit) {
                (Some(dir), true) => Some(TrtRefit {
                    onnx_dir: dir.join("onnx"),
                    model_file: format!("{}.onnx", sanitize(model)),
                }),
                _ => None,
            };
        }
        g
    }

    /// Checks that the TensorRT cache folder can be written (created if missing); the error
    /// names `engine.trt_cache`.
    pub fn check_trt_cache(&self, path: &Path) -> Result<()> {
        let Some(dir) = &self.trt_cache else {
            return Ok(());
        };
        let probe = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let f = dir.join(format!(".fieldtune-write-test-{}", std::process::id()));
            std::fs::write(&f, b"")?;
            std::fs::remove_file(&f)
        };
        probe().map_err(|e| FieldError::Config {
            path: path.into(),
            key: Some("engine.trt_cache".into()),
            reason: format!("{}: not writable: {e}", dir.display()),
        })
    }
}

/// A model name as a file name: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("model{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(engine: &str) -> Result<EnginePlan> {
        let text = format!("model = \"m\"\n[source]\npaths = [\"d\"]\n[engine]\n{engine}\n");
        RunConfig::from_toml(&text, Path::new("run.toml"))?.engine_plan(Path::new("run.toml"))
    }

    fn err(engine: &str) -> String {
        plan(engine).expect_err(engine).to_string()
    }

    #[test]
    fn forms_parse_into_a_plan() {
        let p = plan("inference = \"ort:tensorrt,cuda\"\ntrain = \"ort:cuda\"\nfallback = \"tract\"\ntrain_fallback = \"ort:cpu\"\ntrt_cache = \"/tmp/trt\"")
            .unwrap();
        assert_eq!(p.inference.to_string(), "ort:tensorrt:0,cuda:0");
        assert!(p.inference.wants_gpu());
        assert_eq!(p.train.to_string(), "ort:cuda:0");
        assert!(p.fallback_tract);
        assert_eq!(
            p.train_fallback,
            Some(EngineSpec::Ort(vec![ExecutionProvider::Cpu]))
        );
        match &p.inference {
            EngineSpec::Ort(eps) => assert_eq!(
                eps[0],
                ExecutionProvider::TensorRt {
                    device: 0,
                    engine_cache: Some("/tmp/trt".into())
                }
            ),
            other => panic!("{other}"),
        }
        let d = plan("").unwrap();
        assert_eq!((d.inference, d.train), (EngineSpec::Auto, EngineSpec::Auto));
        assert!(!d.fallback_tract && d.deadline.is_none());
        assert_eq!(
            plan("inference = \"tract\"").unwrap().inference,
            EngineSpec::Tract
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err("inference = \"ort:rocm\"");
        assert!(e.contains("engine.inference") && e.contains("rocm"), "{e}");
        let e = err("train = \"onnx\"");
        assert!(e.contains("engine.train") && e.contains("onnx"), "{e}");
        let e = err("inference = \"ort:tensorrt\"");
        assert!(
            e.contains("engine.inference") && e.contains("needs cuda"),
            "{e}"
        );
        let e = err("inference = \"ort:cuda,tensorrt\"");
        assert!(e.contains("needs cuda after it"), "{e}");
        let e = err("fallback = \"cpu\"");
        assert!(e.contains("engine.fallback"), "{e}");
        let e = err("retry_s = -1.0");
        assert!(e.contains("engine.retry_s"), "{e}");
        let e = err("retry_s = 0.0");
        assert!(e.contains("engine.retry_s"), "{e}");
        let e = err("inference_deadline_ms = -5.0");
        assert!(e.contains("engine.inference_deadline_ms"), "{e}");
        let e = err("train_fallback = \"auto\"");
        assert!(e.contains("engine.train_fallback"), "{e}");
    }

    #[test]
    fn gpu_keys_reach_the_provider_settings_of_each_role() {
        use fieldtune_engine::provider_settings;
        let p = plan("inference = \"ort:tensorrt,cuda\"\ntrain = \"ort:cuda\"\ngpu_memory_mb = 1024\ntrt_cache = \"/c\"\ntrt_fp16 = true\ntrt_refit = true")
            .unwrap();
        let limit = ("gpu_mem_limit", (1024u64 << 20).to_string());
        let EngineSpec::Ort(infer) = &p.inference else {
            panic!("{}", p.inference)
        };
        let g = p.gpu_options(Role::Inference, "mnist cnn/v1");
        assert_eq!(
            g.trt_refit,
            Some(TrtRefit {
                onnx_dir: "/c/onnx".into(),
                model_file: "mnist_cnn_v1.onnx".into()
            })
        );
        let trt = provider_settings(&infer[0], &g);
        assert!(trt.contains(&("trt_fp16_enable", "1".into())));
        assert!(trt.contains(&("trt_weight_stripped_engine_enable", "1".into())));
        assert!(trt.contains(&("trt_onnx_model_folder_path", "/c/onnx".into())));
        assert!(provider_settings(&infer[1], &g).contains(&limit));
        // Training gets the arena limit, not the TensorRT serving options.
        let t = p.gpu_options(Role::Train, "m");
        assert!(!t.trt_fp16 && t.trt_refit.is_none());
        let EngineSpec::Ort(train) = &p.train else {
            panic!("{}", p.train)
        };
        assert!(provider_settings(&train[0], &t).contains(&limit));
        // Defaults: no limit, no refit, FP32.
        let d = plan("").unwrap();
        assert_eq!((d.gpu_memory_mb, d.trt_cache_max_mb), (0, 2048));
        assert_eq!(d.gpu_options(Role::Inference, "m"), GpuOptions::default());
        // Refit needs the cache folder.
        let e = err("trt_refit = true");
        assert!(
            e.contains("engine.trt_refit") && e.contains("trt_cache"),
            "{e}"
        );
        assert_eq!(sanitize(".."), "model..");
    }

    #[test]
    fn an_unwritable_trt_cache_names_the_key() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A folder under a regular file cannot be created.
        let bad = file.join("cache");
        let p = plan(&format!("trt_cache = \"{}\"", bad.display())).unwrap();
        let e = p
            .check_trt_cache(Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("engine.trt_cache") && e.contains("not writable"),
            "{e}"
        );
        let ok = plan(&format!(
            "trt_cache = \"{}\"",
            d.path().join("trt").display()
        ))
        .unwrap();
        ok.check_trt_cache(Path::new("run.toml")).unwrap();
        assert!(d.path().join("trt").is_dir());
    }
}
