//! Trigger pulse width, timestamps and frame-to-trigger matching.

mod common;

use std::io::ErrorKind;

use common::Time;
use embedded_hal_mock::eh1::delay::{CheckedDelay, Transaction as D};
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as Level, Transaction as T};
use embedded_hal_mock::eh1::MockError;
use fieldtune_board_core::{FrameMatch, Shot, Trigger, TriggerConfig, TriggerError};

#[test]
fn pulse_is_high_then_low_with_exactly_the_configured_delay() {
    let time = Time::default();
    time.set(1_000);
    let mut pin = PinMock::new(&[T::set(Level::High), T::set(Level::Low)]);
    let mut delay = CheckedDelay::new(&[D::delay_ns(150_000)]);
    let mut trig: Trigger<_, _> =
        Trigger::new(pin.clone(), delay.clone(), TriggerConfig::new(150_000));
    let shot = trig.fire(&time.clock()).unwrap();
    assert_eq!(
        shot,
        Shot {
            seq: 0,
            at_ns: 1_000
        }
    );
    pin.done();
    delay.done();
}

#[test]
fn active_low_pulse_is_low_then_high() {
    let time = Time::default();
    let mut pin = PinMock::new(&[
        T::set(Level::High), // release_pin: idle level of an active-low line
        T::set(Level::Low),
        T::set(Level::High),
    ]);
    let config = TriggerConfig {
        active_low: true,
        ..TriggerConfig::new(10_000)
    };
    let mut trig: Trigger<_, _> = Trigger::new(pin.clone(), time.delay(), config);
    trig.release_pin().unwrap();
    trig.fire(&time.clock()).unwrap();
    pin.done();
}

#[test]
fn recorded_delay_is_the_pulse_width_and_latency_is_frame_minus_edge() {
    let time = Time::default();
    let delay = time.delay();
    let mut pin = PinMock::new(&[
        T::set(Level::High),
        T::set(Level::Low),
        T::set(Level::High),
        T::set(Level::Low),
    ]);
    let mut trig: Trigger<_, _> =
        Trigger::new(pin.clone(), delay.clone(), TriggerConfig::new(250_000));
    let clock = time.clock();

    time.set(10_000_000);
    let a = trig.fire(&clock).unwrap();
    // The edge is stamped before the delay: the delay moved the clock by the pulse width.
    assert_eq!(a.at_ns, 10_000_000);
    assert_eq!(time.0.get(), 10_250_000);
    time.set(43_000_000);
    let b = trig.fire(&clock).unwrap();
    assert_eq!(
        b,
        Shot {
            seq: 1,
            at_ns: 43_000_000
        }
    );
    assert_eq!(*delay.calls.borrow(), [250_000, 250_000]);

    // Frames come back in order; each matches the oldest shot at or before it.
    let m = trig.frame(15_500_000).unwrap();
    assert_eq!(
        m,
        FrameMatch {
            shot: a,
            frame_ns: 15_500_000
        }
    );
    assert_eq!(m.latency_ns(), 5_500_000);
    let m = trig.frame(50_000_000).unwrap();
    assert_eq!(m.latency_ns(), 7_000_000);
    let s = trig.stats();
    assert_eq!(
        (s.fired, s.matched, s.missed, s.unmatched_frames),
        (2, 2, 0, 0)
    );
    assert_eq!(
        (s.min_ns, s.max_ns, s.last_ns),
        (5_500_000, 7_000_000, 7_000_000)
    );
    assert_eq!(s.mean_ns(), Some(6_250_000));
    pin.done();
}

#[test]
fn unmatched_frames_missed_shots_and_full_queue_are_counted() {
    let time = Time::default();
    let pulses: Vec<T> = (0..5)
        .flat_map(|_| [T::set(Level::High), T::set(Level::Low)])
        .collect();
    let mut pin = PinMock::new(&pulses);
    let config = TriggerConfig {
        frame_timeout_ns: 1_000_000,
        ..TriggerConfig::new(1_000)
    };
    // Two shots may wait for frames.
    let mut trig: Trigger<_, _, 2> = Trigger::new(pin.clone(), time.delay(), config);
    let clock = time.clock();

    // A frame before any shot matches nothing.
    assert_eq!(trig.frame(500), None);

    // The 10 ms shot gets no frame within 1 ms: missed when the 20 ms frame comes.
    time.set(10_000_000);
    trig.fire(&clock).unwrap();
    time.set(19_900_000);
    let late = trig.fire(&clock).unwrap();
    let m = trig.frame(20_000_000).unwrap();
    assert_eq!(m.shot, late);
    assert_eq!(m.latency_ns(), 100_000);
    assert_eq!(trig.stats().missed, 1);

    // Three shots with room for two: the oldest is pushed out and counted missed.
    for t in [30_000_000, 30_100_000, 30_200_000] {
        time.set(t);
        trig.fire(&clock).unwrap();
    }
    assert_eq!(trig.pending(), 2);
    assert_eq!(trig.stats().missed, 2);
    let m = trig.frame(30_250_000).unwrap();
    assert_eq!(
        m.shot,
        Shot {
            seq: 3,
            at_ns: 30_100_000
        }
    );

    // The last shot times out.
    assert_eq!(trig.expire(40_000_000), 1);
    let s = trig.stats();
    assert_eq!(
        (s.fired, s.matched, s.missed, s.unmatched_frames),
        (5, 2, 3, 1)
    );
    assert_eq!(trig.pending(), 0);
    pin.done();
}

#[test]
fn failed_assert_sends_no_pulse_and_releases_the_line() {
    let time = Time::default();
    let err = MockError::Io(ErrorKind::Other);
    let mut pin = PinMock::new(&[T::set(Level::High).with_error(err), T::set(Level::Low)]);
    // No delay may happen.
    let mut delay = CheckedDelay::new(&[]);
    let mut trig: Trigger<_, _> =
        Trigger::new(pin.clone(), delay.clone(), TriggerConfig::new(1_000));
    match trig.fire(&time.clock()) {
        Err(TriggerError::Assert(_)) => {}
        other => panic!("expected an assert error, got {other:?}"),
    }
    assert_eq!(trig.stats().fired, 0);
    assert_eq!(trig.pending(), 0);
    pin.done();
    delay.done();
}
