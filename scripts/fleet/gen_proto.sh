#!/usr/bin/env bash
# Regenerates the vendored Fleet API schema of the pinned flwr and its Rust messages:
#   runtime/fleet/proto/flwr-1.42.0.fds   (from the wheel's serialized descriptors; no protoc here)
#   runtime/fleet/proto/flwr.proto.rs     (prost-build 0.14 from the .fds)
# Needs the pinned flwr in .flwr-venv (python3 -m venv .flwr-venv && .flwr-venv/bin/pip install flwr==1.42.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
.flwr-venv/bin/python scripts/fleet/gen_fds.py runtime/fleet/proto/flwr-1.42.0.fds
cargo run -q --manifest-path scripts/fleet/gen-proto/Cargo.toml --target-dir "${GEN_PROTO_TARGET:-target/gen-proto}" -- \
  runtime/fleet/proto/flwr-1.42.0.fds runtime/fleet/proto
