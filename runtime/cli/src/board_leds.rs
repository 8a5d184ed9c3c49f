//! Status LEDs for `fieldtune run` on a board whose profile (`[budget] board`) names GPIO
//! lines: a thread drives boards/core's status indicator on the GPIO character device
//! (build with `--features linux-gpio`) from the run's events, 10 ticks per second.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use embedded_hal::digital::OutputPin;
use fieldtune_board_core::status::{ONE_LED, TWO_LEDS};
use fieldtune_board_core::{PatternTable, State, StatusIndicator};
use fieldtune_board_linux::{LineSpec, OutputLine};
use fieldtune_board_profile::Profile;
use fieldtune_field::events::{EventObserver, FieldEvent};

/// The indicator state an event moves to, if any.
pub fn state_for(event: &FieldEvent) -> Option<State> {
    Some(match event {
        FieldEvent::Started(_) | FieldEvent::Resumed(_) => State::Inferring,
        FieldEvent::RoundStarted(_) => State::Adapting,
        FieldEvent::Committed(_) => State::Committed,
        FieldEvent::RolledBack(_) | FieldEvent::ResetToSource(_) => State::RolledBack,
        FieldEvent::Stopped(_) => State::Idle,
        _ => return None,
    })
}

#[derive(Debug)]
struct LedObserver {
    tx: Mutex<Sender<State>>,
}

impl EventObserver for LedObserver {
    fn event(&self, event: &FieldEvent) {
        if let Some(s) = state_for(event) {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let _ = tx.send(s);
        }
    }
}

/// Opens the profile's status (and fault) LED lines and starts the indicator thread;
/// `None` when the profile names no LED.
pub fn status_leds(profile: &Profile) -> Result<Option<Arc<dyn EventObserver>>> {
    let lines: Vec<_> = [&profile.gpio.status_led, &profile.gpio.fault_led]
        .into_iter()
        .flatten()
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    let mut pins = Vec::with_capacity(lines.len());
    for l in &lines {
        let spec = LineSpec {
            chip: l.chip.clone(),
            line: l.line,
            active_low: l.active_low,
        };
        pins.push(
            OutputLine::open(&spec, "fieldtune-status", false)
                .with_context(|| format!("board {}: status LED {spec}", profile.board.name))?,
        );
    }
    let (tx, rx) = mpsc::channel();
    let mut pins = pins.into_iter();
    let first = pins.next().expect("one line at least");
    std::thread::Builder::new()
        .name("status-leds".into())
        .spawn(move || match pins.next() {
            Some(second) => drive([first, second], TWO_LEDS, rx),
            None => drive([first], ONE_LED, rx),
        })
        .context("starting the status LED thread")?;
    Ok(Some(Arc::new(LedObserver { tx: Mutex::new(tx) })))
}

fn drive<P: OutputPin, const N: usize>(pins: [P; N], table: PatternTable<N>, rx: Receiver<State>) {
    let mut indicator = StatusIndicator::new(pins, table);
    let mut warned = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(s) => {
                if let Err(e) = indicator.set(s) {
                    tracing::debug!("status LEDs: {e:?}");
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Err(e) = indicator.tick() {
            if !warned {
                tracing::warn!("status LEDs: writing a line failed: {e:?}");
                warned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fieldtune_field::events::{
        Committed, ResetToSource, Resumed, RolledBack, RoundStarted, Started, Stats,
    };
    use fieldtune_field::trigger::Reason;
    use fieldtune_field::RunSummary;

    #[test]
    fn run_events_map_to_indicator_states() {
        let round_started = FieldEvent::RoundStarted(RoundStarted {
            round: 1,
            reason: Reason::Drift,
            frame: 0,
            train_frames: 0,
            probe_frames: 0,
            version: 0,
            poison: None,
            oldest_frame: None,
            episode_round: None,
        });
        let at = |e: FieldEvent| state_for(&e);
        assert_eq!(
            at(FieldEvent::Started(Started::default())),
            Some(State::Inferring)
        );
        assert_eq!(
            at(FieldEvent::Resumed(Resumed::default())),
            Some(State::Inferring)
        );
        assert_eq!(at(round_started), Some(State::Adapting));
        assert_eq!(
            at(FieldEvent::Committed(Committed::default())),
            Some(State::Committed)
        );
        assert_eq!(
            at(FieldEvent::RolledBack(RolledBack::default())),
            Some(State::RolledBack)
        );
        assert_eq!(
            at(FieldEvent::ResetToSource(ResetToSource::default())),
            Some(State::RolledBack)
        );
        assert_eq!(
            at(FieldEvent::Stopped(RunSummary::default())),
            Some(State::Idle)
        );
        assert_eq!(at(FieldEvent::Stats(Stats::default())), None);
    }

    #[test]
    fn a_profile_without_leds_starts_nothing_and_a_missing_chip_is_named() {
        let mut p = Profile::load("x86-cpu").expect("shipped profile");
        p.gpio.status_led = None;
        p.gpio.fault_led = None;
        assert!(status_leds(&p).expect("no lines").is_none());
        let jetson = Profile::load("jetson-orin-nano-8gb").expect("shipped profile");
        // This machine has no tegra234-gpio chip (and may lack linux-gpio): a clear error.
        let err = status_leds(&jetson).expect_err("no such chip here");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("jetson-orin-nano-8gb") && msg.contains("tegra234-gpio"),
            "{msg}"
        );
    }
}
