//! One adaptation round on the round thread: the train step ([`TrainSession`]) is compiled once
//! per process and stays resident; each round loads the live weights and fresh optimizer state into it, runs
//! up to `steps` steps on replay frames + labeled anchors (batches from
//! [`fieldtune_adapt::BatchMaker`], prepared one step ahead), and hands back the weights.
//! Between steps it honours the budget: stop requests, the wall-clock cap, the duty cycle, the
//! temperature ceiling and the memory budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fieldtune_adapt::{
    prefetch, AdaptConfig, AdaptData, Batch, BatchMaker, ModelDir, TrainSession,
};
use fieldtune_engine::Engine;
use fieldtune_frames::Image8;
use fieldtune_tensor::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::budget::{rss_bytes, Budget, BudgetVerdict};
use crate::config::Poison;
use crate::error::Result;

/// The round thread's trainer: a resident [`TrainSession`] plus the labeled anchors.
pub struct RoundTrainer {
    model: ModelDir,
    cfg: AdaptConfig,
    session: TrainSession,
    anchors: Vec<Image8>,
    labels: Vec<usize>,
}

/// How a round ended early.
#[derive(Clone, Debug, PartialEq)]
pub enum Cut {
    Stop,
    WallClock,
    Memory(u64),
}

/// What a round produced.
#[derive(Clone, Debug)]
pub struct RoundResult {
    pub weights: HashMap<String, Tensor>,
    pub steps: usize,
    /// Mean of each train-step metric over the steps (`loss`, `mask_rate`, ...).
    pub metrics: Vec<(String, f64)>,
    /// The first non-finite loss term: (step, term, value); the round stops there.
    pub non_finite: Option<(usize, String, f32)>,
    pub cut: Option<Cut>,
    pub seconds: f64,
    pub busy_seconds: f64,
    pub paused_seconds: f64,
    /// Largest RSS growth seen during the round (bytes).
    pub rss_growth: u64,
}

/// How a round starts: its length, and whether it continues the last round's optimizer
/// state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundPlan {
    /// Steps (None: the recipe's `steps`).
    pub steps: Option<usize>,
    /// Continue from the train step's current weights and optimizer state, numbering the
    /// steps from `offset + 1`, when the caller knows they are the live weights (the last
    /// round committed and nothing ran since). None: load `base` and a fresh optimizer.
    pub carry: Option<usize>,
}

/// Callbacks of a round into the runtime.
pub struct RoundControl<'a> {
    pub budget: &'a Budget,
    pub stop: &'a AtomicBool,
    /// Called once when the round pauses for heat, with the temperature.
    pub on_pause: &'a mut dyn FnMut(f64),
}

impl RoundTrainer {
    /// Compiles the train step for `model` and `cfg` on `engine` and keeps it resident.
    pub fn new(
        engine: &dyn Engine,
        model: ModelDir,
        cfg: AdaptConfig,
        anchors: Vec<Image8>,
        labels: Vec<usize>,
    ) -> Result<RoundTrainer> {
        cfg.validate()?;
        let session = TrainSession::compile(engine, &model, &cfg, "train-step")?;
        tracing::info!(nodes = session.shape().nodes, params = session.params().len(), ep = %session.execution_provider(), target = %session.shape().target, "round: compiled train step");
        Ok(RoundTrainer {
            model,
            cfg,
            session,
            anchors,
            labels,
        })
    }

    /// The model's own weights (what a reset goes back to).
    pub fn source_weights(&self) -> &HashMap<String, Tensor> {
        self.session.source_weights()
    }

    pub fn config(&self) -> &AdaptConfig {
        &self.cfg
    }

    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    pub fn anchors(&self) -> (&[Image8], &[usize]) {
        (&self.anchors, &self.labels)
    }

    pub fn describe(&self) -> String {
        self.session.describe()
    }

    /// Runs one round from `base` on `unlabeled` frames as `plan` says; `round` (1-based)
    /// seeds it.
    pub fn run_round(
        &mut self,
        base: &HashMap<String, Tensor>,
        unlabeled: &[Image8],
        round: u64,
        poison: Option<Poison>,
        plan: RoundPlan,
        ctl: &mut RoundControl<'_>,
    ) -> Result<RoundResult> {
        let t0 = Instant::now();
        let offset = match plan.carry {
            Some(offset) => offset,
            None => {
                self.session.load_weights(base)?;
                self.session.reset_optimizer()?;
                0
            }
        };
        let mut cfg = self.cfg.clone();
        if let Some(steps) = plan.steps {
            cfg.steps = steps;
        }
        cfg.seed = cfg.seed.wrapping_add(round.wrapping_mul(0x9E37_79B9));
        let mut labels = self.labels.clone();
        if poison == Some(Poison::LabelNoise) {
            // Every class relabeled as another one (a seeded permutation without fixed points),
            // as a mislabeled anchor set would be.
            let k = self.model.config.classes.len();
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            let mut perm: Vec<usize> = (0..k).collect();
            while k > 1 && perm.iter().enumerate().any(|(i, &p)| i == p) {
                perm.shuffle(&mut rng);
            }
            labels.iter_mut().for_each(|l| *l = perm[*l]);
        }
        let lr_poison = poison == Some(Poison::Nan);
        let data = AdaptData {
            labeled: &self.anchors,
            labels: &labels,
            unlabeled,
            eval: None,
        };
        let maker = BatchMaker::new(&self.model.config, &cfg, &data)?;
        let metric_names = self.session.metric_names().to_vec();
        let mut sums = vec![0f64; metric_names.len()];
        let mut steps = 0usize;
        let mut non_finite = None;
        let mut cut = None;
        let mut busy = Duration::ZERO;
        let mut paused = Duration::ZERO;
        let rss0 = rss_bytes().unwrap_or(0);
        let mut rss_growth = 0u64;
        let cap = ctl.budget.round_cap();
        let session = &mut self.session;
        prefetch(maker, cfg.steps, |batches| -> Result<()> {
            let over_time = |t0: Instant| cap.is_some_and(|c| t0.elapsed() >= c);
            for batch in batches {
                // Budget checks between steps.
                let mut hot = false;
                loop {
                    if ctl.stop.load(Ordering::Relaxed) {
                        cut = Some(Cut::Stop);
                        return Ok(());
                    }
                    if over_time(t0) {
                        cut = Some(Cut::WallClock);
                        return Ok(());
                    }
                    match ctl.budget.thermal(hot) {
                        BudgetVerdict::Go => break,
                        BudgetVerdict::Hot(t) => {
                            if !hot {
                                (ctl.on_pause)(t);
                                hot = true;
                            }
                            let p = Instant::now();
                            std::thread::sleep(Duration::from_millis(500));
                            paused += p.elapsed();
                        }
                    }
                }
                let Batch { step: k, feeds } = batch?;
                let ts = Instant::now();
                let lr = if lr_poison {
                    f32::NAN
                } else {
                    cfg.lr_schedule.at(cfg.lr, k, cfg.steps)
                };
                let refs: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (*n, t)).collect();
                let outcome = session.step(&refs, lr, offset + k)?;
                let step_time = ts.elapsed();
                busy += step_time;
                if let Some((term, v)) = outcome.non_finite {
                    non_finite = Some((k, term, v));
                    return Ok(());
                }
                let vals = outcome.metrics.iter().map(|m| m.1);
                for (s, v) in sums.iter_mut().zip(vals) {
                    *s += v as f64;
                }
                steps = k;
                if let Some(now) = rss_bytes() {
                    rss_growth = rss_growth.max(now.saturating_sub(rss0));
                    if ctl.budget.over_memory(rss0, now) {
                        cut = Some(Cut::Memory(now.saturating_sub(rss0)));
                        return Ok(());
                    }
                }
                let rest = ctl.budget.rest_after(step_time);
                if !rest.is_zero() {
                    std::thread::sleep(rest);
                }
            }
            Ok(())
        })?;
        Ok(RoundResult {
            weights: self.session.weights()?,
            steps,
            metrics: metric_names
                .iter()
                .zip(&sums)
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        if steps == 0 {
                            f64::NAN
                        } else {
                            s / steps as f64
                        },
                    )
                })
                .collect(),
            non_finite,
            cut,
            seconds: t0.elapsed().as_secs_f64(),
            busy_seconds: busy.as_secs_f64(),
            paused_seconds: paused.as_secs_f64(),
            rss_growth,
        })
    }
}

/// Whether every value of every tensor is finite.
pub fn all_finite(weights: &HashMap<String, Tensor>) -> bool {
    weights
        .values()
        .all(|t| t.as_f32().is_none_or(|v| v.iter().all(|x| x.is_finite())))
}
