//! [`RunSummary`]: what a run did, written to `<state_dir>/summary.json`, logged as the
//! `stopped` event and printed as a table at exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::nan::f64_or_nan;
use crate::stats::LatencySummary;

/// What a run did; also written to `<state_dir>/summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub engine: String,
    pub source: String,
    /// Seconds of serving (setup excluded).
    #[serde(deserialize_with = "f64_or_nan")]
    pub seconds: f64,
    pub frames: u64,
    /// Frames skipped as unreadable or unusable (`frame_skipped`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_frames: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub fps: f64,
    pub capture_dropped: u64,
    pub output_dropped: u64,
    pub rounds: u64,
    pub commits: u64,
    pub rollbacks: u64,
    pub resets: u64,
    /// Fleet rounds (`train` messages that ran a round), and those the gate passed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fleet_rounds: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fleet_passed: u64,
    pub resumed_version: u64,
    pub final_version: u64,
    /// Inference latency on frames while no round ran.
    pub latency_idle: LatencySummary,
    /// Inference latency on frames while a round ran.
    pub latency_during_rounds: LatencySummary,
    /// p99 during rounds / p99 idle.
    pub p99_ratio: Option<f64>,
    /// Live accuracy over labeled frames, if any.
    pub accuracy: Option<f64>,
    pub labeled_frames: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_start_mb: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_peak_mb: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub rss_end_mb: f64,
    pub inference_errors: u64,
    /// Frames answered by each engine (the primary's and the fallback's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub frames_by_engine: BTreeMap<String, u64>,
    /// Times serving fell back, and came back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fallbacks: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restores: u64,
    /// What each live model version served (exact, frame by frame), in version order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionServed>,
}

/// What one live model version served during the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionServed {
    pub version: u64,
    pub frames: u64,
    pub labeled_frames: u64,
    pub correct: u64,
    /// Frames whose output gave a confidence and an entropy (finite logits).
    pub scored_frames: u64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub confidence_sum: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub entropy_sum: f64,
}

impl VersionServed {
    pub fn new(version: u64) -> VersionServed {
        VersionServed {
            version,
            ..VersionServed::default()
        }
    }

    /// One frame: its (confidence, entropy) when scored, and whether it was right when labeled.
    pub fn add(&mut self, scored: Option<(f64, f64)>, right: Option<bool>) {
        self.frames += 1;
        if let Some((c, h)) = scored {
            self.scored_frames += 1;
            self.confidence_sum += c;
            self.entropy_sum += h;
        }
        if let Some(r) = right {
            self.labeled_frames += 1;
            self.correct += u64::from(r);
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labeled_frames > 0).then(|| self.correct as f64 / self.labeled_frames as f64)
    }

    pub fn mean_confidence(&self) -> f64 {
        self.confidence_sum / self.scored_frames.max(1) as f64
    }

    pub fn mean_entropy(&self) -> f64 {
        self.entropy_sum / self.scored_frames.max(1) as f64
    }

    /// `v3: 1200 frames, live accuracy 96.42% (1200 labeled), confidence 0.981, entropy 0.052`.
    pub fn line(&self) -> String {
        let what = match self.accuracy() {
            Some(a) => format!(
                "live accuracy {:.2}% ({} labeled)",
                100.0 * a,
                self.labeled_frames
            ),
            None => "no labels".to_string(),
        };
        format!(
            "v{}: {} frames, {what}, confidence {:.3}, entropy {:.3} nats",
            self.version,
            self.frames,
            self.mean_confidence(),
            self.mean_entropy()
        )
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RunSummary {
    /// A text table for people.
    pub fn table(&self) -> String {
        let l = |s: &LatencySummary| {
            format!(
                "{:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "frames {} in {:.1} s ({:.1} fps), dropped: capture {}, output {}",
            self.frames, self.seconds, self.fps, self.capture_dropped, self.output_dropped
        );
        let _ = writeln!(
            t,
            "rounds {}: committed {}, rolled back {}, resets to source {}; model version {} -> {}",
            self.rounds,
            self.commits,
            self.rollbacks,
            self.resets,
            self.resumed_version,
            self.final_version
        );
        if self.bad_frames > 0 {
            let _ = writeln!(
                t,
                "bad frames skipped {} (unreadable or corrupt; see frame_skipped events)",
                self.bad_frames
            );
        }
        if let Some(a) = self.accuracy {
            let _ = writeln!(
                t,
                "live accuracy {:.4} over {} labeled frames",
                a, self.labeled_frames
            );
        }
        if !self.versions.is_empty() {
            let _ = writeln!(t, "per model version (did adapting help?):");
            for v in &self.versions {
                let _ = writeln!(t, "  {}", v.line());
            }
        }
        if !self.frames_by_engine.is_empty() {
            let per: Vec<String> = self
                .frames_by_engine
                .iter()
                .map(|(e, n)| format!("{e} {n}"))
                .collect();
            let _ = writeln!(
                t,
                "frames per engine: {}; fallbacks {}, restores {}",
                per.join(", "),
                self.fallbacks,
                self.restores
            );
        }
        let _ = writeln!(
            t,
            "inference latency (ms)    frames       p50       p90       p99       max"
        );
        let _ = writeln!(t, "  idle                  {}", l(&self.latency_idle));
        let _ = writeln!(
            t,
            "  during rounds         {}",
            l(&self.latency_during_rounds)
        );
        if let Some(r) = self.p99_ratio {
            let _ = writeln!(t, "  p99 during rounds / idle: {r:.2}");
        }
        let _ = write!(
            t,
            "RSS MiB: start {:.1}, peak {:.1}, end {:.1}",
            self.rss_start_mb, self.rss_peak_mb, self.rss_end_mb
        );
        t
    }
}

/// Bytes in MiB.
pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}
