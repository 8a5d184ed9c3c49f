#!/usr/bin/env bash
# CI for boards/: the no_std core builds for a Cortex-M4F target (thumbv7em-none-eabihf) with no
# default features, with defmt, and with its default `log` feature; its sources import no std
# and no alloc; then lints and tests of the three board crates, feature combinations included.
# The gpio-sim test prints whether it ran (and why not) in the log. The CLI with `linux-gpio`
# (its board_leds tests) is linted by .ci/run and tested by scripts/test.sh, in the workspace's
# one feature set, so that it does not cost a second build of the whole runtime here.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never

target=thumbv7em-none-eabihf
core=fieldtune-board-core

echo "== $target toolchain"
rustup target add "$target"

echo "== $core for $target: no default features / defmt / default (log)"
cargo build -q -p "$core" --target "$target" --no-default-features
cargo build -q -p "$core" --target "$target" --no-default-features --features defmt
cargo build -q -p "$core" --target "$target"
cargo clippy -q -p "$core" --target "$target" --no-default-features --features defmt -- -D warnings

echo "== $core sources import no std and no alloc"
if grep -rnE '(^|[^_[:alnum:]])(std|alloc)::|extern[[:space:]]+crate[[:space:]]+(std|alloc)' boards/core/src; then
  echo "boards/core/src must not use std or alloc (lines above)" >&2
  exit 1
fi
grep -q '^#!\[no_std\]' boards/core/src/lib.rs || { echo "boards/core/src/lib.rs lacks #![no_std]" >&2; exit 1; }

echo "== lints"
cargo clippy -q -p "$core" --all-targets -- -D warnings
cargo clippy -q -p "$core" --all-targets --no-default-features --features defmt -- -D warnings
cargo clippy -q -p fieldtune-board-linux --all-targets -- -D warnings
cargo clippy -q -p fieldtune-board-linux --all-targets --features linux-gpio -- -D warnings
cargo clippy -q -p fieldtune-board-profile --all-targets -- -D warnings

echo "== tests"
cargo test -q -p "$core"
cargo test -q -p "$core" --no-default-features
cargo test -q -p "$core" --no-default-features --features defmt
cargo test -q -p fieldtune-board-profile
cargo test -q -p fieldtune-board-linux
cargo test -q -p fieldtune-board-linux --features linux-gpio
echo "== gpio-sim (runs where the kernel has gpio-sim and configfs and we are root)"
cargo test -q -p fieldtune-board-linux --features linux-gpio --test gpio_sim -- --nocapture
