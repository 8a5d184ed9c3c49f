#!/usr/bin/env bash
# Fleet adaptation on Flower, end to end on loopback (docs/FLEET.md):
#   installs flwr 1.42.0 into .flwr-venv (once), starts flower-superlink --insecure (in-memory
#   state), runs scripts/fleet/app (FedAvg, server-side evaluation on all of data/opencv-digits)
#   over 3 `fieldtune fleet` SuperNodes that each see a third of the digits; ends with
#   `fleet: rounds R, clients 3, accuracy BEFORE -> AFTER`.
# Options: --rounds R (3) --steps K per round (50) --checks (assert FedAvg == weighted mean)
#   --kill-one (kill client 3 in round 1 right after it trained; the others must finish) --alone (also adapt each
#   client alone on its slice for rounds*steps steps and print their mean accuracy)
#   --bin PATH (fieldtune binary; default: cargo build's target/debug/fieldtune)
#   --strategy fedavg|fedprox (fedavg) --mu MU (FedProx's proximal-mu, 0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=3 STEPS=50 CHECKS=false KILL=0 ALONE=0 BIN="" STRATEGY=fedavg MU=0.1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --checks) CHECKS=true ;;
    --kill-one) KILL=1 ;;
    --alone) ALONE=1 ;;
    --bin) BIN=$2; shift ;;
    --strategy) STRATEGY=$2; shift ;;
    --mu) MU=$2; shift ;;
    *) echo "fleet-demo: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ ! -x .flwr-venv/bin/flower-superlink ]; then
  python3 -m venv .flwr-venv && .flwr-venv/bin/pip install -q flwr==1.42.0
fi
if [ -z "$BIN" ]; then
  cargo build -q -p fieldtune
  BIN="${CARGO_TARGET_DIR:-target}/debug/fieldtune"
fi
BIN=$(realpath "$BIN")
# The SuperLink starts flower-superexec and flwr-serverapp from PATH.
export PATH="$ROOT/.flwr-venv/bin:$PATH"
WORK=$(mktemp -d /tmp/fleet-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# One port serves the Fleet API (clients), the Control API (flwr run) and the ServerApp's API.
PORT=${FLEET_PORT:-18400}
export FLWR_HOME=$WORK/flwr-home
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fleetdemo"
[superlink.fleetdemo]
address = "127.0.0.1:$PORT"
insecure = true
TOML
.flwr-venv/bin/flower-superlink --insecure --host 127.0.0.1 --port "$PORT" \
  --disable-runtime-dependency-installation >"$WORK/superlink.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 60); do
  grep -q "Flower Deployment Runtime: Starting Fleet API" "$WORK/superlink.log" 2>/dev/null && break
  grep -qi "uvicorn running\|Starting Control API" "$WORK/superlink.log" 2>/dev/null && sleep 1 && break
  sleep 0.5
done
client_cfg() { # $1 slice, $2 file
  cat > "$2" <<TOML
superlink = "127.0.0.1:$PORT"
insecure = true
key = "$WORK/node-$1.key"
heartbeat_s = 10.0
model = "$ROOT/models/mnist-cnn"
labeled = "$ROOT/models/mnist-cnn/anchors"
unlabeled = "$ROOT/data/opencv-digits"
slice = $1
slice_of = 3
recipe = "uda-im"
steps = $STEPS
seed = $1
send = "all"
idle_exit_s = 60.0
TOML
}
for s in 0 1 2; do
  client_cfg "$s" "$WORK/client-$s.toml"
  "$BIN" fleet --config "$WORK/client-$s.toml" >"$WORK/client-$s.log" 2>&1 &
  PIDS+=($!)
  CLIENT_PID[$s]=$!
done
if [ "$KILL" = 1 ]; then
  ( while ! grep -q "train round 1" "$WORK/client-2.log" 2>/dev/null; do sleep 0.5; done
    sleep 1; kill -9 "${CLIENT_PID[2]}" && echo "fleet-demo: killed client 3 (pid ${CLIENT_PID[2]}) in round 1, after its training" ) &
  PIDS+=($!)
fi
MIN=3 TIMEOUT=300.0
# With a client killed, a round that sent it work ends at the round timeout with the replies it
# has; a short one keeps the run bounded (the SuperLink drops the dead node after its heartbeats).
[ "$KILL" = 1 ] && MIN=2 TIMEOUT=45.0
.flwr-venv/bin/flwr run scripts/fleet/app fleetdemo --stream --run-config \
  "num-server-rounds=$ROUNDS min-nodes=$MIN fieldtune='$BIN' fleet-config='$WORK/client-0.toml' eval-data='$ROOT/data/opencv-digits' checks=$CHECKS round-timeout=$TIMEOUT strategy='$STRATEGY' proximal-mu=$MU" \
  2>&1 | tee "$WORK/run.log" | grep --line-buffered -E "^(round|fleet)|failed|Error|error" || true
grep -q "^fleet: rounds" "$WORK/run.log" || { echo "fleet-demo: the run did not finish; logs in $WORK" >&2; tail -20 "$WORK/superlink.log" >&2; exit 1; }
if [ "$CHECKS" = true ] && ! grep -q "^fleet: FedAvg == weighted mean" "$WORK/run.log"; then
  echo "fleet-demo: FedAvg differs from the weighted mean of the clients' arrays; logs in $WORK" >&2
  exit 1
fi
if [ "$ALONE" = 1 ]; then
  total=0
  for s in 0 1 2; do
    mkdir -p "$WORK/alone-$s/frames"
    python3 - "$ROOT/data/opencv-digits" "$WORK/alone-$s/frames" "$s" <<'PY'
import os, sys
src, dst, s = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(os.path.join(c, f) for c in sorted(os.listdir(src)) if os.path.isdir(os.path.join(src, c)) for f in sorted(os.listdir(os.path.join(src, c))))
for i, f in enumerate(files):
    if i % 3 == s:
        os.symlink(os.path.join(src, f), os.path.join(dst, f.replace("/", "_")))
PY
    "$BIN" adapt --model models/mnist-cnn --labeled models/mnist-cnn/anchors --unlabeled "$WORK/alone-$s/frames" \
      --out "$WORK/alone-$s/out" --steps $((ROUNDS * STEPS)) --seed "$s" >/dev/null 2>&1
    acc=$("$BIN" eval --model "$WORK/alone-$s/out" --data data/opencv-digits | sed -n 's/^accuracy: //p')
    echo "alone: client $((s + 1)) accuracy $acc"
    total=$(python3 -c "print($total + $acc)")
  done
  echo "alone: mean of 3 clients adapting alone $(python3 -c "print(f'{$total / 3:.4f}')")"
fi
