//! Board support core for fieldtune: the parts of a board loop that touch pins, written once
//! for Linux single-board computers and microcontrollers alike.
//!
//! - [`status`]: status-indicator state machine (idle, inferring, adapting, committed, rolled
//!   back, fault) that drives one or more LEDs with blink patterns, one step per tick;
//! - [`trigger`]: camera trigger / strobe pulse of a fixed width on a pin, timestamped, with
//!   frame-to-trigger latency statistics;
//! - [`watchdog`]: supervised watchdog feeding: the hardware watchdog is fed only while every
//!   registered task has checked in within its deadline;
//! - [`events`]: fixed-capacity single-producer single-consumer queues between the runtime and
//!   the board loop, with rejected events counted;
//! - [`board`]: the board loop that ties them together.
//!
//! The crate is `no_std`, has no `alloc`, and never allocates: every buffer has a capacity
//! fixed at compile time. Pins and delays are `embedded-hal` 1.0 traits; time comes from a
//! caller-supplied [`trigger::Monotonic`] clock in nanoseconds.
//!
//! Logging goes through `log` (feature `log`, default) or `defmt` (feature `defmt`, which also
//! derives `defmt::Format` on the public data types); with neither, log calls compile to
//! nothing. When both are on, `defmt` wins.
//!
//! ```
//! use fieldtune_board_core::status::TWO_LEDS;
//! use fieldtune_board_core::{
//!     BoardLoop, Event, EventQueue, Feeder, Monotonic, NoDelay, NoPin, Report, State,
//!     StatusIndicator, Trigger, TriggerConfig, Watchdog,
//! };
//!
//! struct Clock;
//! impl Monotonic for Clock {
//!     fn now_ns(&self) -> u64 {
//!         0
//!     }
//! }
//! struct Dog;
//! impl Watchdog for Dog {
//!     type Error = ();
//!     fn feed(&mut self) -> Result<(), ()> {
//!         Ok(())
//!     }
//! }
//!
//! // Real boards pass their LED, trigger and delay types; NoPin stands in for unwired lines.
//! let mut board = BoardLoop {
//!     status: StatusIndicator::new([NoPin, NoPin], TWO_LEDS),
//!     trigger: Trigger::new(NoPin, NoDelay, TriggerConfig::new(100_000)),
//!     feeder: Feeder::new(Dog, [500_000_000], 0),
//! };
//! let mut events: EventQueue<Event, 16> = EventQueue::new();
//! let mut reports: EventQueue<Report, 16> = EventQueue::new();
//! let (mut to_board, mut from_runtime) = events.split();
//! let (mut to_runtime, mut from_board) = reports.split();
//!
//! to_board.send(Event::Status(State::Inferring)).unwrap();
//! to_board.send(Event::Capture).unwrap();
//! board.step(&Clock, &mut from_runtime, &mut to_runtime); // once per 100 ms tick
//! assert!(matches!(from_board.recv(), Some(Report::Triggered(_))));
//! assert_eq!(board.status.state(), State::Inferring);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[macro_use]
mod fmt;

pub mod board;
pub mod events;
pub mod status;
pub mod trigger;
pub mod watchdog;

pub use board::{BoardLoop, NoDelay, NoPin};
pub use events::{Event, EventQueue, PinRole, Receiver, Report, Sender};
pub use status::{InvalidTransition, Pattern, PatternTable, State, StatusIndicator};
pub use trigger::{
    FrameMatch, LatencyStats, Monotonic, Shot, Trigger, TriggerConfig, TriggerError,
};
pub use watchdog::{FeedOutcome, Feeder, UnknownTask, Watchdog};
