//! A fixed-capacity queue of preallocated slots between two pipeline stages.
//!
//! All `capacity + 2` slots exist from the start: the producer takes a free slot, fills it
//! outside the lock and queues it; the consumer takes the oldest queued slot, uses it
//! outside the lock and gives it back. Slots move between two containers whose capacity is
//! reserved up front, so steady state allocates nothing. When the queue is full, the
//! producer either takes back the oldest queued slot (drop-oldest, counted) or waits.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::WhenFull;

/// Counters of a [`SlotQueue`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Slots queued by the producer.
    pub pushed: u64,
    /// Slots taken by the consumer.
    pub popped: u64,
    /// Queued slots taken back unconsumed because the queue was full.
    pub dropped: u64,
}

struct State<T> {
    free: Vec<T>,
    ready: VecDeque<T>,
    counts: QueueCounts,
    closed: bool,
}

/// The queue; share it with `Arc`.
pub struct SlotQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    policy: WhenFull,
    ready_cv: Condvar,
    free_cv: Condvar,
}

impl<T: Send> SlotQueue<T> {
    /// A queue of `capacity` with `capacity + 2` slots made by `make` (one in the producer's
    /// hands, one in the consumer's).
    pub fn new(capacity: usize, policy: WhenFull, mut make: impl FnMut() -> T) -> SlotQueue<T> {
        let capacity = capacity.max(1);
        let mut free = Vec::with_capacity(capacity + 2);
        for _ in 0..capacity + 2 {
            free.push(make());
        }
        SlotQueue {
            state: Mutex::new(State {
                free,
                ready: VecDeque::with_capacity(capacity),
                counts: QueueCounts::default(),
                closed: false,
            }),
            capacity,
            policy,
            ready_cv: Condvar::new(),
            free_cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot to fill: a free one, else (drop-oldest) the oldest queued one, else (block) the
    /// first to come back. `None` once the queue is closed.
    pub fn acquire(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if s.ready.len() < self.capacity {
                if let Some(slot) = s.free.pop() {
                    return Some(slot);
                }
            }
            if self.policy == WhenFull::DropOldest {
                if let Some(slot) = s.ready.pop_front() {
                    s.counts.dropped += 1;
                    return Some(slot);
                }
            }
            s = self
                .free_cv
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Queues a filled slot.
    pub fn push(&self, slot: T) {
        let mut s = self.lock();
        if s.ready.len() < self.capacity {
            s.ready.push_back(slot);
            s.counts.pushed += 1;
        } else {
            // Only reachable if a caller pushes a slot it did not acquire.
            s.free.push(slot);
        }
        drop(s);
        self.ready_cv.notify_one();
    }

    /// Gives an unfilled slot back (e.g. a frame that could not be read).
    pub fn unacquire(&self, slot: T) {
        self.release(slot);
    }

    /// The oldest queued slot, waiting up to `timeout`. `None` on timeout, or when the queue
    /// is closed and empty.
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        let mut s = self.lock();
        if s.ready.is_empty() && !s.closed {
            s = self
                .ready_cv
                .wait_timeout_while(s, timeout, |s| s.ready.is_empty() && !s.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let slot = s.ready.pop_front()?;
        s.counts.popped += 1;
        drop(s);
        self.free_cv.notify_one();
        Some(slot)
    }

    /// Returns a consumed slot to the free list.
    pub fn release(&self, slot: T) {
        let mut s = self.lock();
        s.free.push(slot);
        drop(s);
        self.free_cv.notify_one();
    }

    /// No more slots are handed to the producer; the consumer drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready_cv.notify_all();
        self.free_cv.notify_all();
    }

    /// Whether [`SlotQueue::close`] was called and nothing is left to pop.
    pub fn is_drained(&self) -> bool {
        let s = self.lock();
        s.closed && s.ready.is_empty()
    }

    pub fn counts(&self) -> QueueCounts {
        self.lock().counts
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserved capacity of the two containers (constant: nothing grows).
    pub fn reserved(&self) -> (usize, usize) {
        let s = self.lock();
        (s.free.capacity(), s.ready.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let q = SlotQueue::new(3, WhenFull::DropOldest, || 0u64);
        for i in 1..=10u64 {
            let _slot = q.acquire().unwrap();
            q.push(i);
        }
        let c = q.counts();
        assert_eq!((c.pushed, c.dropped), (10, 7));
        let got: Vec<u64> = std::iter::from_fn(|| q.pop(Duration::ZERO)).collect();
        assert_eq!(got, vec![8, 9, 10]);
        assert_eq!(q.counts().popped, 3);
    }

    #[test]
    fn block_waits_for_the_consumer_and_loses_nothing() {
        let q = Arc::new(SlotQueue::new(2, WhenFull::Block, || 0u64));
        let prod = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 1..=500u64 {
                    let _slot = q.acquire().unwrap();
                    q.push(i);
                }
                q.close();
            })
        };
        let mut got = Vec::new();
        while !q.is_drained() {
            if let Some(s) = q.pop(Duration::from_millis(10)) {
                got.push(s);
                q.release(s);
            }
        }
        prod.join().unwrap();
        assert_eq!(got, (1..=500).collect::<Vec<_>>());
        assert_eq!(q.counts().dropped, 0);
    }

    #[test]
    fn capacity_never_grows_under_overload() {
        let q = SlotQueue::new(4, WhenFull::DropOldest, || vec![0u8; 16]);
        let before = q.reserved();
        for round in 0..1000 {
            let mut s = q.acquire().unwrap();
            s[0] = round as u8;
            q.push(s);
            if round % 7 == 0 {
                let s = q.pop(Duration::ZERO).unwrap();
                q.release(s);
            }
        }
        assert_eq!(q.reserved(), before);
        let left = std::iter::from_fn(|| q.pop(Duration::ZERO)).count() as u64;
        let c = q.counts();
        assert_eq!(c.pushed, 1000);
        assert_eq!(left, 4, "a full queue at the end");
        assert_eq!(c.popped + c.dropped, 1000, "{c:?}");
    }

    #[test]
    fn close_wakes_a_waiting_producer() {
        let q = Arc::new(SlotQueue::new(1, WhenFull::Block, || 0u8));
        let a = q.acquire().unwrap();
        q.push(a);
        // Capacity 1 and one queued: the next acquire waits until the queue closes.
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.acquire());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        q.close();
        assert!(t.join().unwrap().is_none());
    }
}
