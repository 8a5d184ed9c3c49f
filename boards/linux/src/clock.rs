//! `CLOCK_MONOTONIC` and a precise delay.

use std::time::Duration;

use embedded_hal::delay::DelayNs;
use fieldtune_board_core::Monotonic;
use rustix::time::{clock_gettime, ClockId};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of V4L2 buffer timestamps and of GStreamer's
/// system clock in its default (monotonic) mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonotonicClock;

impl Monotonic for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let t = clock_gettime(ClockId::Monotonic);
        // CLOCK_MONOTONIC is never negative.
        (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
    }
}

/// A delay that sleeps for all but the last [`SpinDelay::SPIN_NS`] and busy-waits the rest
/// on `CLOCK_MONOTONIC`: a sleep alone overshoots by the scheduler's wake-up latency (tens of
/// microseconds or more), too coarse for a trigger pulse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinDelay;

impl SpinDelay {
    /// The final stretch that is spun rather than slept: 200 µs.
    pub const SPIN_NS: u64 = 200_000;
}

impl DelayNs for SpinDelay {
    fn delay_ns(&mut self, ns: u32) {
        let clock = MonotonicClock;
        let end = clock.now_ns() + u64::from(ns);
        if u64::from(ns) > Self::SPIN_NS {
            std::thread::sleep(Duration::from_nanos(u64::from(ns) - Self::SPIN_NS));
        }
        while clock.now_ns() < end {
            std::hint::spin_loop();
        }
    }
}
