//! When a round starts: every N frames, on drift of prediction entropy / confidence, on a
//! schedule, or by hand (SIGUSR1). The per-frame parts ([`FrameTriggers`]) run on the
//! inference thread and only update numbers; the clock parts ([`Schedule`]) run on the round
//! thread.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::RoundTriggerConfig;

/// Why a round started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Frames,
    Drift,
    Schedule,
    Manual,
    /// A `train` message of the fleet's SuperLink (`[fleet]`).
    Fleet,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Frames => "frames",
            Reason::Drift => "drift",
            Reason::Schedule => "schedule",
            Reason::Manual => "manual",
            Reason::Fleet => "fleet",
        }
    }

    /// As a small integer for an atomic (0 is "none").
    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    pub fn from_code(c: u8) -> Option<Reason> {
        [
            Reason::Frames,
            Reason::Drift,
            Reason::Schedule,
            Reason::Manual,
            Reason::Fleet,
        ]
        .get((c as usize).checked_sub(1)?)
        .copied()
    }
}

/// EMAs of entropy and confidence compared with a baseline measured over the first
/// `baseline_frames` frames after start and after each commit. A threshold is the larger of
/// its fixed floor (`entropy_rise`, `confidence_drop`) and, with `drift_sigmas` > 0, that many
/// standard deviations of the EMA's own noise on the baseline frames
/// (`sd * sqrt(alpha / (2 - alpha))`): the same setting then suits a model whose entropy
/// hardly moves (the digit CNN: 0.0004 nats) and one whose entropy varies by 0.4 nats from
/// frame to frame (the Fashion-MNIST CNN).
#[derive(Clone, Debug)]
pub struct DriftDetector {
    alpha: f64,
    baseline_frames: u64,
    entropy_rise: f64,
    confidence_drop: f64,
    sigmas: f64,
    ema: Option<(f64, f64)>,
    acc: Moments,
    baseline: Option<(f64, f64)>,
    thresholds: (f64, f64),
}

/// Sums over the baseline frames: count, entropy, confidence and their squares.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    n: u64,
    h: f64,
    c: f64,
    hh: f64,
    cc: f64,
}

impl Moments {
    fn add(&mut self, h: f64, c: f64) {
        self.n += 1;
        self.h += h;
        self.c += c;
        self.hh += h * h;
        self.cc += c * c;
    }

    /// (mean entropy, mean confidence, sd entropy, sd confidence).
    fn stats(&self) -> (f64, f64, f64, f64) {
        let n = self.n.max(1) as f64;
        let (mh, mc) = (self.h / n, self.c / n);
        let var = |sq: f64, m: f64| (sq / n - m * m).max(0.0);
        (mh, mc, var(self.hh, mh).sqrt(), var(self.cc, mc).sqrt())
    }
}

impl DriftDetector {
    pub fn new(cfg: &RoundTriggerConfig) -> DriftDetector {
        DriftDetector {
            alpha: cfg.ema_alpha,
            baseline_frames: cfg.baseline_frames.max(1),
            entropy_rise: cfg.entropy_rise,
            confidence_drop: cfg.confidence_drop,
            sigmas: cfg.drift_sigmas,
            ema: None,
            acc: Moments::default(),
            baseline: None,
            thresholds: (cfg.entropy_rise, cfg.confidence_drop),
        }
    }

    /// Feeds one frame; true when the EMAs have drifted past a threshold.
    pub fn observe(&mut self, entropy: f64, confidence: f64) -> bool {
        if !(entropy.is_finite() && confidence.is_finite()) {
            return false;
        }
        let (h, c) = match self.ema {
            None => (entropy, confidence),
            Some((h, c)) => (
                h + self.alpha * (entropy - h),
                c + self.alpha * (confidence - c),
            ),
        };
        self.ema = Some((h, c));
        match self.baseline {
            None => {
                self.acc.add(entropy, confidence);
                if self.acc.n >= self.baseline_frames {
                    let (mh, mc, sh, sc) = self.acc.stats();
                    self.baseline = Some((mh, mc));
                    let noise = (self.alpha / (2.0 - self.alpha)).sqrt() * self.sigmas;
                    self.thresholds = (
                        self.entropy_rise.max(noise * sh),
                        self.confidence_drop.max(noise * sc),
                    );
                    // Start the EMA from the baseline so that the warm-up does not look like drift.
                    self.ema = self.baseline;
                }
                false
            }
            Some((bh, bc)) => h - bh > self.thresholds.0 || bc - c > self.thresholds.1,
        }
    }

    /// Forgets the baseline: the next `baseline_frames` frames measure a new one.
    pub fn rebaseline(&mut self) {
        self.baseline = None;
        self.acc = Moments::default();
    }

    /// (entropy rise, confidence drop) that count as drift against the current baseline.
    pub fn thresholds(&self) -> (f64, f64) {
        self.thresholds
    }

    /// (EMA entropy, EMA confidence).
    pub fn ema(&self) -> Option<(f64, f64)> {
        self.ema
    }

    /// (baseline entropy, baseline confidence), once measured.
    pub fn baseline(&self) -> Option<(f64, f64)> {
        self.baseline
    }
}

/// The per-frame triggers: every N frames and drift.
#[derive(Clone, Debug)]
pub struct FrameTriggers {
    every: u64,
    since: u64,
    drift: Option<DriftDetector>,
}

impl FrameTriggers {
    pub fn new(cfg: &RoundTriggerConfig) -> FrameTriggers {
        FrameTriggers {
            every: cfg.every_frames,
            since: 0,
            drift: cfg.drift.then(|| DriftDetector::new(cfg)),
        }
    }

    /// Feeds one frame's entropy and confidence; the reason when a round is due.
    pub fn observe(&mut self, entropy: f64, confidence: f64) -> Option<Reason> {
        self.since += 1;
        let drift = self
            .drift
            .as_mut()
            .is_some_and(|d| d.observe(entropy, confidence));
        if drift {
            Some(Reason::Drift)
        } else if self.every > 0 && self.since >= self.every {
            Some(Reason::Frames)
        } else {
            None
        }
    }

    /// A round started: the frame count starts again.
    pub fn round_started(&mut self) {
        self.since = 0;
    }

    /// A round committed new weights: drift is measured against them from now on.
    pub fn committed(&mut self) {
        if let Some(d) = &mut self.drift {
            d.rebaseline();
        }
    }

    pub fn drift(&self) -> Option<&DriftDetector> {
        self.drift.as_ref()
    }
}

/// "HH:MM" to seconds after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

/// Clock triggers: a period and UTC times of day.
#[derive(Clone, Debug)]
pub struct Schedule {
    every: Option<Duration>,
    last: Instant,
    daily: Vec<u32>,
    last_day_second: Option<u32>,
}

impl Schedule {
    pub fn new(cfg: &RoundTriggerConfig, now: Instant) -> Schedule {
        Schedule {
            every: (cfg.every_seconds > 0.0).then(|| Duration::from_secs_f64(cfg.every_seconds)),
            last: now,
            daily: cfg.daily_utc.iter().filter_map(|s| parse_hhmm(s)).collect(),
            last_day_second: None,
        }
    }

    /// Whether a round is due at `now` / `wall` (call it often; each due time fires once).
    pub fn due(&mut self, now: Instant, wall: SystemTime) -> bool {
        let mut fire = false;
        if let Some(every) = self.every {
            if now.duration_since(self.last) >= every {
                self.last = now;
                fire = true;
            }
        }
        if !self.daily.is_empty() {
            let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let day_second = (secs % 86_400) as u32;
            if let Some(prev) = self.last_day_second {
                // A due time passed between the previous call and this one (midnight wraps).
                let passed = |t: u32| {
                    if prev <= day_second {
                        prev < t && t <= day_second
                    } else {
                        t > prev || t <= day_second
                    }
                };
                if self.daily.iter().any(|&t| passed(t)) {
                    fire = true;
                }
            }
            self.last_day_second = Some(day_second);
        }
        fire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RoundTriggerConfig {
        RoundTriggerConfig {
            ema_alpha: 0.1,
            baseline_frames: 50,
            entropy_rise: 0.1,
            confidence_drop: 0.05,
            ..RoundTriggerConfig::default()
        }
    }

    #[test]
    fn drift_sigmas_scale_the_thresholds_to_the_baselines_noise() {
        // A noisy model (entropy varying by +-0.4 nats frame to frame) under thresholds made
        // for a quiet one: fixed floors fire on noise, sigmas do not, and both see a real shift.
        let noisy = |i: u64| {
            // splitmix64 of the frame number: independent uniform draws in [0, 1).
            let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = (z ^ (z >> 31)) as f64 / 2f64.powi(64);
            (0.45 + 0.8 * (u - 0.5), 0.85 - 0.3 * (u - 0.5))
        };
        let run = |sigmas: f64| {
            let mut d = DriftDetector::new(&RoundTriggerConfig {
                ema_alpha: 0.02,
                baseline_frames: 500,
                entropy_rise: 0.05,
                confidence_drop: 0.01,
                drift_sigmas: sigmas,
                ..RoundTriggerConfig::default()
            });
            let false_alarm = (0..3000).any(|i| d.observe(noisy(i).0, noisy(i).1));
            d.rebaseline();
            (500..1000).for_each(|i| {
                d.observe(noisy(i).0, noisy(i).1);
            });
            let shift = (1000..1300).position(|i| d.observe(noisy(i).0 + 0.9, noisy(i).1 - 0.3));
            (false_alarm, shift, d.thresholds())
        };
        let (fa, shift, _) = run(0.0);
        assert!(
            fa && shift.is_some(),
            "fixed floors: false alarm {fa}, shift {shift:?}"
        );
        let (fa, shift, (th, tc)) = run(6.0);
        assert!(!fa, "6 sigmas fired on noise (thresholds {th}, {tc})");
        assert!(th > 0.05 && tc > 0.01, "the floors were raised: {th}, {tc}");
        assert!(
            matches!(shift, Some(k) if k < 100),
            "shift seen after {shift:?} frames"
        );
    }

    #[test]
    fn drift_fires_on_a_shift_and_not_on_noise() {
        let mut d = DriftDetector::new(&cfg());
        // Stable stream with noise: never fires.
        for i in 0..2000 {
            let n = ((i * 37) % 11) as f64 / 110.0 - 0.05;
            assert!(!d.observe(0.1 + n, 0.97 - n / 2.0), "frame {i}");
        }
        let (bh, _) = d.baseline().unwrap();
        assert!((bh - 0.1).abs() < 0.01);
        // The scene changes: entropy doubles, confidence drops; fires within a few frames.
        let fired = (0..100).position(|_| d.observe(0.35, 0.88));
        assert!(matches!(fired, Some(k) if k < 30), "{fired:?}");
        // After a commit the new level becomes the baseline.
        d.rebaseline();
        for _ in 0..500 {
            assert!(!d.observe(0.35, 0.88));
        }
    }

    #[test]
    fn every_n_frames_counts_from_the_last_round() {
        let mut t = FrameTriggers::new(&RoundTriggerConfig {
            every_frames: 10,
            drift: false,
            ..RoundTriggerConfig::default()
        });
        let fired: Vec<usize> = (1..=35).filter(|_| t.observe(0.1, 0.9).is_some()).collect();
        assert_eq!(
            fired.len(),
            26,
            "fires every frame from the 10th until a round starts"
        );
        t.round_started();
        assert_eq!(
            (1..=10).position(|_| t.observe(0.1, 0.9).is_some()),
            Some(9)
        );
    }

    #[test]
    fn schedule_period_and_daily_times() {
        let t0 = Instant::now();
        let mut s = Schedule::new(
            &RoundTriggerConfig {
                every_seconds: 10.0,
                daily_utc: vec!["02:30".into(), "23:59".into()],
                ..RoundTriggerConfig::default()
            },
            t0,
        );
        let day = |h: u64, m: u64, sec: u64| {
            UNIX_EPOCH + Duration::from_secs(86_400 * 100 + h * 3600 + m * 60 + sec)
        };
        assert!(!s.due(t0, day(2, 29, 0)));
        assert!(!s.due(t0 + Duration::from_secs(5), day(2, 29, 59)));
        assert!(
            s.due(t0 + Duration::from_secs(6), day(2, 30, 0)),
            "02:30 passed"
        );
        assert!(!s.due(t0 + Duration::from_secs(7), day(2, 31, 0)));
        assert!(
            s.due(t0 + Duration::from_secs(17), day(2, 32, 0)),
            "10 s period"
        );
        assert!(!s.due(t0 + Duration::from_secs(18), day(23, 58, 0)));
        assert!(
            s.due(
                t0 + Duration::from_secs(19),
                day(0, 0, 5) + Duration::from_secs(86_400)
            ),
            "23:59 across midnight"
        );
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("7:05"), Some(7 * 3600 + 300));
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in [
            Reason::Frames,
            Reason::Drift,
            Reason::Schedule,
            Reason::Manual,
        ] {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
    }
}
