//! CoTTA ([`Cotta`]): a no-gradient teacher pass over `x_teacher_aug` gives
//! augmentation-averaged targets where the teacher is unsure, a soft cross-entropy on the
//! strong view joins the loss, and after each update the trained parameters return to their
//! source values element by element with probability `restore`.

use std::collections::HashMap;

use fieldtune_tensor::Tensor;

use super::blocks::{log_softmax, mean_all, LossTerms};
use crate::builder::Builder;
use crate::error::{GraphError, Result};
use crate::forward::Forward;
use crate::ir::{attr, Elem};
use crate::random;
use crate::spec::{inputs, Cotta};

/// CoTTA's part of a train step.
pub(crate) struct CottaStep {
    cfg: Cotta,
    /// The augmented views' input.
    x_aug: String,
}

impl CottaStep {
    /// Checks the settings and declares `x_teacher_aug` ([views * bu, C, H, W]).
    pub fn new(b: &mut Builder, cfg: Cotta, bu: usize, image: [usize; 3]) -> Result<Self> {
        if cfg.views == 0 {
            return Err(GraphError::Spec("cotta.views must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&cfg.restore) {
            return Err(GraphError::Spec(format!(
                "cotta.restore = {} must be in [0, 1)",
                cfg.restore
            )));
        }
        let [c, h, w] = image;
        let x_aug = b.input(inputs::X_TEACHER_AUG, Elem::F32, &[cfg.views * bu, c, h, w])?;
        Ok(CottaStep { cfg, x_aug })
    }

    /// The teacher's predictions on the augmented views (through `teacher`'s copies when
    /// there is a mean teacher, else the student without gradients), and the loss term
    /// against `strong` with its metrics `loss_cotta`, `cotta_augmented_rate`.
    pub fn terms(
        &self,
        b: &mut Builder,
        fwd: &Forward<'_>,
        teacher: Option<&HashMap<String, String>>,
        weak_target: &str,
        strong: &str,
        loss: &mut LossTerms,
    ) -> Result<()> {
        let la = fwd.pass(b, &self.x_aug, "teacher_aug", None, teacher, None)?;
        let la = b.stop_gradient(&la)?;
        let (l, rate) = cotta(
            b,
            weak_target,
            &la,
            strong,
            self.cfg.views,
            self.cfg.confidence_threshold,
        )?;
        if self.cfg.weight != 0.0 {
            loss.add_weighted(b, &l, self.cfg.weight)?;
        }
        loss.metrics.push(("loss_cotta", l));
        loss.metrics.push(("cotta_augmented_rate", rate));
        Ok(())
    }

    /// The stochastic restore of `name` (source value `source`) after its update to
    /// `updated`; `updated` itself when restore is off.
    pub fn restore(
        &self,
        b: &mut Builder,
        name: &str,
        source: &Tensor,
        updated: String,
        step: &str,
        seed: u64,
    ) -> Result<String> {
        if self.cfg.restore <= 0.0 {
            return Ok(updated);
        }
        let src = b.constant(source.clone());
        let u = random::uniform(b, source.shape(), step, seed, &format!("restore/{name}"))?;
        let p = b.scalar(self.cfg.restore);
        let m = b.op("Less", &[&u, &p], vec![])?;
        b.op("Where", &[&m, &src, &updated], vec![])
    }
}

/// CoTTA's loss: the soft cross-entropy `mean_i -sum_k target_ik log p_student(x_strong)_ik`
/// against the teacher target (the weak-view softmax of `weak_target`, or, where its
/// confidence is below `threshold`, the mean softmax over the `views` augmented views in
/// `aug_logits`, [views * B, K] view-major). Returns (loss, fraction of examples whose
/// target is the augmentation average).
pub fn cotta(
    b: &mut Builder,
    weak_target: &str,
    aug_logits: &str,
    strong: &str,
    views: usize,
    threshold: f32,
) -> Result<(String, String)> {
    let s = b.shape(weak_target)?;
    let (bu, k) = (s[0], s[1]);
    let pw = b.op("Softmax", &[weak_target], vec![attr::int("axis", 1)])?;
    let conf = b.reduce("ReduceMax", &pw, &[1], true)?;
    let pa = b.op("Softmax", &[aug_logits], vec![attr::int("axis", 1)])?;
    let pa = b.reshape(&pa, &[views, bu, k])?;
    let pa = b.reduce("ReduceMean", &pa, &[0], false)?;
    let thr = b.scalar(threshold);
    let low = b.op("Less", &[&conf, &thr], vec![])?;
    let target = b.op("Where", &[&low, &pa, &pw], vec![])?;
    let target = b.stop_gradient(&target)?;
    let lps = log_softmax(b, strong)?;
    let t = b.op("Mul", &[&target, &lps], vec![])?;
    let t = b.reduce("ReduceSum", &t, &[1], false)?;
    let t = b.op("Neg", &[&t], vec![])?;
    let loss = mean_all(b, &t)?;
    let lf = b.op("Cast", &[&low], vec![attr::int("to", 1)])?;
    let rate = mean_all(b, &lf)?;
    Ok((loss, rate))
}
