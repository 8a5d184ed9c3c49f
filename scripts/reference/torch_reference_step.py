#!/usr/bin/env python3
"""PyTorch reference for fieldtune's train step: runs K optimizer steps of the UDA objective
on an ONNX model with torch autograd and torch.optim, from the inputs fieldtune wrote.

    /usr/bin/python3 scripts/reference/torch_reference_step.py MODEL.onnx CASE.safetensors OUT.safetensors

CASE holds the initial parameters under their ONNX names (and the pretext heads'
`rotation.*` / `jigsaw.*` when the spec has them, with the jigsaw's tile permutations
`jigsaw.permutations` [P, 4]), and per step k (1-based) the
batches `x_labeled.k`, `y_labeled.k`, `x_weak.k`, `x_strong.k` (and CoTTA's
`x_teacher_aug.k`); its metadata holds `spec` (fieldtune's TrainSpec as JSON), `lr` and
`steps`. Per-channel affine parameters `<conv weight>.affine_scale` / `.affine_shift` (the
folded-BatchNorm form of `--train bn`) train as a scale and shift after their convolution,
whose weights stay frozen. OUT receives the parameters after the last step, every loss term of every step as
`term.k`, and `rng.check` (the numpy generator's stream "check" at step 5, seed 11, 1000
values) so the caller can compare it with its own generator bit for bit.

CoTTA (spec.cotta): the teacher target of each unlabeled example is the teacher's weak-view
softmax, or the mean softmax over the augmented views where that confidence is below the
threshold; the soft cross-entropy of the student's strong view against it joins the loss;
after the optimizer step and the teacher's EMA, each parameter element is reset to its
source value where the generator's stream "restore/<name>" at this step is below `restore`.
Rotation (spec.rotation): the weak view rotated by torch.rot90 k = 0..3, the model up to the
feature tensor (global average pooled when 4-D), the linear head, cross-entropy over 4.
Jigsaw (spec.jigsaw): examples i = p, p + P, ... of the weak view with their 2x2 tiles in
permutation p (position j gets tile perm[j]), stacked by p; the head as rotation's, over P.
Feature consistency (spec.feature_consistency): the feature rows (pooled as rotation's) of
the strong view against the weak view's without gradient (the teacher's when there is one),
rows normalised by sqrt(sum x^2 + 1e-8); 1 - cos or the squared distance, mean over rows.
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
FedProx (spec.loss.proximal_mu = mu): mu/2 * sum ||w - w0||^2 over the model's parameters
(w0: their values in CASE, the pretext heads left out) joins the loss as `proximal`.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: the reference package
from reference import rng, st  # noqa: E402
from reference.onnx_torch import OnnxModule  # noqa: E402
from reference.uda import uda_loss  # noqa: E402


def main(model_path, case_path, out_path):
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tensors, meta = st.load(case_path)
    spec = json.loads(meta["spec"])
    lr = float(meta["lr"])
    steps = int(meta["steps"])
    net = OnnxModule(model_path)
    params = {k: torch.tensor(tensors[k], requires_grad=True) for k in net.float_initializers() if k in tensors}
    # The per-channel affine of a folded-BatchNorm model (`--train bn` without BatchNorm): OnnxModule
    # applies `<conv weight>.affine_scale` / `.affine_shift` after that Conv when params hold them.
    for k in tensors:
        if k.endswith((".affine_scale", ".affine_shift")):
            params[k] = torch.tensor(tensors[k], requires_grad=True)
    heads = tuple(f"{h}.{p}" for h in ("rotation", "jigsaw", "corruption", "inpaint", "colorize")
                  for p in ("weight", "bias"))
    for k in heads:
        if k in tensors:
            params[k] = torch.tensor(tensors[k], requires_grad=True)
    source = {k: torch.tensor(tensors[k]) for k in params if k not in heads}
    seed = int(spec.get("seed", 0))
    cotta_cfg = spec.get("cotta")
    rot_cfg = spec.get("rotation")
    fc_cfg = spec.get("feature_consistency")
    jig_cfg = spec.get("jigsaw")
    corr_cfg = spec.get("corruption")
    inp_cfg = spec.get("inpaint")
    col_cfg = spec.get("colorize")
    maps = {}
    classifier_input = [n for n in net.graph.node if n.op_type in ("Gemm", "MatMul")][-1].input[0]
    feature = None
    if rot_cfg:
        feature = rot_cfg.get("feature") or classifier_input
    opt_cfg = spec["optimizer"]
    plist = [params[k] for k in sorted(params)]
    if opt_cfg["kind"] == "adamw":
        opt = torch.optim.AdamW(plist, lr=lr, betas=(opt_cfg["beta1"], opt_cfg["beta2"]), eps=opt_cfg["eps"],
                                weight_decay=opt_cfg["weight_decay"])
    else:
        opt = torch.optim.SGD(plist, lr=lr, momentum=opt_cfg["momentum"], weight_decay=opt_cfg["weight_decay"],
                              nesterov=opt_cfg["nesterov"])
    out = {}
    loss_cfg = spec["loss"]
    teacher_cfg = spec.get("teacher")
    teacher = {k: v.detach().clone() for k, v in params.items()} if teacher_cfg else None
    for k in range(1, steps + 1):
        g = lambda n: torch.from_numpy(tensors[f"{n}.{k}"]) if f"{n}.{k}" in tensors else None  # noqa: E731
        xl, yl, xw, xs = g("x_labeled"), g("y_labeled"), g("x_weak"), g("x_strong")
        opt.zero_grad()
        ll = net(xl, params) if xl is not None else None
        lw = net(xw, params)
        ls = net(xs, params)
        lt = None
        if teacher is not None:
            with torch.no_grad():
                lt = net(xw, teacher)
        # fieldtune reports the entropy metrics of the weak-view target (the teacher's when
        # there is one) when the entropy terms do not train; they carry no weight then.
        weak_trains = loss_cfg["entropy_weight"] != 0 or loss_cfg["diversity_weight"] != 0
        lw_terms = lw if (weak_trains or lt is None) else lt
        total, terms = uda_loss(loss_cfg, ll, yl, lw_terms, ls, float(k), logits_target=lt)
        if cotta_cfg:
            with torch.no_grad():
                src = teacher if teacher is not None else {n: v.detach() for n, v in params.items()}
                la = net(g("x_teacher_aug"), src)
                pw = torch.softmax(lt if lt is not None else lw.detach(), 1)
                b, kk = pw.shape
                pa = torch.softmax(la, 1).reshape(cotta_cfg["views"], b, kk).mean(0)
                low = pw.max(1).values < cotta_cfg["confidence_threshold"]
                tgt = torch.where(low[:, None], pa, pw)
            loss_c = -(tgt * torch.log_softmax(ls, 1)).sum(1).mean()
            total = total + cotta_cfg["weight"] * loss_c
            terms["loss_cotta"] = loss_c
            terms["cotta_augmented_rate"] = low.float().mean()
        if rot_cfg:
            xr = torch.cat([torch.rot90(xw, r, (2, 3)) for r in range(4)])
            feat = net(xr, params, output=feature)
            feat = feat.mean((2, 3)) if feat.dim() == 4 else feat.reshape(feat.shape[0], -1)
            lrot = feat @ params["rotation.weight"].t() + params["rotation.bias"]
            labels = torch.arange(4).repeat_interleave(xw.shape[0])
            ce_r = F.cross_entropy(lrot, labels)
            total = total + rot_cfg["weight"] * ce_r
            terms["loss_rotation"] = ce_r
            terms["rotation_accuracy"] = (lrot.argmax(1) == labels).float().mean()
        if fc_cfg:
            f = fc_cfg.get("feature") or classifier_input
            fs = rows(net(xs, params, output=f))
            with torch.no_grad():
                fw = rows(net(xw, teacher if teacher is not None else params, output=f))
            a, b = unit(fw), unit(fs)
            d = 1 - (a * b).sum(1) if fc_cfg["distance"] == "cosine" else ((a - b) ** 2).sum(1)
            lfc = d.mean()
            total = total + fc_cfg["weight"] * lfc
            terms["loss_feature_consistency"] = lfc
        if jig_cfg:
            xj, labels = puzzles(xw, tensors["jigsaw.permutations"])
            feat = rows(net(xj, params, output=jig_cfg.get("feature") or classifier_input))
            lj = feat @ params["jigsaw.weight"].t() + params["jigsaw.bias"]
            ce_j = F.cross_entropy(lj, labels)
            total = total + jig_cfg["weight"] * ce_j
            terms["loss_jigsaw"] = ce_j
            terms["jigsaw_accuracy"] = (lj.argmax(1) == labels).float().mean()
        if corr_cfg:
            xc, labels = corrupted(xw, corr_cfg["corruptions"], seed, k)
            feat = rows(net(xc, params, output=corr_cfg.get("feature") or classifier_input))
            lc = feat @ params["corruption.weight"].t() + params["corruption.bias"]
            ce_c = F.cross_entropy(lc, labels)
            total = total + corr_cfg["weight"] * ce_c
            terms["loss_corruption"] = ce_c
            terms["corruption_accuracy"] = (lc.argmax(1) == labels).float().mean()
        if inp_cfg:
            xin, mask = masked(xw, inp_cfg, seed, k)
            f = maps.setdefault("inpaint", inp_cfg.get("feature") or last_map(net, xin, params))
            pred = decode(net(xin, params, output=f), params, "inpaint", xw.shape[1], xw.shape[2])
            err = pixel_err(pred, xw, inp_cfg["loss"])
            li = (err * mask).sum() / torch.clamp(mask.sum() * xw.shape[1], min=1.0)
            total = total + inp_cfg["weight"] * li
            terms["loss_inpaint"] = li
        if col_cfg:
            y = (xw * torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(1, keepdim=True)
            gray = torch.cat([y, y, y], 1)
            chroma = torch.cat([xw[:, 0:1] - y, xw[:, 2:3] - y], 1)
            f = maps.setdefault("colorize", col_cfg.get("feature") or last_map(net, gray, params))
            pred = decode(net(gray, params, output=f), params, "colorize", 2, xw.shape[2])
            lc = pixel_err(pred, chroma, col_cfg["loss"]).mean()
            total = total + col_cfg["weight"] * lc
            terms["loss_colorize"] = lc
        mu = loss_cfg.get("proximal_mu", 0.0)
        if mu:
            prox = mu / 2 * sum(((params[n] - source[n]) ** 2).sum() for n in sorted(source))
            total = total + prox
            terms["proximal"] = prox
        terms["loss"] = total
        total.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in plist)).float()
        terms["grad_norm"] = gn
        opt.step()
        if teacher is not None:
            ema = teacher_cfg["ema"]
            with torch.no_grad():
                for n in teacher:
                    teacher[n] = ema * teacher[n] + (1 - ema) * params[n].detach()
        if cotta_cfg and cotta_cfg["restore"] > 0:
            with torch.no_grad():
                for n, p in source.items():
                    u = rng.uniform(seed, f"restore/{n}", k, tuple(p.shape))
                    m = torch.from_numpy(u < np.float32(cotta_cfg["restore"]))
                    params[n].copy_(torch.where(m, p, params[n]))
        for name, v in terms.items():
            out[f"term.{name}.{k}"] = np.array(float(v), dtype=np.float32)
    for name, p in params.items():
        out[name] = p.detach().numpy()
    for name, p in (teacher or {}).items():
        out[f"teacher.{name}"] = p.numpy()
    out["rng.check"] = rng.uniform(11, "check", 5, (1000,))
    st.save(out_path, out)


def rows(feat):
    """A feature tensor as [N, D] rows: 4-D maps globally average-pooled, others flattened."""
    return feat.mean((2, 3)) if feat.dim() == 4 else feat.reshape(feat.shape[0], -1)


def unit(x):
    return x / torch.sqrt((x * x).sum(1, keepdim=True) + 1e-8)


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


if __name__ == "__main__":
    main(*sys.argv[1:4])
