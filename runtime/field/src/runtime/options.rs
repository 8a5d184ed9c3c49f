//! [`RunOptions`]: how a run is started (beside its config file), and the engines it makes:
//! each role's [`EngineSpec`] resolved against `--engine`, the board profile and the ONNX
//! Runtime library found.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldtune_engine::{
    select_engine, Engine, EngineError, EngineKind, EnginePreference, ExecutionProvider,
    GpuOptions, OrtEngine, OrtOptions, TractEngine,
};

use crate::config::EngineSpec;
use crate::error::{FieldError, Result};
use crate::events::EventObserver;

/// How `run` is started.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--engine`: overrides `auto` roles (`tract`, `ort`); `auto` leaves them to the plan.
    pub engine: EnginePreference,
    pub ort_lib: Option<PathBuf>,
    /// Install SIGINT/SIGTERM (stop) and SIGUSR1 (manual round) handlers.
    pub handle_signals: bool,
    /// The config file (names errors).
    pub config_path: PathBuf,
    /// Sees every event as it is logged (board status LEDs, systemd); `None`: nobody.
    pub observer: Option<Arc<dyn EventObserver>>,
}

/// An engine for one role, and why it was chosen.
pub struct ResolvedEngine {
    pub engine: Box<dyn Engine>,
    /// What it resolved to (never `auto`), as the config spells it: names it in events.
    pub spec: EngineSpec,
    /// One line: which rule picked it.
    pub why: String,
}

impl RunOptions {
    /// The engine of a role: `spec` with `threads` intra-op threads and the role's GPU
    /// provider options; `board` is `[budget] board` (used by `auto`).
    pub(crate) fn resolve(
        &self,
        spec: &EngineSpec,
        board: &str,
        trt_cache: Option<&Path>,
        gpu: &GpuOptions,
        threads: usize,
    ) -> Result<ResolvedEngine> {
        resolve_engine(
            spec,
            self.engine,
            board,
            self.ort_lib.as_deref(),
            trt_cache,
            gpu,
            threads,
        )
    }
}

fn ort_opts(
    lib: Option<&Path>,
    providers: Vec<ExecutionProvider>,
    threads: usize,
    gpu: &GpuOptions,
) -> OrtOptions {
    OrtOptions {
        lib: lib.map(Path::to_path_buf),
        providers,
        intra_threads: Some(threads),
        gpu: gpu.clone(),
        ..Default::default()
    }
}

/// ONNX Runtime with `providers`. Where the library is too old for weight-stripped TensorRT
/// engines, serving goes on without them: each new version's engine is then built on the
/// round thread while the old version serves (a warning says so; `trt_engine` events show
/// `build`).
fn ort_engine(
    lib: Option<&Path>,
    providers: Vec<ExecutionProvider>,
    threads: usize,
    gpu: &GpuOptions,
) -> Result<OrtEngine> {
    match OrtEngine::new(ort_opts(lib, providers.clone(), threads, gpu)) {
        Err(e @ EngineError::OrtTooOld { .. }) if gpu.trt_refit.is_some() => {
            tracing::warn!(
                "engine.trt_refit: {e}; TensorRT engines are rebuilt for each new version, on the round thread"
            );
            let plain = GpuOptions {
                trt_refit: None,
                ..gpu.clone()
            };
            Ok(OrtEngine::new(ort_opts(lib, providers, threads, &plain))?)
        }
        r => Ok(r?),
    }
}

/// Resolves one role's engine. `auto` follows `--engine` when it says `tract` or `ort`; else,
/// with a board profile, the profile's engine order and providers, limited to the providers
/// the ONNX Runtime library has (CPU where it has no GPU provider); without one, ONNX Runtime
/// on CPU when its library loads, else tract. A named provider that is missing is an error
/// naming the provider and the library. `gpu` goes to every CUDA and TensorRT session.
pub fn resolve_engine(
    spec: &EngineSpec,
    pref: EnginePreference,
    board: &str,
    lib: Option<&Path>,
    trt_cache: Option<&Path>,
    gpu: &GpuOptions,
    threads: usize,
) -> Result<ResolvedEngine> {
    let tract = |why: String| ResolvedEngine {
        engine: Box::new(TractEngine::with_threads(threads)),
        spec: EngineSpec::Tract,
        why,
    };
    match spec {
        EngineSpec::Tract => Ok(tract("asked for".into())),
        EngineSpec::Ort(eps) => Ok(ResolvedEngine {
            engine: Box::new(ort_engine(lib, eps.clone(), threads, gpu)?),
            spec: spec.clone(),
            why: "asked for".into(),
        }),
        EngineSpec::Auto => match pref {
            EnginePreference::Tract => Ok(tract("auto: --engine tract".into())),
            _ if board.is_empty() => {
                let engine = select_engine(pref, ort_opts(lib, Vec::new(), threads, gpu))?;
                let (spec, why) = match engine.kind() {
                    EngineKind::Ort => (
                        EngineSpec::Ort(vec![ExecutionProvider::Cpu]),
                        "auto, no board profile: ONNX Runtime found, CPU",
                    ),
                    EngineKind::Tract => (
                        EngineSpec::Tract,
                        "auto, no board profile: no ONNX Runtime, tract",
                    ),
                };
                Ok(ResolvedEngine {
                    engine,
                    spec,
                    why: why.into(),
                })
            }
            _ => auto_for_board(pref, board, lib, trt_cache, gpu, threads),
        },
    }
}

fn auto_for_board(
    pref: EnginePreference,
    board: &str,
    lib: Option<&Path>,
    trt_cache: Option<&Path>,
    gpu: &GpuOptions,
    threads: usize,
) -> Result<ResolvedEngine> {
    use fieldtune_board_profile::{EngineKind as BoardEngine, ExecutionProvider as BoardEp};
    let profile =
        fieldtune_board_profile::Profile::load(board).map_err(|e| FieldError::Config {
            path: board.into(),
            key: Some("budget.board".into()),
            reason: e.to_string(),
        })?;
    let name = &profile.board.name;
    let order = &profile.engine.order;
    let tract_ok = order.contains(&BoardEngine::Tract);
    let wanted: Vec<String> = profile
        .engine
        .execution_providers
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    if pref != EnginePreference::Ort && order.first() == Some(&BoardEngine::Tract) {
        return Ok(ResolvedEngine {
            engine: Box::new(TractEngine::with_threads(threads)),
            spec: EngineSpec::Tract,
            why: format!("auto: board {name} puts tract first"),
        });
    }
    let probe = match OrtEngine::new(ort_opts(lib, Vec::new(), threads, &GpuOptions::default())) {
        Ok(e) => e,
        Err(e) if tract_ok && pref != EnginePreference::Ort => {
            return Ok(ResolvedEngine {
                engine: Box::new(TractEngine::with_threads(threads)),
                spec: EngineSpec::Tract,
                why: format!(
                    "auto: board {name} asks for ort with [{}]; ONNX Runtime unusable ({e}); tract",
                    wanted.join(", ")
                ),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let have = probe.available_providers();
    let mut chain: Vec<ExecutionProvider> = Vec::new();
    for p in &profile.engine.execution_providers {
        if !have.iter().any(|h| h == p.ort_name()) {
            continue;
        }
        chain.push(match p {
            BoardEp::Cpu => ExecutionProvider::Cpu,
            BoardEp::Cuda => ExecutionProvider::Cuda { device: 0 },
            BoardEp::Tensorrt => ExecutionProvider::TensorRt {
                device: 0,
                engine_cache: trt_cache.map(Path::to_path_buf),
            },
        });
    }
    // TensorRT needs CUDA for the nodes it does not take.
    if !chain
        .iter()
        .any(|p| matches!(p, ExecutionProvider::Cuda { .. }))
    {
        chain.retain(|p| !matches!(p, ExecutionProvider::TensorRt { .. }));
    }
    if chain.is_empty() {
        chain.push(ExecutionProvider::Cpu);
    }
    let got: Vec<String> = chain.iter().map(|p| p.to_string()).collect();
    let why = format!(
        "auto: board {name} asks for [{}]; the library has [{}]; plan ort:{}",
        wanted.join(", "),
        have.join(", "),
        got.join(",")
    );
    drop(probe);
    Ok(ResolvedEngine {
        engine: Box::new(ort_engine(lib, chain.clone(), threads, gpu)?),
        spec: EngineSpec::Ort(chain),
        why,
    })
}
