//! The Linux pins against the kernel's GPIO simulator (gpio-sim, configured through configfs).
//!
//! Runs where the machine allows: a kernel with gpio-sim and configfs, root, and the
//! `linux-gpio` feature (`cargo test -p fieldtune-board-linux --features linux-gpio -- --nocapture`).
//! Elsewhere it prints why it did not run and passes. `scripts/ci/gpio-sim-qemu.sh` runs it in QEMU on
//! a kernel built with gpio-sim; boards/README.md records where it last ran.

use std::fs;
use std::path::Path;

const SIM: &str = "/sys/kernel/config/gpio-sim";

/// Why gpio-sim cannot be used here, or `None` when it can.
fn machine_unavailable() -> Option<String> {
    if Path::new(SIM).is_dir() {
        return None;
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has_configfs = filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("configfs"));
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("configfs"));
    let modules = Path::new("/proc/modules").exists();
    let chips = fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("gpiochip"))
                .count()
        })
        .unwrap_or(0);
    let mut why = if !has_configfs {
        format!("{SIM} missing: the kernel has no configfs (CONFIG_CONFIGFS_FS), through which gpio-sim is configured")
    } else if !mounted {
        format!(
            "{SIM} missing: configfs is not mounted (mount -t configfs none /sys/kernel/config)"
        )
    } else {
        format!("{SIM} missing: the gpio-sim module is not loaded (modprobe gpio-sim) or the kernel lacks CONFIG_GPIO_SIM")
    };
    if !modules {
        why.push_str("; this kernel cannot load modules (no /proc/modules)");
    }
    if chips == 0 {
        why.push_str("; no /dev/gpiochip* at all (GPIO character device support, CONFIG_GPIOLIB, may be off)");
    }
    Some(why)
}

fn skip(why: &str) {
    println!("gpio-sim test DID NOT RUN: {why}");
}

#[test]
fn output_lines_on_gpio_sim() {
    let machine = machine_unavailable();
    if !cfg!(feature = "linux-gpio") {
        let also = machine.map(|m| format!(" (and {m})")).unwrap_or_default();
        skip(&format!("built without the `linux-gpio` feature{also}"));
    } else if let Some(why) = machine {
        skip(&why);
    } else {
        #[cfg(feature = "linux-gpio")]
        sim::run();
    }
}

#[cfg(feature = "linux-gpio")]
mod sim {
    use std::fs;
    use std::io;
    use std::path::{Path, PathBuf};

    use embedded_hal::digital::OutputPin;
    use fieldtune_board_core::status::TWO_LEDS;
    use fieldtune_board_core::{State, StatusIndicator, Trigger, TriggerConfig};
    use fieldtune_board_linux::{GpioError, LineSpec, MonotonicClock, OutputLine, SpinDelay};

    use super::{skip, SIM};

    const LABEL: &str = "fieldtune-sim";
    const LINES: u32 = 8;

    /// A simulated chip, removed on drop.
    struct SimChip {
        dir: PathBuf,
        dev_name: String,
        chip_name: String,
    }

    impl SimChip {
        fn create() -> io::Result<SimChip> {
            let dir = Path::new(SIM).join(format!("fieldtune-{}", std::process::id()));
            fs::create_dir(&dir)?;
            let mut chip = SimChip {
                dir,
                dev_name: String::new(),
                chip_name: String::new(),
            };
            let bank = chip.dir.join("bank0");
            fs::create_dir(&bank)?;
            fs::write(bank.join("num_lines"), LINES.to_string())?;
            fs::write(bank.join("label"), LABEL)?;
            fs::write(chip.dir.join("live"), "1")?;
            chip.dev_name = fs::read_to_string(chip.dir.join("dev_name"))?
                .trim()
                .to_string();
            chip.chip_name = fs::read_to_string(bank.join("chip_name"))?
                .trim()
                .to_string();
            Ok(chip)
        }

        /// The level the simulated line is driven to.
        fn value(&self, line: u32) -> u8 {
            let p = format!(
                "/sys/devices/platform/{}/{}/sim_gpio{line}/value",
                self.dev_name, self.chip_name
            );
            fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .trim()
                .parse()
                .unwrap()
        }
    }

    impl Drop for SimChip {
        fn drop(&mut self) {
            let _ = fs::write(self.dir.join("live"), "0");
            let _ = fs::remove_dir(self.dir.join("bank0"));
            let _ = fs::remove_dir(&self.dir);
        }
    }

    pub fn run() {
        let chip = match SimChip::create() {
            Ok(c) => c,
            Err(e) => {
                skip(&format!(
                    "creating a gpio-sim chip under {SIM} failed: {e} (needs root)"
                ));
                return;
            }
        };
        println!(
            "gpio-sim: {} is {} [{LABEL}]",
            chip.dev_name, chip.chip_name
        );

        // By device name: initial level, then both levels.
        let mut l3 =
            OutputLine::open(&LineSpec::new(&chip.chip_name, 3), "fieldtune-test", false).unwrap();
        assert_eq!(chip.value(3), 0);
        l3.set_high().unwrap();
        assert_eq!(chip.value(3), 1);
        l3.set_low().unwrap();
        assert_eq!(chip.value(3), 0);

        // By label, active low: on drives the line low.
        let spec = LineSpec {
            active_low: true,
            ..LineSpec::new(LABEL, 5)
        };
        let mut l5 = OutputLine::open(&spec, "fieldtune-test", false).unwrap();
        assert_eq!(chip.value(5), 1);
        l5.set_high().unwrap();
        assert_eq!(chip.value(5), 0);

        // A held line is busy; a line past the end is out of range; both named.
        let e = OutputLine::open(&LineSpec::new(LABEL, 3), "again", false).unwrap_err();
        assert!(matches!(e, GpioError::Line { line: 3, .. }), "{e}");
        let e = OutputLine::open(&LineSpec::new(LABEL, LINES), "x", false).unwrap_err();
        assert!(
            matches!(e, GpioError::LineOutOfRange { lines: LINES, .. }),
            "{e}"
        );

        // The board core's status indicator on two simulated LEDs.
        let green = OutputLine::open(&LineSpec::new(LABEL, 0), "fieldtune-green", false).unwrap();
        let red = OutputLine::open(&LineSpec::new(LABEL, 1), "fieldtune-red", false).unwrap();
        let mut status = StatusIndicator::new([green, red], TWO_LEDS);
        status.tick().unwrap();
        assert_eq!((chip.value(0), chip.value(1)), (1, 0), "idle blip");
        status.tick().unwrap();
        assert_eq!((chip.value(0), chip.value(1)), (0, 0));
        status.set(State::Fault).unwrap();
        status.tick().unwrap();
        assert_eq!((chip.value(0), chip.value(1)), (0, 1), "fault: red on");

        // A trigger pulse ends released, and is stamped on CLOCK_MONOTONIC.
        let pin = OutputLine::open(&LineSpec::new(LABEL, 2), "fieldtune-trigger", false).unwrap();
        let mut trig: Trigger<_, _> = Trigger::new(pin, SpinDelay, TriggerConfig::new(100_000));
        let clock = MonotonicClock;
        let before = fieldtune_board_core::Monotonic::now_ns(&clock);
        let shot = trig.fire(&clock).unwrap();
        assert!(shot.at_ns >= before);
        assert_eq!(chip.value(2), 0);

        drop((l3, l5, status, trig));
        println!("gpio-sim: all checks passed");
    }
}
