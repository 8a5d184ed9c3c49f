//! `fieldtune report`: the event log drawn as a PNG. Panels, over wall time: live accuracy
//! (when frames carry labels), prediction entropy (window mean and the drift EMA), the
//! rounds' confidence-mask rate, inference latency (p50, p99); commits are marked by green
//! lines, rollbacks by red ones, resets to the source by orange ones, (re)starts by grey ones.
//!
//! Drawing uses plotters' bitmap backend; text needs a TrueType font read at run time (no
//! font is compiled in): `--font FILE`, `FIELDTUNE_FONT`, or DejaVu Sans / Liberation Sans
//! from their usual Linux locations (Debian: `apt-get install fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{FieldError, Result};
use crate::events::{read_events, Event, FieldEvent, RoundEnded};

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
    pub rounds: usize,
    pub commits: usize,
    pub rollbacks: usize,
    pub resets: usize,
    pub stats: usize,
    pub first_accuracy: Option<f64>,
    pub last_accuracy: Option<f64>,
}

fn rel_s(e: &Event, t0: u64) -> f64 {
    e.t_ms.saturating_sub(t0) as f64 / 1000.0
}

type Series = Vec<(f64, f64)>;

/// A panel: title, (series, colour, legend) lines, and a floor of its y range.
type Panel<'a> = (&'a str, Vec<(&'a Series, RGBColor, &'a str)>, Option<f64>);

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
    let t0 = events[0].t_ms;
    let t_end = events.last().map_or(1.0, |e| rel_s(e, t0)).max(1.0);
    let mut s = ReportSummary {
        events: events.len(),
        skipped_lines: skipped,
        ..ReportSummary::default()
    };
    let (mut acc, mut ent, mut ema, mut mask, mut p50, mut p99) = (
        Series::new(),
        Series::new(),
        Series::new(),
        Series::new(),
        Series::new(),
        Series::new(),
    );
    let (mut commits, mut rollbacks, mut resets, mut starts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // A number the log wrote as null (non-finite) reads as NaN and is not drawn.
    let point = |series: &mut Series, t: f64, v: f64| {
        if v.is_finite() {
            series.push((t, v));
        }
    };
    for e in &events {
        let t = rel_s(e, t0);
        match e.typed() {
            Some(FieldEvent::Stats(st)) => {
                s.stats += 1;
                if let Some(a) = st.accuracy {
                    acc.push((t, a));
                }
                point(&mut ent, t, st.entropy);
                point(&mut ema, t, st.ema_entropy);
                point(&mut p50, t, st.latency_p50_ms);
                point(&mut p99, t, st.latency_p99_ms);
            }
            Some(FieldEvent::RoundEnded(r)) => {
                s.rounds += 1;
                if let RoundEnded::Gated(g) = r {
                    if let Some(v) = g.mask_rate {
                        mask.push((t, v));
                    }
                }
            }
            Some(FieldEvent::Committed(_)) => commits.push(t),
            Some(FieldEvent::RolledBack(_)) => rollbacks.push(t),
            Some(FieldEvent::ResetToSource(_)) => resets.push(t),
            Some(FieldEvent::Started(_)) => starts.push(t),
            _ => {}
        }
    }
    (s.commits, s.rollbacks, s.resets, s.starts) =
        (commits.len(), rollbacks.len(), resets.len(), starts.len());
    s.first_accuracy = acc.first().map(|p| p.1);
    s.last_accuracy = acc.last().map(|p| p.1);

    let mut buf = vec![0u8; width as usize * height as usize * 3];
    {
        let draw_err = |e: &dyn std::fmt::Display| FieldError::Report {
            path: out.into(),
            reason: e.to_string(),
        };
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let title = format!(
            "{} - {} rounds: {} committed, {} rolled back, {} resets",
            events_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            s.rounds,
            s.commits,
            s.rollbacks,
            s.resets
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| draw_err(&e))?;
        let panels = root.split_evenly((4, 1));
        let marks = [
            (&starts, RGBColor(150, 150, 150)),
            (&commits, RGBColor(0, 150, 0)),
            (&rollbacks, RGBColor(210, 0, 0)),
            (&resets, RGBColor(230, 130, 0)),
        ];
        let specs: [Panel<'_>; 4] = [
            (
                "live accuracy",
                vec![(&acc, BLUE, "accuracy (labeled frames)")],
                None,
            ),
            (
                "prediction entropy (nats)",
                vec![
                    (&ent, BLUE, "window mean"),
                    (&ema, MAGENTA, "EMA (drift trigger)"),
                ],
                Some(0.0),
            ),
            (
                "round mask rate",
                vec![(&mask, BLUE, "confidence-mask rate")],
                Some(0.0),
            ),
            (
                "inference latency (ms)",
                vec![(&p50, BLUE, "p50"), (&p99, RED, "p99")],
                Some(0.0),
            ),
        ];
        for (area, (name, lines, floor)) in panels.iter().zip(specs) {
            let all: Vec<&Series> = lines.iter().map(|l| l.0).collect();
            let (lo, hi) = range(&all, floor);
            let mut chart = ChartBuilder::on(area)
                .margin(8)
                .caption(name, ("sans-serif", 16))
                .x_label_area_size(28)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..t_end, lo..hi)
                .map_err(|e| draw_err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .light_line_style(WHITE.mix(0.0))
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| draw_err(&e))?;
            for (ts, color) in &marks {
                for &t in ts.iter() {
                    chart
                        .draw_series(LineSeries::new([(t, lo), (t, hi)], color.stroke_width(1)))
                        .map_err(|e| draw_err(&e))?;
                }
            }
            let mut any = false;
            for (series, color, label) in lines {
                if series.is_empty() {
                    continue;
                }
                any = true;
                let c = color;
                if series.len() == 1 || name == "round mask rate" {
                    chart
                        .draw_series(series.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(|e| draw_err(&e))?
                        .label(label)
                        .legend(move |(x, y)| Circle::new((x + 8, y), 3, c.filled()));
                } else {
                    chart
                        .draw_series(LineSeries::new(series.iter().copied(), c.stroke_width(2)))
                        .map_err(|e| draw_err(&e))?
                        .label(label)
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2))
                        });
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
                let msg = if name == "live accuracy" {
                    "no labeled frames in this log"
                } else {
                    "no data"
                };
                area.draw(&Text::new(
                    msg,
                    (90, 60),
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
