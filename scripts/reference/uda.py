"""The UDA objective (plus information maximisation) written directly in PyTorch.

Mirrors fieldtune's loss block term for term, but independently: torch's own softmax,
log-softmax, cross-entropy and autograd.
"""
import math

import torch
import torch.nn.functional as F

DIVERSITY_EPS = 1e-6


def tsa_threshold(schedule, step, total, k):
    if schedule == "none":
        return None
    p = min(step / max(total, 1), 1.0)
    alpha = {"linear": p, "log": 1 - math.exp(-5 * p), "exp": math.exp(5 * (p - 1))}[schedule]
    return alpha * (1 - 1 / k) + 1 / k


def uda_loss(cfg, logits_l, y_l, logits_w, logits_s, step, logits_target=None):
    """Returns (total, terms dict). `logits_w` keeps its graph; the consistency target is
    detached from it, or from `logits_target` (a mean teacher's weak-view logits) when given."""
    terms = {}
    total = logits_s.new_zeros(())
    k = logits_s.shape[1]
    if logits_l is not None:
        ce = F.cross_entropy(logits_l, y_l, reduction="none")
        thr = tsa_threshold(cfg["tsa"], step, cfg["tsa_steps"], k)
        if thr is None:
            ce_loss = ce.mean()
            keep_rate = torch.tensor(1.0)
        else:
            keep = (torch.exp(-ce.detach()) <= thr).float()
            ce_loss = (ce * keep).sum() / torch.clamp(keep.sum(), min=1.0)
            keep_rate = keep.mean()
        total = total + cfg["ce_weight"] * ce_loss
        terms["loss_ce"] = ce_loss
        terms["tsa_keep_rate"] = keep_rate
    target = (logits_w if logits_target is None else logits_target).detach()
    pw = torch.softmax(target, 1)
    mask = (pw.max(1).values > cfg["confidence_threshold"]).float()
    q = torch.softmax(target / cfg["sharpen_temperature"], 1)
    kl = F.kl_div(torch.log_softmax(logits_s, 1), q, reduction="none").sum(1)
    cons = (kl * mask).mean()
    total = total + cfg["consistency_weight"] * cons
    terms["loss_consistency"] = cons
    terms["mask_rate"] = mask.mean()
    # FixMatch: hard pseudo-labels of the weak view above tau, cross-entropy on the strong view.
    pl_mask = (pw.max(1).values > cfg.get("pseudo_label_threshold", 0.95)).float()
    hard = pw.argmax(1)
    pseudo = (F.cross_entropy(logits_s, hard, reduction="none") * pl_mask).mean()
    total = total + cfg.get("pseudo_label_weight", 0.0) * pseudo
    terms["loss_pseudo_label"] = pseudo
    terms["pseudo_label_rate"] = pl_mask.mean()
    p = torch.softmax(logits_w, 1)
    ent = -(p * torch.log_softmax(logits_w, 1)).sum(1).mean()
    pbar = p.mean(0)
    neg_h = (pbar * torch.log(pbar + DIVERSITY_EPS)).sum()
    total = total + cfg["entropy_weight"] * ent + cfg["diversity_weight"] * neg_h
    terms["loss_entropy"] = ent
    terms["marginal_entropy"] = -neg_h
    terms["loss"] = total
    return total, terms
