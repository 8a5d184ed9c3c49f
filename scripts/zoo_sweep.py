#!/usr/bin/python3
"""torchvision's classification models through fieldtune: export, compile, two adaptation steps.

    /usr/bin/python3 scripts/zoo_sweep.py [--models resnet18,vit_b_32|all] [--size 64]
        [--engines ort,tract] [--exports preserve,default] [--no-adapt] [--max-params 150]
        [--out docs/MODELS.md] [--json scripts/bench/results/zoo_sweep.json] [--bin PATH]

For each model of the installed torchvision (random weights; `--size` pixels a side, or the
smallest size the model takes), two exports: `preserve` (eval mode, TrainingMode.PRESERVE, no
constant folding: BatchNormalization nodes kept) and `default` (torch.onnx.export's defaults:
BatchNorm folded into the convolutions). Each export gets a model.toml and goes through
`fieldtune compile --train all` on each engine, then (unless --no-adapt) two steps of
`fieldtune adapt --objective tent` with `--train bn` (on a default export: the inserted per-channel affine) and `--train all` on
each engine, on 16 frames of data/opencv-digits (grayscale, resized to the model's input by
fieldtune). Per run it records success, wall time and peak RSS (GNU time), and the first error
line on failure. Writes a Markdown table (--out) and the raw results (--json).

Models above --max-params million parameters are skipped (their exports pass 2 GB or do not fit
this machine's memory next to a train step).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Smallest input side a model takes when it is below --size (Inception's stem).
MIN_SIDE = {"inception_v3": 75}
# Models that fix their input size at construction take it as a keyword.
SIZE_KWARG = {"vit_": "image_size"}
# Models whose construction needs a fixed 224 input (MaxViT's partitioning).
FIXED_224 = {"maxvit_t"}


def model_names():
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def side_for(name, size):
    """The input side for `size`: 224 where fixed, the model's minimum, and for ViTs the next
    multiple of the patch size (vit_h_14 at 64: 70)."""
    if name in FIXED_224:
        return 224
    side = max(size, MIN_SIDE.get(name, 0))
    m = re.fullmatch(r"vit_\w_(\d+)", name)
    if m:
        patch = int(m.group(1))
        side = -(-side // patch) * patch
    return side


def build(name, size):
    import torch
    import torchvision

    kwargs = {}
    for prefix, key in SIZE_KWARG.items():
        if name.startswith(prefix):
            kwargs[key] = size
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    return net


def grad_off(name):
    """`torch.no_grad()` for the export, except for torchvision's ViTs: in eval mode without
    gradients PyTorch 1.13 takes the fused `aten::_native_multi_head_attention` path, which has
    no ONNX export."""
    import contextlib

    import torch

    return contextlib.nullcontext() if name.startswith("vit_") else torch.no_grad()


def export(net, path, side, variant):
    import torch

    x = torch.randn(2, 3, side, side)
    kw = dict(opset_version=17, input_names=["input"], output_names=["logits"],
              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    if variant == "preserve":
        kw.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    torch.onnx.export(net, x, str(path / "model.onnx"), **kw)
    (path / "model.toml").write_text(
        f'input = "input"\noutput = "logits"\nchannels = 3\nheight = {side}\nwidth = {side}\n'
        "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
        f"classes = [{', '.join(chr(34) + str(i) + chr(34) for i in range(1000))}]\n")
    import onnx

    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    return sorted({n.op_type for n in m.graph.node})


def run(cmd, timeout):
    """(ok, seconds, peak RSS MB, first error line)."""
    t0 = time.time()
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "peak_kb %M", *map(str, cmd)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, timeout, None, f"timed out after {timeout} s"
    dt = time.time() - t0
    m = re.search(r"peak_kb (\d+)", r.stderr)
    peak = int(m.group(1)) / 1024 if m else None
    err = None
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("peak_kb")]
        errs = [l for l in lines if "error" in l.lower()]
        err = (errs or lines or [f"exit {r.returncode}"])[0].strip()[:300]
    return r.returncode == 0, dt, peak, err


def frames(dst):
    """16 OpenCV digits, flat: unlabeled frames for the adaptation steps."""
    dst.mkdir(parents=True, exist_ok=True)
    src = ROOT / "data/opencv-digits"
    picked = [f for c in sorted(src.iterdir()) if c.is_dir() for f in sorted(c.iterdir())[:2]][:16]
    for i, f in enumerate(picked):
        shutil.copy(f, dst / f"{i:02}{f.suffix}")
    return dst


def sweep_one(name, a, work, frame_dir):
    import torch

    row = {"model": name}
    try:
        net = build(name, side_for(name, a.size))
    except Exception as e:  # a constructor that refuses the size
        row["error"] = f"construct: {str(e).splitlines()[0][:200]}"
        return row
    params = sum(p.numel() for p in net.parameters())
    row["params_m"] = round(params / 1e6, 2)
    if params > a.max_params * 1e6:
        row["skipped"] = f"{params / 1e6:.0f} M parameters > --max-params {a.max_params}"
        return row
    side = side_for(name, a.size)
    row["side"] = side
    for variant in a.exports:
        d = work / f"{name}-{variant}"
        d.mkdir(parents=True, exist_ok=True)
        v = row.setdefault(variant, {})
        try:
            with grad_off(name):
                v["ops"] = export(net, d, side, variant)
        except Exception as e:
            # Adaptive pools to a fixed grid (AlexNet, VGG) export only where the input's
            # feature map is a multiple of the grid: retry at 224.
            if side >= 224:
                v["export_error"] = str(e).splitlines()[0][:200]
                continue
            side = row["side"] = 224
            if any(name.startswith(p) for p in SIZE_KWARG):
                # Built for the smaller size: build it again for 224.
                net = build(name, side)
            try:
                with grad_off(name):
                    v["ops"] = export(net, d, side, variant)
            except Exception as e2:
                v["export_error"] = str(e2).splitlines()[0][:200]
                continue
        env_engines = a.engines
        for eng in env_engines:
            # compile writes the portable graph, the same for every engine (it takes no
            # --engine); it is timed once per engine column for the table's shape.
            ok, dt, peak, err = run([a.bin, "compile", "--model", d, "--train", "all",
                                     "--out", d / f"step-{eng}.onnx"], a.timeout)
            v[f"compile_{eng}"] = {"ok": ok, "s": round(dt, 1), "peak_mb": peak, "error": err}
            (d / f"step-{eng}.onnx").unlink(missing_ok=True)
            if a.no_adapt:
                continue
            # `bn` on a default (folded) export trains the per-channel affine fieldtune inserts
            # after each convolution (runtime/graph/src/affine.rs).
            for train in ["bn", "all"]:
                out = d / f"adapted-{eng}-{train}"
                ok, dt, peak, err = run([a.bin, "adapt", "--engine", eng, "--model", d, "--objective", "tent",
                                         "--train", train, "--steps", "2", "--batch", "4",
                                         "--unlabeled", frame_dir, "--out", out], a.timeout)
                v[f"adapt_{eng}_{train}"] = {"ok": ok, "s": round(dt, 1), "peak_mb": peak, "error": err}
                shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
    return row


def cell(r):
    if r is None:
        return "-"
    if not r["ok"] and "no BatchNormalization" in (r.get("error") or "") or \
            not r["ok"] and (r.get("error") or "").endswith("matches the trainable selection"):
        return "n/a (no BatchNorm)"
    if r["ok"]:
        return f"yes ({r['s']:.0f} s, {r['peak_mb']:.0f} MB)" if r.get("peak_mb") else "yes"
    return "**no**"


def table(rows, a):
    out = ["| model | M params | side | export | ops | " + " | ".join(
        f"compile {e}" for e in a.engines) + ("" if a.no_adapt else " | " + " | ".join(
            f"tent 2 steps {e} bn / all" for e in a.engines)) + " | first failure |",
        "|---" * (5 + len(a.engines) * (1 if a.no_adapt else 2) + 1) + "|"]
    for row in rows:
        if "error" in row or "skipped" in row:
            out.append(f"| {row['model']} | {row.get('params_m', '-')} | - | - | - | " + " | ".join(
                "-" for _ in range(len(a.engines) * (1 if a.no_adapt else 2))) +
                f" | {row.get('error') or row.get('skipped')} |")
            continue
        for variant in a.exports:
            v = row.get(variant, {})
            fails = [r["error"] for k, r in v.items() if isinstance(r, dict) and r.get("error")
                     and cell(r) != "n/a (no BatchNorm)"]
            if "export_error" in v:
                fails.insert(0, "export: " + v["export_error"])
            cols = [cell(v.get(f"compile_{e}")) for e in a.engines]
            if not a.no_adapt:
                for e in a.engines:
                    bn = cell(v.get(f"adapt_{e}_bn"))
                    cols.append(f"{bn} / {cell(v.get(f'adapt_{e}_all'))}")
            first = (fails[0].replace("|", "\\|") if fails else "")
            out.append(f"| {row['model']} | {row['params_m']} | {row['side']} | {variant} | {len(v.get('ops', []))} | "
                       + " | ".join(cols) + f" | {first} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--engines", default="ort,tract")
    ap.add_argument("--exports", default="preserve,default")
    ap.add_argument("--no-adapt", action="store_true")
    ap.add_argument("--max-params", type=float, default=150.0, help="million parameters")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--bin", default=str(ROOT / "target/release/fieldtune"))
    ap.add_argument("--out", help="Markdown table (e.g. docs/MODELS.md's table; printed anyway)")
    ap.add_argument("--json", default=str(ROOT / "scripts/bench/results/zoo_sweep.json"))
    ap.add_argument("--table-only", action="store_true", help="print the table of an earlier --json")
    a = ap.parse_args()
    a.engines = a.engines.split(",")
    a.exports = a.exports.split(",")
    if a.table_only:
        md = table(json.loads(Path(a.json).read_text()), a)
        print(md)
        if a.out:
            Path(a.out).write_text(md + "\n")
        return
    if not Path(a.bin).exists():
        sys.exit(f"build first: cargo build --release -p fieldtune ({a.bin} missing)")
    names = model_names() if a.models == "all" else a.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as t:
        work = Path(t)
        frame_dir = frames(work / "frames")
        for name in names:
            t0 = time.time()
            row = sweep_one(name, a, work, frame_dir)
            rows.append(row)
            print(f"{name}: {json.dumps(row)[:400]} ({time.time() - t0:.0f} s)", flush=True)
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(rows, indent=1))
    md = table(rows, a)
    print(md)
    if a.out:
        Path(a.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
