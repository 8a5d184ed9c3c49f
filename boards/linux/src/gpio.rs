//! Output pins on the Linux GPIO character device.
//!
//! A line is named by its chip and offset. The chip may be a path (`/dev/gpiochip0`), a device
//! name (`gpiochip0`), or a label (`tegra234-gpio`, `pinctrl-rp1`): chip numbers can change
//! between kernels and boots, labels do not. Active-low lines are inverted here, so the board
//! core always speaks logical levels (on = high).

use std::fmt;
use std::path::PathBuf;

use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin, PinState};

/// Which line to drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSpec {
    /// Chip path, device name or label.
    pub chip: String,
    /// Line offset within the chip.
    pub line: u32,
    /// On (logical high) drives the line low.
    pub active_low: bool,
}

impl LineSpec {
    /// Active-high line `line` of `chip`.
    pub fn new(chip: impl Into<String>, line: u32) -> Self {
        LineSpec {
            chip: chip.into(),
            line,
            active_low: false,
        }
    }
}

impl fmt::Display for LineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.chip, self.line)?;
        if self.active_low {
            f.write_str(" (active low)")?;
        }
        Ok(())
    }
}

/// Opening a line failed.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// Built without the `linux-gpio` feature.
    #[error(
        "GPIO {chip} line {line}: this build has no GPIO support (build with the `linux-gpio` feature)"
    )]
    NotBuilt {
        /// The chip asked for.
        chip: String,
        /// The line asked for.
        line: u32,
    },
    /// No chip with that path, name or label.
    #[error("GPIO chip `{chip}` not found (chips here: {available})")]
    ChipNotFound {
        /// The chip asked for.
        chip: String,
        /// The chips present, as `gpiochipN [label, M lines]`, or `none`.
        available: String,
    },
    /// The chip has fewer lines.
    #[error("GPIO {chip}: no line {line} (the chip has lines 0..{lines})")]
    LineOutOfRange {
        /// The chip.
        chip: String,
        /// The line asked for.
        line: u32,
        /// Lines the chip has.
        lines: u32,
    },
    /// The kernel refused (line busy, permission denied, ...).
    #[error("GPIO {chip} line {line}: {message}")]
    Line {
        /// The chip.
        chip: String,
        /// The line.
        line: u32,
        /// What failed.
        message: String,
    },
}

/// A write to an open line failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("GPIO {chip} line {line}: {message}")]
pub struct LineError {
    /// The chip as given.
    pub chip: String,
    /// The line.
    pub line: u32,
    /// What failed.
    pub message: String,
}

impl embedded_hal::digital::Error for LineError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// A chip found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipInfo {
    /// `/dev/gpiochipN`.
    pub path: PathBuf,
    /// `gpiochipN`.
    pub name: String,
    /// The driver's label (`tegra234-gpio`, `pinctrl-rp1`, `gpio-sim.0-node0`, ...).
    pub label: String,
    /// Number of lines.
    pub lines: u32,
}

impl fmt::Display for ChipInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {} lines]", self.name, self.label, self.lines)
    }
}

#[cfg(feature = "linux-gpio")]
type Inner = linux_embedded_hal::CdevPin;
#[cfg(not(feature = "linux-gpio"))]
type Inner = std::convert::Infallible;

/// An output line held for as long as this value lives (the kernel releases it on drop and
/// the line keeps its last level).
pub struct OutputLine {
    spec: LineSpec,
    #[cfg_attr(not(feature = "linux-gpio"), allow(dead_code))]
    pin: Inner,
}

impl fmt::Debug for OutputLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputLine")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl OutputLine {
    /// Requests `spec` as an output named `consumer` (shown by `gpioinfo`), initially on or
    /// off (logical level).
    pub fn open(spec: &LineSpec, consumer: &str, on: bool) -> Result<Self, GpioError> {
        imp::open(spec, consumer, on)
    }

    /// The line.
    pub fn spec(&self) -> &LineSpec {
        &self.spec
    }

    #[cfg_attr(not(feature = "linux-gpio"), allow(dead_code))]
    fn line_error(&self, message: String) -> LineError {
        LineError {
            chip: self.spec.chip.clone(),
            line: self.spec.line,
            message,
        }
    }
}

impl ErrorType for OutputLine {
    type Error = LineError;
}

impl OutputPin for OutputLine {
    fn set_low(&mut self) -> Result<(), LineError> {
        self.set_state(PinState::Low)
    }

    fn set_high(&mut self) -> Result<(), LineError> {
        self.set_state(PinState::High)
    }

    fn set_state(&mut self, state: PinState) -> Result<(), LineError> {
        let physical = PinState::from((state == PinState::High) != self.spec.active_low);
        imp::write(self, physical)
    }
}

/// The GPIO chips of this machine, in `/dev` order.
pub fn list_chips() -> Result<Vec<ChipInfo>, GpioError> {
    imp::list_chips()
}

#[cfg(feature = "linux-gpio")]
mod imp {
    use super::*;
    use linux_embedded_hal::gpio_cdev::{self, Chip, LineRequestFlags};

    fn info(chip: &Chip) -> ChipInfo {
        ChipInfo {
            path: chip.path().to_path_buf(),
            name: chip.name().to_string(),
            label: chip.label().to_string(),
            lines: chip.num_lines(),
        }
    }

    pub(super) fn list_chips() -> Result<Vec<ChipInfo>, GpioError> {
        // No /dev/gpiochip* at all is an empty list, not an error.
        let Ok(chips) = gpio_cdev::chips() else {
            return Ok(Vec::new());
        };
        let mut out: Vec<ChipInfo> = chips.flatten().map(|c| info(&c)).collect();
        out.sort_by_key(|c| {
            let n = c.name.trim_start_matches("gpiochip");
            (n.parse::<u32>().unwrap_or(u32::MAX), c.name.clone())
        });
        Ok(out)
    }

    fn find_chip(name: &str) -> Result<Chip, GpioError> {
        let path = if name.starts_with('/') {
            Some(PathBuf::from(name))
        } else if name
            .strip_prefix("gpiochip")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(PathBuf::from("/dev").join(name))
        } else {
            None
        };
        let not_found = || {
            let chips = list_chips().unwrap_or_default();
            let available = if chips.is_empty() {
                "none".to_string()
            } else {
                chips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            GpioError::ChipNotFound {
                chip: name.to_string(),
                available,
            }
        };
        match path {
            Some(p) if !p.exists() => Err(not_found()),
            Some(p) => Chip::new(&p).map_err(|e| GpioError::Line {
                chip: name.to_string(),
                line: 0,
                message: format!("opening {}: {e}", p.display()),
            }),
            None => {
                let chips = gpio_cdev::chips().map_err(|_| not_found())?;
                chips
                    .flatten()
                    .find(|c| c.label() == name)
                    .ok_or_else(not_found)
            }
        }
    }

    pub(super) fn open(spec: &LineSpec, consumer: &str, on: bool) -> Result<OutputLine, GpioError> {
        let mut chip = find_chip(&spec.chip)?;
        let lines = chip.num_lines();
        if spec.line >= lines {
            return Err(GpioError::LineOutOfRange {
                chip: spec.chip.clone(),
                line: spec.line,
                lines,
            });
        }
        let err = |message: String| GpioError::Line {
            chip: spec.chip.clone(),
            line: spec.line,
            message,
        };
        let line = chip
            .get_line(spec.line)
            .map_err(|e| err(format!("getting the line: {e}")))?;
        let value = u8::from(on != spec.active_low);
        let handle = line
            .request(LineRequestFlags::OUTPUT, value, consumer)
            .map_err(|e| err(format!("requesting it as an output: {e}")))?;
        let pin = linux_embedded_hal::CdevPin::new(handle)
            .map_err(|e| err(format!("reading its info: {e}")))?;
        Ok(OutputLine {
            spec: spec.clone(),
            pin,
        })
    }

    pub(super) fn write(line: &mut OutputLine, physical: PinState) -> Result<(), LineError> {
        // Requested without ACTIVE_LOW, so CdevPin writes the physical level as given.
        line.pin
            .set_state(physical)
            .map_err(|e| line.line_error(e.to_string()))
    }
}

#[cfg(not(feature = "linux-gpio"))]
mod imp {
    use super::*;

    pub(super) fn list_chips() -> Result<Vec<ChipInfo>, GpioError> {
        Err(GpioError::NotBuilt {
            chip: "*".to_string(),
            line: 0,
        })
    }

    pub(super) fn open(
        spec: &LineSpec,
        _consumer: &str,
        _on: bool,
    ) -> Result<OutputLine, GpioError> {
        Err(GpioError::NotBuilt {
            chip: spec.chip.clone(),
            line: spec.line,
        })
    }

    pub(super) fn write(line: &mut OutputLine, _physical: PinState) -> Result<(), LineError> {
        // No OutputLine exists without the feature (the field is uninhabited).
        let never: Inner = line.pin;
        match never {}
    }
}
