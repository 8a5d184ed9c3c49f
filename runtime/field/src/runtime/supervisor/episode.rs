//! The supervisor's side of a recovery episode ([`crate::recovery`]): a drift request opens
//! one, its rounds are due once the replay holds enough post-trigger frames, and when it
//! settles the drift detector measures a new baseline.

use std::sync::atomic::Ordering;

use super::RoundSupervisor;
use crate::events::{FieldEvent, RecoverySettled, RecoveryStarted};
use crate::recovery::{EpisodeRound, SettleReason, Settled};
use crate::trigger::Reason;

impl RoundSupervisor {
    /// With `[recovery]` on, a drift request opens an episode (or is dropped while one is
    /// open): the episode's rounds come from [`Self::episode_round_due`]. Other requests pass.
    pub(super) fn open_episode(&mut self, reason: Option<Reason>) -> Option<Reason> {
        if reason != Some(Reason::Drift) || !self.recovery.enabled() {
            return reason;
        }
        let since = self.state.last_frame_id.load(Ordering::Relaxed);
        if self.recovery.open(since) {
            let frame = self.state.frames.load(Ordering::Relaxed);
            tracing::info!(
                "drift at frame {frame}: recovery episode {} armed",
                self.recovery.opened()
            );
            self.state.recovering.store(true, Ordering::Relaxed);
            self.state.episodes.fetch_add(1, Ordering::Relaxed);
            self.events
                .emit(FieldEvent::RecoveryStarted(RecoveryStarted {
                    episode: self.recovery.opened(),
                    frame,
                    since_frame: since,
                    arm_frames: self.cfg.recovery.arm_frames,
                }));
        }
        None
    }

    /// The open episode's next round, once the replay holds enough of its frames (and, for
    /// a retry, enough have arrived since the rolled-back round).
    pub(super) fn episode_round_due(&self) -> Option<EpisodeRound> {
        let since = self.recovery.episode()?.since;
        let held = self
            .replay
            .lock()
            .map(|r| r.count_since(since))
            .unwrap_or(0);
        let newest = self.state.last_frame_id.load(Ordering::Relaxed);
        self.recovery.due(held, newest)
    }

    /// Closes the open episode, if any, for `reason`.
    pub(super) fn end_episode(&mut self, reason: SettleReason) {
        if let Some(s) = self.recovery.settle(reason) {
            self.settled(s);
        }
    }

    /// An episode ended: logged, and the drift detector measures a new baseline.
    pub(super) fn settled(&mut self, s: Settled) {
        let Settled { episode: e, reason } = s;
        tracing::info!(
            "recovery episode {} settled ({reason:?}) after {} rounds, {} committed",
            self.recovery.opened(),
            e.rounds,
            e.commits
        );
        self.state.recovering.store(false, Ordering::Relaxed);
        self.handover.rebaseline();
        self.events
            .emit(FieldEvent::RecoverySettled(RecoverySettled {
                episode: self.recovery.opened(),
                frame: self.state.frames.load(Ordering::Relaxed),
                since_frame: e.since,
                rounds: e.rounds,
                commits: e.commits,
                reason,
                last_gain: e.last_gain,
            }));
    }
}
