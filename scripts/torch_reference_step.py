#!/usr/bin/env python3
"""PyTorch reference for fieldtune's train step: runs K optimizer steps of the UDA objective
on an ONNX model with torch autograd and torch.optim, from the inputs fieldtune wrote.

    /usr/bin/python3 scripts/torch_reference_step.py MODEL.onnx CASE.safetensors OUT.safetensors

CASE holds the initial parameters under their ONNX names, and per step k (1-based) the
batches `x_labeled.k`, `y_labeled.k`, `x_weak.k`, `x_strong.k`; its metadata holds `spec`
(fieldtune's TrainSpec as JSON), `lr` and `steps`. OUT receives the parameters after the
last step and every loss term of every step as `term.k`.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import st  # noqa: E402
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
        total, terms = uda_loss(loss_cfg, ll, yl, lw, ls, float(k), logits_target=lt)
        total.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in plist)).float()
        terms["grad_norm"] = gn
        opt.step()
        if teacher is not None:
            ema = teacher_cfg["ema"]
            with torch.no_grad():
                for n in teacher:
                    teacher[n] = ema * teacher[n] + (1 - ema) * params[n].detach()
        for name, v in terms.items():
            out[f"term.{name}.{k}"] = np.array(float(v), dtype=np.float32)
    for name, p in params.items():
        out[name] = p.detach().numpy()
    for name, p in (teacher or {}).items():
        out[f"teacher.{name}"] = p.numpy()
    st.save(out_path, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
