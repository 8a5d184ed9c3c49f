#!/usr/bin/env python3
"""Sums an ONNX Runtime or tract profile by op type.

    FIELDTUNE_ORT_PROFILE=PREFIX fieldtune --engine ort ...    # PREFIX.<graph>_<date>.json
    FIELDTUNE_TRACT_PROFILE=PREFIX fieldtune --engine tract ...  # PREFIX.<graph>.json
    python3 scripts/bench/ort_profile.py PROFILE.json [--top 15]

tract's profile names its optimized ops (OptMatMul, DepthWise, ...), not the ONNX ops, and
holds one event per node with its total time and run count.

Prints each op type's share of the kernel time, its total milliseconds, node-run count and
mean microseconds per run.
"""
import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    with open(a.profile) as f:
        events = json.load(f)
    dur = collections.Counter()
    runs = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            dur[op] += e["dur"]
            runs[op] += e.get("args", {}).get("runs", 1)
    total = sum(dur.values()) or 1
    print(f"{'op':24s} {'share':>6s} {'ms':>10s} {'runs':>7s} {'us/run':>9s}")
    for op, d in dur.most_common(a.top):
        print(f"{op:24s} {100 * d / total:5.1f}% {d / 1e3:10.1f} {runs[op]:7d} {d / runs[op]:9.1f}")
    print(f"{'all kernels':24s} {100.0:5.1f}% {total / 1e3:10.1f} {sum(runs.values()):7d}")


if __name__ == "__main__":
    main()
