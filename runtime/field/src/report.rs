//! `fieldtune report`: the event log drawn as a PNG, answering "did adapting help?". Under
//! the title, a line per live model version (frames served, live accuracy where frames carry
//! labels, otherwise mean confidence and entropy) and a legend of the markers. Panels, over
//! wall time and sized by what they hold: live accuracy (with the version that went live at
//! each commit), prediction entropy (window mean, the drift EMA and the drift limit it must
//! cross), inference latency (p50, p99), the rounds' confidence-mask rate. Vertical markers:
//! drift triggers, round starts, commits, rollbacks, resets to the source, (re)starts.
//!
//! Drawing uses plotters' bitmap backend; text needs a TrueType font read at run time (no
//! font is compiled in): `--font FILE`, `FIELDTUNE_FONT`, or DejaVu Sans / Liberation Sans
//! from their usual Linux locations (Debian: `apt-get install fonts-dejavu-core`).

mod timeline;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{FieldError, Result};
use crate::events::read_events;
pub use timeline::{timeline, version_line, Mark, Series, Timeline, VersionFigures};

/// Fonts tried after `--font` and `FIELDTUNE_FONT`.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Registers the font to draw with. A font asked for (`--font`, else `FIELDTUNE_FONT`) that
/// cannot be read or is not a TrueType font is an error naming it; without one, the first
/// usable of [`FONT_CANDIDATES`].
fn ensure_font(explicit: Option<&Path>, out: &Path) -> Result<()> {
    let asked = explicit.map(|p| (p.to_path_buf(), "--font")).or_else(|| {
        std::env::var_os("FIELDTUNE_FONT").map(|p| (PathBuf::from(p), "FIELDTUNE_FONT"))
    });
    if let Some((p, what)) = asked {
        let bad = |reason: String| FieldError::Report {
            path: out.into(),
            reason: format!("{what}: {reason}"),
        };
        // A regular file only: a FIFO or a device would block or never end.
        let bytes = fieldtune_frames::read_regular(&p).map_err(|e| bad(e.to_string()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        return register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| bad(format!("{} is not a TrueType font", p.display())));
    }
    let res = FONT.get_or_init(|| {
        let mut tried = Vec::new();
        let cands = FONT_CANDIDATES.iter().map(PathBuf::from);
        for p in cands {
            match std::fs::read(&p) {
                Ok(bytes) => {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    match register_font("sans-serif", FontStyle::Normal, bytes) {
                        Ok(()) => return Ok(p),
                        Err(_) => tried.push(format!("{} (not a TrueType font)", p.display())),
                    }
                }
                Err(_) => tried.push(p.display().to_string()),
            }
        }
        Err(tried.join(", "))
    });
    match res {
        Ok(_) => Ok(()),
        Err(tried) => Err(FieldError::Report {
            path: out.into(),
            reason: format!(
                "no font found (tried {tried}); install fonts-dejavu-core or pass --font FILE.ttf"
            ),
        }),
    }
}

/// What the log holds, in numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportSummary {
    pub events: usize,
    pub skipped_lines: usize,
    pub starts: usize,
    pub triggers: usize,
    pub rounds: usize,
    pub commits: usize,
    pub rollbacks: usize,
    pub resets: usize,
    pub stats: usize,
    pub first_accuracy: Option<f64>,
    pub last_accuracy: Option<f64>,
    /// Figures per live model version, in version order.
    pub versions: Vec<VersionFigures>,
}

/// A panel: title, (series, colour, legend) lines, a floor of its y range, its share of the
/// height, and what it says when it has no data.
struct Panel<'a> {
    name: &'a str,
    lines: Vec<(&'a Series, RGBColor, &'a str)>,
    floor: Option<f64>,
    weight: f64,
    empty: &'a str,
    dots: bool,
}

fn range(series: &[&Series], floor: Option<f64>) -> (f64, f64) {
    let vals = series
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .filter(|v| v.is_finite());
    let (mut lo, mut hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if let Some(f) = floor {
        lo = lo.min(f);
    }
    if hi - lo < 1e-9 {
        hi += 0.5;
        lo -= 0.5;
    }
    let pad = (hi - lo) * 0.08;
    (lo - pad, hi + pad)
}

/// The marker colours (a commit's green is what the tests look for).
fn mark_color(m: Mark) -> RGBColor {
    match m {
        Mark::Start => RGBColor(150, 150, 150),
        Mark::Trigger => RGBColor(130, 0, 200),
        Mark::RoundStart => RGBColor(140, 180, 230),
        Mark::Commit => RGBColor(0, 150, 0),
        Mark::Rollback => RGBColor(210, 0, 0),
        Mark::Reset => RGBColor(230, 130, 0),
    }
}

/// The per-version line of the PNG: every version when few, else the first and the last
/// three.
fn versions_text(versions: &[VersionFigures]) -> String {
    let one = |v: &VersionFigures| match v.accuracy {
        Some(a) => format!("v{} {:.2}% ({} frames)", v.version, 100.0 * a, v.frames),
        None => format!(
            "v{} conf {:.3}, entropy {:.3} ({} frames)",
            v.version, v.mean_confidence, v.mean_entropy, v.frames
        ),
    };
    let parts: Vec<String> = if versions.len() <= 5 {
        versions.iter().map(one).collect()
    } else {
        let n = versions.len();
        std::iter::once(one(&versions[0]))
            .chain(std::iter::once(format!("... {} more ...", n - 4)))
            .chain(versions[n - 3..].iter().map(one))
            .collect()
    };
    let what = if versions.iter().any(|v| v.accuracy.is_some()) {
        "live accuracy per version"
    } else {
        "per version (no labels)"
    };
    format!("{what}: {}", parts.join("  |  "))
}

/// Reads `events` and writes the PNG report to `out` (`width` x `height` pixels).
pub fn render(
    events_path: &Path,
    out: &Path,
    font: Option<&Path>,
    width: u32,
    height: u32,
) -> Result<ReportSummary> {
    let (events, skipped) = read_events(events_path)?;
    if events.is_empty() {
        return Err(FieldError::EventLog {
            path: events_path.into(),
            line: 0,
            reason: "no events to report".into(),
        });
    }
    ensure_font(font, out)?;
    let tl = timeline(&events);
    let s = ReportSummary {
        events: events.len(),
        skipped_lines: skipped,
        starts: tl.count(Mark::Start),
        triggers: tl.count(Mark::Trigger),
        rounds: tl.rounds,
        commits: tl.count(Mark::Commit),
        rollbacks: tl.count(Mark::Rollback),
        resets: tl.count(Mark::Reset),
        stats: tl.stats,
        first_accuracy: tl.accuracy.first().map(|p| p.1),
        last_accuracy: tl.accuracy.last().map(|p| p.1),
        versions: tl.versions.clone(),
    };
    let t_end = tl.end_s.max(1.0);

    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let draw_err = |e: &dyn std::fmt::Display| FieldError::Report {
            path: out.into(),
            reason: e.to_string(),
        };
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let title = format!(
            "{} - {} rounds: {} committed, {} rolled back, {} resets; {} drift triggers",
            events_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            s.rounds,
            s.commits,
            s.rollbacks,
            s.resets,
            s.triggers
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| draw_err(&e))?;
        // Under the title: the versions' figures, then the markers' legend.
        let (head, body) = root.split_vertically(52);
        let text = ("sans-serif", 14).into_font().color(&BLACK);
        head.draw(&Text::new(
            versions_text(&s.versions),
            (12, 4),
            text.clone(),
        ))
        .map_err(|e| draw_err(&e))?;
        let mut x = 12;
        for m in Mark::ALL {
            if tl.count(m) == 0 {
                continue;
            }
            let c = mark_color(m);
            head.draw(&PathElement::new(
                [(x, 28), (x, 44)],
                c.stroke_width(if m == Mark::RoundStart { 1 } else { 2 }),
            ))
            .map_err(|e| draw_err(&e))?;
            head.draw(&Text::new(m.label(), (x + 6, 29), text.clone()))
                .map_err(|e| draw_err(&e))?;
            x += 16 + 8 * m.label().len() as i32;
        }

        let labeled = !tl.accuracy.is_empty();
        let limit_lines: Vec<(&Series, RGBColor, &str)> = tl
            .entropy_limit
            .iter()
            .map(|run| {
                (
                    run,
                    RGBColor(230, 130, 0),
                    "drift limit (baseline + threshold)",
                )
            })
            .collect();
        let mut entropy_lines = vec![
            (&tl.entropy, BLUE, "window mean"),
            (&tl.ema_entropy, MAGENTA, "EMA (drift trigger)"),
        ];
        entropy_lines.extend(limit_lines);
        let panels = [
            Panel {
                name: "live accuracy",
                lines: vec![(&tl.accuracy, BLUE, "accuracy (labeled frames)")],
                floor: None,
                weight: if labeled { 3.0 } else { 1.0 },
                empty: "no labeled frames in this log",
                dots: false,
            },
            Panel {
                name: "prediction entropy (nats)",
                lines: entropy_lines,
                floor: Some(0.0),
                weight: 3.0,
                empty: "no data",
                dots: false,
            },
            Panel {
                name: "inference latency (ms)",
                lines: vec![(&tl.p50, BLUE, "p50"), (&tl.p99, RED, "p99")],
                floor: Some(0.0),
                weight: 2.0,
                empty: "no data",
                dots: false,
            },
            Panel {
                name: "round mask rate",
                lines: vec![(&tl.mask_rate, BLUE, "confidence-mask rate")],
                floor: Some(0.0),
                weight: if tl.mask_rate.len() > 2 { 1.5 } else { 1.0 },
                empty: "no gated rounds",
                dots: true,
            },
        ];
        let total: f64 = panels.iter().map(|p| p.weight).sum();
        let body_h = body.dim_in_pixel().1 as f64;
        let mut rest = body;
        for (i, panel) in panels.iter().enumerate() {
            let area = if i + 1 == panels.len() {
                rest.clone()
            } else {
                let (a, b) = rest.split_vertically((body_h * panel.weight / total) as u32);
                rest = b;
                a
            };
            let all: Vec<&Series> = panel.lines.iter().map(|l| l.0).collect();
            let (lo, hi) = range(&all, panel.floor);
            let mut chart = ChartBuilder::on(&area)
                .margin(6)
                .caption(panel.name, ("sans-serif", 15))
                .x_label_area_size(26)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..t_end, lo..hi)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_labels(if panel.weight < 2.0 { 3 } else { 10 })
                .light_line_style(WHITE.mix(0.0))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| draw_err(&e))?;
            for &(t, m) in &tl.marks {
                let c = mark_color(m);
                let w = if m == Mark::RoundStart { 1 } else { 2 };
                chart
                    .draw_series(LineSeries::new([(t, lo), (t, hi)], c.stroke_width(w)))
                    .map_err(|e| draw_err(&e))?;
            }
            // Which version went live at each commit (the accuracy panel; at most 40 labels).
            if i == 0 && tl.commits.len() <= 40 {
                let top = hi - (hi - lo) * 0.02;
                for &(t, v) in &tl.commits {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("v{v}"),
                            (t, top),
                            ("sans-serif", 12)
                                .into_font()
                                .color(&mark_color(Mark::Commit)),
                        )))
                        .map_err(|e| draw_err(&e))?;
                }
            }
            let mut any = false;
            let mut labelled: Vec<&str> = Vec::new();
            for &(series, color, label) in &panel.lines {
                if series.is_empty() {
                    continue;
                }
                any = true;
                // A run of the drift limit after the first is the same legend entry.
                let first = !labelled.contains(&label);
                labelled.push(label);
                let c = color;
                if series.len() == 1 || panel.dots {
                    let drawn = chart
                        .draw_series(series.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(|e| draw_err(&e))?;
                    if first {
                        drawn
                            .label(label)
                            .legend(move |(x, y)| Circle::new((x + 8, y), 3, c.filled()));
                    }
                } else {
                    let drawn = chart
                        .draw_series(LineSeries::new(series.iter().copied(), c.stroke_width(2)))
                        .map_err(|e| draw_err(&e))?;
                    if first {
                        drawn.label(label).legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                        });
                    }
                }
            }
            if any {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 12))
                    .position(SeriesLabelPosition::LowerRight)
                    .draw()
                    .map_err(|e| draw_err(&e))?;
            } else {
                area.draw(&Text::new(
                    panel.empty,
                    (90, 30),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ))
                .map_err(|e| draw_err(&e))?;
            }
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).ok_or_else(|| FieldError::Report {
        path: out.into(),
        reason: "image buffer size".into(),
    })?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| FieldError::Report {
            path: out.into(),
            reason: e.to_string(),
        })?;
    fieldtune_adapt::fsutil::atomic_write(out, png.get_ref())?;
    Ok(s)
}
