//! Fixed-capacity queues between the runtime and the board loop.
//!
//! An [`EventQueue`] is a lock-free single-producer single-consumer ring (`heapless::spsc`):
//! [`EventQueue::split`] gives a [`Sender`] and a [`Receiver`] that may live on different
//! threads (or in main code and an interrupt handler). It holds `N - 1` items.
//!
//! **Overflow policy: reject the newest.** When the queue is full, [`Sender::send`] hands the
//! item back and counts it in [`Sender::rejected`] (shared with the receiver, which can report
//! it); the queued items are kept. Dropping the oldest instead would need the producer to
//! dequeue, which a single-producer single-consumer ring does not allow. A sender that must
//! not lose an item (a fault) can retry it later.

use core::sync::atomic::{AtomicU32, Ordering};

use heapless::spsc::{Consumer, Producer, Queue};

use crate::status::{InvalidTransition, State};
use crate::trigger::{FrameMatch, Shot};

/// Runtime to board loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// Show this state (checked by the status state machine).
    Status(State),
    /// Fire the camera trigger now.
    Capture,
    /// A frame arrived, timestamped on the board loop's clock.
    Frame {
        /// Frame timestamp in nanoseconds.
        at_ns: u64,
    },
    /// Task `task` is alive (for the watchdog feeder).
    Alive {
        /// Task number.
        task: u8,
    },
}

/// Which pin a [`Report::PinFailed`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PinRole {
    /// A status LED.
    Status,
    /// The camera trigger asserting (no pulse went out).
    TriggerAssert,
    /// The camera trigger releasing (the line may be stuck asserted).
    TriggerRelease,
}

/// Board loop to runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Report {
    /// A trigger pulse went out.
    Triggered(Shot),
    /// A frame matched its trigger pulse.
    Frame(FrameMatch),
    /// A state change was refused; the indicator stays where it was.
    TransitionRefused(InvalidTransition),
    /// A pin write failed.
    PinFailed(PinRole),
    /// A task missed its deadline; the watchdog is not being fed.
    WatchdogStarved {
        /// The task.
        task: u8,
        /// Nanoseconds since it last checked in.
        silent_ns: u64,
    },
    /// Feeding the watchdog failed.
    WatchdogFailed,
    /// A task number the feeder does not have checked in.
    UnknownTask(u8),
}

/// A single-producer single-consumer queue of up to `N - 1` items of `T`.
#[derive(Debug)]
pub struct EventQueue<T, const N: usize> {
    queue: Queue<T, N>,
    rejected: AtomicU32,
}

impl<T, const N: usize> Default for EventQueue<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> EventQueue<T, N> {
    /// An empty queue (usable in a `static`).
    pub const fn new() -> Self {
        EventQueue {
            queue: Queue::new(),
            rejected: AtomicU32::new(0),
        }
    }

    /// Items it can hold (`N - 1`).
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Splits into the sending and receiving ends.
    pub fn split(&mut self) -> (Sender<'_, T>, Receiver<'_, T>) {
        let EventQueue { queue, rejected } = self;
        let (producer, consumer) = queue.split();
        let rejected = &*rejected;
        (
            Sender { producer, rejected },
            Receiver { consumer, rejected },
        )
    }

    /// Sends without splitting (single-threaded use); same policy as [`Sender::send`].
    pub fn send(&mut self, item: T) -> Result<(), T> {
        self.queue.enqueue(item).inspect_err(|_| {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Receives without splitting.
    pub fn recv(&mut self) -> Option<T> {
        self.queue.dequeue()
    }

    /// Items rejected because the queue was full, since creation.
    pub fn rejected(&self) -> u32 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The sending end of an [`EventQueue`].
pub struct Sender<'a, T> {
    producer: Producer<'a, T>,
    rejected: &'a AtomicU32,
}

impl<T> core::fmt::Debug for Sender<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sender")
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

impl<T> Sender<'_, T> {
    /// Queues `item`, or hands it back and counts it when the queue is full.
    pub fn send(&mut self, item: T) -> Result<(), T> {
        self.producer.enqueue(item).inspect_err(|_| {
            let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!("events: queue full, {} rejected so far", n);
            }
        })
    }

    /// Whether there is room for one more item.
    pub fn ready(&self) -> bool {
        self.producer.ready()
    }

    /// Items rejected because the queue was full, since creation.
    pub fn rejected(&self) -> u32 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The receiving end of an [`EventQueue`].
pub struct Receiver<'a, T> {
    consumer: Consumer<'a, T>,
    rejected: &'a AtomicU32,
}

impl<T> core::fmt::Debug for Receiver<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Receiver")
            .field("len", &self.len())
            .field("rejected", &self.rejected())
            .finish_non_exhaustive()
    }
}

impl<T> Receiver<'_, T> {
    /// The oldest queued item.
    pub fn recv(&mut self) -> Option<T> {
        self.consumer.dequeue()
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.consumer.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.consumer.is_empty()
    }

    /// Items the queue can hold.
    pub fn capacity(&self) -> usize {
        self.consumer.capacity()
    }

    /// Items rejected because the queue was full, since creation.
    pub fn rejected(&self) -> u32 {
        self.rejected.load(Ordering::Relaxed)
    }
}
