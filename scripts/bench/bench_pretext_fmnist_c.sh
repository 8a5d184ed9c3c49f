#!/usr/bin/env bash
# The pretext-task rows of the Fashion-MNIST-C benchmark (docs/BENCHMARKS.md section 8, issue 22):
# jigsaw, corruption and inpaint alone (TENT's selection and optimizer, entropy off), feature
# consistency with the anchors, and uda plus each of jigsaw, corruption, inpaint and feature
# consistency, beside source, bn, tent and uda; fieldtune and its PyTorch reference
# (scripts/reference/torch_tta.py, pretext heads included) on the very same batches, reset and
# continual. bench_fmnist_c.sh with the configs/tta-*.toml variants as METHOD:LABEL rows.
#
#   bash scripts/bench/bench_pretext_fmnist_c.sh [--seeds 0] [--severities 5] [--limit 512] [...]
#
# Other arguments go on to bench_fmnist_c.sh (later ones win). Writes
# scripts/bench/results/pretext_fmnist_c.json. FIELDTUNE_BIN picks the binary (default
# target/release/fieldtune).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec bash scripts/bench/bench_fmnist_c.sh --seeds 0 --severities 5 --limit 512 \
    --methods source,bn,tent,uda \
    --method-config tent:jigsaw=configs/tta-jigsaw.toml \
    --method-config tent:corruption=configs/tta-corruption.toml \
    --method-config tent:inpaint=configs/tta-inpaint.toml \
    --method-config uda:feature-consistency-anchors=configs/tta-feature-consistency.toml \
    --method-config uda:jigsaw=configs/tta-uda-jigsaw.toml \
    --method-config uda:corruption=configs/tta-uda-corruption.toml \
    --method-config uda:inpaint=configs/tta-uda-inpaint.toml \
    --method-config uda:feature-consistency=configs/tta-uda-feature-consistency.toml \
    --out scripts/bench/results/pretext_fmnist_c.json "$@"
