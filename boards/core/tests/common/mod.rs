//! Test clock and delay that share one simulated time line.
#![allow(dead_code)]

use std::cell::Cell;
use std::rc::Rc;

use embedded_hal::delay::DelayNs;
use fieldtune_board_core::Monotonic;

/// Simulated time in nanoseconds, shared by [`FakeClock`] and [`FakeDelay`].
#[derive(Clone, Default)]
pub struct Time(pub Rc<Cell<u64>>);

impl Time {
    pub fn set(&self, ns: u64) {
        self.0.set(ns);
    }
    pub fn advance(&self, ns: u64) {
        self.0.set(self.0.get() + ns);
    }
    pub fn clock(&self) -> FakeClock {
        FakeClock(self.clone())
    }
    pub fn delay(&self) -> FakeDelay {
        FakeDelay {
            time: self.clone(),
            calls: Rc::new(std::cell::RefCell::new(Vec::new())),
        }
    }
}

pub struct FakeClock(pub Time);

impl Monotonic for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0 .0.get()
    }
}

/// Advances the shared time by each delay and records every call's nanoseconds.
#[derive(Clone)]
pub struct FakeDelay {
    pub time: Time,
    pub calls: Rc<std::cell::RefCell<Vec<u64>>>,
}

impl DelayNs for FakeDelay {
    fn delay_ns(&mut self, ns: u32) {
        self.calls.borrow_mut().push(u64::from(ns));
        self.time.advance(u64::from(ns));
    }
}
