//! `fieldtune report`: draws a run's events.jsonl as a PNG; the work is in fieldtune-field.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct ReportArgs {
    /// The event log of a run (<state_dir>/events.jsonl).
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// The PNG to write.
    #[arg(long, value_name = "FILE", default_value = "report.png")]
    out: PathBuf,
    /// A TrueType font for the labels (default: DejaVu Sans from fonts-dejavu-core, or
    /// FIELDTUNE_FONT).
    #[arg(long, value_name = "FILE")]
    font: Option<PathBuf>,
    #[arg(long, default_value_t = 1400)]
    width: u32,
    #[arg(long, default_value_t = 1200)]
    height: u32,
}

pub fn run(args: ReportArgs) -> Result<()> {
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
    Ok(())
}
