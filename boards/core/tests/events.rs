//! Fixed-capacity queues: capacity, order, overflow counting, threads.

use fieldtune_board_core::{Event, EventQueue, State};

#[test]
fn holds_n_minus_one_rejects_the_newest_and_counts() {
    let mut q: EventQueue<Event, 4> = EventQueue::new();
    assert_eq!(q.capacity(), 3);
    let (mut tx, mut rx) = q.split();
    for task in 0..3 {
        tx.send(Event::Alive { task }).unwrap();
    }
    assert!(!tx.ready());
    // Full: the newest is handed back, the queued ones are kept.
    assert_eq!(tx.send(Event::Capture), Err(Event::Capture));
    assert_eq!(
        tx.send(Event::Status(State::Fault)),
        Err(Event::Status(State::Fault))
    );
    assert_eq!(tx.rejected(), 2);
    assert_eq!(rx.rejected(), 2, "the receiver sees the count too");
    assert_eq!(rx.len(), 3);
    for task in 0..3 {
        assert_eq!(rx.recv(), Some(Event::Alive { task }));
    }
    assert_eq!(rx.recv(), None);
    assert!(rx.is_empty());
    // Room again.
    tx.send(Event::Capture).unwrap();
    assert_eq!(rx.recv(), Some(Event::Capture));
    assert_eq!(q.rejected(), 2);
}

#[test]
fn unsplit_use_has_the_same_policy() {
    let mut q: EventQueue<u32, 3> = EventQueue::default();
    q.send(1).unwrap();
    q.send(2).unwrap();
    assert_eq!(q.send(3), Err(3));
    assert_eq!(q.recv(), Some(1));
    q.send(4).unwrap();
    assert_eq!(q.recv(), Some(2));
    assert_eq!(q.recv(), Some(4));
    assert_eq!(q.recv(), None);
    assert_eq!(q.rejected(), 1);
}

#[test]
fn producer_and_consumer_threads_lose_nothing_uncounted() {
    const SENT: u32 = 20_000;
    let mut q: EventQueue<u32, 16> = EventQueue::new();
    let (mut tx, mut rx) = q.split();
    let received = std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..SENT {
                let _ = tx.send(i);
            }
        });
        let mut got = Vec::new();
        let mut idle = 0u32;
        // Stop once nothing arrived for a while after the producer is done.
        while idle < 1_000_000 {
            match rx.recv() {
                Some(v) => {
                    got.push(v);
                    idle = 0;
                    if v == SENT - 1 {
                        break;
                    }
                }
                None => {
                    idle += 1;
                    std::hint::spin_loop();
                }
            }
        }
        while let Some(v) = rx.recv() {
            got.push(v);
        }
        got
    });
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "received out of order"
    );
    assert_eq!(received.len() as u32 + q.rejected(), SENT);
}
