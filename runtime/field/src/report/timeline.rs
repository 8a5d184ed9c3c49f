//! What `fieldtune report` draws and prints, read out of an event log: the panels' series over
//! wall time, the markers (triggers, round starts, commits, rollbacks, resets, starts) and the
//! figures per live model version. Pure: no drawing, no files.

use crate::events::{Event, FieldEvent, RoundEnded};
use crate::trigger::Reason;

/// (seconds since the log's first event, value).
pub type Series = Vec<(f64, f64)>;

/// A kind of vertical marker line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The run (re)started.
    Start,
    /// Drift was detected (a recovery episode opened, or a drift round was requested).
    Trigger,
    /// A round began training.
    RoundStart,
    /// A round passed the gate and went live (a new version).
    Commit,
    /// A round was discarded.
    Rollback,
    /// The source weights went live again.
    Reset,
}

impl Mark {
    pub const ALL: [Mark; 6] = [
        Mark::Start,
        Mark::Trigger,
        Mark::RoundStart,
        Mark::Commit,
        Mark::Rollback,
        Mark::Reset,
    ];

    /// The legend's words.
    pub fn label(self) -> &'static str {
        match self {
            Mark::Start => "start",
            Mark::Trigger => "drift trigger",
            Mark::RoundStart => "round start",
            Mark::Commit => "commit (new version live)",
            Mark::Rollback => "rollback",
            Mark::Reset => "reset to source",
        }
    }
}

/// Figures of one live model version, from the stats windows it served (a window is counted
/// for the version live at its end, so a window that straddles a swap, at most
/// `stats_every_s`, goes to the newer version).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionFigures {
    pub version: u64,
    /// Frames served.
    pub frames: u64,
    /// Live accuracy over the windows that carried labels, weighted by their frames.
    pub accuracy: Option<f64>,
    pub mean_confidence: f64,
    /// Mean prediction entropy (nats).
    pub mean_entropy: f64,
}

/// The log as panels, markers and per-version figures.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub accuracy: Series,
    pub entropy: Series,
    pub ema_entropy: Series,
    /// The drift limit on the entropy EMA (baseline + threshold), in runs of consecutive
    /// windows that had a baseline: each run is drawn as its own line.
    pub entropy_limit: Vec<Series>,
    pub mask_rate: Series,
    pub p50: Series,
    pub p99: Series,
    /// (seconds, kind) of every marker, in log order.
    pub marks: Vec<(f64, Mark)>,
    /// (seconds, version) of each commit, for the version labels.
    pub commits: Vec<(f64, u64)>,
    pub versions: Vec<VersionFigures>,
    pub stats: usize,
    pub rounds: usize,
    pub end_s: f64,
}

#[derive(Default)]
struct Sums {
    frames: u64,
    labeled_frames: u64,
    correct: f64,
    confidence: f64,
    entropy: f64,
}

/// Reads the timeline out of `events` (in log order).
pub fn timeline(events: &[Event]) -> Timeline {
    let t0 = events.first().map_or(0, |e| e.t_ms);
    let mut tl = Timeline::default();
    let mut sums: Vec<(u64, Sums)> = Vec::new();
    let mut limit_run = Series::new();
    // A number the log wrote as null (non-finite) reads as NaN and is not drawn.
    let point = |series: &mut Series, t: f64, v: f64| {
        if v.is_finite() {
            series.push((t, v));
        }
    };
    for e in events {
        let t = e.t_ms.saturating_sub(t0) as f64 / 1000.0;
        tl.end_s = tl.end_s.max(t);
        match e.typed() {
            Some(FieldEvent::Stats(st)) => {
                tl.stats += 1;
                if let Some(a) = st.accuracy {
                    tl.accuracy.push((t, a));
                }
                point(&mut tl.entropy, t, st.entropy);
                point(&mut tl.ema_entropy, t, st.ema_entropy);
                point(&mut tl.p50, t, st.latency_p50_ms);
                point(&mut tl.p99, t, st.latency_p99_ms);
                match st.drift_entropy_limit.filter(|v| v.is_finite()) {
                    Some(v) => limit_run.push((t, v)),
                    None if !limit_run.is_empty() => {
                        tl.entropy_limit.push(std::mem::take(&mut limit_run))
                    }
                    None => {}
                }
                let n = st.window_frames;
                let at = match sums.iter().position(|(v, _)| *v == st.version) {
                    Some(i) => i,
                    None => {
                        sums.push((st.version, Sums::default()));
                        sums.len() - 1
                    }
                };
                let s = &mut sums[at].1;
                s.frames += n;
                if st.confidence.is_finite() && st.entropy.is_finite() {
                    s.confidence += st.confidence * n as f64;
                    s.entropy += st.entropy * n as f64;
                }
                if let Some(a) = st.accuracy.filter(|a| a.is_finite()) {
                    s.labeled_frames += n;
                    s.correct += a * n as f64;
                }
            }
            Some(FieldEvent::RoundStarted(r)) => {
                // A drift round outside a recovery episode is its own trigger.
                if r.reason == Reason::Drift && r.episode_round.is_none() {
                    tl.marks.push((t, Mark::Trigger));
                }
                tl.marks.push((t, Mark::RoundStart));
            }
            Some(FieldEvent::RoundEnded(r)) => {
                tl.rounds += 1;
                if let RoundEnded::Gated(g) = r {
                    if let Some(v) = g.mask_rate {
                        tl.mask_rate.push((t, v));
                    }
                }
            }
            Some(FieldEvent::RecoveryStarted(_)) => tl.marks.push((t, Mark::Trigger)),
            Some(FieldEvent::Committed(c)) => {
                tl.marks.push((t, Mark::Commit));
                tl.commits.push((t, c.version));
            }
            Some(FieldEvent::RolledBack(_)) => tl.marks.push((t, Mark::Rollback)),
            Some(FieldEvent::ResetToSource(_)) => tl.marks.push((t, Mark::Reset)),
            Some(FieldEvent::Started(_)) => tl.marks.push((t, Mark::Start)),
            _ => {}
        }
    }
    if !limit_run.is_empty() {
        tl.entropy_limit.push(limit_run);
    }
    sums.sort_by_key(|(v, _)| *v);
    tl.versions = sums
        .into_iter()
        .filter(|(_, s)| s.frames > 0)
        .map(|(version, s)| VersionFigures {
            version,
            frames: s.frames,
            accuracy: (s.labeled_frames > 0).then(|| s.correct / s.labeled_frames as f64),
            mean_confidence: s.confidence / s.frames as f64,
            mean_entropy: s.entropy / s.frames as f64,
        })
        .collect();
    tl
}

impl Timeline {
    /// Markers of one kind.
    pub fn marks_of(&self, kind: Mark) -> impl Iterator<Item = f64> + '_ {
        self.marks
            .iter()
            .filter(move |(_, k)| *k == kind)
            .map(|(t, _)| *t)
    }

    pub fn count(&self, kind: Mark) -> usize {
        self.marks_of(kind).count()
    }
}

/// One line per version, as `fieldtune report` prints them and the PNG shows them.
pub fn version_line(v: &VersionFigures) -> String {
    let what = match v.accuracy {
        Some(a) => format!("live accuracy {:.2}%", 100.0 * a),
        None => "no labels".to_string(),
    };
    format!(
        "v{}: {} frames, {what}, confidence {:.3}, entropy {:.3} nats",
        v.version, v.frames, v.mean_confidence, v.mean_entropy
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t_ms: u64, v: serde_json::Value) -> Event {
        let mut m = v.as_object().unwrap().clone();
        let event = m.remove("event").unwrap().as_str().unwrap().to_string();
        Event {
            t_ms,
            event,
            fields: m,
        }
    }

    fn stats(t_ms: u64, version: u64, frames: u64, acc: Option<f64>, limit: Option<f64>) -> Event {
        let mut v = json!({"event": "stats", "frames": 0, "fps": 100.0, "window_frames": frames,
            "latency_p50_ms": 0.3, "latency_p99_ms": 0.5, "latency_max_ms": 1.0,
            "entropy": 0.1 * (version + 1) as f64, "confidence": 0.9, "ema_entropy": 0.1,
            "ema_confidence": 0.9, "accuracy": acc, "version": version, "round_active": false,
            "capture_dropped": 0, "output_dropped": 0, "rss_mb": 100.0});
        if let Some(l) = limit {
            v["drift_entropy_limit"] = json!(l);
        }
        ev(t_ms, v)
    }

    #[test]
    fn versions_weigh_windows_by_their_frames_and_marks_follow_the_log() {
        let events = vec![
            ev(
                0,
                json!({"event": "started", "pid": 1, "model": "m", "engine": "e",
                "source": "s", "resumed_version": 0, "resumed_kind": "source",
                "resumed_round": 0, "anchors": "a", "rss_mb": 100.0}),
            ),
            stats(1_000, 0, 100, Some(0.9), None),
            stats(2_000, 0, 300, Some(0.5), Some(0.4)),
            ev(
                2_100,
                json!({"event": "recovery_started", "episode": 1, "frame": 400,
                "since_frame": 399, "arm_frames": 64}),
            ),
            ev(
                2_500,
                json!({"event": "round_started", "round": 1, "reason": "drift",
                "frame": 450, "train_frames": 48, "probe_frames": 16, "version": 0,
                "poison": null, "episode_round": 1}),
            ),
            ev(
                3_000,
                json!({"event": "committed", "round": 1, "version": 1, "step": 40,
                "checkpoint": "c", "anchor_accuracy": 0.99}),
            ),
            stats(4_000, 1, 200, Some(1.0), None),
            stats(5_000, 1, 200, Some(0.8), Some(0.5)),
        ];
        let tl = timeline(&events);
        assert_eq!(tl.stats, 4);
        assert_eq!(tl.versions.len(), 2);
        let (v0, v1) = (&tl.versions[0], &tl.versions[1]);
        assert_eq!(
            (v0.version, v0.frames, v1.version, v1.frames),
            (0, 400, 1, 400)
        );
        // (100 * 0.9 + 300 * 0.5) / 400 and (200 * 1.0 + 200 * 0.8) / 400.
        assert!((v0.accuracy.unwrap() - 0.6).abs() < 1e-12);
        assert!((v1.accuracy.unwrap() - 0.9).abs() < 1e-12);
        assert!((v1.mean_entropy - 0.2).abs() < 1e-12);
        // The episode's round is not a second trigger.
        let kinds: Vec<Mark> = tl.marks.iter().map(|m| m.1).collect();
        assert_eq!(
            kinds,
            [Mark::Start, Mark::Trigger, Mark::RoundStart, Mark::Commit]
        );
        assert_eq!(tl.commits, vec![(3.0, 1)]);
        // The limit is drawn in runs where a baseline existed.
        assert_eq!(tl.entropy_limit, vec![vec![(2.0, 0.4)], vec![(5.0, 0.5)]]);
        assert_eq!(tl.end_s, 5.0);
        assert!(version_line(v1).starts_with("v1: 400 frames, live accuracy 90.00%"));
    }

    #[test]
    fn unlabeled_versions_report_confidence_and_entropy_only() {
        let tl = timeline(&[stats(0, 3, 50, None, None)]);
        assert_eq!(tl.versions[0].accuracy, None);
        assert!(version_line(&tl.versions[0]).contains("no labels"));
        // A drift round without an episode is a trigger and a round start.
        let tl = timeline(&[ev(
            0,
            json!({"event": "round_started", "round": 1,
            "reason": "drift", "frame": 450, "train_frames": 48, "probe_frames": 16,
            "version": 0, "poison": null}),
        )]);
        assert_eq!(tl.count(Mark::Trigger), 1);
        assert_eq!(tl.count(Mark::RoundStart), 1);
    }
}
