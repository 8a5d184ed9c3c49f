//! What a round may use: memory on top of the process RSS, a duty cycle, a temperature
//! ceiling (Linux thermal zones), a wall-clock cap, and a lower scheduling priority.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::BudgetConfig;

/// A temperature sensor: the hottest zone in degrees Celsius, `None` when there is none.
pub trait Thermal: Send {
    fn max_celsius(&self) -> Option<f64>;
    fn describe(&self) -> String;
}

/// Linux thermal zones: `<root>/thermal_zone*/temp` in millidegrees Celsius
/// (`/sys/class/thermal` on a device).
#[derive(Clone, Debug)]
pub struct SysfsThermal {
    root: PathBuf,
}

impl SysfsThermal {
    pub fn new(root: impl Into<PathBuf>) -> SysfsThermal {
        SysfsThermal { root: root.into() }
    }

    /// The zone temperature files found under the root.
    pub fn zones(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
            .map(|e| e.path().join("temp"))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    }
}

fn read_millicelsius(p: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(p).ok()?;
    let v: i64 = s.trim().parse().ok()?;
    Some(v as f64 / 1000.0)
}

impl Thermal for SysfsThermal {
    fn max_celsius(&self) -> Option<f64> {
        self.zones()
            .iter()
            .filter_map(|p| read_millicelsius(p))
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
    }

    fn describe(&self) -> String {
        let n = self.zones().len();
        if n == 0 {
            format!(
                "no thermal zones under {} (temperature ceiling not enforced)",
                self.root.display()
            )
        } else {
            format!("{n} thermal zone(s) under {}", self.root.display())
        }
    }
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The budget a round runs under.
pub struct Budget {
    pub cfg: BudgetConfig,
    pub thermal: Box<dyn Thermal>,
}

/// Why a round may not go on.
#[derive(Clone, Debug, PartialEq)]
pub enum BudgetVerdict {
    Go,
    /// Too hot: wait.
    Hot(f64),
}

impl Budget {
    pub fn new(cfg: BudgetConfig) -> Budget {
        let thermal = Box::new(SysfsThermal::new(cfg.thermal_root.clone()));
        Budget { cfg, thermal }
    }

    /// Temperature check. `paused` tells whether the round is already paused (then it
    /// resumes only below ceiling - hysteresis).
    pub fn thermal(&self, paused: bool) -> BudgetVerdict {
        if self.cfg.temperature_ceiling_c <= 0.0 {
            return BudgetVerdict::Go;
        }
        match self.thermal.max_celsius() {
            Some(t) if t > self.cfg.temperature_ceiling_c => BudgetVerdict::Hot(t),
            Some(t)
                if paused
                    && t > self.cfg.temperature_ceiling_c - self.cfg.temperature_hysteresis_c =>
            {
                BudgetVerdict::Hot(t)
            }
            _ => BudgetVerdict::Go,
        }
    }

    /// How long to rest after computing for `busy` to keep the duty cycle.
    pub fn rest_after(&self, busy: Duration) -> Duration {
        let d = self.cfg.duty_cycle;
        if d >= 1.0 {
            Duration::ZERO
        } else {
            busy.mul_f64((1.0 - d) / d)
        }
    }

    /// Whether a round that started at `rss_start` bytes has gone over its memory budget.
    pub fn over_memory(&self, rss_start: u64, rss_now: u64) -> bool {
        self.cfg.adapt_memory_mb > 0
            && rss_now.saturating_sub(rss_start) > self.cfg.adapt_memory_mb << 20
    }

    pub fn round_cap(&self) -> Option<Duration> {
        (self.cfg.round_seconds > 0.0).then(|| Duration::from_secs_f64(self.cfg.round_seconds))
    }
}

/// Lowers the calling thread's priority (Linux: nice is per thread). Threads it starts
/// afterwards (batch preparation, ONNX Runtime's pool) inherit it.
pub fn lower_thread_priority(nice: i32) -> bool {
    if nice <= 0 {
        return true;
    }
    rustix::process::setpriority_process(None, nice).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_zones_are_read_in_millidegrees_and_the_hottest_wins() {
        let d = tempfile::tempdir().unwrap();
        let t = SysfsThermal::new(d.path());
        assert_eq!(t.max_celsius(), None);
        assert!(t.describe().contains("no thermal zones"));
        for (z, v) in [
            ("thermal_zone0", "41500\n"),
            ("thermal_zone1", "77250\n"),
            ("cooling_device0", "3\n"),
        ] {
            std::fs::create_dir(d.path().join(z)).unwrap();
            std::fs::write(
                d.path().join(z).join(if z.starts_with("cool") {
                    "cur_state"
                } else {
                    "temp"
                }),
                v,
            )
            .unwrap();
        }
        assert_eq!(t.max_celsius(), Some(77.25));
        let b = Budget {
            cfg: BudgetConfig {
                temperature_ceiling_c: 75.0,
                temperature_hysteresis_c: 5.0,
                ..BudgetConfig::default()
            },
            thermal: Box::new(t.clone()),
        };
        assert_eq!(b.thermal(false), BudgetVerdict::Hot(77.25));
        std::fs::write(d.path().join("thermal_zone1/temp"), "72000").unwrap();
        assert_eq!(b.thermal(false), BudgetVerdict::Go);
        assert_eq!(
            b.thermal(true),
            BudgetVerdict::Hot(72.0),
            "paused rounds wait for the hysteresis"
        );
        std::fs::write(d.path().join("thermal_zone1/temp"), "69000").unwrap();
        assert_eq!(b.thermal(true), BudgetVerdict::Go);
    }

    #[test]
    fn duty_cycle_and_memory() {
        let b = Budget::new(BudgetConfig {
            duty_cycle: 0.25,
            adapt_memory_mb: 10,
            ..BudgetConfig::default()
        });
        assert_eq!(
            b.rest_after(Duration::from_millis(100)),
            Duration::from_millis(300)
        );
        assert!(!b.over_memory(100 << 20, 109 << 20));
        assert!(b.over_memory(100 << 20, 111 << 20));
        assert!(rss_bytes().unwrap() > 1 << 20);
    }
}
