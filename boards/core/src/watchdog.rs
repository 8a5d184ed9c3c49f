//! Supervised watchdog feeding.
//!
//! A hardware (or kernel) watchdog resets the board unless it is fed in time. Feeding it from a
//! timer alone proves only that the timer runs; the [`Feeder`] feeds it only while each of
//! `K` tasks (inference loop, adaptation worker, board loop, ...) has checked in within its
//! own deadline. A stalled task stops the feeding and the watchdog resets the board.

use core::fmt;

/// A watchdog that resets the board unless fed in time.
pub trait Watchdog {
    /// Feeding error.
    type Error;
    /// Restarts the watchdog's countdown.
    fn feed(&mut self) -> Result<(), Self::Error>;
}

impl<W: Watchdog + ?Sized> Watchdog for &mut W {
    type Error = W::Error;
    fn feed(&mut self) -> Result<(), Self::Error> {
        (**self).feed()
    }
}

/// What [`Feeder::poll`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FeedOutcome {
    /// Every task was alive; the watchdog was fed.
    Fed,
    /// Every task was alive, but the last feed is more recent than the minimum interval.
    TooSoon,
    /// A task missed its deadline (the lowest-numbered one is named); not fed.
    Starved {
        /// The task.
        task: u8,
        /// Nanoseconds since it last checked in (or since the feeder started).
        silent_ns: u64,
    },
}

/// A check-in from a task number the feeder does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct UnknownTask {
    /// The task number given.
    pub task: u8,
    /// How many tasks the feeder has.
    pub tasks: u8,
}

impl fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog: task {} checked in, but the feeder has tasks 0..{}",
            self.task, self.tasks
        )
    }
}

impl core::error::Error for UnknownTask {}

/// Feeds a [`Watchdog`] while `K` tasks keep checking in.
#[derive(Debug)]
pub struct Feeder<W, const K: usize> {
    watchdog: W,
    deadline_ns: [u64; K],
    last_seen_ns: [u64; K],
    min_interval_ns: u64,
    last_fed_ns: Option<u64>,
    fed: u32,
}

impl<W: Watchdog, const K: usize> Feeder<W, K> {
    /// A feeder started at `now_ns`: task `i` must check in at least every `deadlines_ns[i]`
    /// nanoseconds, the first time within `deadlines_ns[i]` of `now_ns`.
    pub fn new(watchdog: W, deadlines_ns: [u64; K], now_ns: u64) -> Self {
        Feeder {
            watchdog,
            deadline_ns: deadlines_ns,
            last_seen_ns: [now_ns; K],
            min_interval_ns: 0,
            last_fed_ns: None,
            fed: 0,
        }
    }

    /// Feeds at most once per `ns` (for windowed watchdogs, or to spare a slow device file).
    pub fn with_min_interval(mut self, ns: u64) -> Self {
        self.min_interval_ns = ns;
        self
    }

    /// Task `task` is alive at `now_ns`.
    pub fn checkin(&mut self, task: u8, now_ns: u64) -> Result<(), UnknownTask> {
        match self.last_seen_ns.get_mut(usize::from(task)) {
            Some(t) => {
                *t = (*t).max(now_ns);
                Ok(())
            }
            None => Err(UnknownTask {
                task,
                tasks: K.min(u8::MAX as usize) as u8,
            }),
        }
    }

    /// Feeds the watchdog if every task checked in within its deadline at `now_ns` and the
    /// minimum interval has passed.
    pub fn poll(&mut self, now_ns: u64) -> Result<FeedOutcome, W::Error> {
        for (i, (&seen, &deadline)) in self
            .last_seen_ns
            .iter()
            .zip(self.deadline_ns.iter())
            .enumerate()
        {
            let silent_ns = now_ns.saturating_sub(seen);
            if silent_ns > deadline {
                warn!(
                    "watchdog: task {} silent for {} ns, not feeding",
                    i, silent_ns
                );
                return Ok(FeedOutcome::Starved {
                    task: i as u8,
                    silent_ns,
                });
            }
        }
        if let Some(last) = self.last_fed_ns {
            if now_ns.saturating_sub(last) < self.min_interval_ns {
                return Ok(FeedOutcome::TooSoon);
            }
        }
        self.watchdog.feed()?;
        self.last_fed_ns = Some(now_ns);
        self.fed = self.fed.saturating_add(1);
        Ok(FeedOutcome::Fed)
    }

    /// Times the watchdog was fed.
    pub fn fed(&self) -> u32 {
        self.fed
    }

    /// The watchdog.
    pub fn watchdog(&self) -> &W {
        &self.watchdog
    }

    /// Gives the watchdog back.
    pub fn release(self) -> W {
        self.watchdog
    }
}
