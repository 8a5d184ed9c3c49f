//! The kernel watchdog device.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fieldtune_board_core::Watchdog;

/// A watchdog device file failed.
#[derive(Debug, thiserror::Error)]
#[error("watchdog {}: {action}: {source}", path.display())]
pub struct WatchdogError {
    /// The device.
    pub path: PathBuf,
    /// What was being done (`opening`, `feeding`, `disarming`).
    pub action: &'static str,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// `/dev/watchdog` (or another watchdog device): opening it arms the watchdog, every
/// [`feed`](Watchdog::feed) restarts its countdown. Dropping it without
/// [`disarm`](DevWatchdog::disarm) leaves it armed, so a crashed process still ends in a reset.
#[derive(Debug)]
pub struct DevWatchdog {
    file: File,
    path: PathBuf,
}

impl DevWatchdog {
    /// Opens (and so arms) the watchdog device at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WatchdogError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| WatchdogError {
                path: path.clone(),
                action: "opening",
                source,
            })?;
        Ok(DevWatchdog { file, path })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the watchdog on a clean exit: writes the magic close character `V` and closes.
    /// Drivers built with `nowayout` stay armed regardless.
    pub fn disarm(mut self) -> Result<(), WatchdogError> {
        self.file.write_all(b"V").map_err(|source| WatchdogError {
            path: self.path.clone(),
            action: "disarming",
            source,
        })
    }
}

impl Watchdog for DevWatchdog {
    type Error = WatchdogError;

    fn feed(&mut self) -> Result<(), WatchdogError> {
        // Any write restarts the countdown; a character other than `V` keeps it armed.
        self.file.write_all(b"k").map_err(|source| WatchdogError {
            path: self.path.clone(),
            action: "feeding",
            source,
        })
    }
}
