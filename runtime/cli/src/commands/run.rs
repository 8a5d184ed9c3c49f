//! `fieldtune run`: arguments and printing; the work is in fieldtune-field.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use fieldtune_engine::EnginePreference;
use fieldtune_field::config::EXAMPLE;
use fieldtune_field::{RunConfig, RunOptions};
use fieldtune_graph::TargetChoice;

use crate::args::{EngineArgs, EngineChoice};

pub const RUN_ABOUT: &str = "Serve a classifier on a stream of frames and adapt it in the background.\n\n\
Frames come from image folders or a GStreamer pipeline (video file, Jetson CSI camera, V4L2 camera), \
are resized and normalised as model.toml says, and are classified one by one; each prediction is a \
JSON line (frame, t_ms, class, confidence, model version) on stdout or in a file. Unlabeled frames go \
into a fixed-size replay buffer.\n\n\
A round starts on a trigger (drift of prediction entropy/confidence, every N frames, a schedule, or \
SIGUSR1) when the budget allows (memory, duty cycle, temperature ceiling, wall-clock cap). It trains \
on replay frames + labeled anchors on its own thread and session while inference goes on. Its weights \
go live only through the gate: anchor accuracy may not fall by more than max_anchor_drop, the \
unlabeled objective on held-out frames must improve, predictions may not collapse, nothing may be \
NaN/Inf. Pass: checkpoint (atomic, checksummed) then hot swap. Fail: discarded; max_failures in a row \
reset the model to its source weights. A restart resumes from the last good checkpoint.\n\n\
Files in state_dir: source.safetensors, last-good.safetensors, previous.safetensors, events.jsonl \
(draw it with `fieldtune report`), summary.json.\n\n\
Signals: SIGINT/SIGTERM stop cleanly (a second one kills), SIGUSR1 asks for a round.";

pub const RUN_AFTER: &str = "Example (the shipped digits: MNIST frames, then OpenCV digits):\n  \
fieldtune run --config configs/field-demo.toml\n  \
fieldtune report --events out/field-demo/events.jsonl --out out/field-demo/report.png\n\
Every key with its default: fieldtune run --print-config (docs/FIELD.md explains them).";

#[derive(Args)]
pub struct RunArgs {
    /// The run config (TOML). Relative paths in it are relative to its folder.
    #[arg(long, value_name = "FILE", required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Print every setting (with --config: as resolved from that file) and exit.
    #[arg(long)]
    print_config: bool,
    /// Stop after N frames (overrides pipeline.max_frames).
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// Stop after this many seconds (overrides pipeline.max_seconds).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Where predictions go: "-" (stdout), "none" or a file (overrides output.path).
    #[arg(long, value_name = "PATH")]
    output: Option<String>,
    /// Verify the checkpoints in the config's state folder and exit.
    #[arg(long)]
    check_state: bool,
    /// The rounds' train-step graph: portable, tuned or auto (see `fieldtune adapt --help`;
    /// overrides [adapt] target).
    #[arg(long, value_name = "TARGET", value_parser = TargetChoice::parse)]
    target: Option<TargetChoice>,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

fn preference(e: &EngineArgs) -> EnginePreference {
    match e.choice() {
        EngineChoice::Auto => EnginePreference::Auto,
        EngineChoice::Ort => EnginePreference::Ort,
        EngineChoice::Tract => EnginePreference::Tract,
    }
}

pub fn run(args: RunArgs, engine: &EngineArgs) -> Result<()> {
    let Some(path) = args.config.clone() else {
        print!("{EXAMPLE}");
        return Ok(());
    };
    let mut cfg = RunConfig::load(&path)?;
    if let Some(n) = args.max_frames {
        cfg.pipeline.max_frames = n;
    }
    if let Some(s) = args.duration {
        cfg.pipeline.max_seconds = s;
    }
    if let Some(o) = args.output {
        cfg.output.path = o;
    }
    if let Some(t) = args.target {
        cfg.adapt
            .insert("target".into(), toml::Value::String(t.name().into()));
    }
    // The global --threads sizes the round's train step; inference keeps [engine]'s count.
    if let Some(n) = engine.threads {
        cfg.engine.train_threads = n.max(1);
    }
    cfg.check_outputs(&path)?;
    if args.print_config {
        print!("{}", cfg.to_toml(&path)?);
        return Ok(());
    }
    if args.check_state {
        return check_state(&cfg);
    }
    // Status LEDs when the board profile names GPIO lines; a board without them (or a line
    // that cannot be opened) only costs the LEDs, never the run.
    let observer = if cfg.budget.board.is_empty() {
        None
    } else {
        let profile = fieldtune_board_profile::Profile::load(&cfg.budget.board)?;
        match crate::board_leds::status_leds(&profile) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("status LEDs off: {e:#}");
                None
            }
        }
    };
    // Under a systemd Type=notify unit: READY/WATCHDOG/STOPPING from the run's events.
    let observer = crate::sd_notify::chain(
        observer,
        crate::sd_notify::observer_from_env(cfg.pipeline.stats_every_s),
    );
    let opts = RunOptions {
        engine: preference(engine),
        ort_lib: engine.ort_lib.clone(),
        handle_signals: true,
        config_path: path.clone(),
        observer,
    };
    let summary = fieldtune_field::run(&cfg, &opts, None)
        .with_context(|| format!("fieldtune run --config {}", path.display()))?;
    eprintln!("{}", summary.table());
    eprintln!("summary: {}", cfg.state_dir.join("summary.json").display());
    Ok(())
}

/// Verifies the state folder's checkpoints as a start would: checksums, counters, finite
/// values, and each tensor against the model's initializer of that name.
fn check_state(cfg: &RunConfig) -> Result<()> {
    let dir = &cfg.state_dir;
    let m = fieldtune_adapt::ModelDir::open(&cfg.model)?;
    let sha = fieldtune_adapt::checkpoint::sha256_hex(&m.bytes);
    let mut inits = std::collections::HashMap::new();
    if let Some(g) = &m.model.graph {
        for t in &g.initializer {
            inits.insert(t.name.clone(), fieldtune_graph::ir::tensor_from_proto(t)?);
        }
    }
    let found = fieldtune_field::store::verify_dir_for(dir, Some((&sha, &inits)))?;
    if found.is_empty() {
        println!("{}: no checkpoints yet", dir.display());
    }
    for (name, version) in found {
        println!("{}: ok (version {version})", dir.join(name).display());
    }
    Ok(())
}
