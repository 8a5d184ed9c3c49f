#!/usr/bin/env bash
# Fashion-MNIST-C test-time adaptation benchmark (docs/BENCHMARKS.md section 5): fieldtune
# (`fieldtune tta`, ONNX Runtime by default) and its PyTorch reference (scripts/reference/torch_tta.py)
# on the very same batches, every method, severities 3 and 5, reset and continual, 3 seeds.
#
#   bash scripts/bench/bench_fmnist_c.sh [--seeds 0,1,2] [--severities 3,5] [--engine ort|tract]
#                                  [--methods source,bn,tent,uda,fixmatch,teacher] [--limit 512]
#                                  [--method-config METHOD[:LABEL]=FILE]... [--out FILE]
#
# Needs: target/release/fieldtune (cargo build --release; or FIELDTUNE_BIN), models/fmnist-cnn
# (scripts/data/prepare_fmnist.py), data/fmnist-c (scripts/data/corrupt_fmnist.py, see its DATA.md),
# Debian's python3-torch for the reference. Writes scripts/bench/results/fmnist_c.json (or --out;
# both sides, per run and per domain) and prints the table. --method-config passes through to
# `fieldtune tta` (repeatable); a METHOD:LABEL=FILE variant adds a row METHOD:LABEL, which the
# reference replays from its own dump folder and the table pairs by that name. The dumped batches (~170 MB per method and
# seed) live in a temporary folder, deleted once the reference has read them. --limit: images per
# domain, evenly spread over the 1,024 of data/fmnist-c (512: 8 batches of 64 per domain).
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=0,1,2
severities=3,5
engine=ort
methods=source,bn,tent,uda,fixmatch,teacher
limit=512
out=scripts/bench/results/fmnist_c.json
bin=${FIELDTUNE_BIN:-target/release/fieldtune}
source scripts/bench/tta_args.sh
# The rows: the methods, then the labelled --method-config variants (METHOD:LABEL).
rows=$methods
mc_args=()
for mc in "${method_configs[@]}"; do
    mc_args+=(--method-config "$mc")
    name=${mc%%=*}
    [[ $name != *:* ]] || rows+=",$name"
done
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
            "${mc_args[@]}" --dump-batches "$work/b-s$sev-$seed" --out "$work/fieldtune-s$sev-$seed.json" \
            | sed -n '/^mean error/,/^$/p'
        [ -z "$ref_pid" ] || wait "$ref_pid"
        ( /usr/bin/python3 scripts/reference/torch_tta.py --batches "$work/b-s$sev-$seed" --methods "$rows" \
            --seeds "$seed" --threads 1 --out "$work/torch-s$sev-$seed.json" > "$work/torch-s$sev-$seed.log" \
            && rm -rf "$work/b-s$sev-$seed" ) &
        ref_pid=$!
    done
done
wait "$ref_pid"
/usr/bin/python3 - "$work" "$severities" "$seeds" "$engine" "$out" <<'EOF'
import glob, json, os, statistics, sys
work, sevs, seeds, engine, dest = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4], sys.argv[5]
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
                r.setdefault("name", r["method"])
                out[side].append(r)
methods = list(dict.fromkeys(r["name"] for r in out["fieldtune"]))
width = max(10, *(len(m) for m in methods))
rows = []
print(f"\nmean error over 15 corruptions, %, mean of seeds {','.join(seeds)} (fieldtune {engine} | PyTorch | diff)")
print(f"{'method':{width}s}" + "".join(f" {'s' + sev + ' ' + st:>24s}" for sev in sevs for st in ("reset", "continual")))
for m in methods:
    line = f"{m:{width}s}"
    for sev in sevs:
        for st in ("reset", "continual"):
            pick = lambda side: [r["mean_error"] for r in out[side]
                                 if r["name"] == m and r["setting"] == st and r["severity"] == int(sev)]
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
json.dump(out, open(dest, "w"), indent=1)
print(f"wrote {dest}")
EOF
