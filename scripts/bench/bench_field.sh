#!/usr/bin/env bash
# Field runtime benchmark (docs/BENCHMARKS.md, "Field runtime"): one `fieldtune run` of
# configs/field-bench.toml (OpenCV digits at 30 FPS, a round every 10 s) for --seconds
# (default 600: the 10-minute soak). Reports inference latency while rounds run vs idle
# (p50/p99 and the p99 ratio) and RSS over time (after a 60 s warm-up: first, max, last,
# slope), prints a table and writes scripts/bench/results/bench_field.json.
#   bash scripts/bench/bench_field.sh [--seconds N] [--engine auto|ort|tract] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=600
engine=auto
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--seconds N] [--engine auto|ort|tract] [--no-build]" >&2; exit 2 ;;
  esac
done
[ "$build" = 1 ] && cargo build --release -q -p fieldtune
rm -rf out/field-bench
target/release/fieldtune --engine "$engine" run --config configs/field-bench.toml --duration "$seconds" 2> out/field-bench.log || {
  tail -20 out/field-bench.log >&2; exit 1; }
python3 - "$seconds" "$engine" <<'PY'
import json, sys
seconds, engine = float(sys.argv[1]), sys.argv[2]
s = json.load(open("out/field-bench/summary.json"))
ev = [json.loads(l) for l in open("out/field-bench/events.jsonl") if l.strip()]
t0 = ev[0]["t_ms"]
rss = [((e["t_ms"] - t0) / 1000, e["rss_mb"]) for e in ev if e["event"] == "stats"]
warm = [p for p in rss if p[0] >= 60] or rss
n = len(warm)
mx = sum(t for t, _ in warm) / n; my = sum(r for _, r in warm) / n
den = sum((t - mx) ** 2 for t, _ in warm) or 1.0
slope = sum((t - mx) * (r - my) for t, r in warm) / den * 60
rounds = [e for e in ev if e["event"] == "round_ended"]
li, ld = s["latency_idle"], s["latency_during_rounds"]
out = {
    "command": f"bash scripts/bench/bench_field.sh --seconds {int(seconds)} --engine {engine}",
    "engine": s["engine"], "seconds": s["seconds"], "frames": s["frames"], "fps": s["fps"],
    "capture_dropped": s["capture_dropped"], "rounds": s["rounds"], "commits": s["commits"],
    "rollbacks": s["rollbacks"],
    "round_seconds_mean": sum(e.get("seconds", 0) for e in rounds) / max(len(rounds), 1),
    "latency_idle_ms": li, "latency_during_rounds_ms": ld, "p99_ratio": s["p99_ratio"],
    "rss_mb": {"after_warmup": warm[0][1], "max": max(r for _, r in warm), "last": warm[-1][1],
               "slope_mb_per_min": slope, "samples": len(rss)},
}
json.dump(out, open("scripts/bench/results/bench_field.json", "w"), indent=2)
print(f"engine: {s['engine']}")
print(f"{s['frames']} frames in {s['seconds']:.0f} s ({s['fps']:.1f} fps), {s['capture_dropped']} dropped; "
      f"{s['rounds']} rounds ({s['commits']} committed, {s['rollbacks']} rolled back), {out['round_seconds_mean']:.1f} s each")
print(f"{'inference latency (ms)':24} {'frames':>7} {'p50':>7} {'p99':>7} {'max':>7}")
for name, l in (("idle", li), ("during rounds", ld)):
    print(f"{name:24} {l['count']:>7} {l['p50_ms']:>7.3f} {l['p99_ms']:>7.3f} {l['max_ms']:>7.2f}")
print(f"p99 during rounds / idle: {s['p99_ratio']:.2f}")
r = out["rss_mb"]
print(f"RSS MiB after 60 s {r['after_warmup']:.1f}, max {r['max']:.1f}, last {r['last']:.1f}, slope {r['slope_mb_per_min']:+.2f} MiB/min ({r['samples']} samples)")
print("wrote scripts/bench/results/bench_field.json")
PY
