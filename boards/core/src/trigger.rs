//! Camera trigger / strobe: a pulse of fixed width on a pin for hardware-synchronised capture,
//! timestamped, and matched with the frames that come back to measure frame-to-trigger
//! latency.
//!
//! [`Trigger::fire`] asserts the pin, reads the clock, waits the pulse width with
//! [`DelayNs`], and releases the pin. The [`Shot`] it returns carries the time of the rising
//! edge. Frames are reported with [`Trigger::frame`] in capture order, with a timestamp on the
//! same clock (on Linux, `CLOCK_MONOTONIC`, which V4L2 buffer timestamps use). A frame
//! matches the oldest pending shot at or before it and within the timeout; shots that time
//! out are counted as missed, frames with no shot before them as unmatched (a free-running
//! camera, or a clock mismatch).

use core::fmt;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use heapless::Deque;

/// A monotonic clock in nanoseconds (on Linux, `CLOCK_MONOTONIC`).
pub trait Monotonic {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

impl<C: Monotonic + ?Sized> Monotonic for &C {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// One trigger pulse: its sequence number (from 0, wrapping) and the time of its rising edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shot {
    /// Sequence number of the pulse.
    pub seq: u32,
    /// Clock reading taken right after the pin was asserted.
    pub at_ns: u64,
}

/// A frame matched to the shot that triggered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameMatch {
    /// The shot.
    pub shot: Shot,
    /// The frame's timestamp.
    pub frame_ns: u64,
}

impl FrameMatch {
    /// Frame time minus trigger time.
    pub fn latency_ns(&self) -> u64 {
        self.frame_ns - self.shot.at_ns
    }
}

/// Frame-to-trigger latency over all matched frames, and the shots and frames that did not
/// match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LatencyStats {
    /// Pulses fired.
    pub fired: u32,
    /// Frames matched to a shot.
    pub matched: u32,
    /// Shots with no frame within the timeout (or pushed out of the pending queue).
    pub missed: u32,
    /// Frames with no pending shot at or before them.
    pub unmatched_frames: u32,
    /// Smallest latency (0 when nothing matched).
    pub min_ns: u64,
    /// Largest latency.
    pub max_ns: u64,
    /// Sum of latencies (for the mean).
    pub sum_ns: u64,
    /// Latest latency.
    pub last_ns: u64,
}

impl LatencyStats {
    /// Mean latency, `None` before the first match.
    pub fn mean_ns(&self) -> Option<u64> {
        (self.matched > 0).then(|| self.sum_ns / u64::from(self.matched))
    }

    fn record(&mut self, latency: u64) {
        if self.matched == 0 || latency < self.min_ns {
            self.min_ns = latency;
        }
        self.max_ns = self.max_ns.max(latency);
        self.sum_ns = self.sum_ns.saturating_add(latency);
        self.last_ns = latency;
        self.matched = self.matched.saturating_add(1);
    }
}

/// Pulse width and frame timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TriggerConfig {
    /// Pulse width in nanoseconds.
    pub pulse_ns: u32,
    /// A shot with no frame within this time is missed.
    pub frame_timeout_ns: u64,
    /// The pin is asserted low instead of high.
    pub active_low: bool,
}

impl TriggerConfig {
    /// `pulse_ns` wide, active high, 1 s frame timeout.
    pub const fn new(pulse_ns: u32) -> Self {
        TriggerConfig {
            pulse_ns,
            frame_timeout_ns: 1_000_000_000,
            active_low: false,
        }
    }
}

/// A trigger pin with its delay, and up to `Q` shots waiting for their frame.
#[derive(Debug)]
pub struct Trigger<P, D, const Q: usize = 8> {
    pin: P,
    delay: D,
    config: TriggerConfig,
    next_seq: u32,
    pending: Deque<Shot, Q>,
    stats: LatencyStats,
}

/// A failed pulse: which edge failed. The pin is released on a failed assert too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TriggerError<E> {
    /// Asserting the pin failed; no pulse went out.
    Assert(E),
    /// Releasing the pin failed; it may still be asserted.
    Release(E),
}

impl<E: fmt::Debug> fmt::Display for TriggerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerError::Assert(e) => write!(f, "trigger: asserting the pin failed: {e:?}"),
            TriggerError::Release(e) => write!(f, "trigger: releasing the pin failed: {e:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for TriggerError<E> {}

impl<P: OutputPin, D: DelayNs, const Q: usize> Trigger<P, D, Q> {
    /// A trigger on `pin`; the pin is not touched until [`Trigger::release_pin`] or the first
    /// [`Trigger::fire`].
    pub fn new(pin: P, delay: D, config: TriggerConfig) -> Self {
        Trigger {
            pin,
            delay,
            config,
            next_seq: 0,
            pending: Deque::new(),
            stats: LatencyStats::default(),
        }
    }

    /// Drives the pin to its idle level (call once at start-up).
    pub fn release_pin(&mut self) -> Result<(), P::Error> {
        self.set(false)
    }

    fn set(&mut self, asserted: bool) -> Result<(), P::Error> {
        if asserted != self.config.active_low {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        }
    }

    /// Sends one pulse and returns its [`Shot`]. The shot waits for its frame; when `Q` shots
    /// are already waiting, the oldest is counted missed and dropped.
    pub fn fire<C: Monotonic>(&mut self, clock: &C) -> Result<Shot, TriggerError<P::Error>> {
        if let Err(e) = self.set(true) {
            // Leave the line released; the assert's error is the one that matters.
            let _ = self.set(false);
            return Err(TriggerError::Assert(e));
        }
        let at_ns = clock.now_ns();
        self.delay.delay_ns(self.config.pulse_ns);
        self.set(false).map_err(TriggerError::Release)?;
        let shot = Shot {
            seq: self.next_seq,
            at_ns,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.stats.fired = self.stats.fired.saturating_add(1);
        if self.pending.is_full() {
            self.pending.pop_front();
            self.stats.missed = self.stats.missed.saturating_add(1);
        }
        // Cannot fail: a slot was freed above when full.
        let _ = self.pending.push_back(shot);
        Ok(shot)
    }

    /// A frame arrived with timestamp `frame_ns`: matches it to the oldest pending shot at or
    /// before it within the timeout (older shots are counted missed), or counts it unmatched.
    pub fn frame(&mut self, frame_ns: u64) -> Option<FrameMatch> {
        self.expire(frame_ns);
        match self.pending.front() {
            Some(shot) if shot.at_ns <= frame_ns => {
                let shot = *shot;
                self.pending.pop_front();
                let m = FrameMatch { shot, frame_ns };
                self.stats.record(m.latency_ns());
                Some(m)
            }
            _ => {
                self.stats.unmatched_frames = self.stats.unmatched_frames.saturating_add(1);
                debug!("trigger: frame at {} ns matches no shot", frame_ns);
                None
            }
        }
    }

    /// Drops pending shots older than the timeout at `now_ns`, counting them missed; returns
    /// how many.
    pub fn expire(&mut self, now_ns: u64) -> u32 {
        let mut n = 0;
        while let Some(shot) = self.pending.front() {
            if now_ns.saturating_sub(shot.at_ns) <= self.config.frame_timeout_ns {
                break;
            }
            debug!("trigger: shot {} got no frame", shot.seq);
            self.pending.pop_front();
            n += 1;
        }
        self.stats.missed = self.stats.missed.saturating_add(n);
        n
    }

    /// Shots waiting for their frame.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Latency statistics so far.
    pub fn stats(&self) -> &LatencyStats {
        &self.stats
    }

    /// Configuration.
    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    /// Gives the pin and the delay back.
    pub fn release(self) -> (P, D) {
        (self.pin, self.delay)
    }
}
