"""fieldtune's pretext tasks and feature consistency written directly in PyTorch: the terms of
the train step's rotation, jigsaw, corruption, inpaint and colorize heads and of feature
consistency, as runtime/graph/src/loss builds them. Shared by the step parity reference
(torch_reference_step.py) and the test-time adaptation reference (torch_tta.py).

Each task's batch is built from the unlabeled weak view and passes through the model on its own
(one forward per task, so under batch-statistics BatchNorm each task normalises with its own
batch's statistics, as fieldtune's forward instance per task does).

Rotation (spec.rotation): the weak view rotated by torch.rot90 k = 0..3, the model up to the
feature tensor (global average pooled when 4-D), the linear head, cross-entropy over 4.
Jigsaw (spec.jigsaw): examples i = p, p + P, ... of the weak view with their 2x2 tiles in
permutation p (position j gets tile perm[j]), stacked by p; the head as rotation's, over P.
Corruption (spec.corruption): examples i = c, c + K + 1, ... of the weak view left as they are
(c = 0) or corrupted by corruptions[c - 1] (the noise from the generator's stream
"corruption/noise" at the step), stacked by c; the head as rotation's, over K + 1.
Inpaint (spec.inpaint): patch x patch cells of the weak view zeroed where the generator's stream
"inpaint/mask" at the step ([B, 1, H / patch, W / patch]) is below the ratio; the model up to
the feature map (default: the last 4-D tensor whose sides divide the image's by one factor s,
above 1x1), a 1x1 conv `inpaint.weight`/`.bias` and F.pixel_shuffle(s); the L1/L2 error on the
masked pixels, summed and divided by C times the mask's sum (at least 1).
Colorize (spec.colorize): the luma Y = 0.299 R + 0.587 G + 0.114 B of the weak view (model-input
units) as three channels; the decoder as inpaint's predicts (R - Y, B - Y); the L1/L2 error's mean.
Feature consistency (spec.feature_consistency): feature rows (pooled as rotation's) of the
strong view against the weak view's without gradient, rows normalised by sqrt(sum x^2 + 1e-8);
1 - cos or the squared distance, mean over rows (`feature_consistency`: where the rows come
from is the caller's, as it depends on the forward layout).
"""
import numpy as np
import torch
import torch.nn.functional as F

from reference import rng

#: The pretext heads' parameter names (never part of the adapted model).
HEADS = tuple(f"{h}.{p}" for h in ("rotation", "jigsaw", "corruption", "inpaint", "colorize")
              for p in ("weight", "bias"))


def classifier_input(net):
    """The input of the model's last Gemm or MatMul: the default feature of every head."""
    return [n for n in net.graph.node if n.op_type in ("Gemm", "MatMul")][-1].input[0]


def rows(feat):
    """A feature tensor as [N, D] rows: 4-D maps globally average-pooled, others flattened."""
    return feat.mean((2, 3)) if feat.dim() == 4 else feat.reshape(feat.shape[0], -1)


def unit(x):
    return x / torch.sqrt((x * x).sum(1, keepdim=True) + 1e-8)


def feature_consistency(cfg, weak_rows, strong_rows):
    """The feature-consistency term of [N, D] rows (the weak ones carry no gradient)."""
    a, b = unit(weak_rows.detach()), unit(strong_rows)
    d = 1 - (a * b).sum(1) if cfg["distance"] == "cosine" else ((a - b) ** 2).sum(1)
    return d.mean()


def puzzles(x, perms):
    """The 2x2 jigsaw puzzles of x [B, C, H, W] and their labels, as fieldtune builds them."""
    p = len(perms)
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    parts, labels = [], []
    for k, perm in enumerate(perms[: x.shape[0]]):
        r = x[k::p]
        tiles = [r[:, :, (t // 2) * h2:(t // 2 + 1) * h2, (t % 2) * w2:(t % 2 + 1) * w2] for t in range(4)]
        top = torch.cat([tiles[perm[0]], tiles[perm[1]]], 3)
        bottom = torch.cat([tiles[perm[2]], tiles[perm[3]]], 3)
        parts.append(torch.cat([top, bottom], 2))
        labels += [k] * r.shape[0]
    return torch.cat(parts), torch.tensor(labels)


def corrupt(r, kind, seed, step):
    """One corruption of fieldtune's corruption task (runtime/graph/src/loss/corruption.rs)."""
    c = r.shape[1]
    hi, lo = r.amax((1, 2, 3), keepdim=True), r.amin((1, 2, 3), keepdim=True)
    if kind == "noise":
        u = torch.from_numpy(rng.uniform(seed, "corruption/noise", step, tuple(r.shape)))
        return r + (u * 2 - 1) * ((hi - lo) * 0.3)
    if kind == "blur":
        return F.conv2d(r, torch.full((c, 1, 3, 3), 1.0 / 9.0), padding=1, groups=c)
    if kind == "contrast":
        m = r.mean((1, 2, 3), keepdim=True)
        return (r - m) * 0.3 + m
    if kind == "quantise":
        t = (r - lo) / ((hi - lo) + 1e-6)
        return torch.floor(t * 4.0) / 4.0 * (hi - lo) + lo
    if kind == "pixelate":
        return F.avg_pool2d(r, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    raise ValueError(kind)


def corrupted(x, kinds, seed, step):
    """The corruption task's batch and labels, as fieldtune builds them."""
    g = len(kinds) + 1
    parts, labels = [], []
    for cls in range(min(g, x.shape[0])):
        r = x[cls::g]
        parts.append(r if cls == 0 else corrupt(r, kinds[cls - 1], seed, step))
        labels += [cls] * r.shape[0]
    return torch.cat(parts), torch.tensor(labels)


def masked(x, cfg, seed, step):
    """Inpaint's masked frames and their [B, 1, H, W] mask, as fieldtune builds them."""
    b, _, h, w = x.shape
    p = cfg["patch"]
    u = rng.uniform(seed, "inpaint/mask", step, (b, 1, h // p, w // p))
    m = torch.from_numpy((u < np.float32(cfg["ratio"])).astype(np.float32))
    m = m.repeat_interleave(p, 2).repeat_interleave(p, 3)
    return x * (1 - m), m


def fits(t, h):
    return t.dim() == 4 and t.shape[2] > 1 and t.shape[2] == t.shape[3] and h % t.shape[2] == 0


def last_map(net, x, params):
    """The model's last 4-D tensor whose sides divide the (square) image's by one factor."""
    with torch.no_grad():
        for n in reversed(net.graph.node):
            for o in n.output:
                if fits(net(x, params, output=o), x.shape[2]):
                    return o
    raise ValueError("no feature map fits the image")


def decode(feat, params, head, channels, h):
    """A decoder head: 1x1 conv, then depth-to-space (pixel_shuffle) to the image's side."""
    y = F.conv2d(feat, params[f"{head}.weight"], params[f"{head}.bias"])
    return F.pixel_shuffle(y, h // feat.shape[2])


def pixel_err(pred, target, kind):
    d = pred - target
    return d * d if kind == "l2" else d.abs()


def _linear(net, params, spec_key, cfg, x, labels, terms):
    feat = rows(net(x, params, output=cfg.get("feature") or classifier_input(net)))
    logits = feat @ params[f"{spec_key}.weight"].t() + params[f"{spec_key}.bias"]
    ce = F.cross_entropy(logits, labels)
    terms[f"loss_{spec_key}"] = ce
    terms[f"{spec_key}_accuracy"] = (logits.argmax(1) == labels).float().mean()
    return cfg["weight"] * ce


def head_terms(net, params, spec, xw, step, perms=None, maps=None):
    """The weighted sum of the pretext heads' losses of `spec` (fieldtune's TrainSpec or the
    `settings` of a tta dump, as a dict) on the weak view `xw` at train step `step`, and their
    metrics. `perms`: the jigsaw's permutations [P, 4]; `maps`: a dict caching the pixel
    heads' default feature maps. Returns (total, terms); total is 0 without heads."""
    seed = int(spec.get("seed", 0))
    maps = {} if maps is None else maps
    terms = {}
    total = xw.new_zeros(())
    cfg = spec.get("rotation")
    if cfg:
        xr = torch.cat([torch.rot90(xw, r, (2, 3)) for r in range(4)])
        labels = torch.arange(4).repeat_interleave(xw.shape[0])
        total = total + _linear(net, params, "rotation", cfg, xr, labels, terms)
    cfg = spec.get("jigsaw")
    if cfg:
        xj, labels = puzzles(xw, perms)
        total = total + _linear(net, params, "jigsaw", cfg, xj, labels, terms)
    cfg = spec.get("corruption")
    if cfg:
        xc, labels = corrupted(xw, cfg["corruptions"], seed, step)
        total = total + _linear(net, params, "corruption", cfg, xc, labels, terms)
    cfg = spec.get("inpaint")
    if cfg:
        xin, mask = masked(xw, cfg, seed, step)
        f = maps.setdefault("inpaint", cfg.get("feature") or last_map(net, xin, params))
        pred = decode(net(xin, params, output=f), params, "inpaint", xw.shape[1], xw.shape[2])
        err = pixel_err(pred, xw, cfg["loss"])
        li = (err * mask).sum() / torch.clamp(mask.sum() * xw.shape[1], min=1.0)
        total = total + cfg["weight"] * li
        terms["loss_inpaint"] = li
    cfg = spec.get("colorize")
    if cfg:
        y = (xw * torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
        gray = torch.cat([y, y, y], 1)
        chroma = torch.cat([xw[:, 0:1] - y, xw[:, 2:3] - y], 1)
        f = maps.setdefault("colorize", cfg.get("feature") or last_map(net, gray, params))
        pred = decode(net(gray, params, output=f), params, "colorize", 2, xw.shape[2])
        lc = pixel_err(pred, chroma, cfg["loss"]).mean()
        total = total + cfg["weight"] * lc
        terms["loss_colorize"] = lc
    return total, terms
