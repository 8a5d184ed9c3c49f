#!/usr/bin/python3
"""PyTorch reference for `fieldtune demo --rgb`: TENT on MobileNetV2 over 20 ImageNet photos.

    /usr/bin/python3 scripts/reference/torch_demo_rgb.py [--shift contrast-5] [--steps 20]
        [--lr 1e-4] [--threads 2] [--out results.json]

The same recipe as the demo, independent of fieldtune's Rust code: the model
(models/mobilenetv2/model.onnx, `scripts/data/prepare_backbones.py --only mobilenetv2`) runs
through `reference.onnx_torch.OnnxModule` (torch ops, torch autograd); BatchNorm in training
mode (batch statistics; running statistics updated with the model's momentum); only the
BatchNorm scales and shifts train; AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0);
loss = mean over the batch of the prediction entropy; each step's batch is all 20 shifted
photos (fieldtune's sampler draws them by reshuffled epochs of 20, so every step sees the same
set, and BatchNorm statistics do not depend on the order). Accuracy before and after, on the
shifted photos and on the clean ones, with running statistics (the model as exported) and with
the statistics of the 20 photos as one batch (as TENT predicts), like the demo's table.

Data: data/imagenet-samples/{clean,<shift>}/<class>/*.png (scripts/data/prepare_rgb.py),
preprocessed as models/mobilenetv2/model.toml says: x = (px / 255 - mean) / std.
"""
import argparse
import json
import os
import sys
import time
import tomllib

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
from reference.onnx_torch import OnnxModule  # noqa: E402

MODEL = os.path.join(ROOT, "models", "mobilenetv2")
DATA = os.path.join(ROOT, "data", "imagenet-samples")


def load(folder, cfg):
    xs, ys = [], []
    for cls in sorted(os.listdir(folder)):
        for f in sorted(os.listdir(os.path.join(folder, cls))):
            img = Image.open(os.path.join(folder, cls, f)).convert("RGB")
            if img.size != (cfg["width"], cfg["height"]):
                raise SystemExit(f"{folder}/{cls}/{f}: {img.size}, expected 224x224 (rerun prepare_rgb.py)")
            xs.append(np.asarray(img, dtype=np.float32) / 255.0)
            ys.append(cfg["classes"].index(cls))
    x = (np.stack(xs) - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.tensor(ys)


def correct(net, params, x, y, bn_mode):
    net.bn_mode = bn_mode
    with torch.no_grad():
        return int((net(x, params).argmax(1) == y).sum())


def score(net, params, x_shift, y_shift, x_clean, y_clean):
    """Correct counts: (running statistics, test-batch statistics) on the shifted and the clean photos."""
    return {f"{name}_{mode}": correct(net, params, x, y, bn)
            for name, x, y in [("shift", x_shift, y_shift), ("clean", x_clean, y_clean)]
            for mode, bn in [("running", "eval"), ("batch", "train")]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shift", default="contrast-5")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    onnx_path = os.path.join(MODEL, "model.onnx")
    if not os.path.exists(onnx_path):
        raise SystemExit(f"{onnx_path} is missing: /usr/bin/python3 scripts/data/prepare_backbones.py --only mobilenetv2")
    with open(os.path.join(MODEL, "model.toml"), "rb") as f:
        cfg = tomllib.load(f)
    x_clean, y_clean = load(os.path.join(DATA, "clean"), cfg)
    x_shift, y_shift = load(os.path.join(DATA, a.shift), cfg)
    net = OnnxModule(onnx_path)
    bn = [n for n in net.graph.node if n.op_type == "BatchNormalization"]
    train = {k for n in bn for k in (n.input[1], n.input[2])}
    # Running statistics are buffers (updated by the training passes), not parameters.
    stats = {k for n in bn for k in (n.input[3], n.input[4])}
    params = {k: torch.tensor(v.copy(), requires_grad=k in train)
              for k, v in net.float_initializers().items() if k not in stats}
    before = score(net, params, x_shift, y_shift, x_clean, y_clean)
    opt = torch.optim.AdamW([params[k] for k in sorted(train)], lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    t0 = time.perf_counter()
    entropies = []
    for _ in range(a.steps):
        net.bn_mode = "train"
        logits = net(x_shift, params, update_stats=True)
        logp = torch.log_softmax(logits, 1)
        loss = -(logp.exp() * logp).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        entropies.append(float(loss))
    seconds = time.perf_counter() - t0
    after = score(net, params, x_shift, y_shift, x_clean, y_clean)
    n = len(y_shift)
    print(f"PyTorch {torch.__version__}, {a.threads} threads: tent, BatchNorm affine, lr {a.lr:g}, "
          f"{a.steps} steps of {n} photos in {seconds:.1f} s; entropy {entropies[0]:.4f} -> {entropies[-1]:.4f}")
    print(f"{'':44} {a.shift:>10} {'clean':>10}")
    for name, d, mode in [("source, running statistics", before, "running"),
                          ("source, test-batch statistics", before, "batch"),
                          ("TENT, test-batch statistics (the result)", after, "batch"),
                          ("TENT, running statistics", after, "running")]:
        print(f"{name:<44} {str(d['shift_' + mode]) + '/' + str(n):>10} "
              f"{str(d['clean_' + mode]) + '/' + str(len(y_clean)):>10}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads, "shift": a.shift, "steps": a.steps,
                       "lr": a.lr, "seconds": seconds, "entropy": entropies, "count": n,
                       "before": before, "after": after}, f, indent=1)


if __name__ == "__main__":
    main()
