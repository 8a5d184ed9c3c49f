#!/usr/bin/env bash
# Folded BatchNorm against kept BatchNorm on Fashion-MNIST-C (docs/BENCHMARKS.md section 5, "A
# folded-BatchNorm export"): the same weights exported two ways, models/fmnist-cnn (PRESERVE:
# BatchNormalization kept) and models/fmnist-cnn-folded (a default torch.onnx.export: BatchNorm
# folded into the convolutions, so tent and uda train the per-channel affine that --train bn inserts
# after each Conv), under `fieldtune tta`, reset and continual.
#
#   bash scripts/bench/bench_folded.sh [--seeds 0,1,2] [--severities 3,5] [--engine ort|tract]
#                                      [--methods source,bn,tent,uda] [--limit 512]
#
# Needs: a fieldtune binary (FIELDTUNE_BIN, default target/release/fieldtune), data/fmnist-c
# (data/fmnist-c/DATA.md), models/fmnist-cnn and models/fmnist-cnn-folded (both committed). Both
# models use models/fmnist-cnn/anchors. Writes scripts/bench/results/folded.json and prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=0,1,2
severities=3,5
engine=ort
methods=source,bn,tent,uda
limit=512
bin=${FIELDTUNE_BIN:-target/release/fieldtune}
source scripts/bench/tta_args.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p scripts/bench/results
for model in fmnist-cnn fmnist-cnn-folded; do
    for sev in ${severities//,/ }; do
        echo "== $model, severity $sev"
        "$bin" --engine "$engine" --threads 1 tta --model "models/$model" --anchors models/fmnist-cnn/anchors \
            --data data/fmnist-c --severity "$sev" --limit "$limit" --methods "$methods" --seeds "$seeds" \
            --batch 64 --out "$work/$model-s$sev.json" > "$work/$model-s$sev.log"
    done
done
/usr/bin/python3 - "$work" "$severities" "$seeds" "$engine" <<'EOF'
import json, statistics, sys
work, sevs, seeds, engine = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
models = ["fmnist-cnn", "fmnist-cnn-folded"]
out = {"engine": engine, "seeds": seeds, "severities": sevs, "runs": {}, "table": []}
for m in models:
    for sev in sevs:
        f = json.load(open(f"{work}/{m}-s{sev}.json"))
        out["fieldtune_engine"] = f["engine"]
        out["runs"][f"{m}-s{sev}"] = f["runs"]
methods = list(dict.fromkeys(r["method"] for r in out["runs"][f"fmnist-cnn-s{sevs[0]}"]))
print(f"\nmean error over 15 corruptions, %, mean of seeds {seeds} (PRESERVE | folded)")
print(f"{'method':8s}" + "".join(f" {'s' + sev + ' ' + st:>20s}" for sev in sevs for st in ("reset", "continual")))
for meth in methods:
    line = f"{meth:8s}"
    for sev in sevs:
        for st in ("reset", "continual"):
            row = {"method": meth, "severity": int(sev), "setting": st}
            for m in models:
                errs = [r["mean_error"] for r in out["runs"][f"{m}-s{sev}"]
                        if r["method"] == meth and r["setting"] == st]
                row[m] = statistics.mean(errs)
            out["table"].append(row)
            line += f" {row['fmnist-cnn']:9.2f} | {row['fmnist-cnn-folded']:7.2f}"
    print(line)
json.dump(out, open("scripts/bench/results/folded.json", "w"), indent=1)
print("wrote scripts/bench/results/folded.json")
EOF
