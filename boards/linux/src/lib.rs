//! Linux implementations of the board core's seams (`fieldtune-board-core`):
//!
//! - [`gpio::OutputLine`]: an `embedded-hal` 1.0 `OutputPin` on a GPIO character-device line
//!   (`/dev/gpiochipN`), chosen by chip path, name or label and line offset, with active-low
//!   handled here (feature `linux-gpio`; without it, opening a line is a clear error);
//! - [`clock::MonotonicClock`]: `CLOCK_MONOTONIC` in nanoseconds, the clock V4L2 frame
//!   timestamps use, so frame-to-trigger latency compares like with like;
//! - [`clock::SpinDelay`]: a `DelayNs` that sleeps for the bulk and spins for the last
//!   stretch, so a trigger pulse is as wide as asked rather than a scheduler tick wider;
//! - [`watchdog::DevWatchdog`]: the kernel watchdog device (`/dev/watchdog`).

pub mod clock;
pub mod gpio;
pub mod watchdog;

pub use clock::{MonotonicClock, SpinDelay};
pub use gpio::{GpioError, LineError, LineSpec, OutputLine};
pub use watchdog::{DevWatchdog, WatchdogError};
