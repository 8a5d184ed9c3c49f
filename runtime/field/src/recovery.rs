//! Recovery after a shift (`[recovery]`, docs/FIELD.md): the episode that a drift trigger
//! opens. Pure policy, no threads and no clock: the supervisor asks [`Recovery::due`] whether
//! the episode's next round should start and on which frames, and tells
//! [`Recovery::after_round`] how it went.
//!
//! - The first round waits until `arm_frames` frames numbered at or after the trigger are
//!   held, so that it learns from the new scene rather than the old one.
//! - Every round of the episode trains and probes on post-trigger frames only.
//! - A round that commits with a gain of at least `min_gain` is followed at once by the next;
//!   its optimizer state and step count carry over (`carry_optimizer`).
//! - A rolled-back round is retried, from the live weights and a fresh optimizer state, once
//!   `arm_frames` frames have arrived since it started (a fresher, and until the replay's
//!   recent part is full a bigger, training set and probe), up to `max_rollbacks` in a row.
//!   The wait counts arrivals, not frames held: a full replay holds no more frames later.
//! - A round that commits with less gain, the `max_rollbacks`-th rollback in a row, a failed
//!   round, or the `max_rounds`-th round settles the episode: only then does the drift
//!   detector measure a new baseline.

use serde::{Deserialize, Serialize};

use crate::config::RecoveryConfig;

/// An open episode.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// Frame number of the drift trigger: the episode's rounds train on frames numbered this
    /// or later.
    pub since: u64,
    /// Rounds started in this episode.
    pub rounds: u32,
    /// Rounds committed in this episode.
    pub commits: u32,
    /// The train step holds the live weights and the optimizer state of the episode's last
    /// committed round (nothing has run on it since).
    pub warm: bool,
    /// Steps of the episode's committed rounds since the optimizer state was last reset.
    pub steps: usize,
    /// Probe-objective gain of the last committed round (nats).
    pub last_gain: Option<f64>,
    /// Rolled-back rounds in a row.
    pub rollbacks: u32,
    /// The next round waits until a frame numbered this or later has arrived (a retry after
    /// a rollback: `arm_frames` after the rolled-back round started; 0 otherwise).
    pub retry_at: u64,
    /// Newest frame number when the last round started.
    newest_at_start: u64,
}

/// What the supervisor runs next for the open episode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpisodeRound {
    /// Train and probe on frames numbered this or later.
    pub since: u64,
    /// 1-based index of the round in its episode.
    pub index: u32,
    /// Steps of this round (the `[adapt]` steps where `round_steps` is 0).
    pub steps: Option<usize>,
    /// Continue from the train step's weights and optimizer state, numbering steps from
    /// `step_offset + 1`; None: load the live weights and a fresh optimizer state.
    pub carry: Option<usize>,
}

/// How a round of the episode ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RoundOutcome {
    /// Committed after `steps` steps; `gain` = probe objective before - after (nats).
    Committed { gain: f64, steps: usize },
    /// The gate refused it, or its checkpoint could not be written.
    RolledBack,
    /// It ended in an error.
    Failed,
    /// A stop request cut it.
    Stopped,
}

/// Why an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettleReason {
    /// A committed round gained less than `min_gain`.
    NoGain,
    /// `max_rollbacks` rounds in a row were rolled back.
    RolledBack,
    /// A round failed.
    Failed,
    /// `max_rounds` rounds ran.
    MaxRounds,
    /// The live weights went back to the source weights.
    Reset,
    /// The run stopped.
    Stopped,
}

/// A closed episode, as the `recovery_settled` event reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub episode: Episode,
    pub reason: SettleReason,
}

/// The `[recovery]` policy and its open episode.
#[derive(Clone, Debug)]
pub struct Recovery {
    cfg: RecoveryConfig,
    episode: Option<Episode>,
    opened: u64,
}

impl Recovery {
    pub fn new(cfg: &RecoveryConfig) -> Recovery {
        Recovery {
            cfg: cfg.clone(),
            episode: None,
            opened: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// The open episode, if any.
    pub fn episode(&self) -> Option<&Episode> {
        self.episode.as_ref()
    }

    /// Episodes opened so far.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// A drift trigger at frame `frame`: opens an episode unless recovery is off or one is
    /// open. True when it opened one.
    pub fn open(&mut self, frame: u64) -> bool {
        if !self.cfg.enabled || self.episode.is_some() {
            return false;
        }
        self.opened += 1;
        self.episode = Some(Episode {
            since: frame,
            rounds: 0,
            commits: 0,
            warm: false,
            steps: 0,
            last_gain: None,
            rollbacks: 0,
            retry_at: 0,
            newest_at_start: frame,
        });
        true
    }

    /// The episode's next round, if one is open, the replay holds `held` of its frames and
    /// `newest` is the newest frame number: the first round needs `arm_frames` held, a retry
    /// after a rollback also `arm_frames` arrivals since the rolled-back round started; a
    /// round after a commit starts at once.
    pub fn due(&self, held: usize, newest: u64) -> Option<EpisodeRound> {
        let e = self.episode.as_ref()?;
        let first_or_retry = e.commits == 0 || e.rollbacks > 0;
        if (first_or_retry && held < self.cfg.arm_frames as usize) || newest < e.retry_at {
            return None;
        }
        Some(EpisodeRound {
            since: e.since,
            index: e.rounds + 1,
            steps: (self.cfg.round_steps > 0).then_some(self.cfg.round_steps),
            carry: (self.cfg.carry_optimizer && e.warm).then_some(e.steps),
        })
    }

    /// The episode's round started when the newest frame was numbered `newest`.
    pub fn round_started(&mut self, newest: u64) {
        if let Some(e) = &mut self.episode {
            e.rounds += 1;
            e.newest_at_start = newest;
        }
    }

    /// How the episode's round ended; the closed episode when this settles it.
    pub fn after_round(&mut self, outcome: RoundOutcome) -> Option<Settled> {
        let e = self.episode.as_mut()?;
        let reason = match outcome {
            RoundOutcome::Committed { gain, steps } => {
                e.commits += 1;
                e.rollbacks = 0;
                e.retry_at = 0;
                e.last_gain = Some(gain);
                e.warm = self.cfg.carry_optimizer;
                e.steps = if e.warm { e.steps + steps } else { 0 };
                if gain.is_nan() || gain < self.cfg.min_gain {
                    Some(SettleReason::NoGain)
                } else if e.rounds >= self.cfg.max_rounds {
                    Some(SettleReason::MaxRounds)
                } else {
                    None
                }
            }
            RoundOutcome::RolledBack => {
                e.rollbacks += 1;
                e.warm = false;
                e.steps = 0;
                e.retry_at = e.newest_at_start.saturating_add(self.cfg.arm_frames);
                if e.rollbacks >= self.cfg.max_rollbacks {
                    Some(SettleReason::RolledBack)
                } else if e.rounds >= self.cfg.max_rounds {
                    Some(SettleReason::MaxRounds)
                } else {
                    None
                }
            }
            RoundOutcome::Failed => Some(SettleReason::Failed),
            RoundOutcome::Stopped => Some(SettleReason::Stopped),
        };
        reason.and_then(|r| self.settle(r))
    }

    /// Something other than the episode's rounds changed the train step (a manual or
    /// scheduled round): the next episode round starts from the live weights afresh.
    pub fn train_step_changed(&mut self) {
        if let Some(e) = &mut self.episode {
            e.warm = false;
            e.steps = 0;
        }
    }

    /// Closes the open episode, if any.
    pub fn settle(&mut self, reason: SettleReason) -> Option<Settled> {
        self.episode
            .take()
            .map(|episode| Settled { episode, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RecoveryConfig {
        RecoveryConfig {
            arm_frames: 100,
            min_gain: 0.01,
            max_rounds: 5,
            max_rollbacks: 1,
            round_steps: 20,
            ..RecoveryConfig::default()
        }
    }

    fn committed(gain: f64) -> RoundOutcome {
        RoundOutcome::Committed { gain, steps: 20 }
    }

    #[test]
    fn the_first_round_waits_for_post_trigger_frames_then_rounds_chain() {
        let mut r = Recovery::new(&cfg());
        assert_eq!(r.due(10_000, u64::MAX), None, "no episode, no round");
        assert!(r.open(5_000));
        assert!(!r.open(5_050), "one episode at a time");
        assert_eq!(
            r.due(99, u64::MAX),
            None,
            "armed: waits for 100 post-trigger frames"
        );
        let first = r.due(100, u64::MAX).unwrap();
        assert_eq!(
            first,
            EpisodeRound {
                since: 5_000,
                index: 1,
                steps: Some(20),
                carry: None
            }
        );
        r.round_started(1_000);
        assert_eq!(r.after_round(committed(0.05)), None, "a clear gain chains");
        // The chained round starts at once and carries the optimizer state and step count.
        let second = r.due(0, u64::MAX).unwrap();
        assert_eq!((second.index, second.carry), (2, Some(20)));
        r.round_started(1_000);
        assert_eq!(r.after_round(committed(0.02)), None);
        assert_eq!(r.due(0, u64::MAX).unwrap().carry, Some(40));
    }

    #[test]
    fn a_chain_stops_when_the_gain_stops() {
        let mut r = Recovery::new(&cfg());
        r.open(0);
        let gains = [0.2, 0.08, 0.03, 0.009, 0.5];
        let mut settled = None;
        for (i, g) in gains.iter().enumerate() {
            assert!(r.due(1_000, u64::MAX).is_some(), "round {}", i + 1);
            r.round_started(1_000);
            settled = r.after_round(committed(*g));
            if settled.is_some() {
                break;
            }
        }
        let s = settled.expect("the episode settles");
        assert_eq!(s.reason, SettleReason::NoGain);
        assert_eq!((s.episode.rounds, s.episode.commits), (4, 4));
        assert_eq!(s.episode.last_gain, Some(0.009));
        assert!(r.episode().is_none() && r.due(1_000, u64::MAX).is_none());
        // A NaN gain never chains.
        r.open(10);
        r.round_started(1_000);
        assert_eq!(
            r.after_round(committed(f64::NAN)).map(|s| s.reason),
            Some(SettleReason::NoGain)
        );
    }

    #[test]
    fn rollbacks_failures_and_the_round_limit_settle() {
        for (outcome, reason) in [
            (RoundOutcome::RolledBack, SettleReason::RolledBack),
            (RoundOutcome::Failed, SettleReason::Failed),
            (RoundOutcome::Stopped, SettleReason::Stopped),
        ] {
            let mut r = Recovery::new(&cfg());
            r.open(0);
            r.round_started(1_000);
            assert_eq!(r.after_round(outcome).map(|s| s.reason), Some(reason));
        }
        let mut r = Recovery::new(&cfg());
        r.open(0);
        for i in 1..=5 {
            r.round_started(1_000);
            let s = r.after_round(committed(1.0));
            assert_eq!(s.is_some(), i == 5, "round {i}");
            if let Some(s) = s {
                assert_eq!(s.reason, SettleReason::MaxRounds);
            }
        }
        assert_eq!(r.opened(), 1);
    }

    #[test]
    fn other_rounds_and_the_carry_switch_reset_the_optimizer_state() {
        let mut r = Recovery::new(&cfg());
        r.open(0);
        r.round_started(1_000);
        r.after_round(committed(0.5));
        r.train_step_changed();
        assert_eq!(r.due(0, u64::MAX).unwrap().carry, None);
        let mut r = Recovery::new(&RecoveryConfig {
            carry_optimizer: false,
            ..cfg()
        });
        r.open(0);
        r.round_started(1_000);
        r.after_round(committed(0.5));
        assert_eq!(r.due(0, u64::MAX).unwrap().carry, None);
        // Off: no episode opens.
        let mut r = Recovery::new(&RecoveryConfig {
            enabled: false,
            ..cfg()
        });
        assert!(!r.open(0));
    }

    #[test]
    fn a_rolled_back_round_is_retried_after_arm_frames_arrivals() {
        let mut r = Recovery::new(&RecoveryConfig {
            max_rollbacks: 2,
            ..cfg()
        });
        r.open(0);
        assert!(r.due(150, 150).is_some());
        r.round_started(150);
        r.after_round(committed(0.5));
        // A chained round starts at once, whatever arrived.
        assert!(r.due(0, 150).is_some());
        r.round_started(400);
        assert_eq!(
            r.after_round(RoundOutcome::RolledBack),
            None,
            "one retry left"
        );
        // The replay is full (it holds 400 of the episode's frames and never more): the
        // retry waits for arm_frames arrivals since the rolled-back round started, not for
        // more frames held.
        assert_eq!(r.due(400, 499), None, "waits for arm_frames more frames");
        let retry = r.due(400, 500).unwrap();
        assert_eq!((retry.index, retry.carry), (3, None), "fresh optimizer");
        r.round_started(500);
        // A commit clears the count; two rollbacks in a row settle.
        r.after_round(committed(0.5));
        r.round_started(600);
        assert_eq!(r.after_round(RoundOutcome::RolledBack), None);
        assert_eq!(
            r.due(50, 10_000),
            None,
            "a retry also needs arm_frames held"
        );
        r.round_started(700);
        let s = r.after_round(RoundOutcome::RolledBack).unwrap();
        assert_eq!(s.reason, SettleReason::RolledBack);
        assert_eq!((s.episode.rounds, s.episode.commits), (5, 2));
    }
}
