//! The field loop: [`run`] sets up a run and its threads. Capture -> inference -> outputs run
//! on their own threads joined by fixed-capacity queues ([`pipeline`]); inference runs on the
//! caller's thread ([`serve`]); the round thread's [`supervisor`] adapts in the background and
//! commits through the gate; the [`monitor`] writes `stats` events and enforces
//! `max_seconds`. What the threads share is [`state::RunState`].
//!
//! Inference never waits for adaptation: it takes new weights with a `try_lock` on a
//! hand-over slot when a flag says one is there (the session was built, tested and
//! checkpointed on the round thread), adds frames to the replay buffer only when its lock is
//! free, and signals triggers through an atomic.

mod fault;
mod fleet;
mod live;
mod monitor;
mod options;
mod pipeline;
mod roles;
mod serve;
mod state;
pub mod summary;
mod supervisor;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use fieldtune_adapt::{fsutil, ModelDir};
use fieldtune_engine::{Engine, Session};
use fieldtune_frames::{Dataset, Image8, ModelConfig};

pub use options::{resolve_engine, ResolvedEngine, RunOptions};
pub use pipeline::{format_line, PredictionLine};
pub use summary::{RunSummary, VersionServed};

use crate::budget::rss_bytes;
use crate::config::{EnginePlan, Role, RunConfig, WhenFull};
use crate::error::{io_err, FieldError, Result};
use crate::events::{EngineFallback, EventLog, FieldEvent, Started};
use crate::preprocess::Preprocessor;
use crate::queue::SlotQueue;
use crate::replay::ReplayBuffer;
use crate::source::open_source;
use crate::store::CheckpointMeta;
use fault::{FrameClock, InferenceFaults};
use live::{Engines, Handover, LiveModel, LiveSession};
use pipeline::{capture_thread, open_output, output_thread, BadFrames, FrameSlot, Prediction};
use roles::Serving;
use serve::InferenceLoop;
use state::RunState;
use summary::mib;
use supervisor::SupervisorSetup;

fn load_anchors(dir: &Path, model: &ModelConfig) -> Result<(Vec<Image8>, Vec<usize>)> {
    let ds = Dataset::labeled(dir, &model.classes)?;
    let images = ds.load_all(model)?;
    let labels = ds.labels().into_iter().map(|l| l.unwrap_or(0)).collect();
    Ok((images, labels))
}

/// Spawns a named thread.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(io_err(format!("{name} thread")))
}

/// SIGINT/SIGTERM stop the run; when it has not stopped `shutdown_s` seconds later (a blocked
/// read, a long engine call), the process exits with status 1 and a message. A second signal
/// ends the process at once. SIGUSR1 asks for a round when `manual_signal` is on.
fn handle_signals(state: &Arc<RunState>, manual_signal: bool, shutdown_s: f64) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::flag;
    let s = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // A second signal ends the process at once.
        flag::register_conditional_shutdown(sig, 1, s.clone()).map_err(io_err("signal handler"))?;
        flag::register(sig, s.clone()).map_err(io_err("signal handler"))?;
    }
    if manual_signal {
        flag::register(SIGUSR1, state.manual.clone()).map_err(io_err("signal handler"))?;
    }
    let st = state.clone();
    spawn("signals", move || {
        // Watches until the process ends: a signal after another stop request (max_frames,
        // the source's end) gets the same deadline.
        while !s.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!("stop requested by signal");
        st.request_stop();
        std::thread::sleep(Duration::from_secs_f64(shutdown_s));
        eprintln!(
            "fieldtune run: not stopped {shutdown_s} s after the signal (pipeline.shutdown_s); exiting (the last good checkpoint is intact)"
        );
        std::process::exit(1);
    })?;
    Ok(())
}

/// Stops the run when `ext` turns true.
fn follow_stop(state: &Arc<RunState>, ext: Arc<AtomicBool>) -> Result<()> {
    let st = state.clone();
    spawn("stop", move || {
        while !st.stopped() {
            if ext.load(Ordering::Relaxed) {
                st.request_stop();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })?;
    Ok(())
}

/// The inference engine of the plan, and the serving fallback. A primary that cannot be
/// made (a provider the library lacks) is an error naming `engine.inference`, or, with
/// `fallback = "tract"`, serving starts on tract with an `engine_fallback` event.
fn plan_serving(
    cfg: &RunConfig,
    opts: &RunOptions,
    events: &EventLog,
) -> Result<(Arc<dyn Engine>, Serving)> {
    let path = &opts.config_path;
    let plan = cfg.engine_plan(path)?;
    plan.check_trt_cache(path)?;
    bound_trt_cache(&plan);
    let model_name = cfg
        .model
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let gpu = plan.gpu_options(Role::Inference, &model_name);
    let threads = cfg.engine.inference_threads;
    let tract =
        || -> Arc<dyn Engine> { Arc::new(fieldtune_engine::TractEngine::with_threads(threads)) };
    let (primary, primary_name): (Arc<dyn Engine>, String) = match opts.resolve(
        &plan.inference,
        &cfg.budget.board,
        plan.trt_cache.as_deref(),
        &gpu,
        threads,
    ) {
        Ok(r) => {
            tracing::info!("inference engine: {} ({})", r.engine.describe(), r.why);
            (Arc::from(r.engine), r.spec.to_string())
        }
        Err(e) if plan.fallback_tract => {
            let to = tract();
            tracing::warn!(
                "engine.inference = {}: {e}; serving on tract",
                plan.inference
            );
            events.emit(FieldEvent::EngineFallback(EngineFallback {
                role: "inference".into(),
                from: plan.inference.to_string(),
                to: "tract".into(),
                reason: e.to_string(),
                frame: None,
                round: None,
            }));
            return Ok((
                to,
                Serving {
                    plan,
                    primary_name: "tract".into(),
                    fallback_engine: None,
                    faults: None,
                },
            ));
        }
        Err(e) => {
            return Err(FieldError::Config {
                path: path.clone(),
                key: Some("engine.inference".into()),
                reason: format!(
                "{} cannot start: {e} (set engine.fallback = \"tract\" to serve on tract instead)",
                plan.inference
            ),
            })
        }
    };
    let fallback_engine =
        (plan.fallback_tract && primary.kind() != fieldtune_engine::EngineKind::Tract).then(tract);
    Ok((
        primary,
        Serving {
            plan,
            primary_name,
            fallback_engine,
            faults: None,
        },
    ))
}

/// Keeps `engine.trt_cache` within `trt_cache_max_mb`, the oldest files first (at start and
/// after each commit); a failure is logged, never fatal.
pub(crate) fn bound_trt_cache(plan: &EnginePlan) {
    let (Some(dir), max) = (&plan.trt_cache, plan.trt_cache_max_mb) else {
        return;
    };
    if max == 0 {
        return;
    }
    match fieldtune_engine::trt_cache::evict(dir, max.saturating_mul(1 << 20)) {
        Ok(e) if !e.files.is_empty() => tracing::info!(
            "engine.trt_cache: removed {} old files ({:.1} MiB) to stay within {max} MiB ({:.1} MiB kept)",
            e.files.len(),
            mib(e.bytes),
            mib(e.kept_bytes)
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("engine.trt_cache {}: not bounded: {e}", dir.display()),
    }
}

/// Runs the field loop until the source ends, `max_frames`/`max_seconds` is reached, or a
/// stop is requested (`stop` or SIGINT/SIGTERM with `handle_signals`).
pub fn run(
    cfg: &RunConfig,
    opts: &RunOptions,
    stop: Option<Arc<AtomicBool>>,
) -> Result<RunSummary> {
    let cfg_path = opts.config_path.clone();
    let model = ModelDir::open(&cfg.model)?;
    let mcfg = model.config.clone();
    let adapt = cfg.adapt_config(&cfg_path)?;
    let anchors_dir = cfg.anchors_dir();
    let anchors = load_anchors(&anchors_dir, &mcfg).map_err(|e| match e {
        FieldError::Frames(f) => FieldError::Config {
            path: cfg_path.clone(),
            key: Some("anchors".into()),
            reason: format!("{f} (the gate needs labeled anchors: class folders)"),
        },
        e => e,
    })?;
    let source = open_source(&cfg.source, mcfg.channels, &mcfg.classes)?;
    let source_desc = source.describe();
    let events = Arc::new(
        EventLog::open(&cfg.events_path(), cfg.events.fsync)?.with_observer(opts.observer.clone()),
    );
    let state = Arc::new(RunState::default());
    if opts.handle_signals {
        handle_signals(&state, cfg.trigger.manual_signal, cfg.pipeline.shutdown_s)?;
    }
    if let Some(ext) = &stop {
        follow_stop(&state, ext.clone())?;
    }

    let (infer_engine, serving) = plan_serving(cfg, opts, &events)?;
    let clock = Arc::new(FrameClock::default());
    let serving = Serving {
        faults: InferenceFaults::new(&cfg.fault, clock.clone()),
        ..serving
    };
    let engine_plan = serving.plan.clone();
    let replay = Arc::new(Mutex::new(ReplayBuffer::new(
        mcfg.input_shape(),
        cfg.replay.capacity,
        cfg.replay.recent_fraction,
        cfg.replay.seed,
    )));
    let handover = Arc::new(Handover::default());
    let (retire_tx, retire_rx) = mpsc::channel::<Box<dyn Session>>();
    // With `[fleet]`, the node key is loaded now; the node thread starts with serving and
    // hands messages to the round thread.
    let (fleet_link, fleet_rx) = if cfg.fleet.enabled() {
        let http = fleet::connect(&cfg.fleet, &cfg_path)?;
        let (tx, rx) = mpsc::channel();
        (Some((http, tx)), Some(rx))
    } else {
        (None, None)
    };

    // The round thread sets itself up (lower priority first: threads it starts inherit it),
    // opens the store and hands back the live session to start from.
    let (ready_tx, ready_rx) =
        mpsc::channel::<Result<(LiveModel, CheckpointMeta, String, String)>>();
    let setup = SupervisorSetup {
        cfg: cfg.clone(),
        opts: opts.clone(),
        state: state.clone(),
        handover: handover.clone(),
        events: events.clone(),
        replay: replay.clone(),
        infer_engine: infer_engine.clone(),
        model: model.clone(),
        adapt,
        anchors,
        retired: retire_rx,
        serving,
        fleet: fleet_rx,
    };
    let round_handle = spawn("round", move || match setup.start() {
        Err(e) => {
            let _ = ready_tx.send(Err(e));
            Ok(())
        }
        Ok((supervisor, live, meta)) => {
            let (desc, name) = supervisor.engine_desc();
            if ready_tx.send(Ok((live, meta, desc, name))).is_err() {
                return Ok(());
            }
            supervisor.run()
        }
    })?;
    let (live_model, resumed, engine_desc, engine_name) = match ready_rx.recv() {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let _ = round_handle.join();
            return Err(e);
        }
        Err(_) => {
            return Err(round_handle
                .join()
                .ok()
                .and_then(|r| r.err())
                .unwrap_or_else(|| FieldError::State {
                    path: cfg.state_dir.clone(),
                    reason: "round thread failed to start".into(),
                }))
        }
    };
    state.version.store(resumed.version, Ordering::Relaxed);
    let rss_start = rss_bytes().unwrap_or(0);
    // Serving starts here: the summary's seconds and fps leave the setup out.
    let t_start = Instant::now();
    events.emit(FieldEvent::Started(Started {
        pid: std::process::id(),
        model: cfg.model.display().to_string(),
        engine: engine_desc.clone(),
        source: source_desc.clone(),
        resumed_version: resumed.version,
        resumed_kind: resumed.kind.clone(),
        resumed_round: resumed.round,
        anchors: anchors_dir.display().to_string(),
        rss_mb: mib(rss_start),
    }));
    tracing::info!(
        "serving {source_desc} with {engine_desc}; model version {} ({})",
        resumed.version,
        resumed.kind
    );

    let fleet_handle = match fleet_link {
        Some((http, tx)) => Some(fleet::start(
            http,
            &cfg.fleet,
            tx,
            state.clone(),
            events.clone(),
        )?),
        None => None,
    };

    // Queues and the stage threads.
    let pre = Preprocessor::new(&mcfg, cfg.input.resize);
    let capture_q = Arc::new(SlotQueue::new(
        cfg.pipeline.capture_queue,
        cfg.pipeline.when_full,
        || FrameSlot {
            id: 0,
            t_ms: 0,
            label: None,
            image: pre.blank(),
        },
    ));
    let output_q = Arc::new(SlotQueue::new(
        cfg.pipeline.output_queue,
        WhenFull::DropOldest,
        Prediction::default,
    ));
    state.set_queues(capture_q.clone(), output_q.clone());

    let capture_handle = {
        let (q, state) = (capture_q.clone(), state.clone());
        let skips = BadFrames::new(events.clone(), cfg.source.max_bad_frames);
        spawn("capture", move || {
            capture_thread(source, pre, q, state, skips)
        })?
    };
    let output_handle = {
        let (q, sink) = (output_q.clone(), open_output(&cfg.output.path)?);
        let classes: Vec<String> = mcfg
            .classes
            .iter()
            .map(|c| serde_json::Value::from(c.as_str()).to_string())
            .collect();
        let labels = cfg.output.labels;
        spawn("output", move || output_thread(q, sink, classes, labels))?
    };
    let metrics_handle = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let (addr, h) = crate::metrics::serve(&cfg.metrics.listen, state.clone())?;
        tracing::info!("metrics on http://{addr}/metrics");
        Some(h)
    };
    let monitor_handle = {
        let (state, events, every, max_s) = (
            state.clone(),
            events.clone(),
            cfg.pipeline.stats_every_s,
            cfg.pipeline.max_seconds,
        );
        spawn("monitor", move || {
            monitor::monitor_thread(state, events, every, max_s)
        })?
    };

    // Inference runs on this thread.
    let totals = InferenceLoop {
        cfg,
        model: &mcfg,
        capture: &capture_q,
        output: &output_q,
        replay: &replay,
        state: &state,
        handover: &handover,
    }
    .run(LiveSession::new(
        live_model,
        retire_tx,
        Engines::new(engine_name, "tract".into(), &engine_plan),
        clock,
        events.clone(),
        state.clone(),
    ));
    // The stream ended (no stop asked): a round under way still gets its gate and, if it
    // passes, its checkpoint, within its own wall-clock cap.
    if totals.is_ok() && !state.stopped() && state.round_active.load(Ordering::Relaxed) {
        tracing::info!("the source ended during a round: letting the round finish");
        while state.round_active.load(Ordering::Relaxed) && !state.stopped() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    state.request_stop();
    capture_q.close();
    output_q.close();
    let capture_res = capture_handle.join();
    let out_res = output_handle.join();
    let round_res = round_handle.join();
    let _ = monitor_handle.join();
    if let Some(h) = fleet_handle {
        // A request in flight ends within the HTTP timeout; the run does not wait for it.
        let t0 = Instant::now();
        while !h.is_finished() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    if let Some(h) = metrics_handle {
        let _ = h.join();
    }
    let totals = totals?;
    let (cap, out) = (capture_q.counts(), output_q.counts());
    let seconds = t_start.elapsed().as_secs_f64();
    let frames = state.frames.load(Ordering::Relaxed);
    let idle = totals.idle.summary();
    let during = totals.during.summary();
    let summary = RunSummary {
        engine: engine_desc.clone(),
        source: source_desc,
        seconds,
        frames,
        bad_frames: state.bad_frames.load(Ordering::Relaxed),
        fps: frames as f64 / seconds.max(1e-9),
        capture_dropped: cap.dropped,
        output_dropped: out.dropped,
        rounds: state.rounds.load(Ordering::Relaxed),
        commits: state.commits.load(Ordering::Relaxed),
        rollbacks: state.rollbacks.load(Ordering::Relaxed),
        resets: state.resets.load(Ordering::Relaxed),
        fleet_rounds: state.fleet_rounds.load(Ordering::Relaxed),
        fleet_passed: state.fleet_passed.load(Ordering::Relaxed),
        resumed_version: resumed.version,
        final_version: state.version.load(Ordering::Relaxed),
        p99_ratio: (idle.count > 0 && during.count > 0).then(|| during.p99_ms / idle.p99_ms),
        latency_idle: idle,
        latency_during_rounds: during,
        accuracy: (totals.labeled > 0).then(|| totals.correct as f64 / totals.labeled as f64),
        labeled_frames: totals.labeled,
        rss_start_mb: mib(rss_start),
        rss_peak_mb: mib(totals.rss_peak.max(rss_bytes().unwrap_or(0))),
        rss_end_mb: mib(rss_bytes().unwrap_or(0)),
        inference_errors: totals.errors,
        frames_by_engine: state.frames_by_engine(),
        fallbacks: totals.fallbacks,
        restores: totals.restores,
        versions: totals.versions.into_values().collect(),
    };
    events.emit(FieldEvent::Stopped(summary.clone()));
    let _ = fsutil::atomic_write(
        &cfg.state_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Ok(Err(e)) = capture_res {
        return Err(e);
    }
    match round_res {
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(FieldError::State {
                path: cfg.state_dir.clone(),
                reason: "the round thread panicked; the last good checkpoint is intact".into(),
            })
        }
        Ok(Ok(())) => {}
    }
    if let Ok(Err(e)) = out_res {
        return Err(e);
    }
    Ok(summary)
}
