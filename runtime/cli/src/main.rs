//! The `fieldtune` command: wires the crates together; no logic of its own beyond
//! arguments, progress and printing. This file holds the clap tree and the dispatch; each
//! command is a module of `commands/`.

mod args;
mod board_leds;
mod commands;
mod sd_notify;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use args::EngineArgs;

#[derive(Parser)]
#[command(
    name = "fieldtune",
    version,
    about = "Keep a deployed vision classifier learning from the frames it sees.",
    long_about = "fieldtune adapts an ONNX image classifier to the domain it is deployed in, from unlabeled \
frames plus a small labeled anchor set, with UDA consistency training (Xie et al. 2019). It compiles its \
own train-step graphs in standard ONNX ops, so training runs on a stock ONNX Runtime or on tract.\n\n\
A model is a folder: model.onnx plus model.toml (input name and shape, normalisation, class names).\n\
Image folders hold one sub-folder per class (e.g. anchors/0/*.png); an unlabeled folder may be flat.",
    after_help = "Start with `fieldtune demo` (adapts the shipped MNIST CNN to OpenCV digits), then \
`fieldtune adapt --help`."
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Engine settings given before the command (`fieldtune --engine tract run ...`); the
    /// same flags after it win.
    #[command(flatten)]
    engine: EngineArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Adapt a model to unlabeled frames; writes an adapted model folder.
    #[command(long_about = commands::adapt::ADAPT_ABOUT)]
    Adapt(commands::adapt::AdaptArgs),
    /// Accuracy and confusion matrix of a model on a labeled image folder.
    Eval(commands::eval::EvalArgs),
    /// Write the train-step graph fieldtune compiles for a model, for inspection (Netron etc.).
    Compile(commands::compile::CompileArgs),
    /// Which engines and execution providers are present, and from where; with --board, how
    /// this machine and its engines compare with a board profile.
    Doctor(commands::doctor::DoctorArgs),
    /// Adapt the shipped MNIST CNN to OpenCV digits and report accuracy before and after;
    /// --rgb: TENT on MobileNetV2 over ImageNet photos with a contrast shift.
    Demo(commands::demo::DemoArgs),
    /// Serve a model on a frame stream and adapt it in the background (gated, checkpointed).
    #[command(long_about = commands::run::RUN_ABOUT, after_help = commands::run::RUN_AFTER)]
    Run(commands::run::RunArgs),
    /// Draw a run's event log as a PNG and print its figures per model version (accuracy,
    /// entropy with the drift limit, latency, mask rate; triggers, rounds, commits marked).
    Report(commands::report::ReportArgs),
    /// Time the train step and inference of a model on one engine, with peak memory.
    #[command(long_about = commands::bench::BENCH_ABOUT)]
    Bench(commands::bench::BenchArgs),
    /// Test-time adaptation over a sequence of domains (e.g. corruptions), per domain with
    /// reset or continual; source, bn, tent, uda, fixmatch, mean teacher.
    #[command(long_about = commands::tta::TTA_ABOUT)]
    Tta(commands::tta::TtaArgs),
    /// This device as a Flower SuperNode (flwr 1.42.0): train and evaluate on the fleet's
    /// messages; frames never leave the device (docs/FLEET.md).
    Fleet(commands::fleet::FleetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each once. The library errors that wrap another
/// crate's error are transparent; the ones that wrap an I/O error end their own message with
/// it, so a cause the line already ends with is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1).map(ToString::to_string) {
        if !line.ends_with(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line.replace('\n', " ")
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,fieldtune={level},fieldtune_adapt={level},fieldtune_field={level}"
        ))
    });
    // Colour only on a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> Result<()> {
    let before = &cli.engine;
    match cli.command {
        Command::Adapt(a) => {
            let e = a.engine.over(before);
            commands::adapt::run(a, &e)
        }
        Command::Eval(a) => {
            let e = a.engine.over(before);
            commands::eval::run(a, &e)
        }
        Command::Doctor(a) => {
            let e = a.engine.over(before);
            commands::doctor::run(a, &e)
        }
        Command::Demo(a) => {
            let e = a.engine.over(before);
            commands::demo::run(a, &e)
        }
        Command::Fleet(a) => {
            let e = a.engine.over(before);
            commands::fleet::run(a, &e)
        }
        Command::Run(a) => {
            let e = a.engine.over(before);
            commands::run::run(a, &e)
        }
        Command::Bench(a) => {
            let e = a.engine.over(before);
            commands::bench::run(a, &e)
        }
        Command::Tta(a) => {
            let e = a.engine.over(before);
            commands::tta::run(a, &e)
        }
        Command::Compile(a) => {
            no_engine("compile", before).and_then(|()| commands::compile::run(a))
        }
        Command::Report(a) => no_engine("report", before).and_then(|()| commands::report::run(a)),
    }
}

/// Engine settings before a command that runs no engine are a mistake, not ignored.
fn no_engine(command: &str, before: &EngineArgs) -> Result<()> {
    if before.any() {
        anyhow::bail!("`fieldtune {command}` runs no engine: leave out the engine settings");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let frames = fieldtune_frames::FramesError::Io {
            path: "a/b.png".into(),
            source: io,
        };
        let e = anyhow::Error::new(fieldtune_adapt::AdaptError::Frames(frames))
            .context("loading the eval set from a");
        // The adapt error is transparent: context, the frames error, the I/O error.
        assert_eq!(e.chain().count(), 3);
        assert_eq!(one_line(&e), "loading the eval set from a: a/b.png: gone");
        let e = anyhow::anyhow!("step 3").context("adapting");
        assert_eq!(one_line(&e), "adapting: step 3");
    }
}
