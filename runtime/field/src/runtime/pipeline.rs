//! The capture and output stages: the capture thread preprocesses frames into the capture
//! queue's slots, the output thread writes predictions from the output queue as JSON lines.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fieldtune_frames::Image8;

use super::state::RunState;
use crate::error::{io_err, FieldError, Result};
use crate::events::{EventLog, FieldEvent, FrameSkipped};
use crate::preprocess::Preprocessor;
use crate::queue::SlotQueue;
use crate::source::{FrameSource, Next};
use crate::store::unix_ms;

/// A frame in the capture queue: already at the model's size.
pub(crate) struct FrameSlot {
    pub id: u64,
    pub t_ms: u64,
    pub label: Option<usize>,
    pub image: Image8,
}

/// A prediction in the output queue.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Prediction {
    pub frame: u64,
    pub t_ms: u64,
    pub class: usize,
    pub confidence: f32,
    pub version: u64,
    pub label: Option<usize>,
}

/// Where predictions go: `-` (stdout), `none` (or empty: nowhere), or a file appended to.
pub(crate) fn open_output(path: &str) -> Result<Option<Box<dyn Write + Send>>> {
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

/// Bad frames of the capture thread: each is counted (`RunState::bad_frames`) and logged as a
/// `frame_skipped` event (the first ten, then at every power of two); `max` in a row end the
/// run with an error naming the last one.
pub(crate) struct BadFrames {
    events: Arc<EventLog>,
    max: u64,
    in_a_row: u64,
}

impl BadFrames {
    pub fn new(events: Arc<EventLog>, max: u64) -> BadFrames {
        BadFrames {
            events,
            max,
            in_a_row: 0,
        }
    }

    /// A good frame: the run of bad ones is over.
    fn good(&mut self) {
        self.in_a_row = 0;
    }

    /// One bad frame; an error when it is the `max`-th in a row.
    fn bad(&mut self, state: &RunState, file: Option<String>, reason: String) -> Result<()> {
        self.in_a_row += 1;
        let skipped = state.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
        if self.in_a_row >= self.max {
            return Err(FieldError::Source {
                source_name: "frames".into(),
                reason: format!(
                    "{} bad frames in a row (source.max_bad_frames = {}); the last: {reason}",
                    self.in_a_row, self.max
                ),
            });
        }
        if skipped <= 10 || skipped.is_power_of_two() {
            tracing::warn!("skipped a bad frame ({skipped} so far): {reason}");
            self.events.emit(FieldEvent::FrameSkipped(FrameSkipped {
                file,
                reason,
                skipped,
                in_a_row: self.in_a_row,
            }));
        }
        Ok(())
    }
}

/// The capture thread: frames from `source`, preprocessed, into `q` until the source ends or
/// the run stops. Bad frames are skipped and counted ([`BadFrames`]).
pub(crate) fn capture_thread(
    mut source: Box<dyn FrameSource>,
    pre: Preprocessor,
    q: Arc<SlotQueue<FrameSlot>>,
    state: Arc<RunState>,
    mut skips: BadFrames,
) -> Result<()> {
    let mut id = 0u64;
    let res = loop {
        if state.stopped() {
            break Ok(());
        }
        let frame = match source.next_frame() {
            Ok(Next::Frame(f)) => f,
            Ok(Next::Idle) => continue,
            Ok(Next::Bad { file, reason }) => match skips.bad(&state, file, reason) {
                Ok(()) => continue,
                Err(e) => {
                    tracing::error!("{e}");
                    break Err(e);
                }
            },
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
            skips.good();
        } else {
            q.unacquire(slot);
            let reason = format!(
                "unusable frame {}x{}x{} (empty or inconsistent size)",
                frame.width, frame.height, frame.channels
            );
            if let Err(e) = skips.bad(&state, None, reason) {
                tracing::error!("{e}");
                break Err(e);
            }
        }
    };
    q.close();
    if res.is_err() {
        state.request_stop();
    }
    res
}

/// The output thread: one JSON line per prediction into `sink` (none: predictions are
/// dropped), `classes` already JSON strings.
pub(crate) fn output_thread(
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
                &PredictionLine {
                    frame: p.frame,
                    t_ms: p.t_ms,
                    class_json: &classes[p.class],
                    class_id: p.class,
                    confidence: p.confidence,
                    version: p.version,
                    label_json: label,
                },
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

/// One prediction line's fields; `class_json` and `label_json` are JSON strings, quotes
/// included.
#[derive(Clone, Copy, Debug)]
pub struct PredictionLine<'a> {
    pub frame: u64,
    pub t_ms: u64,
    pub class_json: &'a str,
    pub class_id: usize,
    pub confidence: f32,
    pub version: u64,
    pub label_json: Option<&'a str>,
}

/// One prediction as a JSON line, written into `line` (cleared first; no allocation once
/// `line` has grown).
pub fn format_line(line: &mut String, p: &PredictionLine<'_>) {
    let PredictionLine {
        frame,
        t_ms,
        class_json,
        class_id,
        confidence,
        version,
        label_json,
    } = *p;
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
