//! The board loop: turns [`Event`]s from the runtime into pin activity and answers with
//! [`Report`]s.
//!
//! Call [`BoardLoop::step`] once per status tick (100 ms with the shipped patterns). A step
//! handles every queued event (at most the queue's capacity, so a flooding producer cannot
//! starve the rest), ticks the status indicator, and polls the watchdog feeder. The step
//! itself blocks only for a trigger pulse's width.

use core::convert::Infallible;

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType, OutputPin};

use crate::events::{Event, PinRole, Receiver, Report, Sender};
use crate::status::StatusIndicator;
use crate::trigger::{Monotonic, Trigger, TriggerError};
use crate::watchdog::{FeedOutcome, Feeder, Watchdog};

/// A pin that is not wired: every write succeeds and does nothing (a board without a trigger
/// line, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NoPin;

impl ErrorType for NoPin {
    type Error = Infallible;
}

impl OutputPin for NoPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A delay that returns at once (pairs with [`NoPin`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// The board's status indicator (`N` LEDs on pins `L`), camera trigger (pin `T`, delay `D`)
/// and watchdog feeder (`K` tasks).
#[derive(Debug)]
pub struct BoardLoop<L, const N: usize, T, D, W, const K: usize> {
    /// Status LEDs.
    pub status: StatusIndicator<L, N>,
    /// Camera trigger.
    pub trigger: Trigger<T, D>,
    /// Watchdog feeder; the board loop is expected to be one of its tasks.
    pub feeder: Feeder<W, K>,
}

impl<L, const N: usize, T, D, W, const K: usize> BoardLoop<L, N, T, D, W, K>
where
    L: OutputPin,
    T: OutputPin,
    D: DelayNs,
    W: Watchdog,
{
    /// One step at the clock's current time: handle queued events, tick the indicator, poll
    /// the feeder. Reports that do not fit in `tx` are counted there as rejected.
    pub fn step<C: Monotonic>(
        &mut self,
        clock: &C,
        rx: &mut Receiver<'_, Event>,
        tx: &mut Sender<'_, Report>,
    ) {
        for _ in 0..rx.capacity() {
            let Some(event) = rx.recv() else { break };
            if let Some(report) = self.handle(clock, event) {
                let _ = tx.send(report);
            }
        }
        if self.status.tick().is_err() {
            let _ = tx.send(Report::PinFailed(PinRole::Status));
        }
        match self.feeder.poll(clock.now_ns()) {
            Ok(FeedOutcome::Starved { task, silent_ns }) => {
                let _ = tx.send(Report::WatchdogStarved { task, silent_ns });
            }
            Ok(FeedOutcome::Fed | FeedOutcome::TooSoon) => {}
            Err(_) => {
                let _ = tx.send(Report::WatchdogFailed);
            }
        }
    }

    /// Handles one event; returns the report it produces, if any.
    pub fn handle<C: Monotonic>(&mut self, clock: &C, event: Event) -> Option<Report> {
        match event {
            Event::Status(s) => self.status.set(s).err().map(Report::TransitionRefused),
            Event::Capture => Some(match self.trigger.fire(clock) {
                Ok(shot) => Report::Triggered(shot),
                Err(TriggerError::Assert(_)) => Report::PinFailed(PinRole::TriggerAssert),
                Err(TriggerError::Release(_)) => Report::PinFailed(PinRole::TriggerRelease),
            }),
            Event::Frame { at_ns } => self.trigger.frame(at_ns).map(Report::Frame),
            Event::Alive { task } => self
                .feeder
                .checkin(task, clock.now_ns())
                .err()
                .map(|e| Report::UnknownTask(e.task)),
        }
    }
}
