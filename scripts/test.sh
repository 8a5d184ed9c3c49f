#!/usr/bin/env bash
# The project's test command: installs the ONNX Runtime library into .ort/ if missing, then
# runs every test of the workspace (per-op gradient checks and PyTorch parity need Debian's
# python3-torch and python3-onnx: `apt-get install python3-torch python3-onnx python3-pil`).
# The hostile-input suite (runtime/cli/tests/hostile.rs) and the fuzz targets (tests/tests/fuzz.rs,
# a fixed number of cases each; FIELDTUNE_FUZZ_CASES for longer runs) are among them.
# Ends with one summary line over all test binaries: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-ort.sh >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# One build with the CLI's optional features on: GStreamer sources (needs the GStreamer dev
# packages, see .ci/run) and board LEDs on the GPIO character device. Selecting them for the
# whole workspace keeps every dependency's features the same in all tests (`-p` runs with other
# features would rebuild tract and ort) and matches the lint pass in .ci/run.
cargo test --workspace --no-fail-fast --features fieldtune/gstreamer,fieldtune/linux-gpio "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
