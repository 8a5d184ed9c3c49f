#!/usr/bin/env bash
# Fashion-MNIST-C test-time adaptation benchmark (docs/BENCHMARKS.md section 5): fieldtune
# (`fieldtune tta`, ONNX Runtime by default) and its PyTorch reference (scripts/reference/torch_tta.py)
# on the very same batches, every method, severities 3 and 5, reset and continual, 3 seeds.
#
#   bash scripts/bench/bench_fmnist_c.sh [--seeds 0,1,2] [--severities 3,5] [--engine ort|tract]
#                                  [--methods source,bn,tent,uda,fixmatch,teacher] [--limit 512]
#
# Needs: target/release/fieldtune (cargo build --release; or FIELDTUNE_BIN), models/fmnist-cnn
# (scripts/data/prepare_fmnist.py), data/fmnist-c (scripts/data/corrupt_fmnist.py, see its DATA.md),
# Debian's python3-torch for the reference. Writes scripts/bench/results/fmnist_c.json (both sides,
# per run and per domain) and prints the table. The dumped batches (~170 MB per method and
# seed) live in a temporary folder, deleted once the reference has read them. --limit: images per
# domain, evenly spread over the 1,024 of data/fmnist-c (512: 8 batches of 64 per domain).
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=0,1,2
severities=3,5
engine=ort
methods=source,bn,tent,uda,fixmatch,teacher
limit=512
bin=${FIELDTUNE_BIN:-target/release/fieldtune}
source scripts/bench/tta_args.sh
work=${FMNIST_C_WORK:-$(mktemp -d)}
mkdir -p "$work"
[ -n "${FMNIST_C_WORK:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p scripts/bench/results
# fieldtune for one (seed, severity) while the reference replays the previous one (one thread each).
ref_pid=
for seed in ${seeds//,/ }; do
    for sev in ${severities//,/ }; do
        echo "== severity $sev, seed $seed"
        "$bin" --engine "$engine" --threads 1 tta --model models/fmnist-cnn --data data/fmnist-c \
            --severity "$sev" --limit "$limit" --methods "$methods" --seeds "$seed" --batch 64 \
            --dump-batches "$work/b-s$sev-$seed" --out "$work/fieldtune-s$sev-$seed.json" | sed -n 4,11p
        [ -z "$ref_pid" ] || wait "$ref_pid"
        ( /usr/bin/python3 scripts/reference/torch_tta.py --batches "$work/b-s$sev-$seed" --methods "$methods" \
            --seeds "$seed" --threads 1 --out "$work/torch-s$sev-$seed.json" > "$work/torch-s$sev-$seed.log" \
            && rm -rf "$work/b-s$sev-$seed" ) &
        ref_pid=$!
    done
done
wait "$ref_pid"
/usr/bin/python3 - "$work" "$severities" "$seeds" "$engine" <<'EOF'
import glob, json, os, statistics, sys
work, sevs, seeds, engine = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
out = {"engine": engine, "severities": sevs, "seeds": [int(s) for s in seeds], "fieldtune": [], "torch": []}
for sev in sevs:
    for seed in seeds:
        f = json.load(open(f"{work}/fieldtune-s{sev}-{seed}.json"))
        t = json.load(open(f"{work}/torch-s{sev}-{seed}.json"))
        out["fieldtune_engine"] = f["engine"]
        out["torch_version"] = t["torch"]
        for side, runs in (("fieldtune", f["runs"]), ("torch", t["runs"])):
            for r in runs:
                r["severity"] = int(sev)
                out[side].append(r)
methods = list(dict.fromkeys(r["method"] for r in out["fieldtune"]))
rows = []
print(f"\nmean error over 15 corruptions, %, mean of seeds {','.join(seeds)} (fieldtune {engine} | PyTorch | diff)")
print(f"{'method':10s}" + "".join(f" {'s' + sev + ' ' + st:>24s}" for sev in sevs for st in ("reset", "continual")))
for m in methods:
    line = f"{m:10s}"
    for sev in sevs:
        for st in ("reset", "continual"):
            pick = lambda side: [r["mean_error"] for r in out[side]
                                 if r["method"] == m and r["setting"] == st and r["severity"] == int(sev)]
            a, b = pick("fieldtune"), pick("torch")
            fa, fb = statistics.mean(a), statistics.mean(b)
            rows.append({"method": m, "severity": int(sev), "setting": st, "fieldtune": fa, "torch": fb,
                         "diff": fa - fb, "fieldtune_std": statistics.stdev(a) if len(a) > 1 else 0.0,
                         "torch_std": statistics.stdev(b) if len(b) > 1 else 0.0})
            line += f" {fa:7.2f} | {fb:6.2f} | {fa - fb:+5.2f}"
    print(line)
out["table"] = rows
worst = max(abs(r["diff"]) for r in rows)
print(f"largest |fieldtune - PyTorch|: {worst:.2f} points")
json.dump(out, open("scripts/bench/results/fmnist_c.json", "w"), indent=1)
print("wrote scripts/bench/results/fmnist_c.json")
EOF
