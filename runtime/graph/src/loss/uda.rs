//! The UDA objective, the base of every train step: TSA cross-entropy on the labeled batch,
//! masked sharpened KL consistency between the weak and strong views, FixMatch pseudo-labels
//! and the information-maximisation terms on the weak view.

use super::blocks::{log_softmax, mean_all, per_example_cross_entropy, sum_all, LossTerms};
use crate::builder::Builder;
use crate::error::Result;
use crate::ir::attr;
use crate::spec::{Tsa, UdaLoss};

/// Logits of the three views, already split. `weak_target` carries no gradient;
/// `weak_grad` is the same prediction with gradients (present when entropy terms are on).
pub struct UdaInputs<'a> {
    pub labeled: Option<(&'a str, &'a str)>,
    pub weak_target: &'a str,
    pub weak_grad: Option<&'a str>,
    pub strong: &'a str,
    pub step: &'a str,
    pub classes: usize,
}

/// Per-row entropy -sum p log p of a [B, K] logits tensor.
fn row_entropy(b: &mut Builder, logits: &str) -> Result<String> {
    let p = b.op("Softmax", &[logits], vec![attr::int("axis", 1)])?;
    let lp = log_softmax(b, logits)?;
    let plp = b.op("Mul", &[&p, &lp], vec![])?;
    let s = b.reduce("ReduceSum", &plp, &[1], false)?;
    b.op("Neg", &[&s], vec![])
}

/// Epsilon inside log of the batch-mean prediction (diversity term).
pub const DIVERSITY_EPS: f32 = 1e-6;

/// Emits the UDA loss and returns the total and the reported terms.
pub fn uda(b: &mut Builder, cfg: &UdaLoss, x: &UdaInputs<'_>) -> Result<LossTerms> {
    let mut metrics = Vec::new();
    let mut total: Option<String> = None;
    let mut add = |b: &mut Builder, term: &str, w: f32| -> Result<()> {
        let t = if w == 1.0 {
            term.to_string()
        } else {
            let ws = b.scalar(w);
            b.op("Mul", &[term, &ws], vec![])?
        };
        total = Some(match total.take() {
            None => t,
            Some(acc) => b.op("Add", &[&acc, &t], vec![])?,
        });
        Ok(())
    };
    let k = x.classes;

    if let Some((logits, labels)) = x.labeled {
        let ce = per_example_cross_entropy(b, logits, labels, k)?;
        let keep = tsa_keep(b, cfg, &ce, x.step, k)?;
        let (ce_loss, keep_rate) = match keep {
            None => (mean_all(b, &ce)?, b.scalar(1.0)),
            Some(keep) => {
                let masked = b.op("Mul", &[&ce, &keep], vec![])?;
                let s = sum_all(b, &masked)?;
                let n = sum_all(b, &keep)?;
                let one = b.scalar(1.0);
                let n1 = b.op("Max", &[&n, &one], vec![])?;
                (b.op("Div", &[&s, &n1], vec![])?, mean_all(b, &keep)?)
            }
        };
        add(b, &ce_loss, cfg.ce_weight)?;
        metrics.push(("loss_ce", ce_loss));
        metrics.push(("tsa_keep_rate", keep_rate));
    }

    // Consistency: KL(sharpen(p_weak) || p_strong) on confident examples.
    let pw = b.op("Softmax", &[x.weak_target], vec![attr::int("axis", 1)])?;
    let conf = b.reduce("ReduceMax", &pw, &[1], false)?;
    let beta = b.scalar(cfg.confidence_threshold);
    let mask = b.op("Greater", &[&conf, &beta], vec![])?;
    let mask = b.op("Cast", &[&mask], vec![attr::int("to", 1)])?;
    let sharp = if cfg.sharpen_temperature == 1.0 {
        x.weak_target.to_string()
    } else {
        let t = b.scalar(cfg.sharpen_temperature);
        b.op("Div", &[x.weak_target, &t], vec![])?
    };
    let q = b.op("Softmax", &[&sharp], vec![attr::int("axis", 1)])?;
    let lq = log_softmax(b, &sharp)?;
    let lps = log_softmax(b, x.strong)?;
    let diff = b.op("Sub", &[&lq, &lps], vec![])?;
    let kl = b.op("Mul", &[&q, &diff], vec![])?;
    let kl = b.reduce("ReduceSum", &kl, &[1], false)?;
    let kl = b.op("Mul", &[&kl, &mask], vec![])?;
    let cons = mean_all(b, &kl)?;
    if cfg.consistency_weight != 0.0 {
        add(b, &cons, cfg.consistency_weight)?;
    }
    metrics.push(("loss_consistency", cons));
    let mask_rate = mean_all(b, &mask)?;
    metrics.push(("mask_rate", mask_rate));

    // FixMatch: hard pseudo-labels from the weak view for the strong view, above tau.
    let tau = b.scalar(cfg.pseudo_label_threshold);
    let pl_mask = b.op("Greater", &[&conf, &tau], vec![])?;
    let pl_mask = b.op("Cast", &[&pl_mask], vec![attr::int("to", 1)])?;
    let top = b.reduce("ReduceMax", &pw, &[1], true)?;
    let hot = b.op("Equal", &[&pw, &top], vec![])?;
    let hot = b.op("Cast", &[&hot], vec![attr::int("to", 1)])?;
    let picked = b.op("Mul", &[&hot, &lps], vec![])?;
    let picked = b.reduce("ReduceSum", &picked, &[1], false)?;
    let ce_s = b.op("Neg", &[&picked], vec![])?;
    let ce_s = b.op("Mul", &[&ce_s, &pl_mask], vec![])?;
    let pseudo = mean_all(b, &ce_s)?;
    if cfg.pseudo_label_weight != 0.0 {
        add(b, &pseudo, cfg.pseudo_label_weight)?;
    }
    metrics.push(("loss_pseudo_label", pseudo));
    let pl_rate = mean_all(b, &pl_mask)?;
    metrics.push(("pseudo_label_rate", pl_rate));

    // Information maximisation on the weak view.
    let view = x.weak_grad.unwrap_or(x.weak_target);
    let ent = row_entropy(b, view)?;
    let ent = mean_all(b, &ent)?;
    if cfg.entropy_weight != 0.0 {
        add(b, &ent, cfg.entropy_weight)?;
    }
    metrics.push(("loss_entropy", ent));
    let p = b.op("Softmax", &[view], vec![attr::int("axis", 1)])?;
    let pbar = b.reduce("ReduceMean", &p, &[0], false)?;
    let eps = b.scalar(DIVERSITY_EPS);
    let pe = b.op("Add", &[&pbar, &eps], vec![])?;
    let lpbar = b.op("Log", &[&pe], vec![])?;
    let t = b.op("Mul", &[&pbar, &lpbar], vec![])?;
    let neg_h = sum_all(b, &t)?;
    if cfg.diversity_weight != 0.0 {
        add(b, &neg_h, cfg.diversity_weight)?;
    }
    let h = b.op("Neg", &[&neg_h], vec![])?;
    metrics.push(("marginal_entropy", h));

    let total = match total {
        Some(t) => t,
        None => b.scalar(0.0),
    };
    Ok(LossTerms { total, metrics })
}

/// TSA keep-mask (1 = example counts) or `None` when TSA is off.
fn tsa_keep(
    b: &mut Builder,
    cfg: &UdaLoss,
    ce: &str,
    step: &str,
    k: usize,
) -> Result<Option<String>> {
    if cfg.tsa == Tsa::None {
        return Ok(None);
    }
    let total = b.scalar(cfg.tsa_steps.max(1) as f32);
    let prog = b.op("Div", &[step, &total], vec![])?;
    let one = b.scalar(1.0);
    let prog = b.op("Min", &[&prog, &one], vec![])?;
    let scale = b.scalar(5.0);
    let alpha = match cfg.tsa {
        Tsa::Linear => prog,
        Tsa::Log => {
            let s = b.op("Mul", &[&prog, &scale], vec![])?;
            let n = b.op("Neg", &[&s], vec![])?;
            let e = b.op("Exp", &[&n], vec![])?;
            b.op("Sub", &[&one, &e], vec![])?
        }
        Tsa::Exp => {
            let m = b.op("Sub", &[&prog, &one], vec![])?;
            let s = b.op("Mul", &[&m, &scale], vec![])?;
            b.op("Exp", &[&s], vec![])?
        }
        Tsa::None => unreachable!("checked above"),
    };
    let kf = k as f32;
    let span = b.scalar(1.0 - 1.0 / kf);
    let base = b.scalar(1.0 / kf);
    let a = b.op("Mul", &[&alpha, &span], vec![])?;
    let thr = b.op("Add", &[&a, &base], vec![])?;
    let ce_ng = b.stop_gradient(ce)?;
    let nce = b.op("Neg", &[&ce_ng], vec![])?;
    let pc = b.op("Exp", &[&nce], vec![])?;
    let over = b.op("Greater", &[&pc, &thr], vec![])?;
    let over = b.op("Cast", &[&over], vec![attr::int("to", 1)])?;
    Ok(Some(b.op("Sub", &[&one, &over], vec![])?))
}
