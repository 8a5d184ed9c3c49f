#!/usr/bin/python3
"""PyTorch reference for fieldtune's adaptation recipes (MNIST CNN -> OpenCV digits).

    /usr/bin/python3 scripts/reference/torch_adapt.py [--recipes source,uda,uda-im,tent] [--seeds 0,1,2]
        [--steps 300] [--threads 2] [--out results.json]

Independent of fieldtune's Rust code: the model runs through `reference.onnx_torch.OnnxModule`
(torch ops, torch autograd), the loss is `reference.uda.uda_loss`, the optimizer is
`torch.optim.AdamW`, and augmentation is PIL (the same PIL calls that
runtime/augment/tests/pil/make_fixtures.py checked fieldtune's ops against byte for byte).
Its random streams are numpy's, not fieldtune's ChaCha8, so runs agree with fieldtune in
distribution, not bit for bit.

Data (paths relative to the repository root):
- model `models/mnist-cnn/model.onnx`, preprocessing from `models/mnist-cnn/model.toml`
  (x = (px/255 - mean) / std);
- labeled anchors `models/mnist-cnn/anchors/<digit>/*.png` (1,000; MNIST);
- unlabeled target `data/opencv-digits/<digit>/*.png` (5,000; labels used only for scoring).
The anchors are the MNIST twins of the OpenCV digits with the same file index (data/DATA.md),
so accuracy is also reported on the 4,000 OpenCV digits whose index is not an anchor's.

Recipes (every parameter trains; AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0); labeled
batch 32 from the anchors with the recipe's weak view; unlabeled batch 64 from the 5,000 target
images, each with a weak view and an independent strong view; both drawn by reshuffled epochs;
loss = uda_loss(cfg, ..., step) with step the 1-based step index):
- source: no training.
- uda:    weak view shift 2; ce 1, tsa linear over `steps`, consistency 1, T 0.4, threshold 0.8.
- uda-im: weak view = identity; as uda but tsa none, entropy 1, diversity 1 (fieldtune's default).
- tent:   identity views of unlabeled images only; entropy 1, everything else 0; lr 3e-4.

Augmentation op table (mirrors runtime/augment/src/lib.rs):
- weak "shift K": dx, dy ~ U{-K..K}, content moves by (dx, dy), zero fill; K = 0 is the identity.
- strong: RandAugment, n = 2 ops drawn uniformly with replacement from OPS, m ~ U(0, 1) each,
  signed ops draw a sign (- with p 0.5); then cutout: side = round(u * 0.5 * 28), u ~ U(0, 1),
  centre uniform over the pixels, top-left (cx - side//2, cy - side//2), fill 127, clipped.
  Draw order per image: (op, m[, sign]) x n, then u, cx, cy.

Prints a table (mean ± sample std over seeds) and writes JSON with per-seed figures, the torch
version, the BLAS it really loaded and the thread count.
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time
import tomllib

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)  # the reference package
from reference.onnx_torch import OnnxModule  # noqa: E402
from reference import st  # noqa: E402
from reference.uda import uda_loss  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "models", "mnist-cnn")
TARGET_DIR = os.path.join(ROOT, "data", "opencv-digits")

LABELED_BATCH = 32
UNLABELED_BATCH = 64
CUTOUT_FRACTION = 0.5
CUTOUT_FILL = 127
RANDAUGMENT_N = 2

BASE_CFG = {
    "ce_weight": 1.0,
    "tsa": "none",
    "tsa_steps": 300,
    "consistency_weight": 1.0,
    "sharpen_temperature": 0.4,
    "confidence_threshold": 0.8,
    "entropy_weight": 0.0,
    "diversity_weight": 0.0,
}

# name -> (weak shift, uses labeled batch, uses strong view, lr, cfg overrides)
RECIPES = {
    "source": None,
    "uda": dict(weak_shift=2, labeled=True, strong=True, lr=1e-3, cfg={"tsa": "linear"}),
    "uda-im": dict(weak_shift=0, labeled=True, strong=True, lr=1e-3,
                   cfg={"tsa": "none", "entropy_weight": 1.0, "diversity_weight": 1.0}),
    "tent": dict(weak_shift=0, labeled=False, strong=False, lr=3e-4,
                 cfg={"ce_weight": 0.0, "consistency_weight": 0.0, "entropy_weight": 1.0, "diversity_weight": 0.0}),
}


def lr_at(schedule, lr, step, steps):
    """fieldtune's LrSchedule: constant, or half a cosine from lr at step 1 towards 0."""
    if schedule == "constant":
        return lr
    assert schedule == "cosine", schedule
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(steps, 1)))


def recipe_from_fieldtune(bin_path, name, steps):
    """The recipe exactly as `fieldtune adapt --recipe NAME --print-config` resolves it."""
    import subprocess
    out = subprocess.run([bin_path, "adapt", "--recipe", name, "--print-config", "--model", "models/mnist-cnn",
                          "--unlabeled", "data/opencv-digits", "--out", "/nonexistent"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    c = tomllib.loads(out)
    weak, strong, loss, opt = c["weak"], c["strong"], c["loss"], c["optimizer"]
    assert opt["kind"] == "adamw" and opt["weight_decay"] == 0.0, opt
    assert weak["kind"] in ("weak", "identity") and not weak.get("flip_horizontal", False), weak
    assert c["max_labeled_per_class"] >= 100, "the reference uses all 1,000 anchors"
    cfg = {k: round(loss[k], 7) if isinstance(loss[k], float) else loss[k] for k in BASE_CFG}
    cfg["tsa_steps"] = loss["tsa_steps"]
    return dict(
        weak_shift=weak.get("max_shift", 0), labeled=c["batch_labeled"] > 0,
        strong=loss["consistency_weight"] != 0.0, lr=round(c["lr"], 9), cfg=cfg,
        lr_schedule=c.get("lr_schedule", "constant"), steps=c["steps"],
        batch_labeled=c["batch_labeled"], batch_unlabeled=c["batch_unlabeled"],
        strong_view=dict(n=strong.get("n", 2), max_magnitude=strong.get("max_magnitude", 1.0),
                         cutout=strong.get("cutout", 0.5)) if strong["kind"] == "randaugment" else dict(n=0, cutout=0.0),
    )


# ---------------------------------------------------------------- augmentation (PIL)

def _round(v):
    """Round half away from zero (Rust's f32::round)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def _affine(img, a, b, c, d, e, f):
    return img.transform(img.size, Image.AFFINE, (a, b, c, d, e, f), Image.NEAREST, fillcolor=0)


def translate(img, dx, dy):
    """Content moves dx right, dy down: out(x, y) = in(x - dx, y - dy), zero fill."""
    if dx == 0 and dy == 0:
        return img.copy()
    return _affine(img, 1, 0, -dx, 0, 1, -dy)


def shear_x(img, s):
    return _affine(img, 1, s, -s * img.size[1] / 2, 0, 1, 0)


def shear_y(img, s):
    return _affine(img, 1, 0, 0, s, 1, -s * img.size[0] / 2)


def cutout(img, cx, cy, side, fill=CUTOUT_FILL):
    a = np.array(img)
    if side == 0:
        return Image.fromarray(a, img.mode)
    h, w = a.shape[:2]
    x0, y0 = cx - side // 2, cy - side // 2
    x1, y1 = min(x0 + side, w), min(y0 + side, h)
    x0, y0 = max(x0, 0), max(y0, 0)
    if x0 < x1 and y0 < y1:
        a[y0:y1, x0:x1] = fill
    return Image.fromarray(a, img.mode)


def _factor(m, sign):
    return 1.0 + sign * 0.9 * m


# name -> (signed, fn(img, m, sign)); the order of the table in runtime/augment (Op::ALL).
OPS = [
    ("autocontrast", False, lambda im, m, s: ImageOps.autocontrast(im)),
    ("equalize", False, lambda im, m, s: ImageOps.equalize(im)),
    ("rotate", True, lambda im, m, s: im.rotate(s * 30.0 * m, resample=Image.NEAREST, fillcolor=0)),
    ("shear_x", True, lambda im, m, s: shear_x(im, s * 0.3 * m)),
    ("shear_y", True, lambda im, m, s: shear_y(im, s * 0.3 * m)),
    ("translate_x", True, lambda im, m, s: translate(im, int(s * _round(0.3 * m * im.size[0])), 0)),
    ("translate_y", True, lambda im, m, s: translate(im, 0, int(s * _round(0.3 * m * im.size[1])))),
    ("contrast", True, lambda im, m, s: ImageEnhance.Contrast(im).enhance(_factor(m, s))),
    ("brightness", True, lambda im, m, s: ImageEnhance.Brightness(im).enhance(_factor(m, s))),
    ("sharpness", True, lambda im, m, s: ImageEnhance.Sharpness(im).enhance(_factor(m, s))),
    ("posterize", False, lambda im, m, s: ImageOps.posterize(im, 8 - _round(4 * m))),
    ("solarize", False, lambda im, m, s: ImageOps.solarize(im, 256 - _round(256 * m))),
]


def weak_view(img, k, rng):
    if k == 0:
        return img
    dx = int(rng.integers(-k, k, endpoint=True))
    dy = int(rng.integers(-k, k, endpoint=True))
    return translate(img, dx, dy)


def strong_view(img, rng, n=RANDAUGMENT_N, max_magnitude=1.0, cutout_fraction=CUTOUT_FRACTION):
    out = img
    for _ in range(n):
        _, signed, fn = OPS[int(rng.integers(len(OPS)))]
        m = float(rng.random()) * max_magnitude
        sign = -1.0 if (signed and rng.random() < 0.5) else 1.0
        out = fn(out, m, sign)
    u = float(rng.random())
    side = _round(u * cutout_fraction * min(img.size))
    cx = int(rng.integers(img.size[0]))
    cy = int(rng.integers(img.size[1]))
    return cutout(out, cx, cy, side)


# ---------------------------------------------------------------- data

def load_model_config():
    with open(os.path.join(MODEL_DIR, "model.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert cfg["channels"] == 1 and cfg["height"] == 28 and cfg["width"] == 28, cfg
    return cfg


def load_folder(root, classes):
    """[(index, PIL L image, label)] for <root>/<class>/<index>.png, sorted by index."""
    items = []
    for label, c in enumerate(classes):
        d = os.path.join(root, c)
        for name in sorted(os.listdir(d)):
            if not name.endswith(".png"):
                continue
            with Image.open(os.path.join(d, name)) as im:
                im = im.convert("L")
                im.load()
            assert im.size == (28, 28), (name, im.size)
            items.append((int(os.path.splitext(name)[0]), im, label))
    items.sort(key=lambda t: t[0])
    return items


class Preprocess:
    def __init__(self, mean, std):
        self.mean, self.std = float(mean), float(std)

    def __call__(self, imgs):
        a = np.stack([np.asarray(im, dtype=np.uint8) for im in imgs]).astype(np.float32) / 255.0
        a = (a - np.float32(self.mean)) / np.float32(self.std)
        return torch.from_numpy(a[:, None, :, :].copy())


class EpochSampler:
    """Batches of indices from reshuffled epochs: a batch that runs past the end of an epoch
    takes the rest of it and continues with the next permutation."""

    def __init__(self, n, rng):
        self.n, self.rng = n, rng
        self.perm, self.pos = rng.permutation(n), 0

    def next(self, b):
        out = []
        while len(out) < b:
            if self.pos == self.n:
                self.perm, self.pos = self.rng.permutation(self.n), 0
            take = min(b - len(out), self.n - self.pos)
            out.extend(self.perm[self.pos:self.pos + take].tolist())
            self.pos += take
        return out


# ---------------------------------------------------------------- training / evaluation

@torch.no_grad()
def accuracy(net, params, x, y, batch=1000):
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((net(x[i:i + batch], params).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def load_batch(pattern, seed, step):
    """One step's batch as fieldtune wrote it (`fieldtune adapt --dump-batches DIR`)."""
    path = os.path.join(pattern.format(seed=seed), f"step-{step:05d}.safetensors")
    t, _ = st.load(path)
    return {k: torch.from_numpy(v) for k, v in t.items()}


def run_one(name, seed, steps, net, init, data, pre, batches=None):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in init.items()}
    recipe = RECIPES[name]
    t0 = time.perf_counter()
    terms_last, mask_rates = {}, []
    cfg = None
    if recipe is not None:
        cfg = dict(BASE_CFG, tsa_steps=steps)
        cfg.update(recipe["cfg"])
        plist = [params[k] for k in sorted(params)]
        opt = torch.optim.AdamW(plist, lr=recipe["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        anchors, target = data["anchors"], data["target"]
        lab = EpochSampler(len(anchors), rng)
        unl = EpochSampler(len(target), rng)
        k = recipe["weak_shift"]
        for step in range(1, steps + 1):
            parts = []
            y_l = None
            if batches is not None:
                # The very batches fieldtune trained on: tests the training math alone.
                b = load_batch(batches, seed, step)
                xs = ([b["x_labeled"]] if recipe["labeled"] else []) + [b["x_weak"], b["x_strong"]]
                y_l = b["y_labeled"] if recipe["labeled"] else None
                logits = net(torch.cat(xs), params)
                chunks = list(torch.split(logits, [len(x) for x in xs]))
                logits_l = chunks.pop(0) if recipe["labeled"] else None
                logits_w, logits_s = chunks
            elif recipe["labeled"]:
                idx = lab.next(recipe.get("batch_labeled", LABELED_BATCH))
                parts.append([weak_view(anchors[i][1], k, rng) for i in idx])
                y_l = torch.tensor([anchors[i][2] for i in idx], dtype=torch.int64)
            if batches is None:
                idx = unl.next(recipe.get("batch_unlabeled", UNLABELED_BATCH))
                imgs = [target[i][1] for i in idx]
                parts.append([weak_view(im, k, rng) for im in imgs])
                if recipe["strong"]:
                    sv = recipe.get("strong_view", {})
                    parts.append([strong_view(im, rng, sv.get("n", RANDAUGMENT_N), sv.get("max_magnitude", 1.0),
                                              sv.get("cutout", CUTOUT_FRACTION)) for im in imgs])
                # One forward over all views: the model has no batch-dependent op (no BatchNorm),
                # so this equals separate forwards; every view keeps its graph.
                x = pre([im for p in parts for im in p])
                logits = net(x, params)
                sizes = [len(p) for p in parts]
                chunks = list(torch.split(logits, sizes))
                logits_l = chunks.pop(0) if recipe["labeled"] else None
                logits_w = chunks.pop(0)
                # tent has no strong view; its consistency weight is 0, so pass the weak logits.
                logits_s = chunks.pop(0) if recipe["strong"] else logits_w
            total, terms = uda_loss(cfg, logits_l, y_l, logits_w, logits_s, float(step))
            if not torch.isfinite(total):
                raise RuntimeError(f"{name} seed {seed}: non-finite loss at step {step}")
            opt.zero_grad()
            total.backward()
            for group in opt.param_groups:
                group["lr"] = lr_at(recipe.get("lr_schedule", "constant"), recipe["lr"], step, steps)
            opt.step()
            mask_rates.append(float(terms["mask_rate"]))
            if step == steps:
                terms_last = {t: float(v) for t, v in terms.items()}
    train_s = time.perf_counter() - t0
    acc_all = accuracy(net, params, data["x_target"], data["y_target"])
    acc_held = accuracy(net, params, data["x_held"], data["y_held"])
    acc_anchor = accuracy(net, params, data["x_anchor"], data["y_anchor"])
    total_s = time.perf_counter() - t0
    out = {
        "seed": seed,
        "acc_target": acc_all,
        "acc_target_heldout": acc_held,
        "acc_anchors": acc_anchor,
        "seconds": total_s,
        "train_seconds": train_s,
        "ms_per_step": 1000 * train_s / steps if recipe is not None else None,
    }
    if recipe is not None:
        out["terms_last_step"] = terms_last
        out["mask_rate_mean"] = float(np.mean(mask_rates))
    return out, cfg


def loaded_blas():
    """Shared BLAS / LAPACK libraries this process really mapped (after a matmul)."""
    (torch.randn(64, 64) @ torch.randn(64, 64)).sum()
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if any(s in os.path.basename(p).lower() for s in ("blas", "lapack", "mkl")):
                    libs.add(os.path.realpath(p))
    except OSError:
        pass
    return sorted(libs)


def mean_std(v):
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps (default: the recipe's, 300 for the built-in table)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--from-fieldtune", metavar="BIN",
                    help="take each recipe's settings from `BIN adapt --recipe NAME --print-config` "
                         "(e.g. target/release/fieldtune) instead of the built-in table")
    ap.add_argument("--batches", metavar="DIR",
                    help="train on the batches fieldtune dumped (`fieldtune adapt --seed S "
                         "--dump-batches DIR`) instead of sampling and augmenting here; '{seed}' in "
                         "DIR is replaced by each seed (one recipe per invocation)")
    args = ap.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    for r in recipes:
        if r not in RECIPES:
            ap.error(f"unknown recipe {r!r}; known: {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.from_fieldtune:
        for r in recipes:
            if r != "source":
                RECIPES[r] = recipe_from_fieldtune(os.path.abspath(args.from_fieldtune), r, args.steps)
                print(f"{r}: {RECIPES[r]}", flush=True)
    torch.set_num_threads(args.threads)

    mcfg = load_model_config()
    classes = mcfg["classes"]
    pre = Preprocess(mcfg["mean"][0], mcfg["std"][0])
    net = OnnxModule(os.path.join(MODEL_DIR, "model.onnx"))
    init = net.float_initializers()

    anchors = load_folder(os.path.join(MODEL_DIR, "anchors"), classes)
    target = load_folder(TARGET_DIR, classes)
    anchor_idx = {i for i, _, _ in anchors}
    held = [t for t in target if t[0] not in anchor_idx]
    assert len(anchors) == 1000 and len(target) == 5000 and len(held) == 4000, (len(anchors), len(target), len(held))

    def xy(items):
        return pre([im for _, im, _ in items]), torch.tensor([y for _, _, y in items], dtype=torch.int64)

    data = {"anchors": anchors, "target": target}
    data["x_target"], data["y_target"] = xy(target)
    data["x_held"], data["y_held"] = xy(held)
    data["x_anchor"], data["y_anchor"] = xy(anchors)

    results = {}
    for name in recipes:
        runs, cfg = [], None
        for seed in seeds:
            steps = args.steps if args.steps is not None else (RECIPES[name] or {}).get("steps", 300)
            r, cfg = run_one(name, seed, steps, net, init, data, pre, args.batches)
            runs.append(r)
            print(f"  {name:7s} seed {seed}: target {100 * r['acc_target']:.2f}%  held-out "
                  f"{100 * r['acc_target_heldout']:.2f}%  anchors {100 * r['acc_anchors']:.2f}%  "
                  f"{r['seconds']:.1f} s", flush=True)
        rec = RECIPES[name]
        summary = {}
        for key in ("acc_target", "acc_target_heldout", "acc_anchors", "seconds"):
            m, s = mean_std([r[key] for r in runs])
            summary[key] = {"mean": m, "std": s}
        results[name] = {
            "weak_shift": rec["weak_shift"] if rec else None,
            "labeled_batch": LABELED_BATCH if rec and rec["labeled"] else 0,
            "unlabeled_batch": UNLABELED_BATCH if rec else 0,
            "strong_view": bool(rec and rec["strong"]),
            "lr": rec["lr"] if rec else None,
            "steps": steps if rec else 0,
            "loss_cfg": cfg,
            "runs": runs,
            "summary": summary,
        }

    print()
    print(f"{'recipe':8s} | {'target (5,000)':>16s} | {'held-out (4,000)':>16s} | {'anchors (1,000)':>16s} | s/run")
    print("-" * 8 + "-|-" + "-" * 16 + "-|-" + "-" * 16 + "-|-" + "-" * 16 + "-|------")
    for name, res in results.items():
        s = res["summary"]
        cell = lambda k: f"{100 * s[k]['mean']:6.2f} ± {100 * s[k]['std']:4.2f}%"  # noqa: E731
        print(f"{name:8s} | {cell('acc_target'):>16s} | {cell('acc_target_heldout'):>16s} | "
              f"{cell('acc_anchors'):>16s} | {s['seconds']['mean']:5.1f}")
    print(f"(mean ± sample std over seeds {seeds}; torch {torch.__version__}, {args.threads} threads)")

    cfg_show = torch.__config__.show()
    blas_info = [p.split("=", 1)[1] for p in cfg_show.replace(",", " ").split() if p.startswith("BLAS_INFO=")]
    doc = {
        "script": "scripts/reference/torch_adapt.py",
        "model": "models/mnist-cnn/model.onnx",
        "anchors": "models/mnist-cnn/anchors (1,000)",
        "target": "data/opencv-digits (5,000; held-out = the 4,000 whose index is not an anchor's)",
        "seeds": seeds,
        "steps": args.steps or "per recipe",
        "batches": args.batches or "sampled and augmented by this script (PIL, numpy streams)",
        "optimizer": "torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
        "std": "sample std (ddof=1) over seeds",
        "torch_version": torch.__version__,
        "torch_blas_info": blas_info[0] if blas_info else None,
        "blas_libraries_loaded": loaded_blas(),
        "torch_config": cfg_show,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pil": Image.__version__,
        "cpu_count": os.cpu_count(),
        "recipes": results,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
