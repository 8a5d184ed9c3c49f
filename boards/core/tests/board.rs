//! The board loop: events in, pin activity and reports out.

mod common;

use common::Time;
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as Level, Transaction as T};
use fieldtune_board_core::status::ONE_LED;
use fieldtune_board_core::{
    BoardLoop, Event, EventQueue, FeedOutcome, Feeder, InvalidTransition, NoPin, Report, Shot,
    State, StatusIndicator, Trigger, TriggerConfig, Watchdog,
};

#[derive(Default)]
struct Dog(u32);

impl Watchdog for Dog {
    type Error = ();
    fn feed(&mut self) -> Result<(), ()> {
        self.0 += 1;
        Ok(())
    }
}

const MS: u64 = 1_000_000;

#[test]
fn step_handles_events_ticks_and_feeds() {
    let time = Time::default();
    let clock = time.clock();
    let mut led = PinMock::new(&[T::set(Level::High)]);
    let mut trigger_pin = PinMock::new(&[T::set(Level::High), T::set(Level::Low)]);
    let mut board = BoardLoop {
        status: StatusIndicator::new([led.clone()], ONE_LED),
        trigger: Trigger::new(
            trigger_pin.clone(),
            time.delay(),
            TriggerConfig::new(50_000),
        ),
        feeder: Feeder::new(Dog::default(), [200 * MS], 0),
    };
    let mut events: EventQueue<Event, 8> = EventQueue::new();
    let mut reports: EventQueue<Report, 8> = EventQueue::new();
    let (mut ev_tx, mut ev_rx) = events.split();
    let (mut rep_tx, mut rep_rx) = reports.split();

    time.set(10 * MS);
    ev_tx.send(Event::Status(State::Inferring)).unwrap();
    ev_tx.send(Event::Status(State::Committed)).unwrap(); // refused: not adapting
    ev_tx.send(Event::Capture).unwrap();
    ev_tx.send(Event::Alive { task: 0 }).unwrap();
    ev_tx.send(Event::Alive { task: 7 }).unwrap();
    board.step(&clock, &mut ev_rx, &mut rep_tx);

    assert_eq!(
        rep_rx.recv(),
        Some(Report::TransitionRefused(InvalidTransition {
            from: State::Inferring,
            to: State::Committed
        }))
    );
    assert_eq!(
        rep_rx.recv(),
        Some(Report::Triggered(Shot {
            seq: 0,
            at_ns: 10 * MS
        }))
    );
    assert_eq!(rep_rx.recv(), Some(Report::UnknownTask(7)));
    assert_eq!(rep_rx.recv(), None);
    assert_eq!(board.status.state(), State::Inferring);
    assert_eq!(board.feeder.fed(), 1);

    // The frame of that shot arrives 4 ms after its edge.
    ev_tx.send(Event::Frame { at_ns: 14 * MS }).unwrap();
    board.step(&clock, &mut ev_rx, &mut rep_tx);
    match rep_rx.recv() {
        Some(Report::Frame(m)) => assert_eq!(m.latency_ns(), 4 * MS),
        other => panic!("expected a frame report, got {other:?}"),
    }

    // Task 0 checked in after the 50 us pulse, at 10.05 ms: starved at 300 ms.
    time.set(300 * MS);
    board.step(&clock, &mut ev_rx, &mut rep_tx);
    assert_eq!(
        rep_rx.recv(),
        Some(Report::WatchdogStarved {
            task: 0,
            silent_ns: 300 * MS - (10 * MS + 50_000)
        })
    );
    assert!(matches!(
        board.feeder.poll(300 * MS),
        Ok(FeedOutcome::Starved { .. })
    ));
    led.done();
    trigger_pin.done();
}

#[test]
fn one_step_handles_every_queued_event() {
    let time = Time::default();
    let mut board = BoardLoop {
        status: StatusIndicator::new([NoPin], ONE_LED),
        trigger: Trigger::new(NoPin, fieldtune_board_core::NoDelay, TriggerConfig::new(1)),
        feeder: Feeder::new(Dog::default(), [u64::MAX], 0),
    };
    let mut events: EventQueue<Event, 4> = EventQueue::new();
    let mut reports: EventQueue<Report, 16> = EventQueue::new();
    let (mut ev_tx, mut ev_rx) = events.split();
    let (mut rep_tx, mut rep_rx) = reports.split();
    for _ in 0..3 {
        ev_tx.send(Event::Capture).unwrap();
    }
    board.step(&time.clock(), &mut ev_rx, &mut rep_tx);
    let mut n = 0;
    while let Some(r) = rep_rx.recv() {
        assert!(matches!(r, Report::Triggered(_)));
        n += 1;
    }
    assert_eq!(n, 3);
    assert!(ev_rx.is_empty());
}
