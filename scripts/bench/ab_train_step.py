#!/usr/bin/env python3
"""Two fieldtune binaries' train steps side by side: `fieldtune bench` of the same model and
recipe, old and new binary alternating ROUNDS times per engine in one invocation, so that a
shared host's load falls on both alike. Prints each run's median step time and, per engine,
the new/old ratio of the medians over the rounds; writes every run to --out (JSON).

    /usr/bin/python3 scripts/bench/ab_train_step.py --old OLD_BIN --new NEW_BIN \
        [--engines ort,tract] [--rounds 3] [--target tuned] [--out FILE] -- BENCH_ARGS...

BENCH_ARGS go to `fieldtune bench` as they are (model, recipe, batches, --timed-steps, ...).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def run(binary, engine, target, bench_args):
    env = dict(os.environ, FIELDTUNE_TARGET=target)
    cmd = [binary, "bench", "--engine", engine, "--json", *bench_args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    line = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not line:
        sys.exit(f"{' '.join(cmd)}: no JSON line in its output:\n{p.stdout[-2000:]}")
    return json.loads(line[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the binary before the change")
    ap.add_argument("--new", required=True, help="the binary after the change")
    ap.add_argument("--engines", default="ort,tract")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", default="tuned", help="FIELDTUNE_TARGET: portable or tuned")
    ap.add_argument("--out", help="JSON file of every run")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    bench_args = [x for x in a.bench_args if x != "--"]
    runs = []
    for engine in a.engines.split(","):
        ms = {"old": [], "new": []}
        for r in range(a.rounds):
            for side in ("old", "new"):
                j = run(getattr(a, side), engine, a.target, bench_args)
                ms[side].append(j["train_step_ms_median"])
                runs.append({"engine": engine, "side": side, "round": r, **j})
                print(
                    f"{engine:<6} round {r} {side}: {j['train_step_ms_median']:9.1f} ms/step, "
                    f"{j['train_step_nodes']} nodes, peak {j['peak_rss_train_mib']:.0f} MiB",
                    flush=True,
                )
        old, new = statistics.median(ms["old"]), statistics.median(ms["new"])
        per_round = [n / o for o, n in zip(ms["old"], ms["new"])]
        print(
            f"{engine}: median old {old:.1f} ms, new {new:.1f} ms: new/old {new / old:.3f} "
            f"(per round {', '.join(f'{x:.3f}' for x in per_round)})",
            flush=True,
        )
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"old": a.old, "new": a.new, "args": bench_args, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
