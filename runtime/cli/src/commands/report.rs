//! `fieldtune report`: draws a run's events.jsonl as a PNG and prints its figures per live
//! model version; the work is in fieldtune-field.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// The event log of a run (<state_dir>/events.jsonl).
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "FILE", default_value = "report.png")]
    out: PathBuf,
    /// A TrueType font for the labels (default: FIELDTUNE_FONT, else DejaVu Sans from
    /// fonts-dejavu-core). One that cannot be read or is not TrueType is an error.
    #[arg(long, value_name = "FILE")]
    font: Option<PathBuf>,
    /// Image width in pixels (200..=8192).
    #[arg(long, default_value_t = 1400, value_parser = clap::value_parser!(u32).range(200..=8192))]
    width: u32,
    /// Image height in pixels (200..=8192).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(200..=8192))]
    height: u32,
}

pub fn run(args: ReportArgs) -> Result<()> {
    // The PNG goes into an existing folder: a mistyped path creates nothing.
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist (create it first)",
            args.out.display(),
            parent.display()
        );
    }
    let mut inputs = vec![args.events.as_path()];
    inputs.extend(args.font.as_deref());
    fieldtune_adapt::fsutil::refuse_overwrite(&args.out, &inputs)?;
    let s = fieldtune_field::report::render(
        &args.events,
        &args.out,
        args.font.as_deref(),
        args.width,
        args.height,
    )?;
    println!(
        "wrote {} from {} events ({} starts, {} rounds: {} committed, {} rolled back, {} resets{})",
        args.out.display(),
        s.events,
        s.starts,
        s.rounds,
        s.commits,
        s.rollbacks,
        s.resets,
        if s.skipped_lines > 0 {
            format!("; {} torn lines skipped", s.skipped_lines)
        } else {
            String::new()
        }
    );
    if let (Some(a), Some(b)) = (s.first_accuracy, s.last_accuracy) {
        println!("live accuracy: first window {a:.4}, last window {b:.4}");
    }
    // Did adapting help? The same figures per live model version.
    for v in &s.versions {
        println!("{}", fieldtune_field::report::version_line(v));
    }
    Ok(())
}
