//! Status state machine and exact blink sequences on mock pins.

use embedded_hal_mock::eh1::digital::{Mock as PinMock, State as Level, Transaction as T};
use embedded_hal_mock::eh1::MockError;
use fieldtune_board_core::status::{ONE_LED, TWO_LEDS};
use fieldtune_board_core::{InvalidTransition, Pattern, State, StatusIndicator};
use std::io::ErrorKind;

use State::*;

const H: Level = Level::High;
const L: Level = Level::Low;

fn sets(levels: &[Level]) -> Vec<T> {
    levels.iter().map(|l| T::set(*l)).collect()
}

#[test]
fn transition_table_is_exactly_the_documented_one() {
    let allowed: &[(State, State)] = &[
        (Idle, Inferring),
        (Inferring, Adapting),
        (Adapting, Committed),
        (Adapting, RolledBack),
        (Committed, Inferring),
        (Committed, Adapting),
        (RolledBack, Inferring),
        (RolledBack, Adapting),
    ];
    for from in State::ALL {
        for to in State::ALL {
            let expected = from == to || to == Idle || to == Fault || allowed.contains(&(from, to));
            assert_eq!(from.can_go_to(to), expected, "{from} -> {to}");
        }
    }
}

#[test]
fn refused_transition_keeps_the_state_and_names_both_ends() {
    let pin = PinMock::new(&[]);
    let mut s = StatusIndicator::new([pin.clone()], ONE_LED);
    assert_eq!(
        s.set(Adapting),
        Err(InvalidTransition {
            from: Idle,
            to: Adapting
        })
    );
    assert_eq!(s.state(), Idle);
    s.set(Fault).unwrap();
    let e = s.set(Inferring).unwrap_err();
    assert_eq!(
        e.to_string(),
        "status: no transition from fault to inferring"
    );
    assert_eq!(s.state(), Fault);
    s.set(Idle).unwrap();
    assert_eq!(s.state(), Idle);
    pin.clone().done();
}

#[test]
fn idle_blip_writes_only_level_changes() {
    // "#..................." at one tick per step: high, low, then high again at step 20.
    let mut pin = PinMock::new(&sets(&[H, L, H]));
    let mut s = StatusIndicator::new([pin.clone()], ONE_LED);
    for _ in 0..21 {
        s.tick().unwrap();
    }
    pin.done();
}

#[test]
fn two_led_scenario_writes_the_exact_sequence() {
    let green_levels = [
        H, // idle, step 0
        L, // adapting step 5
        H, L, H, L, // committed "#.#." (hold 4)
        H, // back to inferring: steady on
        L, // rolled back: green off
        H, // idle after fault: blip
    ];
    let red_levels = [
        L, // idle: off
        H, L, // rolled back "#."
        H, // fault: steady on
        L, // idle: off
    ];
    let mut green = PinMock::new(&sets(&green_levels));
    let mut red = PinMock::new(&sets(&red_levels));
    let mut s = StatusIndicator::new([green.clone(), red.clone()], TWO_LEDS).with_hold_ticks(4);

    s.tick().unwrap(); // idle
    s.set(Inferring).unwrap();
    s.tick().unwrap(); // green already on: no write
    s.set(Adapting).unwrap();
    for _ in 0..10 {
        s.tick().unwrap(); // "#####.....": low at step 5
    }
    s.set(Committed).unwrap();
    for _ in 0..4 {
        s.tick().unwrap();
    }
    assert_eq!(
        s.state(),
        Inferring,
        "committed returns to inferring after the hold"
    );
    s.tick().unwrap();
    s.set(Adapting).unwrap();
    s.set(RolledBack).unwrap();
    s.tick().unwrap();
    s.tick().unwrap();
    assert_eq!(s.state(), RolledBack);
    s.set(Fault).unwrap();
    s.tick().unwrap();
    s.tick().unwrap(); // steady: no writes
    assert!(s.set(Inferring).is_err());
    s.set(Idle).unwrap();
    s.tick().unwrap();
    assert_eq!(s.state(), Idle);

    green.done();
    red.done();
}

#[test]
fn setting_the_same_state_keeps_the_phase() {
    // Adapting "#####.....": without a phase reset the low edge still comes at step 5.
    let mut pin = PinMock::new(&sets(&[H, L]));
    let mut s = StatusIndicator::new([pin.clone()], ONE_LED);
    s.set(Inferring).unwrap();
    s.set(Adapting).unwrap();
    for i in 0..6 {
        s.set(Adapting).unwrap();
        s.tick().unwrap();
        assert_eq!(s.ticks_in_state(), i + 1);
    }
    pin.done();
}

#[test]
fn active_low_inverts_every_write() {
    let mut pin = PinMock::new(&sets(&[L, H, L]));
    let mut s = StatusIndicator::new([pin.clone()], ONE_LED).with_active_low();
    s.tick().unwrap(); // idle step 0: on = low
    s.tick().unwrap(); // off = high
    s.set(Inferring).unwrap();
    s.tick().unwrap(); // steady on = low
    pin.done();
}

#[test]
fn a_failed_write_is_reported_and_retried() {
    let err = MockError::Io(ErrorKind::Other);
    let mut pin = PinMock::new(&[T::set(H).with_error(err), T::set(H)]);
    let mut s = StatusIndicator::new([pin.clone()], ONE_LED);
    s.set(Inferring).unwrap();
    assert!(s.tick().is_err());
    s.tick().unwrap(); // level unknown after the failure: written again
    s.tick().unwrap(); // now known: nothing written
    pin.done();
}

#[test]
fn patterns_parse_and_repeat() {
    let p = Pattern::parse("##..#");
    assert_eq!(p.period(), 5);
    let levels: Vec<bool> = (0..10).map(|i| p.level(i)).collect();
    assert_eq!(
        levels,
        [true, true, false, false, true, true, true, false, false, true]
    );
    assert_eq!(Pattern::from_bits(0b1, 0), None);
    assert_eq!(Pattern::from_bits(0b1, 33), None);
    assert_eq!(Pattern::from_bits(0b111, 2), Some(Pattern::parse("##")));
    assert!(Pattern::from_bits(u32::MAX, 32).unwrap().level(31));
    // Every shipped pattern differs from every other state's on at least one LED, so each
    // state can be told apart.
    for a in 0..State::COUNT {
        for b in a + 1..State::COUNT {
            assert_ne!(ONE_LED[a], ONE_LED[b], "one LED: rows {a} and {b}");
            assert_ne!(TWO_LEDS[a], TWO_LEDS[b], "two LEDs: rows {a} and {b}");
        }
    }
}
