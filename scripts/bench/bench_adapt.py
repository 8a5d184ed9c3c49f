#!/usr/bin/env python3
"""Accuracy benchmark of `fieldtune adapt` on the shipped data: MNIST CNN -> OpenCV digits.

    python3 scripts/bench/bench_adapt.py [--engines ort,tract] [--recipes uda-im,uda] [--seeds 0,1,2]
        [--configs NAME=FILE ...] [--threads N] [--steps N] [--out FILE]

Runs the release binary (build it first: cargo build --release --bin fieldtune; FIELDTUNE_BIN or
--bin names another) once per engine x row x seed with the 1,000 MNIST anchors labeled and the
5,000 OpenCV digits unlabeled, scores the adapted model on all 5,000 OpenCV digits, prints a
table (mean +- sample std over seeds) and writes JSON.

Rows: each recipe of --recipes (`fieldtune adapt --recipe NAME`; `--recipes ''` for none) and each
NAME=FILE of --configs (`fieldtune adapt --config FILE`, e.g.
uda-im+jigsaw=configs/adapt-uda-im-jigsaw.toml). The source model's accuracy is every run's
"before" figure and is printed as its own row.

The JSON (default scripts/bench/results/bench_adapt.<UTC time>.json, one file per invocation)
is rewritten after every run, so an interrupted benchmark keeps the runs it finished.
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


def parse_configs(items):
    """NAME=FILE pairs -> [(name, path)]; the file must exist."""
    rows = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--configs {item!r}: expected NAME=FILE")
        full = path if os.path.isabs(path) else os.path.join(ROOT, path)
        if not os.path.isfile(full):
            sys.exit(f"--configs {item!r}: {full} is not a file")
        rows.append((name, path))
    return rows


def git_commit():
    p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="ort,tract")
    ap.add_argument("--recipes", default="uda-im,uda", help="comma-separated recipe names ('' for none)")
    ap.add_argument("--configs", nargs="*", default=[], metavar="NAME=FILE",
                    help="extra rows, each `fieldtune adapt --config FILE` under NAME")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="override the rows' step counts")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (fieldtune --threads)")
    ap.add_argument("--bin", default=os.environ.get("FIELDTUNE_BIN", os.path.join(ROOT, "target/release/fieldtune")),
                    help="the fieldtune binary (default: $FIELDTUNE_BIN, else target/release/fieldtune)")
    ap.add_argument("--out", default=None,
                    help="JSON results (default scripts/bench/results/bench_adapt.<UTC time>.json)")
    a = ap.parse_args()
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"{a.bin}: no fieldtune binary there; build it (cargo build --release --bin fieldtune) "
                 "or name one with FIELDTUNE_BIN / --bin")
    out_path = a.out or os.path.join(
        ROOT, "scripts/bench/results", time.strftime("bench_adapt.%Y-%m-%dT%H%M%SZ.json", time.gmtime()))
    engines = [e for e in a.engines.split(",") if e]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    rows = [(r, ["--recipe", r]) for r in a.recipes.split(",") if r]
    rows += [(name, ["--config", path]) for name, path in parse_configs(a.configs)]
    if not rows:
        sys.exit("nothing to run: give --recipes and/or --configs")
    names = [r[0] for r in rows]
    if len(set(names)) != len(names):
        sys.exit(f"row names repeat: {names}")
    meta = dict(argv=sys.argv[1:], binary=os.path.abspath(a.bin), commit=git_commit(), steps_override=a.steps,
                threads=a.threads, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                rows={name: args for name, args in rows})
    runs = []

    def save(summary=None):
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path + ".tmp", "w") as f:
            json.dump(dict(meta, runs=runs, summary=summary), f, indent=2)
        os.replace(out_path + ".tmp", out_path)

    for engine in engines:
        for name, row_args in rows:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "adapted")
                    cmd = [a.bin]
                    if a.threads is not None:
                        cmd += ["--threads", str(a.threads)]
                    cmd += ["adapt", "--engine", engine, *row_args, "--seed", str(seed),
                            "--model", "models/mnist-cnn",
                            "--labeled", "models/mnist-cnn/anchors", "--unlabeled", "data/opencv-digits",
                            "--eval", "data/opencv-digits", "--out", out]
                    if a.steps is not None:
                        cmd += ["--steps", str(a.steps)]
                    t = time.time()
                    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                       env={**os.environ, "RUST_LOG": "warn"})
                    if p.returncode != 0:
                        save()
                        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
                    with open(os.path.join(out, "adapt.json")) as f:
                        s = json.load(f)
                    r = dict(engine=engine, row=name, args=row_args, seed=seed, before=s["accuracy_before"],
                             after=s["accuracy_after"], train_seconds=s["seconds"],
                             wall_seconds=time.time() - t, execution_provider=s["execution_provider"],
                             steps=s["settings"]["steps"], recipe=s["settings"].get("recipe"))
                    runs.append(r)
                    save()
                    print(f"{engine:5} {name:22} seed {seed}: {r['before']:.4f} -> {r['after']:.4f} "
                          f"({r['steps']} steps, {r['train_seconds']:.0f} s training)", flush=True)
    print(f"\n{'engine':6} {'row':22} accuracy after, % (mean +- std over seeds; per seed)   s/run")
    summary = []
    for engine in engines:
        before = sorted({r["before"] for r in runs if r["engine"] == engine})
        print(f"{engine:6} {'source':22} {', '.join(f'{100 * b:.2f}' for b in before)}")
        summary.append(dict(engine=engine, row="source", mean=before[0] if len(before) == 1 else None,
                            before_values=before, seeds=None))
        for name, _ in rows:
            rs = [r for r in runs if r["engine"] == engine and r["row"] == name]
            acc = [r["after"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            summary.append(dict(engine=engine, row=name, mean=statistics.mean(acc), std=sd, seeds=len(acc),
                                per_seed={str(r["seed"]): r["after"] for r in rs}))
            per = ", ".join(f"{100 * x:.2f}" for x in acc)
            print(f"{engine:6} {name:22} {100 * statistics.mean(acc):6.2f} +- {100 * sd:.2f} ({per})"
                  f"   {statistics.mean(r['train_seconds'] for r in rs):5.0f}")
    save(summary)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
