//! Board profiles: what fieldtune expects of a board (engines and execution providers in order
//! of preference, memory budget and batch sizes for adaptation, thermal zones and ceiling,
//! power mode, camera pipeline, GPIO lines), as TOML files in `boards/profiles/`.
//!
//! [`Profile::load`] takes a shipped profile's name (`jetson-orin-nano-8gb`) or a path; every
//! error names the file and the key. [`check_host`] compares a profile with the machine it runs
//! on and says what differs; [`check_engines`] does the same for the engines the caller found.
//! The key reference is `boards/README.md`.

mod error;
mod host;
mod validate;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use error::{Problem, ProfileError};
pub use host::{check_engines, check_host, compare, Finding, Host, Level, ThermalZone};

/// The shipped profiles, by name, built into the binary.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "jetson-orin-nano-8gb",
        include_str!("../../profiles/jetson-orin-nano-8gb.toml"),
    ),
    (
        "jetson-orin-nx-16gb",
        include_str!("../../profiles/jetson-orin-nx-16gb.toml"),
    ),
    (
        "jetson-agx-orin-64gb",
        include_str!("../../profiles/jetson-agx-orin-64gb.toml"),
    ),
    (
        "jetson-xavier-nx",
        include_str!("../../profiles/jetson-xavier-nx.toml"),
    ),
    ("x86-cpu", include_str!("../../profiles/x86-cpu.toml")),
    (
        "raspberry-pi-5",
        include_str!("../../profiles/raspberry-pi-5.toml"),
    ),
];

/// Environment variable naming a folder of profiles that [`Profile::load`] searches by name
/// before the shipped ones.
pub const BOARDS_DIR_ENV: &str = "FIELDTUNE_BOARDS_DIR";

/// A board profile. Sections and keys are documented in `boards/README.md`; unknown keys are
/// errors.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What the board is.
    pub board: Board,
    /// Engines and execution providers, in order of preference.
    pub engine: Engine,
    /// Background adaptation budget.
    pub adaptation: Adaptation,
    /// Inference settings.
    #[serde(default)]
    pub inference: Inference,
    /// Thermal zones watched and the ceiling above which adaptation pauses.
    pub thermal: Thermal,
    /// Power mode.
    #[serde(default)]
    pub power: Power,
    /// Camera.
    pub camera: Camera,
    /// GPIO lines (none by default).
    #[serde(default)]
    pub gpio: Gpio,
}

/// `[board]`: the hardware, as its vendor specifies it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Profile name (the file name without `.toml`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// CPU architecture as Rust names it (`aarch64`, `x86_64`).
    pub arch: String,
    /// CPU cores.
    pub cpu_cores: u32,
    /// Memory in MiB (shared between CPU and GPU on Jetson).
    pub memory_mb: u64,
    /// GPU, for people (`none` when absent).
    #[serde(default)]
    pub gpu: Option<String>,
    /// Text expected in `/proc/device-tree/model` (checked by `doctor` when given).
    #[serde(default)]
    pub device_tree_model: Option<String>,
    /// Documents the vendor figures come from.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// An inference engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// ONNX Runtime.
    Ort,
    /// tract (pure Rust, CPU).
    Tract,
}

impl EngineKind {
    /// Name as written in profiles.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Ort => "ort",
            EngineKind::Tract => "tract",
        }
    }
}

/// An ONNX Runtime execution provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// TensorRT.
    Tensorrt,
    /// CUDA.
    Cuda,
    /// CPU.
    Cpu,
}

impl ExecutionProvider {
    /// Name as written in profiles.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Tensorrt => "tensorrt",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }

    /// Name as ONNX Runtime reports it (`CUDAExecutionProvider`).
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Tensorrt => "TensorrtExecutionProvider",
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::Cpu => "CPUExecutionProvider",
        }
    }
}

fn default_eps() -> Vec<ExecutionProvider> {
    vec![ExecutionProvider::Cpu]
}

/// `[engine]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// Engines in order of preference.
    pub order: Vec<EngineKind>,
    /// ONNX Runtime execution providers in order of preference (default `["cpu"]`).
    #[serde(default = "default_eps")]
    pub execution_providers: Vec<ExecutionProvider>,
}

fn default_duty() -> u8 {
    50
}

/// `[adaptation]`: fieldtune's budget for background training.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptation {
    /// Memory adaptation may use, MiB.
    pub memory_budget_mb: u64,
    /// Labeled (anchor) images per step.
    pub batch_labeled: u32,
    /// Unlabeled frames per step.
    pub batch_unlabeled: u32,
    /// Largest share of wall time spent training, percent (default 50).
    #[serde(default = "default_duty")]
    pub duty_cycle_percent: u8,
}

fn one() -> u32 {
    1
}

/// `[inference]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    /// Frames per inference call (default 1).
    #[serde(default = "one")]
    pub batch: u32,
}

impl Default for Inference {
    fn default() -> Self {
        Inference { batch: 1 }
    }
}

/// `[thermal]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thermal {
    /// Thermal zone types watched (`/sys/class/thermal/thermal_zone*/type`); the hottest counts.
    pub zones: Vec<String>,
    /// Adaptation pauses at or above this temperature, °C.
    pub ceiling_c: f32,
    /// Adaptation may resume at or below this temperature, °C (default `ceiling_c - 10`).
    #[serde(default)]
    pub resume_c: Option<f32>,
}

impl Thermal {
    /// The resume temperature, defaulted.
    pub fn resume_c(&self) -> f32 {
        self.resume_c.unwrap_or(self.ceiling_c - 10.0)
    }
}

/// Who manages power modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerManager {
    /// Nothing to check.
    #[default]
    None,
    /// NVIDIA's `nvpmodel` (Jetson).
    Nvpmodel,
}

/// `[power]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Power-mode tool (default `none`).
    #[serde(default)]
    pub manager: PowerManager,
    /// The mode fieldtune expects, as the tool names it (`15W`, `MAXN`).
    #[serde(default)]
    pub mode: Option<String>,
    /// The board's modes, as the tool names them (for validation and for people).
    #[serde(default)]
    pub modes: Vec<String>,
}

/// Power-mode names compare without case and without nvpmodel's `MODE_` prefix.
pub fn same_power_mode(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.trim().to_ascii_uppercase();
        s.strip_prefix("MODE_").map(str::to_string).unwrap_or(s)
    }
    norm(a) == norm(b)
}

fn default_pulse_us() -> u32 {
    100
}

/// `[camera]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// GStreamer pipeline ending in an `appsink` that yields RGB frames.
    pub pipeline: String,
    /// Width of the trigger pulse when `[gpio.trigger]` is set, µs (default 100).
    #[serde(default = "default_pulse_us")]
    pub trigger_pulse_us: u32,
}

/// `[gpio]`: lines fieldtune drives (each optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpio {
    /// Status LED (green).
    #[serde(default)]
    pub status_led: Option<GpioLine>,
    /// Fault / rollback LED (red).
    #[serde(default)]
    pub fault_led: Option<GpioLine>,
    /// Camera trigger or strobe.
    #[serde(default)]
    pub trigger: Option<GpioLine>,
}

impl Gpio {
    /// The configured lines with their key names.
    pub fn lines(&self) -> impl Iterator<Item = (&'static str, &GpioLine)> {
        [
            ("status_led", self.status_led.as_ref()),
            ("fault_led", self.fault_led.as_ref()),
            ("trigger", self.trigger.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, l)| l.map(|l| (k, l)))
    }
}

/// One GPIO line.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioLine {
    /// Chip: path (`/dev/gpiochip0`), name (`gpiochip0`) or label (`tegra234-gpio`).
    pub chip: String,
    /// Line offset within the chip.
    pub line: u32,
    /// On drives the line low (default false).
    #[serde(default)]
    pub active_low: bool,
    /// Pin on the 40-pin header, for people wiring it.
    #[serde(default)]
    pub header_pin: Option<u8>,
}

impl fmt::Display for GpioLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.chip, self.line)?;
        if let Some(p) = self.header_pin {
            write!(f, " (header pin {p})")?;
        }
        Ok(())
    }
}

impl Profile {
    /// Parses and validates a profile; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = error::parse(text, file)?;
        let problems = profile.validate();
        if problems.is_empty() {
            Ok(profile)
        } else {
            Err(ProfileError::Invalid {
                file: file.to_string(),
                problems,
            })
        }
    }

    /// Reads, parses and validates the profile at `path`.
    pub fn load_file(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Profile::from_toml(&text, &path.display().to_string())
    }

    /// A profile by path (anything with a `/` or ending in `.toml`) or by name: first
    /// `$FIELDTUNE_BOARDS_DIR/NAME.toml`, then the shipped profiles.
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            return Profile::load_file(Path::new(name_or_path));
        }
        if let Some(dir) = std::env::var_os(BOARDS_DIR_ENV) {
            let p = Path::new(&dir).join(format!("{name_or_path}.toml"));
            if p.is_file() {
                return Profile::load_file(&p);
            }
        }
        match SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            Some((name, text)) => Profile::from_toml(text, &format!("boards/profiles/{name}.toml")),
            None => Err(ProfileError::UnknownBoard {
                name: name_or_path.to_string(),
                known: shipped_names().join(", "),
            }),
        }
    }

    /// Everything wrong with the values (types and keys are checked by parsing); empty when
    /// valid.
    pub fn validate(&self) -> Vec<Problem> {
        validate::validate(self)
    }
}

/// Names of the shipped profiles.
pub fn shipped_names() -> Vec<&'static str> {
    SHIPPED.iter().map(|(n, _)| *n).collect()
}
