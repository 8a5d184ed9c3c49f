#!/usr/bin/env bash
# Field recovery benchmark (docs/BENCHMARKS.md "Field recovery"): `fieldtune run` on streams that
# shift domain, live accuracy after each shift beside offline `fieldtune adapt` on the same frames.
#
#   bash scripts/bench/bench_field_recovery.sh [--streams digits,fmnist] [--seeds 0,1,2]
#                                              [--engines ort,tract] [--fps 100] [--no-offline] [--quick]
#
# Needs target/release/fieldtune (cargo build --release); the fmnist stream needs data/fmnist-c
# (data/fmnist-c/DATA.md). --quick is the CI subset (about a minute). Writes
# scripts/bench/results/field_recovery.json and prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install-ort.sh >/dev/null
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/lib/libonnxruntime.so}
exec /usr/bin/python3 scripts/bench/bench_field_recovery.py "$@"
