//! `fieldtune doctor`: which engines and execution providers are present; with --board, how
//! this machine compares with a board profile, and the engine plan `fieldtune run` would get;
//! with GStreamer built in, its version and which of the documented pipelines' elements exist.

use anyhow::Result;
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
        println!(
            "  {differ} of {} checks differ from the profile",
            findings.len()
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
    }
    Ok(())
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
