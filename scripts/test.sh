#!/usr/bin/env bash
# The project's test command: installs the ONNX Runtime library into .ort/ if missing, then
# runs every test of the workspace (per-op gradient checks and PyTorch parity need Debian's
# python3-torch and python3-onnx: `apt-get install python3-torch python3-onnx python3-pil`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-ort.sh >/dev/null
cargo test --workspace "$@"
