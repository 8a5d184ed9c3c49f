//! The field loop: capture -> inference -> outputs on their own threads joined by
//! fixed-capacity queues, a round thread that adapts in the background, and a monitor that
//! writes `stats` events and enforces `max_seconds`.
//!
//! Inference never waits for adaptation: it takes new weights with a `try_lock` on a
//! hand-over slot when a flag says one is there (the session was built, tested and
//! checkpointed on the round thread), adds frames to the replay buffer only when its lock is
//! free, and signals triggers through an atomic.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fieldtune_adapt::{checkpoint, fsutil, ModelDir};
use fieldtune_engine::{select_engine, Engine, EnginePreference, OrtOptions, Session};
use fieldtune_frames::{write_normalized, Dataset, Image8, ModelConfig};
use fieldtune_tensor::Tensor;
use serde::Serialize;
use serde_json::json;

use crate::budget::{lower_thread_priority, rss_bytes, Budget};
use crate::config::{RunConfig, WhenFull};
use crate::error::{io_err, FieldError, Result};
use crate::events::EventLog;
use crate::gate::{decide, probe, GateInput};
use crate::preprocess::Preprocessor;
use crate::queue::{QueueCounts, SlotQueue};
use crate::replay::ReplayBuffer;
use crate::round::{all_finite, Adapter, Cut, RoundControl};
use crate::source::{open_source, FrameSource, Next};
use crate::stats::{softmax_stats, LatencyHist, LatencySummary, Window};
use crate::store::{unix_ms, CheckpointMeta, Store};
use crate::trigger::{FrameTriggers, Reason, Schedule};

/// How `run` is started.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub engine: EnginePreference,
    pub ort_lib: Option<PathBuf>,
    /// Install SIGINT/SIGTERM (stop) and SIGUSR1 (manual round) handlers.
    pub handle_signals: bool,
    /// The config file (names errors).
    pub config_path: PathBuf,
    /// Sees every event kind as it is logged (board status LEDs); `None`: nobody.
    pub observer: Option<Arc<dyn crate::events::EventObserver>>,
}

/// A frame in the capture queue: already at the model's size.
struct FrameSlot {
    id: u64,
    t_ms: u64,
    label: Option<usize>,
    image: Image8,
}

/// A prediction in the output queue.
#[derive(Clone, Copy, Debug, Default)]
struct Prediction {
    frame: u64,
    t_ms: u64,
    class: usize,
    confidence: f32,
    version: u64,
    label: Option<usize>,
}

/// New weights on their way to the inference thread.
struct LiveModel {
    session: Box<dyn Session>,
    version: u64,
}

/// State shared between the threads of a run.
pub struct Shared {
    pub stop: AtomicBool,
    pub frames: AtomicU64,
    pub version: AtomicU64,
    pub round_active: AtomicBool,
    pub rounds: AtomicU64,
    pub commits: AtomicU64,
    pub rollbacks: AtomicU64,
    pub resets: AtomicU64,
    /// Manual trigger (SIGUSR1 sets it).
    pub manual: Arc<AtomicBool>,
    /// A trigger reason code from the inference thread (0: none).
    request: AtomicU8,
    /// Round thread -> inference: a round started (restart the frame count).
    round_started: AtomicBool,
    /// Round thread -> inference: new weights went live (new drift baseline).
    committed: AtomicBool,
    has_pending: AtomicBool,
    pending: Mutex<Option<LiveModel>>,
    window: Mutex<Option<Window>>,
    last_window: Mutex<Window>,
    capture_counts: Mutex<Option<Arc<SlotQueue<FrameSlot>>>>,
    output_counts: Mutex<Option<Arc<SlotQueue<Prediction>>>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            frames: AtomicU64::new(0),
            version: AtomicU64::new(0),
            round_active: AtomicBool::new(false),
            rounds: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            manual: Arc::new(AtomicBool::new(false)),
            request: AtomicU8::new(0),
            round_started: AtomicBool::new(false),
            committed: AtomicBool::new(false),
            has_pending: AtomicBool::new(false),
            pending: Mutex::new(None),
            window: Mutex::new(None),
            last_window: Mutex::new(Window::default()),
            capture_counts: Mutex::new(None),
            output_counts: Mutex::new(None),
        }
    }

    /// Counters of the capture and output queues.
    pub fn queue_counts(&self) -> (QueueCounts, QueueCounts) {
        let c = self
            .capture_counts
            .lock()
            .ok()
            .and_then(|q| q.as_ref().map(|q| q.counts()))
            .unwrap_or_default();
        let o = self
            .output_counts
            .lock()
            .ok()
            .and_then(|q| q.as_ref().map(|q| q.counts()))
            .unwrap_or_default();
        (c, o)
    }

    /// The last complete stats window.
    pub fn last_window(&self) -> Window {
        *self.last_window.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_over(&self, m: LiveModel) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
        self.has_pending.store(true, Ordering::Release);
    }
}

/// What a run did; also written to `<state_dir>/summary.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSummary {
    pub engine: String,
    pub source: String,
    /// Seconds of serving (setup excluded).
    pub seconds: f64,
    pub frames: u64,
    pub fps: f64,
    pub capture_dropped: u64,
    pub output_dropped: u64,
    pub rounds: u64,
    pub commits: u64,
    pub rollbacks: u64,
    pub resets: u64,
    pub resumed_version: u64,
    pub final_version: u64,
    /// Inference latency on frames while no round ran.
    pub latency_idle: LatencySummary,
    /// Inference latency on frames while a round ran.
    pub latency_during_rounds: LatencySummary,
    /// p99 during rounds / p99 idle.
    pub p99_ratio: Option<f64>,
    /// Live accuracy over labeled frames, if any.
    pub accuracy: Option<f64>,
    pub labeled_frames: u64,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
    pub inference_errors: u64,
}

impl RunSummary {
    /// A text table for people.
    pub fn table(&self) -> String {
        let l = |s: &LatencySummary| {
            format!(
                "{:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "frames {} in {:.1} s ({:.1} fps), dropped: capture {}, output {}",
            self.frames, self.seconds, self.fps, self.capture_dropped, self.output_dropped
        );
        let _ = writeln!(
            t,
            "rounds {}: committed {}, rolled back {}, resets to source {}; model version {} -> {}",
            self.rounds,
            self.commits,
            self.rollbacks,
            self.resets,
            self.resumed_version,
            self.final_version
        );
        if let Some(a) = self.accuracy {
            let _ = writeln!(
                t,
                "live accuracy {:.4} over {} labeled frames",
                a, self.labeled_frames
            );
        }
        let _ = writeln!(
            t,
            "inference latency (ms)    frames       p50       p90       p99       max"
        );
        let _ = writeln!(t, "  idle                  {}", l(&self.latency_idle));
        let _ = writeln!(
            t,
            "  during rounds         {}",
            l(&self.latency_during_rounds)
        );
        if let Some(r) = self.p99_ratio {
            let _ = writeln!(t, "  p99 during rounds / idle: {r:.2}");
        }
        let _ = write!(
            t,
            "RSS MiB: start {:.1}, peak {:.1}, end {:.1}",
            self.rss_start_mb, self.rss_peak_mb, self.rss_end_mb
        );
        t
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn make_engine(opts: &RunOptions, threads: usize) -> Result<Box<dyn Engine>> {
    Ok(select_engine(
        opts.engine,
        OrtOptions {
            lib: opts.ort_lib.clone(),
            intra_threads: Some(threads),
            ..Default::default()
        },
    )?)
}

fn load_anchors(dir: &Path, model: &ModelConfig) -> Result<(Vec<Image8>, Vec<usize>)> {
    let ds = Dataset::labeled(dir, &model.classes)?;
    let images = ds.load_all(model)?;
    let labels = ds.labels().into_iter().map(|l| l.unwrap_or(0)).collect();
    Ok((images, labels))
}

/// Accuracy of `classes` against `labels`.
fn accuracy(classes: &[usize], labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    classes.iter().zip(labels).filter(|(c, l)| c == l).count() as f64 / labels.len() as f64
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
    let adapt_cfg = cfg.adapt_config(&cfg_path)?;
    let anchors_dir = cfg.anchors_dir();
    let (anchors, anchor_labels) = load_anchors(&anchors_dir, &mcfg).map_err(|e| match e {
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
    let shared = Arc::new(Shared::new());
    if opts.handle_signals {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        use signal_hook::flag;
        let s = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // A second signal ends the process at once.
            flag::register_conditional_shutdown(sig, 1, s.clone())
                .map_err(io_err("signal handler"))?;
            flag::register(sig, s.clone()).map_err(io_err("signal handler"))?;
        }
        if cfg.trigger.manual_signal {
            flag::register(SIGUSR1, shared.manual.clone()).map_err(io_err("signal handler"))?;
        }
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while !sh.stop.load(Ordering::Relaxed) {
                    if s.load(Ordering::Relaxed) {
                        tracing::info!("stop requested by signal");
                        sh.stop.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .map_err(io_err("signal thread"))?;
    }
    if let Some(ext) = &stop {
        let (ext, sh) = (ext.clone(), shared.clone());
        std::thread::Builder::new()
            .name("stop".into())
            .spawn(move || {
                while !sh.stop.load(Ordering::Relaxed) {
                    if ext.load(Ordering::Relaxed) {
                        sh.stop.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .map_err(io_err("stop thread"))?;
    }

    let infer_engine: Arc<dyn Engine> = Arc::from(make_engine(opts, cfg.engine.inference_threads)?);
    let engine_desc = infer_engine.describe();
    let replay = Arc::new(Mutex::new(ReplayBuffer::new(
        mcfg.input_shape(),
        cfg.replay.capacity,
        cfg.replay.recent_fraction,
        cfg.replay.seed,
    )));
    let (retire_tx, retire_rx) = mpsc::channel::<Box<dyn Session>>();

    // The round thread sets itself up (lower priority first: threads it starts inherit it),
    // opens the store and hands back the live session to start from.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(Box<dyn Session>, CheckpointMeta)>>();
    let round_handle = {
        let (shared, events, replay, cfg, opts, infer_engine, model) = (
            shared.clone(),
            events.clone(),
            replay.clone(),
            cfg.clone(),
            opts.clone(),
            infer_engine.clone(),
            model.clone(),
        );
        std::thread::Builder::new()
            .name("round".into())
            .spawn(move || {
                round_thread(RoundThread {
                    cfg,
                    opts,
                    shared,
                    events,
                    replay,
                    infer_engine,
                    model,
                    adapt_cfg,
                    anchors,
                    anchor_labels,
                    ready: ready_tx,
                    retired: retire_rx,
                })
            })
            .map_err(io_err("round thread"))?
    };
    let (session, resumed) = match ready_rx.recv() {
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
    shared.version.store(resumed.version, Ordering::Relaxed);
    let rss_start = rss_bytes().unwrap_or(0);
    // Serving starts here: the summary's seconds and fps leave the setup out.
    let t_start = Instant::now();
    events.emit(
        "started",
        json!({
            "pid": std::process::id(),
            "model": cfg.model.display().to_string(),
            "engine": engine_desc,
            "source": source_desc,
            "resumed_version": resumed.version,
            "resumed_kind": resumed.kind,
            "resumed_round": resumed.round,
            "anchors": anchors_dir.display().to_string(),
            "rss_mb": mib(rss_start),
        }),
    );
    tracing::info!(
        "serving {source_desc} with {engine_desc}; model version {} ({})",
        resumed.version,
        resumed.kind
    );

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
    *shared
        .capture_counts
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(capture_q.clone());
    *shared
        .output_counts
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(output_q.clone());

    let capture_handle = {
        let (q, shared) = (capture_q.clone(), shared.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_thread(source, pre, q, shared))
            .map_err(io_err("capture thread"))?
    };
    let output_handle = {
        let (q, sink) = (output_q.clone(), open_output(&cfg.output.path)?);
        let classes: Vec<String> = mcfg
            .classes
            .iter()
            .map(|c| serde_json::Value::from(c.as_str()).to_string())
            .collect();
        let labels = cfg.output.labels;
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || output_thread(q, sink, classes, labels))
            .map_err(io_err("output thread"))?
    };
    let metrics_handle = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let (addr, h) = crate::metrics::serve(&cfg.metrics.listen, shared.clone())?;
        tracing::info!("metrics on http://{addr}/metrics");
        Some(h)
    };
    let monitor_handle = {
        let (shared, events, every, max_s) = (
            shared.clone(),
            events.clone(),
            cfg.pipeline.stats_every_s,
            cfg.pipeline.max_seconds,
        );
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || monitor_thread(shared, events, every, max_s))
            .map_err(io_err("monitor thread"))?
    };

    // Inference runs on this thread.
    let totals = inference_loop(
        cfg,
        &mcfg,
        session,
        resumed.version,
        &capture_q,
        &output_q,
        &replay,
        &shared,
        &retire_tx,
    );
    // The stream ended (no stop asked): a round under way still gets its gate and, if it
    // passes, its checkpoint, within its own wall-clock cap.
    if totals.is_ok()
        && !shared.stop.load(Ordering::Relaxed)
        && shared.round_active.load(Ordering::Relaxed)
    {
        tracing::info!("the source ended during a round: letting the round finish");
        while shared.round_active.load(Ordering::Relaxed) && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    capture_q.close();
    output_q.close();
    let capture_res = capture_handle.join();
    let out_res = output_handle.join();
    let round_res = round_handle.join();
    let _ = monitor_handle.join();
    if let Some(h) = metrics_handle {
        let _ = h.join();
    }
    let totals = totals?;
    let (cap, out) = (capture_q.counts(), output_q.counts());
    let seconds = t_start.elapsed().as_secs_f64();
    let frames = shared.frames.load(Ordering::Relaxed);
    let idle = totals.idle.summary();
    let during = totals.during.summary();
    let summary = RunSummary {
        engine: infer_engine.describe(),
        source: source_desc,
        seconds,
        frames,
        fps: frames as f64 / seconds.max(1e-9),
        capture_dropped: cap.dropped,
        output_dropped: out.dropped,
        rounds: shared.rounds.load(Ordering::Relaxed),
        commits: shared.commits.load(Ordering::Relaxed),
        rollbacks: shared.rollbacks.load(Ordering::Relaxed),
        resets: shared.resets.load(Ordering::Relaxed),
        resumed_version: resumed.version,
        final_version: shared.version.load(Ordering::Relaxed),
        p99_ratio: (idle.count > 0 && during.count > 0).then(|| during.p99_ms / idle.p99_ms),
        latency_idle: idle,
        latency_during_rounds: during,
        accuracy: (totals.labeled > 0).then(|| totals.correct as f64 / totals.labeled as f64),
        labeled_frames: totals.labeled,
        rss_start_mb: mib(rss_start),
        rss_peak_mb: mib(totals.rss_peak.max(rss_bytes().unwrap_or(0))),
        rss_end_mb: mib(rss_bytes().unwrap_or(0)),
        inference_errors: totals.errors,
    };
    events.emit(
        "stopped",
        serde_json::to_value(&summary).unwrap_or_default(),
    );
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

fn open_output(path: &str) -> Result<Option<Box<dyn Write + Send>>> {
    Ok(match path {
        "" | "none" => None,
        "-" => Some(Box::new(std::io::stdout())),
        p => {
            let p = Path::new(p);
            if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
            }
            Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(io_err(p))?,
            ))
        }
    })
}

fn capture_thread(
    mut source: Box<dyn FrameSource>,
    pre: Preprocessor,
    q: Arc<SlotQueue<FrameSlot>>,
    shared: Arc<Shared>,
) -> Result<()> {
    let mut id = 0u64;
    let mut bad = 0u64;
    let res = loop {
        if shared.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let frame = match source.next_frame() {
            Ok(Next::Frame(f)) => f,
            Ok(Next::Idle) => continue,
            Ok(Next::End) => {
                tracing::info!("source ended after {id} frames");
                break Ok(());
            }
            Err(e) => {
                tracing::error!("{e}");
                break Err(e);
            }
        };
        let Some(mut slot) = q.acquire() else {
            break Ok(());
        };
        if pre.apply(&frame, &mut slot.image) {
            slot.id = id;
            slot.t_ms = unix_ms();
            slot.label = frame.label;
            id += 1;
            q.push(slot);
        } else {
            bad += 1;
            if bad == 1 || bad.is_power_of_two() {
                tracing::warn!("skipped {bad} unusable frame(s) (empty or inconsistent size)");
            }
            q.unacquire(slot);
        }
    };
    q.close();
    if res.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    res
}

fn output_thread(
    q: Arc<SlotQueue<Prediction>>,
    sink: Option<Box<dyn Write + Send>>,
    classes: Vec<String>,
    labels: bool,
) -> Result<()> {
    let mut sink = sink.map(|s| std::io::BufWriter::with_capacity(1 << 16, s));
    let mut line = String::with_capacity(256);
    loop {
        let Some(p) = q.pop(Duration::from_millis(100)) else {
            if q.is_drained() {
                break;
            }
            if let Some(s) = &mut sink {
                let _ = s.flush();
            }
            continue;
        };
        q.release(p);
        if let Some(s) = &mut sink {
            let label = if labels {
                p.label.map(|l| classes[l].as_str())
            } else {
                None
            };
            format_line(
                &mut line,
                p.frame,
                p.t_ms,
                &classes[p.class],
                p.class,
                p.confidence,
                p.version,
                label,
            );
            if let Err(e) = s.write_all(line.as_bytes()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    break;
                }
                tracing::error!("output: {e}");
            }
            let c = q.counts();
            if c.pushed == c.popped {
                let _ = s.flush();
            }
        }
    }
    if let Some(s) = &mut sink {
        let _ = s.flush();
    }
    Ok(())
}

/// One prediction as a JSON line, written into `line` (cleared first; no allocation once
/// `line` has grown). `class_json` and `label_json` are JSON strings, quotes included.
#[allow(clippy::too_many_arguments)]
pub fn format_line(
    line: &mut String,
    frame: u64,
    t_ms: u64,
    class_json: &str,
    class_id: usize,
    confidence: f32,
    version: u64,
    label_json: Option<&str>,
) {
    line.clear();
    let _ = write!(
        line,
        "{{\"frame\":{frame},\"t_ms\":{t_ms},\"class\":{class_json},\"class_id\":{class_id},\"confidence\":{confidence:.5},\"version\":{version}"
    );
    if let Some(l) = label_json {
        let _ = write!(line, ",\"label\":{l}");
    }
    line.push_str("}\n");
}

fn monitor_thread(shared: Arc<Shared>, events: Arc<EventLog>, every: f64, max_seconds: f64) {
    let t0 = Instant::now();
    let mut next = t0 + Duration::from_secs_f64(every);
    let mut last_frames = 0;
    let mut last_t = t0;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if max_seconds > 0.0 && t0.elapsed().as_secs_f64() >= max_seconds {
            tracing::info!("max_seconds reached");
            shared.stop.store(true, Ordering::Relaxed);
        }
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs_f64(every);
        let w = shared.window.lock().ok().and_then(|mut g| g.take());
        let Some(w) = w else { continue };
        *shared.last_window.lock().unwrap_or_else(|p| p.into_inner()) = w;
        let frames = shared.frames.load(Ordering::Relaxed);
        let now = Instant::now();
        let fps =
            (frames - last_frames) as f64 / now.duration_since(last_t).as_secs_f64().max(1e-9);
        (last_frames, last_t) = (frames, now);
        let (cap, out) = shared.queue_counts();
        let l = w.latency.summary();
        events.emit(
            "stats",
            json!({
                "frames": frames,
                "fps": fps,
                "window_frames": w.frames,
                "latency_p50_ms": l.p50_ms,
                "latency_p99_ms": l.p99_ms,
                "latency_max_ms": l.max_ms,
                "entropy": w.mean_entropy(),
                "confidence": w.mean_confidence(),
                "ema_entropy": w.ema_entropy,
                "ema_confidence": w.ema_confidence,
                "accuracy": w.accuracy(),
                "version": w.version,
                "round_active": w.round_active,
                "capture_dropped": cap.dropped,
                "output_dropped": out.dropped,
                "rss_mb": mib(rss_bytes().unwrap_or(0)),
            }),
        );
    }
}

#[derive(Default)]
struct Totals {
    idle: LatencyHist,
    during: LatencyHist,
    labeled: u64,
    correct: u64,
    errors: u64,
    rss_peak: u64,
}

#[allow(clippy::too_many_arguments)]
fn inference_loop(
    cfg: &RunConfig,
    mcfg: &ModelConfig,
    mut session: Box<dyn Session>,
    mut version: u64,
    capture_q: &SlotQueue<FrameSlot>,
    output_q: &SlotQueue<Prediction>,
    replay: &Mutex<ReplayBuffer>,
    shared: &Shared,
    retire: &mpsc::Sender<Box<dyn Session>>,
) -> Result<Totals> {
    let mut totals = Totals::default();
    let mut input = Tensor::zeros_f32(vec![
        1,
        mcfg.channels as usize,
        mcfg.height as usize,
        mcfg.width as usize,
    ]);
    let names = [mcfg.input.as_str()];
    let out_name = [mcfg.output.as_str()];
    let k = mcfg.classes.len();
    let mut triggers = FrameTriggers::new(&cfg.trigger);
    let mut window = Window {
        version,
        ..Window::default()
    };
    let every = Duration::from_secs_f64(cfg.pipeline.stats_every_s);
    let mut window_start = Instant::now();
    let mut consecutive_errors = 0u32;
    let mut replay_skipped = 0u64;
    let max_frames = cfg.pipeline.max_frames;
    loop {
        if shared.has_pending.load(Ordering::Acquire) {
            if let Ok(mut g) = shared.pending.try_lock() {
                if let Some(m) = g.take() {
                    let old = std::mem::replace(&mut session, m.session);
                    version = m.version;
                    shared.has_pending.store(false, Ordering::Release);
                    // Dropped on the round thread, off the hot path.
                    let _ = retire.send(old);
                }
            }
        }
        if shared.committed.swap(false, Ordering::Relaxed) {
            triggers.committed();
        }
        if shared.round_started.swap(false, Ordering::Relaxed) {
            triggers.round_started();
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(slot) = capture_q.pop(Duration::from_millis(100)) else {
            if capture_q.is_drained() {
                break;
            }
            continue;
        };
        let during_round = shared.round_active.load(Ordering::Relaxed);
        let t = Instant::now();
        let res = write_normalized(&slot.image, mcfg, 0, input.as_f32_mut().expect("f32 input"))
            .map_err(FieldError::from)
            .and_then(|_| Ok(session.run_fetch(&[(names[0], &input)], &out_name)?));
        let us = t.elapsed().as_secs_f64() * 1e6;
        let logits = match res {
            Ok(mut v) => v.remove(0),
            Err(e) => {
                totals.errors += 1;
                consecutive_errors += 1;
                tracing::error!("frame {}: inference failed: {e}", slot.id);
                capture_q.release(slot);
                if consecutive_errors >= 100 {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                continue;
            }
        };
        consecutive_errors = 0;
        if during_round {
            totals.during.record_us(us);
        } else {
            totals.idle.record_us(us);
        }
        window.latency.record_us(us);
        window.round_active |= during_round;
        let stats = logits
            .as_f32()
            .filter(|v| v.len() == k)
            .and_then(softmax_stats);
        let (class, conf, entropy) = stats.unwrap_or((0, f64::NAN, f64::NAN));
        window.frames += 1;
        if stats.is_some() {
            window.entropy_sum += entropy;
            window.confidence_sum += conf;
        }
        if let Some(l) = slot.label {
            window.labeled += 1;
            totals.labeled += 1;
            if l == class {
                window.correct += 1;
                totals.correct += 1;
            }
        }
        // The replay buffer is never waited for: a busy lock (a round taking its snapshot)
        // skips this frame.
        match replay.try_lock() {
            Ok(mut r) => r.push(&slot.image),
            Err(_) => replay_skipped += 1,
        }
        if let Some(reason) = triggers.observe(entropy, conf) {
            let _ = shared.request.compare_exchange(
                0,
                reason.code(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if let Some((h, c)) = triggers.drift().and_then(|d| d.ema()) {
            window.ema_entropy = h;
            window.ema_confidence = c;
        }
        if let Some(_free) = output_q.acquire() {
            output_q.push(Prediction {
                frame: slot.id,
                t_ms: slot.t_ms,
                class,
                confidence: conf as f32,
                version,
                label: slot.label,
            });
        }
        capture_q.release(slot);
        let n = shared.frames.fetch_add(1, Ordering::Relaxed) + 1;
        if window_start.elapsed() >= every {
            window.version = version;
            if let Ok(mut g) = shared.window.try_lock() {
                *g = Some(window);
                window = Window {
                    version,
                    ..Window::default()
                };
                window_start = Instant::now();
                totals.rss_peak = totals.rss_peak.max(rss_bytes().unwrap_or(0));
            }
        }
        if max_frames > 0 && n >= max_frames {
            tracing::info!("max_frames reached");
            break;
        }
    }
    if replay_skipped > 0 {
        tracing::debug!("{replay_skipped} frames skipped the replay buffer while a round read it");
    }
    // The caller stops the other threads (after letting a running round finish).
    Ok(totals)
}

struct RoundThread {
    cfg: RunConfig,
    opts: RunOptions,
    shared: Arc<Shared>,
    events: Arc<EventLog>,
    replay: Arc<Mutex<ReplayBuffer>>,
    infer_engine: Arc<dyn Engine>,
    model: ModelDir,
    adapt_cfg: fieldtune_adapt::AdaptConfig,
    anchors: Vec<Image8>,
    anchor_labels: Vec<usize>,
    ready: mpsc::Sender<Result<(Box<dyn Session>, CheckpointMeta)>>,
    retired: mpsc::Receiver<Box<dyn Session>>,
}

/// The live weights as the round thread knows them.
struct Live {
    weights: HashMap<String, Tensor>,
    meta: CheckpointMeta,
    /// A session of the live weights for the gate's comparisons (the inference thread has its own).
    reference: Box<dyn Session>,
    anchor_accuracy: f64,
}

fn round_thread(rt: RoundThread) -> Result<()> {
    let RoundThread {
        cfg,
        opts,
        shared,
        events,
        replay,
        infer_engine,
        model,
        adapt_cfg,
        anchors,
        anchor_labels,
        ready,
        retired,
    } = rt;
    let setup = (|| -> Result<_> {
        if !lower_thread_priority(cfg.budget.nice) {
            tracing::warn!(
                "could not lower the round thread's priority (nice {})",
                cfg.budget.nice
            );
        }
        let train_engine = make_engine(&opts, cfg.engine.train_threads)?;
        let adapter = Adapter::new(
            train_engine.as_ref(),
            model.clone(),
            adapt_cfg,
            anchors,
            anchor_labels,
        )?;
        let model_sha = checkpoint::sha256_hex(&model.bytes);
        let (store, resumed, report) =
            Store::open(&cfg.state_dir, &model_sha, adapter.source_weights())?;
        for (from, to, why) in &report.quarantined {
            events.emit("checkpoint_quarantined", json!({"file": from.display().to_string(), "moved_to": to.display().to_string(), "reason": why}));
        }
        let bytes = model.with_params(&resumed.params)?;
        let live_session = infer_engine.load(&bytes, "model.onnx (live)")?;
        let mut reference = infer_engine.load(&bytes, "model.onnx (gate reference)")?;
        let (a_imgs, a_labels) = adapter.anchors();
        let anchor_stats = probe(reference.as_mut(), &model.config, a_imgs, 250)?;
        let anchor_accuracy = accuracy(&anchor_stats.classes, a_labels);
        tracing::info!(
            "resumed from {} (version {}, {}); anchor accuracy {:.4}; {}",
            resumed.path.display(),
            resumed.meta.version,
            resumed.meta.kind,
            anchor_accuracy,
            adapter.describe()
        );
        let live = Live {
            weights: resumed.params,
            meta: resumed.meta.clone(),
            reference,
            anchor_accuracy,
        };
        Ok((adapter, store, live, live_session, resumed.meta))
    })();
    let (mut adapter, store, mut live, live_session, meta) = match setup {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    if ready.send(Ok((live_session, meta))).is_err() {
        return Ok(());
    }
    let budget = Budget::new(cfg.budget.clone());
    tracing::info!("budget: {}", budget.thermal.describe());
    let mut schedule = Schedule::new(&cfg.trigger, Instant::now());
    let mut failures = 0u32;
    let mut round_no = 0u64;
    let base_round = live.meta.round;
    let mut hot = false;
    let mut last_round_end_frame = 0u64;
    let mut last_skip_log = Instant::now() - Duration::from_secs(60);
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        for s in retired.try_iter() {
            drop(s);
        }
        let reason = if shared.manual.swap(false, Ordering::Relaxed) {
            Some(Reason::Manual)
        } else if schedule.due(Instant::now(), SystemTime::now()) {
            Some(Reason::Schedule)
        } else {
            Reason::from_code(shared.request.swap(0, Ordering::Relaxed))
        };
        let Some(reason) = reason else { continue };
        let frames = shared.frames.load(Ordering::Relaxed);
        let replay_len = replay.lock().map(|r| r.len()).unwrap_or(0);
        let skip = if reason != Reason::Manual
            && round_no > 0
            && frames < last_round_end_frame + cfg.trigger.cooldown_frames
        {
            Some("cooldown")
        } else if replay_len < cfg.trigger.min_replay {
            Some("too few replay frames")
        } else if let crate::budget::Verdict::Hot(t) = budget.thermal(hot) {
            if !hot {
                tracing::warn!("{t:.1} C is above the temperature ceiling: rounds wait");
                events.emit("paused", json!({"celsius": t, "ceiling": cfg.budget.temperature_ceiling_c, "round": null}));
                hot = true;
            }
            Some("above the temperature ceiling")
        } else {
            if hot {
                tracing::info!("cooled below the ceiling: rounds may start");
                events.emit(
                    "resumed",
                    json!({"ceiling": cfg.budget.temperature_ceiling_c}),
                );
                hot = false;
            }
            None
        };
        if let Some(why) = skip {
            if last_skip_log.elapsed() > Duration::from_secs(10) || reason == Reason::Manual {
                tracing::debug!("{} trigger ignored: {why}", reason.as_str());
                last_skip_log = Instant::now();
            }
            if reason == Reason::Manual {
                events.emit(
                    "trigger",
                    json!({"reason": reason.as_str(), "ignored": why}),
                );
            }
            continue;
        }
        round_no += 1;
        let round_total = base_round + round_no;
        run_one_round(
            &cfg,
            &shared,
            &events,
            &replay,
            infer_engine.as_ref(),
            &mut adapter,
            &store,
            &budget,
            &mut live,
            &mut failures,
            reason,
            round_no,
            round_total,
        )?;
        last_round_end_frame = shared.frames.load(Ordering::Relaxed);
        shared.request.store(0, Ordering::Relaxed);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_one_round(
    cfg: &RunConfig,
    shared: &Shared,
    events: &EventLog,
    replay: &Mutex<ReplayBuffer>,
    infer_engine: &dyn Engine,
    adapter: &mut Adapter,
    store: &Store,
    budget: &Budget,
    live: &mut Live,
    failures: &mut u32,
    reason: Reason,
    round_no: u64,
    round_total: u64,
) -> Result<()> {
    let t0 = Instant::now();
    shared.round_active.store(true, Ordering::Relaxed);
    shared.round_started.store(true, Ordering::Relaxed);
    shared.rounds.fetch_add(1, Ordering::Relaxed);
    let snapshot = replay.lock().unwrap_or_else(|p| p.into_inner()).snapshot();
    // Every k-th frame is held out as the probe that judges the unlabeled objective.
    let k = (1.0 / cfg.replay.probe_fraction).round().max(2.0) as usize;
    let (mut train, mut probe_set) = (Vec::new(), Vec::new());
    for (i, f) in snapshot.into_iter().enumerate() {
        if i % k == k - 1 {
            probe_set.push(f);
        } else {
            train.push(f);
        }
    }
    let poison = cfg.fault.poison(round_no);
    events.emit(
        "round_started",
        json!({"round": round_total, "reason": reason.as_str(), "frame": shared.frames.load(Ordering::Relaxed), "train_frames": train.len(), "probe_frames": probe_set.len(), "version": live.meta.version, "poison": poison.map(|p| format!("{p:?}"))}),
    );
    tracing::info!(
        "round {round_total} ({}): {} replay frames + {} probe",
        reason.as_str(),
        train.len(),
        probe_set.len()
    );
    let mut on_pause = |t: f64| {
        tracing::warn!("round {round_total} paused: {t:.1} C is above the ceiling");
        events.emit("paused", json!({"round": round_total, "celsius": t}));
    };
    let mut ctl = RoundControl {
        budget,
        stop: &shared.stop,
        on_pause: &mut on_pause,
    };
    let result = adapter.run_round(&live.weights, &train, round_no, poison, &mut ctl);
    // A round that ends in an error: reported, rolled back, counted as a failure (enough of
    // them in a row reset the live model to the source weights).
    let failed = |live: &mut Live,
                  failures: &mut u32,
                  steps: Option<usize>,
                  e: &dyn std::fmt::Display|
     -> Result<()> {
        shared.round_active.store(false, Ordering::Relaxed);
        tracing::error!("round {round_total} failed: {e}");
        let mut ended = json!({"round": round_total, "error": e.to_string()});
        if let Some(n) = steps {
            ended["steps"] = json!(n);
        }
        events.emit("round_ended", ended);
        shared.rollbacks.fetch_add(1, Ordering::Relaxed);
        *failures += 1;
        events.emit("rolled_back", json!({"round": round_total, "reasons": [e.to_string()], "failures_in_a_row": *failures}));
        maybe_reset(
            cfg,
            shared,
            events,
            infer_engine,
            adapter,
            store,
            live,
            failures,
            round_total,
        )
    };
    let result = match result {
        Ok(r) => r,
        Err(e) => return failed(live, failures, None, &e),
    };
    let metrics: serde_json::Map<String, serde_json::Value> = result
        .metrics
        .iter()
        .map(|(n, v)| (n.clone(), json!(v)))
        .collect();
    if result.cut == Some(Cut::Stop) {
        shared.round_active.store(false, Ordering::Relaxed);
        events.emit("round_ended", json!({"round": round_total, "steps": result.steps, "cut": "stop", "metrics": metrics, "seconds": result.seconds}));
        return Ok(());
    }
    // The gate, off the hot path: the candidate's session is built here and, if it passes,
    // becomes the live one.
    let gate = (|| -> Result<_> {
        let weights_finite = all_finite(&result.weights);
        let bytes = adapter.model().with_params(&result.weights)?;
        let mut cand = infer_engine.load(&bytes, "model.onnx (candidate)")?;
        let mcfg = &adapter.model().config;
        let (a_imgs, a_labels) = adapter.anchors();
        let cand_anchor = probe(cand.as_mut(), mcfg, a_imgs, 250)?;
        let before = probe(live.reference.as_mut(), mcfg, &probe_set, 250)?;
        let after = probe(cand.as_mut(), mcfg, &probe_set, 250)?;
        let input = GateInput {
            anchor_accuracy_before: live.anchor_accuracy,
            anchor_accuracy_after: accuracy(&cand_anchor.classes, a_labels),
            before,
            after,
            non_finite_step: result.non_finite.clone(),
            weights_finite,
            anchor_outputs_finite: cand_anchor.finite,
        };
        Ok((decide(&cfg.gate, &input), input, cand, bytes))
    })();
    shared.round_active.store(false, Ordering::Relaxed);
    let (verdict, input, cand, bytes) = match gate {
        Ok(x) => x,
        Err(e) => return failed(live, failures, Some(result.steps), &e),
    };
    let gate_json = serde_json::to_value(&verdict).unwrap_or_default();
    events.emit(
        "round_ended",
        json!({
            "round": round_total,
            "steps": result.steps,
            "seconds": t0.elapsed().as_secs_f64(),
            "train_seconds": result.seconds,
            "busy_seconds": result.busy_seconds,
            "paused_seconds": result.paused_seconds,
            "rss_growth_mb": mib(result.rss_growth),
            "cut": result.cut.as_ref().map(|c| format!("{c:?}")),
            "metrics": metrics,
            "mask_rate": result.metrics.iter().find(|(n, _)| n == "mask_rate").map(|m| m.1),
            "gate": gate_json,
            "probe_entropy_before": input.before.mean_entropy,
            "probe_entropy_after": input.after.mean_entropy,
        }),
    );
    if verdict.pass {
        let meta = CheckpointMeta {
            version: live.meta.version + 1,
            round: round_total,
            step: live.meta.step + result.steps as u64,
            kind: "adapted".into(),
            model_sha256: live.meta.model_sha256.clone(),
            metrics: json!({"gate": gate_json, "train": metrics}),
            unix_ms: unix_ms(),
        };
        // The checkpoint first: the live model is always one a restart comes back to.
        let path = match store.commit(&result.weights, &meta) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "round {round_total}: checkpoint not written ({e}); the live model stays"
                );
                shared.rollbacks.fetch_add(1, Ordering::Relaxed);
                *failures += 1;
                events.emit("rolled_back", json!({"round": round_total, "reasons": [format!("checkpoint: {e}")], "failures_in_a_row": *failures}));
                return Ok(());
            }
        };
        let reference = infer_engine.load(&bytes, "model.onnx (gate reference)")?;
        shared.hand_over(LiveModel {
            session: cand,
            version: meta.version,
        });
        shared.version.store(meta.version, Ordering::Relaxed);
        shared.committed.store(true, Ordering::Relaxed);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        *failures = 0;
        tracing::info!(
            "round {round_total} committed: version {}, anchor accuracy {:.4} -> {:.4}, objective {:.4} -> {:.4}",
            meta.version, verdict.anchor_accuracy_before, verdict.anchor_accuracy_after, verdict.objective_before, verdict.objective_after
        );
        events.emit("committed", json!({"round": round_total, "version": meta.version, "step": meta.step, "checkpoint": path.display().to_string(), "anchor_accuracy": verdict.anchor_accuracy_after}));
        *live = Live {
            weights: result.weights,
            meta,
            reference,
            anchor_accuracy: verdict.anchor_accuracy_after,
        };
        Ok(())
    } else {
        drop(cand);
        shared.rollbacks.fetch_add(1, Ordering::Relaxed);
        if !verdict.no_gain_only {
            *failures += 1;
        }
        tracing::warn!(
            "round {round_total} rolled back: {}",
            verdict.reasons.join("; ")
        );
        events.emit("rolled_back", json!({"round": round_total, "reasons": verdict.reasons, "no_gain_only": verdict.no_gain_only, "failures_in_a_row": *failures, "version": live.meta.version}));
        maybe_reset(
            cfg,
            shared,
            events,
            infer_engine,
            adapter,
            store,
            live,
            failures,
            round_total,
        )
    }
}

/// After `max_failures` failed rounds in a row, the live model goes back to the source weights.
#[allow(clippy::too_many_arguments)]
fn maybe_reset(
    cfg: &RunConfig,
    shared: &Shared,
    events: &EventLog,
    infer_engine: &dyn Engine,
    adapter: &Adapter,
    store: &Store,
    live: &mut Live,
    failures: &mut u32,
    round_total: u64,
) -> Result<()> {
    if *failures < cfg.gate.max_failures {
        return Ok(());
    }
    let weights = adapter.source_weights().clone();
    let meta = CheckpointMeta {
        version: live.meta.version + 1,
        round: round_total,
        step: 0,
        kind: "reset".into(),
        model_sha256: live.meta.model_sha256.clone(),
        metrics: json!({"failures_in_a_row": *failures}),
        unix_ms: unix_ms(),
    };
    let bytes = adapter.model().with_params(&weights)?;
    let session = infer_engine.load(&bytes, "model.onnx (source)")?;
    let mut reference = infer_engine.load(&bytes, "model.onnx (gate reference)")?;
    let (a_imgs, a_labels) = adapter.anchors();
    let anchor_accuracy = accuracy(
        &probe(reference.as_mut(), &adapter.model().config, a_imgs, 250)?.classes,
        a_labels,
    );
    store.commit(&weights, &meta)?;
    shared.hand_over(LiveModel {
        session,
        version: meta.version,
    });
    shared.version.store(meta.version, Ordering::Relaxed);
    shared.committed.store(true, Ordering::Relaxed);
    shared.resets.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        "{} failed rounds in a row: reset to the source weights (version {})",
        *failures,
        meta.version
    );
    events.emit(
        "reset_to_source",
        json!({"round": round_total, "version": meta.version, "failures_in_a_row": *failures}),
    );
    *failures = 0;
    *live = Live {
        weights,
        meta,
        reference,
        anchor_accuracy,
    };
    Ok(())
}
