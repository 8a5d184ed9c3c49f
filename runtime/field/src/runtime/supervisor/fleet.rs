//! Fleet rounds (`[fleet]`, docs/FLEET.md "In `fieldtune run`"). A `train` message of the
//! SuperLink is one more kind of round (reason `fleet`): its arrays are checked against the
//! model (a mismatch gets an error reply; serving goes on), it needs the usual replay frames,
//! it starts from the live weights overwritten by the server's arrays, trains the recipe's
//! steps within the same budget (FedProx's proximal term when the message carries
//! `proximal-mu`), passes the same gate, and a pass is checkpointed (kind `fleet`) and swapped
//! in as any round. The reply always goes back: the arrays `[fleet] send` names, `num-examples`,
//! the loss terms, the anchor accuracy and whether the gate passed. An `evaluate` message is
//! answered from the live model.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use fieldtune_fleet::arrays::select;
use fieldtune_fleet::{checked_params, ConfigValue, Reply, Request};
use fieldtune_tensor::Tensor;

use super::{Judged, RoundNo, RoundSupervisor};
use crate::error::Result;
use crate::events::{FieldEvent, FleetMessage};
use crate::gate::probe;
use crate::recovery::RoundOutcome;
use crate::round::{RoundResult, RoundTrainer};
use crate::runtime::fleet::FleetJob;
use crate::trigger::Reason;

/// How a fleet round starts: the live weights overwritten by the server's arrays, and, for
/// FedProx, a train step compiled from the model holding those arrays (its proximal anchor).
pub(super) struct FleetBase {
    pub weights: HashMap<String, Tensor>,
    pub trainer: Option<RoundTrainer>,
}

/// What a fleet round trained and how the gate judged it.
pub(super) struct FleetOutcome {
    weights: HashMap<String, Tensor>,
    metrics: Vec<(String, f64)>,
    steps: usize,
    passed: bool,
    anchor_accuracy: f64,
    objective: f64,
    frames: usize,
}

impl FleetOutcome {
    pub fn new(result: &RoundResult, judged: &Judged, frames: usize) -> FleetOutcome {
        FleetOutcome {
            weights: result.weights.clone(),
            metrics: result.metrics.clone(),
            steps: result.steps,
            passed: judged.verdict.pass,
            anchor_accuracy: judged.input.anchor_accuracy_after,
            objective: judged.verdict.objective_after,
            frames,
        }
    }
}

/// A received array the device does not train may differ from the model's value by this much
/// (an average of equal arrays need not be bit-equal).
const FROZEN_TOLERANCE: f32 = 1e-5;

fn config<'a>(req: &'a Request, key: &str) -> Option<&'a ConfigValue> {
    req.config.iter().find(|(n, _)| n == key).map(|(_, v)| v)
}

/// The server's round (`server-round`; 0 when absent).
fn server_round(req: &Request) -> u64 {
    match config(req, "server-round") {
        Some(ConfigValue::I64(r)) if *r >= 0 => *r as u64,
        _ => 0,
    }
}

/// FedProx's `proximal-mu` (0 when absent).
fn proximal_mu(req: &Request) -> std::result::Result<f32, String> {
    match config(req, "proximal-mu") {
        None => Ok(0.0),
        Some(ConfigValue::F64(v)) if v.is_finite() && *v >= 0.0 => Ok(*v as f32),
        Some(ConfigValue::I64(v)) if *v >= 0 => Ok(*v as f32),
        Some(v) => Err(format!(
            "config 'proximal-mu' = {v:?}: a number >= 0 expected"
        )),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    match (a.as_f32(), b.as_f32()) {
        (Some(a), Some(b)) => a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max),
        _ => f32::INFINITY,
    }
}

/// An answer to the server: a reply, or the text of an error reply.
type Answer = std::result::Result<Reply, String>;

impl RoundSupervisor {
    /// The next message of the fleet node, if one waits.
    pub(super) fn take_fleet_job(&self) -> Option<FleetJob> {
        self.fleet.as_ref()?.try_recv().ok()
    }

    /// Answers one message of the fleet node (the node thread waits for it) and logs a
    /// `fleet_message` event.
    pub(super) fn fleet_message(&mut self, job: FleetJob) -> Result<()> {
        let mut ev = FleetMessage {
            kind: job.req.kind.clone(),
            server_round: server_round(&job.req),
            ..FleetMessage::default()
        };
        let answer = match job.req.kind.as_str() {
            "train" => self.fleet_train(&job.req, &mut ev)?,
            "evaluate" => self.fleet_evaluate()?,
            k => Err(format!(
                "message type '{k}' is not handled (train, evaluate)"
            )),
        };
        match &answer {
            Ok(r) => {
                ev.arrays = r.arrays.len();
                if ev.outcome.is_empty() {
                    ev.outcome = "evaluated".into();
                }
            }
            Err(e) => {
                tracing::warn!("fleet {}: error reply: {e}", ev.kind);
                ev.outcome = "error".into();
                ev.error = Some(e.clone());
            }
        }
        self.events.emit(FieldEvent::FleetMessage(ev));
        let _ = job.reply.send(answer);
        Ok(())
    }

    /// The model's float arrays with the live weights in place.
    fn live_arrays(&self) -> Result<HashMap<String, Tensor>> {
        let mut all = self.trainer.model().float_initializers()?;
        all.extend(
            self.live
                .weights
                .iter()
                .map(|(n, t)| (n.clone(), t.clone())),
        );
        Ok(all)
    }

    /// A `train` message: checks, the fleet round, the reply.
    fn fleet_train(&mut self, req: &Request, ev: &mut FleetMessage) -> Result<Answer> {
        let mu = match proximal_mu(req) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let live = self.live_arrays()?;
        let received = match checked_params(&live, &req.arrays) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        // Arrays outside the recipe's trained set stay as the model has them.
        for (name, t) in &req.arrays {
            if self.live.weights.contains_key(name) {
                continue;
            }
            let d = max_abs_diff(t, &live[name]);
            if d > FROZEN_TOLERANCE {
                return Ok(Err(format!(
                    "array '{name}' is not trained on this device and differs from the model's by up to {d:.3e}: \
                     the fleet's recipes must train the same parameters (or use send = \"trained\")"
                )));
            }
        }
        let replay_len = self.replay.lock().map(|r| r.len()).unwrap_or(0);
        if replay_len < self.cfg.trigger.min_replay {
            return Ok(Err(format!(
                "{replay_len} replay frames on the device; a round needs {} ([trigger] min_replay)",
                self.cfg.trigger.min_replay
            )));
        }
        let weights: HashMap<String, Tensor> = self
            .live
            .weights
            .keys()
            .map(|n| (n.clone(), received[n].clone()))
            .collect();
        let trainer = if mu > 0.0 {
            match self.proximal_trainer(&received, mu) {
                Ok(t) => Some(t),
                Err(e) => return Ok(Err(format!("FedProx (proximal-mu {mu}): {e}"))),
            }
        } else {
            None
        };
        self.rounds += 1;
        let no = RoundNo {
            here: self.rounds,
            total: self.base_round + self.rounds,
        };
        ev.round = Some(no.total);
        self.fleet_out = None;
        let outcome = self.round(
            Reason::Fleet,
            no,
            None,
            Some(FleetBase { weights, trainer }),
        )?;
        self.recovery.train_step_changed();
        self.last_round_end_frame = self.state.frames.load(Ordering::Relaxed);
        let Some(out) = self.fleet_out.take() else {
            return Ok(Err(match outcome {
                RoundOutcome::Stopped => "the device stopped during the round".into(),
                _ => format!(
                    "round {} failed on the device (its event log says why)",
                    no.total
                ),
            }));
        };
        self.state.fleet_rounds.fetch_add(1, Ordering::Relaxed);
        let committed = matches!(outcome, RoundOutcome::Committed { .. });
        if committed {
            self.state.fleet_passed.fetch_add(1, Ordering::Relaxed);
        }
        ev.outcome = if committed {
            "committed"
        } else {
            "rolled_back"
        }
        .into();
        let mut all = received;
        all.extend(out.weights);
        let trained = |n: &str| self.live.weights.contains_key(n);
        let arrays = select(self.cfg.fleet.send, &all, &trained);
        let mut metrics = vec![
            ("num-examples".to_string(), out.frames as f64),
            ("steps".to_string(), out.steps as f64),
            ("anchor-accuracy".to_string(), out.anchor_accuracy),
            ("objective".to_string(), out.objective),
            (
                "gate-passed".to_string(),
                if out.passed { 1.0 } else { 0.0 },
            ),
            ("committed".to_string(), if committed { 1.0 } else { 0.0 }),
        ];
        metrics.extend(out.metrics.into_iter().filter(|(_, v)| v.is_finite()));
        tracing::info!(
            "fleet round {} ({}): {} arrays sent, anchor accuracy {:.4}, gate {}",
            no.total,
            ev.outcome,
            arrays.len(),
            out.anchor_accuracy,
            if out.passed { "passed" } else { "refused" }
        );
        Ok(Ok(Reply { arrays, metrics }))
    }

    /// A train step compiled from the model holding the server's arrays, with FedProx's
    /// proximal term at weight `mu` (anchored at those arrays).
    fn proximal_trainer(
        &self,
        received: &HashMap<String, Tensor>,
        mu: f32,
    ) -> Result<RoundTrainer> {
        let model = self.trainer.model().with_weights(received)?;
        let mut cfg = self.trainer.config().clone();
        cfg.loss.proximal_mu = mu;
        let (anchors, labels) = self.trainer.anchors();
        self.training.trainer(
            self.train_engine.as_ref(),
            model,
            cfg,
            anchors.to_vec(),
            labels.to_vec(),
        )
    }

    /// An `evaluate` message: the live model's anchor accuracy and its unlabeled objective on
    /// the replay frames.
    fn fleet_evaluate(&mut self) -> Result<Answer> {
        let frames = {
            let replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            replay.snapshot().frames
        };
        let mut metrics = vec![
            ("num-examples".to_string(), frames.len() as f64),
            ("anchor-accuracy".to_string(), self.live.anchor_accuracy),
            ("version".to_string(), self.live.meta.version as f64),
        ];
        if !frames.is_empty() {
            let mcfg = &self.trainer.model().config;
            let stats = probe(self.live.reference.as_mut(), mcfg, &frames, 250)?;
            metrics.push(("objective".to_string(), stats.objective));
            metrics.push(("mean-entropy".to_string(), stats.mean_entropy));
        }
        Ok(Ok(Reply {
            arrays: Vec::new(),
            metrics,
        }))
    }
}
