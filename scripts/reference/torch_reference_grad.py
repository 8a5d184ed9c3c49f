#!/usr/bin/env python3
"""PyTorch reference gradients of one UDA train step on an ONNX model, BatchNorm included.

    /usr/bin/python3 scripts/reference/torch_reference_grad.py MODEL.onnx CASE.safetensors OUT.safetensors

CASE holds the trainable parameters under their ONNX names and one step's batches
(`x_labeled`, `y_labeled`, `x_weak`, `x_strong`); its metadata holds `spec` (fieldtune's
TrainSpec as JSON) and `step`. The forward mirrors the train step's batching: the labeled,
(weak, when the entropy terms train on it) and strong views go through one forward pass as a
concatenated batch; otherwise the weak view gets its own forward without gradients. With
`batchnorm = "train"` BatchNorm uses batch statistics (torch's F.batch_norm in training mode)
and the concatenated pass updates the running statistics; with "frozen" it uses the running
ones. OUT receives `grad.<name>` for every parameter, `term.<name>` for every loss term and
`new.<name>` for every updated running statistic. Ops run as torch ops
(`reference.onnx_torch`), gradients come from torch autograd, in float64 (the exact
reference float32 engines are compared with; `--float32` computes in float32 instead).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: the reference package
from reference import st  # noqa: E402
from reference.onnx_torch import OnnxModule  # noqa: E402
from reference.uda import uda_loss  # noqa: E402


def main(model_path, case_path, out_path, dtype=torch.float64):
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.set_default_dtype(dtype)
    tensors, meta = st.load(case_path)
    spec = json.loads(meta["spec"])
    step = float(meta["step"])
    bn_mode = "train" if spec["batchnorm"] == "train" else "eval"
    net = OnnxModule(model_path, bn_mode=bn_mode)
    net.inits = {k: (v.astype(np.float64) if dtype == torch.float64 and v.dtype == np.float32 else v)
                 for k, v in net.inits.items()}
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in tensors.items()
              if k in net.inits}

    def g(n):
        if n not in tensors:
            return None
        t = torch.from_numpy(tensors[n])
        return t.to(dtype) if t.is_floating_point() else t

    xl, yl, xw, xs = g("x_labeled"), g("y_labeled"), g("x_weak"), g("x_strong")
    loss = spec["loss"]
    weak_trains = loss["entropy_weight"] != 0.0 or loss["diversity_weight"] != 0.0
    parts = ([xl] if xl is not None else []) + ([xw] if weak_trains else []) + [xs]
    logits = net(torch.cat(parts), params, update_stats=True)
    chunks = list(torch.split(logits, [len(p) for p in parts]))
    ll = chunks.pop(0) if xl is not None else None
    if weak_trains:
        lw = chunks.pop(0)
    else:
        with torch.no_grad():
            lw = net(xw, params)
    ls = chunks.pop(0)
    total, terms = uda_loss(loss, ll, yl, lw, ls, step)
    names = sorted(params)
    grads = torch.autograd.grad(total, [params[n] for n in names], allow_unused=True)
    out = {}
    for n, gr in zip(names, grads):
        out[f"grad.{n}"] = (torch.zeros_like(params[n]) if gr is None else gr).detach().float().numpy()
    for n, v in terms.items():
        out[f"term.{n}"] = np.array(float(v), dtype=np.float32)
    for n, v in net.buffers.items():
        out[f"new.{n}"] = v.float().numpy()
    st.save(out_path, out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--float32"]
    main(*args[:3], dtype=torch.float32 if "--float32" in sys.argv else torch.float64)
