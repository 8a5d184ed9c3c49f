#!/usr/bin/python3
"""Fashion-MNIST BatchNorm CNN for the corruption benchmark (docs/BENCHMARKS.md, section 5).

    /usr/bin/python3 scripts/data/prepare_fmnist.py [--epochs 2] [--seed 0] [--threads 2]

Reads Fashion-MNIST from Debian's `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist/*-ubyte.gz; `apt-get install dataset-fashion-mnist`), trains a
small BatchNorm CNN on the 60,000 clean training images (Debian's python3-torch, CPU, seeded) and
writes:
- models/fmnist-cnn/model.onnx  (torch.onnx.export, opset 17, dynamic batch, BatchNormalization
  kept: TrainingMode.PRESERVE, no constant folding), model.toml, MODEL.md (provenance, accuracy);
- models/fmnist-cnn/anchors/<class>/<index>.png: the labeled anchor set, the first 10 training
  images of each class (100 PNGs), for the labeled terms of UDA and FixMatch.

The corrupted test sets come from scripts/data/corrupt_fmnist.py (it needs corrupt-tta, which needs
numpy 2: run it in its own venv, see data/fmnist-c/DATA.md).
"""
import argparse
import gzip
import hashlib
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)  # the reference package
from reference.onnx_torch import OnnxModule  # noqa: E402

SRC = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(ROOT, "models", "fmnist-cnn")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
ANCHORS_PER_CLASS = 10


def read_idx(name):
    path = os.path.join(SRC, name)
    if not os.path.exists(path):
        sys.exit(f"{path} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(path) as f:
        data = f.read()
    if "images" in name:
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28), path
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64), path


class Net(nn.Module):
    """Conv3x3-BN-ReLU(-MaxPool) x3, global average pool, linear."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 16), nn.MaxPool2d(2),
            *block(16, 48), nn.MaxPool2d(2),
            *block(48, 96),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    xtr, ptr = read_idx("train-images-idx3-ubyte.gz")
    ytr, pyl = read_idx("train-labels-idx1-ubyte.gz")
    xte, pte = read_idx("t10k-images-idx3-ubyte.gz")
    yte, _ = read_idx("t10k-labels-idx1-ubyte.gz")
    mean = float(xtr.mean() / 255.0)
    std = float(xtr.std() / 255.0)
    mean, std = round(mean, 4), round(std, 4)
    norm = lambda x: (torch.from_numpy(np.array(x)).float().unsqueeze(1) / 255.0 - mean) / std  # noqa: E731

    net = Net()
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps_per_epoch = len(xtr) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for ep in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g).numpy()
        tot = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * 128:(i + 1) * 128]
            x = norm(xtr[idx])
            # Horizontal flips (clothes are left-right symmetric) as the only augmentation.
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = nn.functional.cross_entropy(net(x), torch.from_numpy(ytr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss)
            if (i + 1) % 100 == 0:
                print(f"  step {i + 1}/{steps_per_epoch}: loss {tot / (i + 1):.4f} ({time.time() - t0:.0f} s)", flush=True)
        print(f"epoch {ep + 1}: loss {tot / steps_per_epoch:.4f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(norm(xte[i:i + 1000])).argmax(1) for i in range(0, len(xte), 1000)])
    acc = float((pred.numpy() == yte).mean())
    acc1k = float((pred.numpy()[:1024] == yte[:1024]).mean())
    print(f"clean test accuracy: {acc:.4f} (first 1,024: {acc1k:.4f}); {n_params} parameters")

    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "model.onnx")
    x = norm(xte[:4])
    torch.onnx.export(net, x, path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    ref = OnnxModule(path)
    with torch.no_grad():
        want = net(x)
        got = ref(x, {})
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, f"ONNX graph (torch ops) differs from the module by {err:.2e}"
    ops = sorted({n.op_type for n in ref.graph.node})
    with open(os.path.join(OUT, "model.toml"), "w") as f:
        f.write("# fieldtune model description (fmnist-cnn; written by scripts/data/prepare_fmnist.py)\n")
        f.write('input = "input"\noutput = "logits"\nchannels = 1\nheight = 28\nwidth = 28\n')
        f.write(f"mean = [{mean}]\nstd = [{std}]\n")
        f.write("classes = [" + ", ".join(f'"{c}"' for c in CLASSES) + "]\n")

    anchors = os.path.join(OUT, "anchors")
    for c, name in enumerate(CLASSES):
        d = os.path.join(anchors, name)
        os.makedirs(d, exist_ok=True)
        for i in np.nonzero(ytr == c)[0][:ANCHORS_PER_CLASS]:
            Image.fromarray(xtr[i]).save(os.path.join(d, f"{i:05d}.png"), optimize=True)

    with open(os.path.join(OUT, "MODEL.md"), "w") as f:
        f.write(f"""# fmnist-cnn: a small BatchNorm CNN trained on clean Fashion-MNIST

- Data: Fashion-MNIST (Zalando Research, MIT license), from Debian `dataset-fashion-mnist`:
  `{ptr}` (sha256 `{sha256(ptr)}`), `{pyl}`, test set `{pte}`
  (sha256 `{sha256(pte)}`).
- Architecture: [Conv3x3(1->16, no bias)-BatchNorm-ReLU-MaxPool2, Conv3x3(16->48)-BatchNorm-ReLU-MaxPool2,
  Conv3x3(48->96)-BatchNorm-ReLU], global average pool, Linear(96->10); {n_params:,} parameters plus
  {2 * (16 + 48 + 96)} running statistics. ONNX ops: {", ".join(ops)}.
- Input: grayscale 28x28, `x = (pixel / 255 - {mean}) / {std}` (the training set's pixel mean and
  standard deviation). Classes (folder names): {", ".join(CLASSES)}.
- Training: `/usr/bin/python3 scripts/data/prepare_fmnist.py --epochs {args.epochs} --seed {args.seed}`
  (Debian python3-torch {torch.__version__}, CPU, {args.threads} threads): Adam, one-cycle lr peak 3e-3,
  batch 128, {args.epochs} epochs over the 60,000 training images, random horizontal flips; took
  {time.time() - t0:.0f} s.
- Clean test accuracy: **{100 * acc:.2f}%** on the 10,000 test images ({100 * acc1k:.2f}% on the
  first 1,024, the subset data/fmnist-c corrupts).
- `model.onnx`: `torch.onnx.export` in eval mode with `TrainingMode.PRESERVE`, no constant
  folding, opset 17, dynamic batch; the script checks that the graph run with torch ops
  (scripts/reference/onnx_torch.py) matches the module (relative error {err:.1e}).
  sha256 `{sha256(path)}`.
- `anchors/<class>/<index>.png`: the first {ANCHORS_PER_CLASS} training images of each class
  (`<index>` = position in the training set), the labeled anchors of the UDA and FixMatch recipes.
- License: the weights are a work of this project (MIT OR Apache-2.0), trained on Fashion-MNIST (MIT,
  Copyright (c) 2017 Zalando SE); the anchor PNGs are Fashion-MNIST images (MIT).
- Used for: the Fashion-MNIST-C test-time adaptation benchmark (`fieldtune tta`,
  scripts/bench/bench_fmnist_c.sh, docs/BENCHMARKS.md section 5).
""")
    print(f"wrote {OUT} (model.onnx, model.toml, MODEL.md, anchors/)")


if __name__ == "__main__":
    main()
