//! `fieldtune doctor`: which engines and execution providers are present; with --board, how
//! this machine compares with a board profile, and the engine plan `fieldtune run` would get;
//! with GStreamer built in, its version and which of the documented pipelines' elements exist.

use anyhow::{bail, Result};
use clap::Args;
use fieldtune_board_profile::{check_engines, check_host, Level, Profile};
use fieldtune_engine::{doctor_report, EnginePreference};
use fieldtune_field::config::EngineSpec;

use crate::args::EngineArgs;

#[derive(Args)]
pub struct DoctorArgs {
    /// Board profile: a shipped name (jetson-orin-nano-8gb, jetson-orin-nx-16gb,
    /// jetson-agx-orin-64gb, jetson-xavier-nx, x86-cpu, raspberry-pi-5) or a .toml file.
    #[arg(long, value_name = "NAME|PATH")]
    board: Option<String>,
    /// With --board: exit with status 1 when a check differs in a way that matters (every
    /// `differs` but the device-tree model name: architecture, CPU cores, memory, thermal
    /// zones, power mode, GPIO lines, engines). Warnings never fail.
    #[arg(long, requires = "board")]
    strict: bool,
    #[command(flatten)]
    pub(crate) engine: crate::args::EngineArgs,
}

pub fn run(a: DoctorArgs, engine_args: &EngineArgs) -> Result<()> {
    // A bad profile fails before anything is printed.
    let profile = a.board.as_deref().map(Profile::load).transpose()?;
    let report = doctor_report(engine_args.ort_lib.as_deref());
    println!("{report}");
    print_gstreamer();
    if let Some(profile) = profile {
        let b = &profile.board;
        println!("board {}: {}", b.name, b.description);
        let mut findings = check_host(&profile);
        findings.extend(check_engines(
            &profile,
            report.ort.is_ok(),
            &report.execution_providers,
        ));
        for f in &findings {
            println!("  {f}");
        }
        let differ = findings
            .iter()
            .filter(|f| f.level == Level::Differs)
            .count();
        let matter: Vec<&str> = findings
            .iter()
            .filter(|f| f.matters())
            .map(|f| f.topic)
            .collect();
        println!(
            "  {differ} of {} checks differ from the profile ({} that matter{})",
            findings.len(),
            matter.len(),
            if matter.is_empty() {
                String::new()
            } else {
                format!(": {}", dedup(&matter))
            }
        );
        // What `fieldtune run` with `[budget] board` and `[engine] inference/train = "auto"`
        // would get on this machine.
        let board = a.board.as_deref().unwrap_or_default();
        match fieldtune_field::runtime::resolve_engine(
            &EngineSpec::Auto,
            EnginePreference::Auto,
            board,
            engine_args.ort_lib.as_deref(),
            None,
            &Default::default(),
            1,
        ) {
            Ok(r) => println!(
                "engine plan (`fieldtune run`, [engine] inference/train = \"auto\"): {}\n  why: {}",
                r.engine.describe(),
                r.why
            ),
            Err(e) => println!("engine plan: none: {e}"),
        }
        if a.strict && !matter.is_empty() {
            bail!(
                "--strict: {} checks differ from board {} in ways that matter ({})",
                matter.len(),
                b.name,
                dedup(&matter)
            );
        }
    }
    Ok(())
}

/// `topics` without repeats, in order, comma-separated.
fn dedup(topics: &[&str]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for t in topics {
        if !seen.contains(t) {
            seen.push(t);
        }
    }
    seen.join(", ")
}

/// GStreamer's version and the elements the documented pipelines need, each missing one with
/// the package that has it.
#[cfg(feature = "gstreamer")]
fn print_gstreamer() {
    use fieldtune_field::gst::{GstReport, PIPELINE_ELEMENTS};
    println!("{}", GstReport::probe(PIPELINE_ELEMENTS));
}

#[cfg(not(feature = "gstreamer"))]
fn print_gstreamer() {
    println!("GStreamer: not built in (`--features gstreamer`); folder sources only");
}
