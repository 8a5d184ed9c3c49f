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
Rotation, jigsaw, corruption, inpaint, colorize and feature consistency: the terms of
reference/pretext.py (its docstring says how each is built); here each view's features come
from its own forward (the weak view's without gradient, the teacher's when there is one).
FedProx (spec.loss.proximal_mu = mu): mu/2 * sum ||w - w0||^2 over the model's parameters
(w0: their values in CASE, the pretext heads left out) joins the loss as `proximal`.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: the reference package
from reference import pretext, rng, st  # noqa: E402
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
    heads = pretext.HEADS
    for k in heads:
        if k in tensors:
            params[k] = torch.tensor(tensors[k], requires_grad=True)
    source = {k: torch.tensor(tensors[k]) for k in params if k not in heads}
    seed = int(spec.get("seed", 0))
    cotta_cfg = spec.get("cotta")
    fc_cfg = spec.get("feature_consistency")
    perms = tensors.get("jigsaw.permutations")
    maps = {}
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
        if fc_cfg:
            f = fc_cfg.get("feature") or pretext.classifier_input(net)
            fs = pretext.rows(net(xs, params, output=f))
            with torch.no_grad():
                fw = pretext.rows(net(xw, teacher if teacher is not None else params, output=f))
            lfc = pretext.feature_consistency(fc_cfg, fw, fs)
            total = total + fc_cfg["weight"] * lfc
            terms["loss_feature_consistency"] = lfc
        head_total, head_metrics = pretext.head_terms(net, params, spec, xw, k, perms, maps)
        total = total + head_total
        terms.update(head_metrics)
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



if __name__ == "__main__":
    main(*sys.argv[1:4])
