//! Status indicator: a state machine over what the runtime is doing, shown on LEDs as blink
//! patterns.
//!
//! The runtime [`StatusIndicator::set`]s the state; the board loop calls
//! [`StatusIndicator::tick`] at a fixed rate (100 ms suits the shipped patterns). Each tick
//! writes the level of the pattern step to every pin whose level changes, then advances one
//! step. Patterns restart at step 0 whenever the state changes. [`State::Committed`] and
//! [`State::RolledBack`] are shown for a hold time and then fall back to
//! [`State::Inferring`] by themselves.

use core::fmt;

use embedded_hal::digital::{OutputPin, PinState};

/// What the runtime is doing, as the indicator shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum State {
    /// Powered, not serving (after start-up, or stopped).
    Idle = 0,
    /// Serving inference on frames.
    Inferring = 1,
    /// Serving inference while an adaptation round runs in the background.
    Adapting = 2,
    /// The round passed the gate and its weights went live (shown for the hold time).
    Committed = 3,
    /// The round failed the gate and was rolled back (shown for the hold time).
    RolledBack = 4,
    /// Something failed; needs attention. Left only through [`State::Idle`].
    Fault = 5,
}

impl State {
    /// Number of states (rows of a [`PatternTable`]).
    pub const COUNT: usize = 6;
    /// Every state, in [`State::index`] order.
    pub const ALL: [State; State::COUNT] = [
        State::Idle,
        State::Inferring,
        State::Adapting,
        State::Committed,
        State::RolledBack,
        State::Fault,
    ];

    /// Row of this state in a [`PatternTable`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as used in logs and configuration (`rolled-back`).
    pub const fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Inferring => "inferring",
            State::Adapting => "adapting",
            State::Committed => "committed",
            State::RolledBack => "rolled-back",
            State::Fault => "fault",
        }
    }

    /// Whether the state machine allows `self -> to`.
    ///
    /// - any state may go to `Idle` (stop; also the only way out of `Fault`) and to `Fault`;
    /// - `Idle -> Inferring`;
    /// - `Inferring -> Adapting`;
    /// - `Adapting -> Committed | RolledBack`;
    /// - `Committed | RolledBack -> Inferring | Adapting`.
    ///
    /// Setting the current state again is allowed and changes nothing.
    pub const fn can_go_to(self, to: State) -> bool {
        use State::*;
        if self as u8 == to as u8 {
            return true;
        }
        match (self, to) {
            (_, Idle) | (_, Fault) => true,
            (Fault, _) => false,
            (Idle, Inferring) => true,
            (Inferring, Adapting) => true,
            (Adapting, Committed) | (Adapting, RolledBack) => true,
            (Committed, Inferring) | (Committed, Adapting) => true,
            (RolledBack, Inferring) | (RolledBack, Adapting) => true,
            _ => false,
        }
    }

    /// Whether the state is shown for a hold time and then returns to `Inferring`.
    pub const fn is_transient(self) -> bool {
        matches!(self, State::Committed | State::RolledBack)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InvalidTransition {
    /// The state the indicator is in (and stays in).
    pub from: State,
    /// The state that was asked for.
    pub to: State,
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status: no transition from {} to {}", self.from, self.to)
    }
}

impl core::error::Error for InvalidTransition {}

/// A blink pattern: 1 to 32 steps, each on or off, repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Pattern {
    /// Bit `i` (least significant first) is the level at step `i`.
    bits: u32,
    /// Steps per period, 1..=32.
    period: u8,
}

impl Pattern {
    /// Always off.
    pub const OFF: Pattern = Pattern { bits: 0, period: 1 };
    /// Always on.
    pub const ON: Pattern = Pattern { bits: 1, period: 1 };

    /// Pattern from a picture: `#` is on, `.` is off, one character per step, 1 to 32
    /// characters; `"##.."` is on two steps, off two.
    ///
    /// # Panics
    /// On any other character or length; meant for constants, where that is a compile error.
    /// [`Pattern::from_bits`] is the non-panicking constructor.
    pub const fn parse(picture: &str) -> Pattern {
        let b = picture.as_bytes();
        assert!(!b.is_empty() && b.len() <= 32, "pattern: 1 to 32 steps");
        let mut bits = 0u32;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'#' => bits |= 1 << i,
                b'.' => {}
                _ => panic!("pattern: use '#' (on) and '.' (off)"),
            }
            i += 1;
        }
        Pattern {
            bits,
            period: b.len() as u8,
        }
    }

    /// Pattern from its bits (bit `i` = step `i`) and period; `None` unless `1 <= period <= 32`.
    /// Bits at and above `period` are ignored.
    pub const fn from_bits(bits: u32, period: u8) -> Option<Pattern> {
        if period == 0 || period > 32 {
            return None;
        }
        let mask = if period == 32 {
            u32::MAX
        } else {
            (1u32 << period) - 1
        };
        Some(Pattern {
            bits: bits & mask,
            period,
        })
    }

    /// Steps per period.
    pub const fn period(self) -> u8 {
        self.period
    }

    /// Level (on = `true`) at step `step` (any step; the pattern repeats).
    pub const fn level(self, step: u32) -> bool {
        (self.bits >> (step % self.period as u32)) & 1 == 1
    }
}

/// One row per [`State`] (in [`State::index`] order), one [`Pattern`] per LED.
pub type PatternTable<const N: usize> = [[Pattern; N]; State::COUNT];

/// Patterns for one LED, at a 100 ms tick: idle is a short blip every 2 s, inferring is
/// steady on, adapting blinks at 1 Hz, committed flashes three times a second, rolled back
/// twice, fault blinks fast (5 Hz).
pub const ONE_LED: PatternTable<1> = [
    [Pattern::parse("#...................")],
    [Pattern::ON],
    [Pattern::parse("#####.....")],
    [Pattern::parse("#.#.#.....")],
    [Pattern::parse("#.#.......")],
    [Pattern::parse("#.")],
];

/// Patterns for a green (activity) and a red (problem) LED, at a 100 ms tick: green shows
/// idle / inferring / adapting / committed as [`ONE_LED`] does; red flashes twice for rolled
/// back and is steady on for fault.
pub const TWO_LEDS: PatternTable<2> = [
    [Pattern::parse("#..................."), Pattern::OFF],
    [Pattern::ON, Pattern::OFF],
    [Pattern::parse("#####....."), Pattern::OFF],
    [Pattern::parse("#.#.#....."), Pattern::OFF],
    [Pattern::OFF, Pattern::parse("#.#.......")],
    [Pattern::OFF, Pattern::ON],
];

/// Default number of ticks a transient state ([`State::Committed`], [`State::RolledBack`]) is
/// shown: 3 s at a 100 ms tick.
pub const DEFAULT_HOLD_TICKS: u32 = 30;

/// Drives `N` LEDs from the current [`State`] and a [`PatternTable`].
#[derive(Debug)]
pub struct StatusIndicator<P, const N: usize> {
    pins: [P; N],
    table: PatternTable<N>,
    state: State,
    step: u32,
    hold_ticks: u32,
    active_low: bool,
    /// Logical level last written to each pin; `None` until written or after a failed write.
    written: [Option<bool>; N],
}

impl<P: OutputPin, const N: usize> StatusIndicator<P, N> {
    /// Indicator in [`State::Idle`]; pins are not touched until the first [`tick`](Self::tick).
    pub fn new(pins: [P; N], table: PatternTable<N>) -> Self {
        StatusIndicator {
            pins,
            table,
            state: State::Idle,
            step: 0,
            hold_ticks: DEFAULT_HOLD_TICKS,
            active_low: false,
            written: [None; N],
        }
    }

    /// Ticks a transient state is shown before returning to `Inferring` (at least 1).
    pub fn with_hold_ticks(mut self, ticks: u32) -> Self {
        self.hold_ticks = ticks.max(1);
        self
    }

    /// LEDs light when their pin is low (LED between supply and pin).
    pub fn with_active_low(mut self) -> Self {
        self.active_low = true;
        self
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Ticks since the current state was entered.
    pub fn ticks_in_state(&self) -> u32 {
        self.step
    }

    /// Moves to `to` if [`State::can_go_to`] allows it; the pattern restarts at the next tick.
    /// Setting the current state again keeps the pattern's phase. Pins are not touched.
    pub fn set(&mut self, to: State) -> Result<(), InvalidTransition> {
        let from = self.state;
        if from == to {
            return Ok(());
        }
        if !from.can_go_to(to) {
            warn!("status: refused {:?} -> {:?}", from, to);
            return Err(InvalidTransition { from, to });
        }
        debug!("status: {:?} -> {:?}", from, to);
        self.state = to;
        self.step = 0;
        Ok(())
    }

    /// Writes this step's level to every pin whose level changes, then advances one step; a
    /// transient state whose hold time is over returns to `Inferring`. Every pin is tried; the
    /// first error is returned and the failed pin is rewritten at the next tick.
    pub fn tick(&mut self) -> Result<(), P::Error> {
        let row = self.table[self.state.index()];
        let mut first_err = None;
        for (i, pin) in self.pins.iter_mut().enumerate() {
            let on = row[i].level(self.step);
            if self.written[i] == Some(on) {
                continue;
            }
            let state = PinState::from(on != self.active_low);
            match pin.set_state(state) {
                Ok(()) => self.written[i] = Some(on),
                Err(e) => {
                    self.written[i] = None;
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        self.step = self.step.wrapping_add(1);
        if self.state.is_transient() && self.step >= self.hold_ticks {
            debug!("status: {:?} shown, back to inferring", self.state);
            self.state = State::Inferring;
            self.step = 0;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Gives the pins back.
    pub fn release(self) -> [P; N] {
        self.pins
    }
}
