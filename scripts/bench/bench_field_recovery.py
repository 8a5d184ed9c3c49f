#!/usr/bin/env python3
"""Field recovery benchmark (docs/BENCHMARKS.md section "Field recovery"): `fieldtune run` on
streams that shift domain, live accuracy after each shift beside offline `fieldtune adapt` on
the very same post-shift frames.

Streams (each frame is played once per appearance, in a seeded shuffled order per segment):
  digits:  data/mnist (1,500) -> data/opencv-digits (all 5,000)
  fmnist:  data/fmnist-c clean (1,024) -> gaussian_noise-5 (x3 = 3,072) -> brightness-5 (x3)

Figures per shift: live accuracy over the first and last 1,500 post-shift frames; frames
until a 500-frame window of live accuracy is within 2 points of offline adaptation; rounds and
commits during the segment; p99 inference latency during rounds over idle (whole run);
offline: `fieldtune adapt` (the run config's recipe, its own steps) on the segment's frames,
scored on them.

Usage (from the repository root, after `cargo build --release`):
  python3 scripts/bench/bench_field_recovery.py [--streams digits,fmnist] [--seeds 0,1,2]
      [--engines ort,tract] [--fps 100] [--no-offline] [--quick] [--out FILE]
      [--set SECTION.KEY=VALUE ...] [--keep DIR]
--set: overrides or adds one key of the run config (a TOML value: --set recovery.arm_frames=64),
for policy sweeps; the table's rows say which overrides ran.
--quick: the CI subset (digits, seed 0, first engine, 800 + 1,500 frames at 200 fps, no
offline); it checks that an episode opened and that its first round trained on post-shift
frames only. Writes scripts/bench/results/field_recovery.json (or --out) and prints a table.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("FIELDTUNE_BIN", ROOT / "target/release/fieldtune"))

# The run config of the benchmark: configs/field-demo.toml's policy at this stream's pace.
RUN_CONFIG = """
model = "{model}"
state_dir = "{state}"
[source]
kind = "folder"
paths = [{paths}]
order = "shuffled"
seed = {seed}
fps = {fps}
preload = true
[pipeline]
when_full = "block"
stats_every_s = 1.0
[output]
path = "{pred}"
[replay]
capacity = 2048
recent_fraction = 0.75
[trigger]
drift = true
ema_alpha = 0.02
baseline_frames = 500
entropy_rise = 0.05
confidence_drop = 0.01
drift_sigmas = 6.0
cooldown_frames = 600
min_replay = 512
manual_signal = false
[budget]
nice = 10
round_seconds = 60.0
[adapt]
recipe = "uda-im"
steps = 40
seed = {seed}
[gate]
max_anchor_drop = 0.01
min_objective_gain = 0.0
min_agreement = 0.7
[engine]
inference = "{engine}"
train = "{engine}"
"""


def with_overrides(config: str, sets: list[str]) -> str:
    """`config` with each SECTION.KEY=VALUE of `sets` replacing that key, or added to its section
    (a section that is missing is appended)."""
    lines = config.splitlines()
    for item in sets:
        path, sep, value = item.partition("=")
        section, dot, key = path.strip().rpartition(".")
        if not sep or not dot or not key:
            sys.exit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        header = f"[{section}]"
        if header not in lines:
            lines += [header]
        at = lines.index(header) + 1
        end = next((i for i in range(at, len(lines)) if lines[i].startswith("[")), len(lines))
        lines = [l for i, l in enumerate(lines) if not (at <= i < end and l.split("=")[0].strip() == key)]
        lines.insert(at, f"{key} = {value.strip()}")
    return "\n".join(lines) + "\n"


def class_files(folder: Path):
    return [
        (c.name, f)
        for c in sorted(folder.iterdir())
        if c.is_dir()
        for f in sorted(c.iterdir())
        if f.suffix == ".png"
    ]


def segment(dst: Path, src: Path, count: int | None, repeat: int, seed: int) -> int:
    """Class folders of links to `count` images of `src` (a seeded sample), `repeat` times."""
    files = class_files(src)
    random.Random(seed).shuffle(files)
    files = files[:count] if count else files
    for r in range(repeat):
        for cls, f in files:
            (dst / cls).mkdir(parents=True, exist_ok=True)
            os.symlink(f, dst / cls / f"r{r}-{f.name}")
    return len(files) * repeat


STREAMS = {
    "digits": ("models/mnist-cnn", [("data/mnist", 1500, 1), ("data/opencv-digits", None, 1)]),
    "fmnist": (
        "models/fmnist-cnn",
        [
            ("data/fmnist-c/clean", None, 1),
            ("data/fmnist-c/gaussian_noise-5", None, 3),
            ("data/fmnist-c/brightness-5", None, 3),
        ],
    ),
}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return r


def accuracy(rows):
    return 100.0 * sum(r["class"] == r["label"] for r in rows) / max(1, len(rows))


def frames_to_within(rows, target, window=500):
    """First post-shift frame where a `window`-frame window of live accuracy reaches target."""
    ok = [r["class"] == r["label"] for r in rows]
    if len(ok) < window:
        return None
    s = sum(ok[:window])
    for i in range(len(ok) - window + 1):
        if i > 0:
            s += ok[i + window - 1] - ok[i - 1]
        if 100.0 * s / window >= target:
            return i
    return None


def offline(engine, model, seg_dir, seed, work):
    out = work / "offline"
    shutil.rmtree(out, ignore_errors=True)
    run([BIN, "adapt", "--engine", engine, "--model", ROOT / model, "--unlabeled", seg_dir,
         "--labeled", ROOT / model / "anchors", "--eval", seg_dir, "--out", out,
         "--seed", str(seed)])
    a = json.loads((out / "adapt.json").read_text())
    return 100.0 * a["accuracy_after"]


def one(stream, seed, engine, fps, quick, with_offline, work, sets=()):
    model, segs = STREAMS[stream]
    if quick:
        segs = [(segs[0][0], 800, 1), (segs[1][0], 1500, 1)]
    folders, bounds, start = [], [], 0
    for i, (src, count, rep) in enumerate(segs):
        d = work / f"seg{i}"
        n = segment(d, ROOT / src, count, rep, seed * 100 + i)
        folders.append(d)
        bounds.append((start, start + n))
        start += n
    state, pred = work / "state", work / "pred.jsonl"
    cfg = work / "run.toml"
    cfg.write_text(with_overrides(RUN_CONFIG.format(
        model=ROOT / model, state=state, seed=seed, fps=fps, pred=pred,
        engine="tract" if engine == "tract" else "ort:cpu",
        paths=", ".join(f'"{d}"' for d in folders)), list(sets)))
    run([BIN, "run", "--config", cfg])
    rows = [json.loads(l) for l in pred.read_text().splitlines()]
    events = [json.loads(l) for l in (state / "events.jsonl").read_text().splitlines()]
    summary = json.loads((state / "summary.json").read_text())
    result = {"stream": stream, "seed": seed, "engine": engine, "fps": fps, "shifts": [],
              "overrides": list(sets),
              "p99_ratio": summary.get("p99_ratio"),
              "p99_idle_ms": summary["latency_idle"]["p99_ms"],
              "p99_rounds_ms": summary["latency_during_rounds"]["p99_ms"]}
    for i in range(1, len(segs)):
        lo, hi = bounds[i]
        post = [r for r in rows if lo <= r["frame"] < hi]
        in_seg = lambda e: lo <= e.get("frame", -1) < hi
        seg_rounds = {e["round"] for e in events if e["event"] == "round_started" and in_seg(e)}
        episodes = [e for e in events if e["event"] == "recovery_started" and in_seg(e)]
        firsts = [e for e in events if e["event"] == "round_started"
                  and e.get("episode_round") == 1 and in_seg(e)]
        shift = {
            "from": segs[i - 1][0], "to": segs[i][0], "frames": hi - lo,
            "first_1500": accuracy(post[:1500]), "last_1500": accuracy(post[-1500:]),
            "rounds": len(seg_rounds),
            "commits": sum(e["event"] == "committed" and e["round"] in seg_rounds for e in events),
            "episode_frame": episodes[0]["since_frame"] - lo if episodes else None,
            "first_round_oldest": firsts[0].get("oldest_frame") if firsts else None,
            "first_commit_frame": next((r["frame"] - lo for r in post
                                        if r["version"] > post[0]["version"]), None),
        }
        if with_offline:
            shift["offline"] = offline(engine, model, folders[i], seed, work)
            shift["frames_to_within_2"] = frames_to_within(post, shift["offline"] - 2.0)
        result["shifts"].append(shift)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="digits,fmnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--engines", default="ort,tract")
    ap.add_argument("--fps", type=float, default=100.0)
    ap.add_argument("--no-offline", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key of the run config (repeatable)")
    ap.add_argument("--keep", metavar="DIR", help="copy each run's events.jsonl, summary.json, "
                    "predictions and run config to DIR/STREAM-ENGINE-SEED")
    ap.add_argument("--out", help="results file (default scripts/bench/results/field_recovery.json; "
                    "--quick: a temporary file)")
    a = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"build first: cargo build --release ({BIN} missing)")
    streams, seeds, engines = a.streams.split(","), [int(s) for s in a.seeds.split(",")], a.engines.split(",")
    if a.quick:
        streams, seeds, engines, a.fps, a.no_offline = ["digits"], [0], engines[:1], 200.0, True
        a.out = a.out or str(Path(tempfile.gettempdir()) / "field_recovery_quick.json")
    a.out = a.out or str(ROOT / "scripts/bench/results/field_recovery.json")
    if "fmnist" in streams and not (ROOT / "data/fmnist-c/gaussian_noise-5").is_dir():
        sys.exit("generate data/fmnist-c first (data/fmnist-c/DATA.md), or pass --streams digits")
    results = []
    for stream in streams:
        for engine in engines:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as t:
                    r = one(stream, seed, engine, a.fps, a.quick, not a.no_offline, Path(t), a.set)
                    if a.keep:
                        kept = Path(a.keep) / f"{stream}-{engine}-{seed}"
                        shutil.rmtree(kept, ignore_errors=True)
                        kept.mkdir(parents=True)
                        for f in ("state/events.jsonl", "state/summary.json", "pred.jsonl", "run.toml"):
                            shutil.copy(Path(t) / f, kept / Path(f).name)
                results.append(r)
                for s in r["shifts"]:
                    print(f"{stream:6} {engine:5} seed {seed}  {s['to']:34} first1500 {s['first_1500']:6.2f}  "
                          f"last1500 {s['last_1500']:6.2f}  offline {s.get('offline', float('nan')):6.2f}  "
                          f"to-within-2 {s.get('frames_to_within_2')}  rounds {s['rounds']} commits {s['commits']}  "
                          f"episode@{s['episode_frame']} first-commit@{s['first_commit_frame']}  "
                          f"p99 ratio {r['p99_ratio']:.2f}", flush=True)
    if a.set:
        print(f"overrides: {' '.join(a.set)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    # Mean over seeds per (stream, engine, shift).
    print("\n| stream | engine | shift to | first 1,500 | last 1,500 | offline | frames to within 2 pts | rounds | commits | p99 rounds/idle |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["stream"], r["engine"]) for r in results})
    for stream, engine in keys:
        rs = [r for r in results if (r["stream"], r["engine"]) == (stream, engine)]
        for k in range(len(rs[0]["shifts"])):
            sh = [r["shifts"][k] for r in rs]
            mean = lambda key: sum(s[key] for s in sh) / len(sh)
            off = f"{mean('offline'):.2f}" if "offline" in sh[0] else "-"
            fw = [s.get("frames_to_within_2") for s in sh]
            print(f"| {stream} | {engine} | {sh[0]['to']} | {mean('first_1500'):.2f} | {mean('last_1500'):.2f} | {off} | "
                  f"{' / '.join(str(x) for x in fw)} | {mean('rounds'):.1f} | {mean('commits'):.1f} | "
                  f"{sum(r['p99_ratio'] for r in rs) / len(rs):.2f} |")
    if a.quick:
        s = results[0]["shifts"][0]
        lo = 800
        assert s["episode_frame"] is not None, "no recovery episode opened after the shift"
        assert s["first_round_oldest"] is not None and s["first_round_oldest"] >= lo, \
            f"the first episode round trained on frame {s['first_round_oldest']} (shift at {lo})"
        print("quick: an episode opened after the shift and its first round trained on post-shift frames")


if __name__ == "__main__":
    main()
