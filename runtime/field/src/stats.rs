//! Fixed-size statistics the inference thread keeps without allocating: a log-bucketed
//! latency histogram (2% wide buckets from 1 us to ~100 s) and per-window counters.

use serde::{Deserialize, Serialize};

const BUCKETS: usize = 940;
const RATIO: f64 = 1.02;
const LOW_US: f64 = 1.0;

/// Latency histogram; percentiles are the upper edge of the bucket holding the rank
/// (within 2%), the maximum is exact.
#[derive(Clone, Copy, Debug)]
pub struct LatencyHist {
    counts: [u32; BUCKETS],
    n: u64,
    max_us: f64,
    sum_us: f64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        LatencyHist {
            counts: [0; BUCKETS],
            n: 0,
            max_us: 0.0,
            sum_us: 0.0,
        }
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyHist {
    pub fn record_us(&mut self, us: f64) {
        let b = if us <= LOW_US {
            0
        } else {
            ((us / LOW_US).ln() / RATIO.ln()) as usize
        };
        self.counts[b.min(BUCKETS - 1)] += 1;
        self.n += 1;
        self.max_us = self.max_us.max(us);
        self.sum_us += us;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The `q`-quantile (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += *c as u64;
            if seen >= rank {
                return (LOW_US * RATIO.powi(i as i32 + 1)).min(self.max_us);
            }
        }
        self.max_us
    }

    pub fn merge(&mut self, other: &LatencyHist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.n += other.n;
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.n,
            mean_ms: if self.n == 0 {
                0.0
            } else {
                self.sum_us / self.n as f64 / 1000.0
            },
            p50_ms: self.quantile_us(0.5) / 1000.0,
            p90_ms: self.quantile_us(0.9) / 1000.0,
            p99_ms: self.quantile_us(0.99) / 1000.0,
            max_ms: self.max_us / 1000.0,
        }
    }
}

/// What the inference thread measured over one stats window.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsWindow {
    pub frames: u64,
    pub latency: LatencyHist,
    pub entropy_sum: f64,
    pub confidence_sum: f64,
    pub labeled: u64,
    pub correct: u64,
    /// Whether a round ran at any time during the window.
    pub round_active: bool,
    pub version: u64,
    pub ema_entropy: f64,
    pub ema_confidence: f64,
    /// (entropy limit, confidence limit) of the drift detector, once it has a baseline.
    pub drift_limits: Option<(f64, f64)>,
}

impl StatsWindow {
    pub fn mean_entropy(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.entropy_sum / self.frames as f64
        }
    }

    pub fn mean_confidence(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.confidence_sum / self.frames as f64
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        (self.labeled > 0).then(|| self.correct as f64 / self.labeled as f64)
    }
}

/// Softmax statistics of one logit row (defined with the collapse checks it feeds).
pub use fieldtune_adapt::collapse::softmax_stats;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_two_percent() {
        let mut h = LatencyHist::default();
        for i in 1..=1000 {
            h.record_us(i as f64 * 10.0);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() / 5.0 < 0.021, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() / 9.9 < 0.021, "{s:?}");
        assert_eq!(s.max_ms, 10.0);
        let mut g = LatencyHist::default();
        g.record_us(50_000.0);
        h.merge(&g);
        assert_eq!(h.summary().max_ms, 50.0);
        assert_eq!(LatencyHist::default().summary().p99_ms, 0.0);
    }
}
