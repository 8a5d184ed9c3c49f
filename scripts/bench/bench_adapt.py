#!/usr/bin/env python3
"""Accuracy benchmark of `fieldtune adapt` on the shipped data: MNIST CNN -> OpenCV digits.

    python3 scripts/bench/bench_adapt.py [--engines ort,tract] [--recipes uda-im,uda] [--seeds 0,1,2]
        [--steps N] [--out scripts/bench/results/fieldtune_adapt.json]

Runs the release binary (build it first: cargo build --release) once per engine x recipe x seed
with the 1,000 MNIST anchors labeled and the 5,000 OpenCV digits unlabeled, scores the adapted
model on all 5,000 OpenCV digits, prints a table (mean +- sample std over seeds) and writes JSON.
The PyTorch reference of the same recipes is scripts/reference/torch_adapt.py.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="ort,tract")
    ap.add_argument("--recipes", default="uda-im,uda")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override the recipes' step counts")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/fieldtune"))
    ap.add_argument("--out", default=os.path.join(ROOT, "scripts/bench/results/fieldtune_adapt.json"))
    a = ap.parse_args()
    runs = []
    for engine in a.engines.split(","):
        for recipe in a.recipes.split(","):
            for seed in [int(s) for s in a.seeds.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "adapted")
                    cmd = [a.bin, "adapt", "--engine", engine, "--recipe", recipe, "--seed", str(seed),
                           "--model", "models/mnist-cnn",
                           "--labeled", "models/mnist-cnn/anchors", "--unlabeled", "data/opencv-digits",
                           "--eval", "data/opencv-digits", "--out", out]
                    if a.steps is not None:
                        cmd += ["--steps", str(a.steps)]
                    t = time.time()
                    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
                    if p.returncode != 0:
                        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
                    s = json.load(open(os.path.join(out, "adapt.json")))
                    r = dict(engine=engine, recipe=recipe, seed=seed, before=s["accuracy_before"],
                             after=s["accuracy_after"], train_seconds=s["seconds"], wall_seconds=time.time() - t,
                             execution_provider=s["execution_provider"], steps=s["settings"]["steps"])
                    runs.append(r)
                    print(f"{engine:5} {recipe:7} seed {seed}: {r['before']:.4f} -> {r['after']:.4f} "
                          f"({r['train_seconds']:.0f} s training)", flush=True)
    print("\nengine recipe   accuracy after (mean +- std over seeds)   s/run")
    summary = []
    for engine in a.engines.split(","):
        for recipe in a.recipes.split(","):
            acc = [r["after"] for r in runs if r["engine"] == engine and r["recipe"] == recipe]
            sec = [r["train_seconds"] for r in runs if r["engine"] == engine and r["recipe"] == recipe]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            summary.append(dict(engine=engine, recipe=recipe, mean=statistics.mean(acc), std=sd, seeds=len(acc)))
            print(f"{engine:6} {recipe:8} {100 * statistics.mean(acc):6.2f} +- {100 * sd:.2f}            {statistics.mean(sec):5.0f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(dict(steps_override=a.steps, runs=runs, summary=summary), open(a.out, "w"), indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
