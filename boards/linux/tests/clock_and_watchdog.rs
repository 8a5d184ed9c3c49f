//! CLOCK_MONOTONIC clock, spin delay, watchdog device file.

use std::time::Instant;

use embedded_hal::delay::DelayNs;
use fieldtune_board_core::{Monotonic, Watchdog};
use fieldtune_board_linux::{DevWatchdog, MonotonicClock, SpinDelay};

#[test]
fn monotonic_clock_advances_with_real_time() {
    let c = MonotonicClock;
    let a = c.now_ns();
    let t = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = c.now_ns();
    let real = t.elapsed().as_nanos() as u64;
    assert!(b > a);
    // Both are CLOCK_MONOTONIC on Linux: within a millisecond of each other.
    assert!(
        (b - a).abs_diff(real) < 1_000_000,
        "clock {} ns, Instant {real} ns",
        b - a
    );
}

#[test]
fn spin_delay_is_never_short() {
    let c = MonotonicClock;
    let mut d = SpinDelay;
    for ns in [0u32, 1_000, 50_000, 300_000, 2_000_000] {
        let a = c.now_ns();
        d.delay_ns(ns);
        let took = c.now_ns() - a;
        assert!(took >= u64::from(ns), "asked {ns} ns, took {took} ns");
        // Generous bound for a shared CI machine: only catches gross errors.
        assert!(
            took < u64::from(ns) + 50_000_000,
            "asked {ns} ns, took {took} ns"
        );
    }
}

#[test]
fn watchdog_writes_keep_alive_then_magic_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("watchdog");
    std::fs::write(&path, b"").unwrap();
    let mut w = DevWatchdog::open(&path).unwrap();
    w.feed().unwrap();
    w.feed().unwrap();
    w.disarm().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"kkV");
}

#[test]
fn watchdog_errors_name_the_device() {
    let e = DevWatchdog::open("/nonexistent/watchdog").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("watchdog /nonexistent/watchdog: opening: "),
        "{e}"
    );
}
