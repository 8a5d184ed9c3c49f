//! Compare a profile with the machine it runs on.
//!
//! [`Host::probe`] reads what this machine is (architecture, CPUs, memory, device-tree model,
//! thermal zones, GPIO chips, video devices, `nvpmodel`); [`compare`] is pure, so tests give
//! it any host.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{same_power_mode, EngineKind, PowerManager, Profile};

/// How a finding compares with the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// As the profile says.
    Ok,
    /// Works, but worth a look (could not check, close to a limit).
    Warn,
    /// Not what the profile says.
    Differs,
}

impl Level {
    /// `ok`, `warn`, `differs`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Differs => "differs",
        }
    }
}

/// One line of the comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Verdict.
    pub level: Level,
    /// What was checked (`arch`, `memory`, `thermal`, ...).
    pub topic: &'static str,
    /// What was found.
    pub message: String,
}

impl Finding {
    /// A difference that changes what fieldtune gets on this machine: every `differs`
    /// finding (architecture, CPU cores, memory, thermal zones, power mode, GPIO lines,
    /// engines) except the device-tree model name, which only names the board.
    /// `fieldtune doctor --board --strict` fails on these.
    pub fn matters(&self) -> bool {
        self.level == Level::Differs && self.topic != "model"
    }

    fn new(level: Level, topic: &'static str, message: impl Into<String>) -> Self {
        Finding {
            level,
            topic,
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<9} {:<8} {}",
            format!("[{}]", self.level.name()),
            self.topic,
            self.message
        )
    }
}

/// A thermal zone of this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct ThermalZone {
    /// Its type (`cpu-thermal`).
    pub kind: String,
    /// Current temperature, °C, when readable.
    pub temp_c: Option<f32>,
}

/// What this machine is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Host {
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// CPUs present (`/sys/devices/system/cpu/present`; may include offline cores).
    pub cpus_present: Option<usize>,
    /// CPUs this process may use.
    pub cpus_usable: usize,
    /// `MemTotal` of `/proc/meminfo`, MiB.
    pub mem_total_mb: Option<u64>,
    /// `/proc/device-tree/model`.
    pub device_tree_model: Option<String>,
    /// `/sys/class/thermal/thermal_zone*`.
    pub thermal_zones: Vec<ThermalZone>,
    /// `/dev/gpiochip*` names.
    pub gpio_chips: Vec<String>,
    /// GPIO chip labels from `/sys/class/gpio/gpiochip*/label`; `None` when that folder (the
    /// legacy sysfs interface) is absent, so labels cannot be checked.
    pub gpio_labels: Option<Vec<String>>,
    /// `/dev/video*` count.
    pub video_devices: usize,
    /// `None`: no `nvpmodel`; `Some(Ok(mode))`: its current mode; `Some(Err(why))`: it failed.
    pub nvpmodel: Option<Result<String, String>>,
}

impl Host {
    /// Reads this machine.
    pub fn probe() -> Host {
        Host {
            arch: std::env::consts::ARCH.to_string(),
            cpus_present: fs::read_to_string("/sys/devices/system/cpu/present")
                .ok()
                .and_then(|s| count_cpu_list(&s)),
            cpus_usable: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_mb: fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|s| mem_total_mb(&s)),
            device_tree_model: fs::read_to_string("/proc/device-tree/model")
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string()),
            thermal_zones: thermal_zones(Path::new("/sys/class/thermal")),
            gpio_chips: dev_names("gpiochip"),
            gpio_labels: gpio_labels(Path::new("/sys/class/gpio")),
            video_devices: dev_names("video").len(),
            nvpmodel: nvpmodel_mode(),
        }
    }
}

/// Counts a CPU list such as `0-5` or `0,2-3`.
fn count_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

fn mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn thermal_zones(dir: &Path) -> Vec<ThermalZone> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut zones: Vec<(String, ThermalZone)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let p = e.path();
            let kind = fs::read_to_string(p.join("type")).ok()?.trim().to_string();
            let temp_c = fs::read_to_string(p.join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<f32>().ok())
                .map(|milli| milli / 1000.0);
            Some((
                e.file_name().to_string_lossy().into_owned(),
                ThermalZone { kind, temp_c },
            ))
        })
        .collect();
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    zones.into_iter().map(|(_, z)| z).collect()
}

fn dev_names(prefix: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    v.sort();
    v
}

fn gpio_labels(dir: &Path) -> Option<Vec<String>> {
    let rd = fs::read_dir(dir).ok()?;
    Some(
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("gpiochip"))
            .filter_map(|e| fs::read_to_string(e.path().join("label")).ok())
            .map(|l| l.trim().to_string())
            .collect(),
    )
}

fn nvpmodel_mode() -> Option<Result<String, String>> {
    let exe = ["/usr/sbin/nvpmodel", "/usr/bin/nvpmodel"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    Some(match Command::new(exe).arg("-q").output() {
        Err(e) => Err(format!("running {exe} -q: {e}")),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text
                .lines()
                .find_map(|l| l.strip_prefix("NV Power Mode:"))
                .map(|m| m.trim().to_string())
            {
                Some(m) => Ok(m),
                None => Err(format!(
                    "{exe} -q printed no `NV Power Mode:` line ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        }
    })
}

/// Compares `profile` with this machine.
pub fn check_host(profile: &Profile) -> Vec<Finding> {
    compare(profile, &Host::probe())
}

/// Compares `profile` with `host`: one finding per topic (several for thermal zones and GPIO
/// lines).
pub fn compare(profile: &Profile, host: &Host) -> Vec<Finding> {
    let mut out = Vec::new();
    let b = &profile.board;

    out.push(if host.arch == b.arch {
        Finding::new(Level::Ok, "arch", host.arch.clone())
    } else {
        Finding::new(
            Level::Differs,
            "arch",
            format!("profile is {}, this machine is {}", b.arch, host.arch),
        )
    });

    if let Some(want) = &b.device_tree_model {
        out.push(match &host.device_tree_model {
            Some(m) if m.to_lowercase().contains(&want.to_lowercase()) => {
                Finding::new(Level::Ok, "model", m.clone())
            }
            Some(m) => Finding::new(
                Level::Differs,
                "model",
                format!("profile expects `{want}`, device tree says `{m}`"),
            ),
            None => Finding::new(
                Level::Differs,
                "model",
                format!("profile expects `{want}`, this machine has no device-tree model"),
            ),
        });
    }

    let cores = b.cpu_cores as usize;
    let present = host.cpus_present.unwrap_or(host.cpus_usable);
    out.push(if present == cores && host.cpus_usable == cores {
        Finding::new(Level::Ok, "cpu", format!("{cores} cores"))
    } else if present == cores {
        Finding::new(
            Level::Warn,
            "cpu",
            format!(
                "{cores} cores present, {} usable (offline cores or CPU affinity; a power mode can take cores offline)",
                host.cpus_usable
            ),
        )
    } else {
        Finding::new(
            Level::Differs,
            "cpu",
            format!(
                "profile says {cores} cores, this machine has {present} ({} usable)",
                host.cpus_usable
            ),
        )
    });

    let budget = profile.adaptation.memory_budget_mb;
    match host.mem_total_mb {
        None => out.push(Finding::new(
            Level::Warn,
            "memory",
            "cannot read /proc/meminfo; memory not checked",
        )),
        Some(total) => {
            // Firmware and carve-outs keep part of the memory from the kernel (about 7%
            // on an 8 GB Jetson), so MemTotal is below the module's figure.
            let lo = b.memory_mb * 85 / 100;
            let hi = b.memory_mb * 110 / 100;
            out.push(if (lo..=hi).contains(&total) {
                Finding::new(
                    Level::Ok,
                    "memory",
                    format!("{total} MiB (profile {} MiB)", b.memory_mb),
                )
            } else if total > hi {
                Finding::new(
                    Level::Warn,
                    "memory",
                    format!(
                        "profile says {} MiB, this machine has more: {total} MiB",
                        b.memory_mb
                    ),
                )
            } else {
                Finding::new(
                    Level::Differs,
                    "memory",
                    format!(
                        "profile says {} MiB, this machine has only {total} MiB",
                        b.memory_mb
                    ),
                )
            });
            out.push(if budget > total {
                Finding::new(
                    Level::Differs,
                    "memory",
                    format!("adaptation budget {budget} MiB is more than this machine's {total} MiB"),
                )
            } else if budget * 2 > total {
                Finding::new(
                    Level::Warn,
                    "memory",
                    format!("adaptation budget {budget} MiB is more than half of this machine's {total} MiB"),
                )
            } else {
                Finding::new(
                    Level::Ok,
                    "memory",
                    format!("adaptation budget {budget} MiB fits"),
                )
            });
        }
    }

    let t = &profile.thermal;
    let known = || {
        if host.thermal_zones.is_empty() {
            "none".to_string()
        } else {
            host.thermal_zones
                .iter()
                .map(|z| z.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if t.zones.is_empty() {
        out.push(Finding::new(
            Level::Warn,
            "thermal",
            format!(
                "profile watches no thermal zone, so the {} °C ceiling is never checked (zones here: {})",
                t.ceiling_c,
                known()
            ),
        ));
    }
    for want in &t.zones {
        out.push(
            match host
                .thermal_zones
                .iter()
                .find(|z| z.kind.eq_ignore_ascii_case(want))
            {
                Some(ThermalZone {
                    temp_c: Some(temp), ..
                }) if *temp >= t.ceiling_c => Finding::new(
                    Level::Warn,
                    "thermal",
                    format!(
                        "{want} is at {temp:.1} °C, at or above the {} °C ceiling: adaptation would pause",
                        t.ceiling_c
                    ),
                ),
                Some(z) => Finding::new(
                    Level::Ok,
                    "thermal",
                    match z.temp_c {
                        Some(temp) => format!("{want} {temp:.1} °C (ceiling {} °C)", t.ceiling_c),
                        None => format!("{want} present, temperature unreadable"),
                    },
                ),
                None => Finding::new(
                    Level::Differs,
                    "thermal",
                    format!("zone {want} not found (zones here: {})", known()),
                ),
            },
        );
    }

    let pw = &profile.power;
    match pw.manager {
        PowerManager::None => {}
        PowerManager::Nvpmodel => out.push(match (&host.nvpmodel, &pw.mode) {
            (None, _) => Finding::new(
                Level::Differs,
                "power",
                "nvpmodel not found (/usr/sbin/nvpmodel): not a Jetson, or JetPack's tools are missing",
            ),
            (Some(Err(e)), _) => Finding::new(Level::Warn, "power", e.clone()),
            (Some(Ok(now)), Some(want)) if same_power_mode(now, want) => {
                Finding::new(Level::Ok, "power", format!("nvpmodel mode {now}"))
            }
            (Some(Ok(now)), Some(want)) => Finding::new(
                Level::Differs,
                "power",
                format!("nvpmodel mode is {now}, profile expects {want} (`nvpmodel -p --verbose` lists the ids; `sudo nvpmodel -m ID`)"),
            ),
            (Some(Ok(now)), None) => Finding::new(Level::Ok, "power", format!("nvpmodel mode {now}")),
        }),
    }

    let source = profile
        .camera
        .pipeline
        .split('!')
        .next()
        .and_then(|e| e.split_whitespace().next())
        .unwrap_or("");
    if matches!(
        source,
        "v4l2src" | "nvarguscamerasrc" | "nvv4l2camerasrc" | "libcamerasrc"
    ) {
        out.push(if host.video_devices == 0 {
            Finding::new(
                Level::Warn,
                "camera",
                format!("pipeline starts with {source}, but there is no /dev/video* device"),
            )
        } else {
            Finding::new(
                Level::Ok,
                "camera",
                format!("{source}; {} /dev/video* device(s)", host.video_devices),
            )
        });
    }

    for (key, line) in profile.gpio.lines() {
        let chip = &line.chip;
        let name = chip.strip_prefix("/dev/").unwrap_or(chip);
        let by_name = name.starts_with("gpiochip");
        out.push(if host.gpio_chips.is_empty() {
            Finding::new(
                Level::Differs,
                "gpio",
                format!("{key}: {line}: this machine has no GPIO character device (/dev/gpiochip*)"),
            )
        } else if by_name {
            if host.gpio_chips.iter().any(|c| c == name) {
                Finding::new(Level::Ok, "gpio", format!("{key}: {line}"))
            } else {
                Finding::new(
                    Level::Differs,
                    "gpio",
                    format!("{key}: {line}: no /dev/{name} (chips here: {})", host.gpio_chips.join(", ")),
                )
            }
        } else {
            match &host.gpio_labels {
                Some(labels) if labels.iter().any(|l| l == chip) => {
                    Finding::new(Level::Ok, "gpio", format!("{key}: {line}"))
                }
                Some(labels) if !labels.is_empty() => Finding::new(
                    Level::Differs,
                    "gpio",
                    format!("{key}: {line}: no chip labelled {chip} (labels here: {})", labels.join(", ")),
                ),
                _ => Finding::new(
                    Level::Warn,
                    "gpio",
                    format!(
                        "{key}: {line}: chip labels are not readable here (no /sys/class/gpio); chips: {}",
                        host.gpio_chips.join(", ")
                    ),
                ),
            }
        });
    }
    out
}

/// Compares the profile's engine preference with what the caller found: whether ONNX Runtime
/// loaded, and the execution providers it offers (as ONNX Runtime names them).
pub fn check_engines(profile: &Profile, ort_loaded: bool, providers: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let e = &profile.engine;
    let mut chosen = None;
    for kind in &e.order {
        match kind {
            EngineKind::Tract => {
                chosen.get_or_insert_with(|| "tract".to_string());
            }
            EngineKind::Ort if !ort_loaded => out.push(Finding::new(
                if e.order.first() == Some(&EngineKind::Ort) {
                    Level::Differs
                } else {
                    Level::Warn
                },
                "engine",
                "profile prefers ort, but ONNX Runtime did not load (see above)",
            )),
            EngineKind::Ort => {
                let mut first = None;
                for ep in &e.execution_providers {
                    let have = providers.iter().any(|p| p == ep.ort_name());
                    if have {
                        first.get_or_insert(*ep);
                    } else {
                        out.push(Finding::new(
                            Level::Differs,
                            "engine",
                            format!(
                                "execution provider {} ({}) is not available in the loaded ONNX Runtime",
                                ep.name(),
                                ep.ort_name()
                            ),
                        ));
                    }
                }
                if let Some(ep) = first {
                    chosen.get_or_insert_with(|| format!("ort with {}", ep.name()));
                }
            }
        }
    }
    let order = e
        .order
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ");
    out.push(match chosen {
        Some(c) => Finding::new(
            Level::Ok,
            "engine",
            format!("would run {c} (profile order: {order})"),
        ),
        None => Finding::new(
            Level::Differs,
            "engine",
            format!("no engine of the profile's order ({order}) is available"),
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_meminfo() {
        assert_eq!(count_cpu_list("0-5\n"), Some(6));
        assert_eq!(count_cpu_list("0,2-3"), Some(3));
        assert_eq!(count_cpu_list("x"), None);
        assert_eq!(
            mem_total_mb("MemTotal:        7859020 kB\nMemFree: 1 kB\n"),
            Some(7674)
        );
        assert_eq!(mem_total_mb("MemFree: 1 kB\n"), None);
    }
}
