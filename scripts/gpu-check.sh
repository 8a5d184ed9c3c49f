#!/usr/bin/env bash
# The GPU check of issue 16, for one run on a CUDA machine, at most 8 minutes (GPU_CHECK_BUDGET_S,
# default 480; each step gets what is left). NOT RUN YET: written on a CPU-only machine, checked
# there with `bash -n` only.
#
#   scripts/gpu-check.sh            # from the repository root or anywhere
#
# Steps, each recorded in scripts/results/gpu-check.json (a step that fails or runs out of time
# is recorded as such; the later ones still run while time is left):
#   1. ONNX Runtime with CUDA/TensorRT: $ORT_GPU_LIB if set, else .ort-gpu/lib if installed, else
#      scripts/install-ort.sh --gpu --prefix .ort-gpu (pip download: needs the network, and the
#      CUDA 13 / cuDNN 9 / TensorRT 10 libraries on the loader path: the wheel does not ship them).
#      `fieldtune doctor` must list CUDAExecutionProvider.
#   2. fieldtune run of configs/field-gpu.toml (train ort:cuda, inference ort:tensorrt,cuda with
#      weight-stripped engines refitted per commit, fallback tract): summary, engine events, and
#      the trt_engine events' build vs refit times.
#   3. The engine fallback on CUDA: inference ort:cuda, fallback tract, the primary failing on
#      frames 300-600 ([fault] inference_errors): every frame answered once, engine_fallback and
#      engine_restored present.
#   4. scripts/bench/bench_gpu.py for mnist and mobilenetv2: fieldtune bench on CUDA and TensorRT
#      beside PyTorch CUDA (when a CUDA torch is installed), and the share of each graph's nodes
#      each provider ran (ONNX Runtime profiles). MobileNetV2 needs models/mobilenetv2/model.onnx
#      (scripts/data/prepare_backbones.py --only mobilenetv2); without it only mnist runs.
#
# Environment: GPU_CHECK_BUDGET_S, ORT_GPU_LIB, FIELDTUNE_BIN (default target/release/fieldtune,
# built with cargo if missing). Exits 2 at once when there is no NVIDIA GPU (nvidia-smi missing or
# failing), 1 when a step failed, 0 when every step passed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
budget="${GPU_CHECK_BUDGET_S:-480}"
t0=${SECONDS}
left() { echo $((budget - (SECONDS - t0))); }
log() { echo "[gpu-check $((SECONDS - t0))s] $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi not found); nothing was run" >&2
    exit 2
fi
if ! gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)" \
    || [[ -z "${gpu}" ]] || [[ "${gpu}" == *"failed"* ]]; then
    echo "gpu-check: nvidia-smi finds no usable GPU (${gpu:-no output}); nothing was run" >&2
    exit 2
fi
log "GPU: ${gpu}"

work="$(mktemp -d /tmp/fieldtune-gpu-check.XXXXXX)"
steps="${work}/steps.jsonl"
: >"${steps}"
failed=0
# step NAME STATUS SECONDS [LOGFILE]: one line of the JSON's "steps".
step() {
    python3 - "$@" >>"${steps}" <<'PY'
import json, sys
name, status, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
tail = []
if len(sys.argv) > 4:
    try:
        with open(sys.argv[4], errors="replace") as f:
            tail = f.read().splitlines()[-15:]
    except OSError:
        pass
print(json.dumps({"step": name, "status": status, "seconds": secs, "log_tail": tail}))
PY
    [[ "$2" == "ok" ]] || failed=1
}
# run_step NAME SECONDS_CAP CMD...: runs CMD under the time left (at most SECONDS_CAP).
run_step() {
    local name="$1" cap="$2"
    shift 2
    local t=$(($(left) < cap ? $(left) : cap))
    if ((t < 10)); then
        log "${name}: skipped (time budget spent)"
        step "${name}" "skipped: budget" 0
        return 1
    fi
    local s=${SECONDS} rc=0
    log "${name} (up to ${t} s)"
    timeout --kill-after=10 "${t}" "$@" >"${work}/${name}.log" 2>&1 || rc=$?
    if ((rc == 0)); then
        step "${name}" ok $((SECONDS - s)) "${work}/${name}.log"
    elif ((rc == 124 || rc == 137)); then
        step "${name}" "timed out after ${t} s" $((SECONDS - s)) "${work}/${name}.log"
    else
        step "${name}" "failed (exit ${rc})" $((SECONDS - s)) "${work}/${name}.log"
    fi
    tail -n 5 "${work}/${name}.log" | sed 's/^/    /'
    return "${rc}"
}

# 1. ONNX Runtime with the GPU providers, and the binary.
lib="${ORT_GPU_LIB:-}"
if [[ -z "${lib}" ]]; then
    run_step install-ort 150 scripts/install-ort.sh --gpu --prefix .ort-gpu || true
    for f in "${root}"/.ort-gpu/lib/libonnxruntime.so.*; do
        [[ -e "${f}" ]] && lib="${f}"
    done
fi
if [[ -z "${lib}" ]] || [[ ! -e "${lib}" ]]; then
    echo "gpu-check: no ONNX Runtime GPU library (set ORT_GPU_LIB, or let scripts/install-ort.sh --gpu download one)" >&2
    step ort-library "failed: none found" 0
    failed=1
fi
export ORT_DYLIB_PATH="${lib}"
bin="${FIELDTUNE_BIN:-${root}/target/release/fieldtune}"
if [[ ! -x "${bin}" ]]; then
    run_step build 300 cargo build --release -p fieldtune || true
fi
if [[ -n "${lib}" ]] && [[ -x "${bin}" ]] && run_step doctor 30 "${bin}" doctor; then
    if ! grep -q CUDAExecutionProvider "${work}/doctor.log"; then
        log "doctor: the library has no CUDA provider (missing CUDA 13 / cuDNN 9 libraries?)"
        step doctor-cuda "failed: no CUDAExecutionProvider" 0 "${work}/doctor.log"
    fi
fi

# 2. The Jetson shape: train on CUDA, serve on TensorRT (refit per commit), tract behind.
gpu_state="${root}/out/field-gpu"
rm -rf "${gpu_state}"
if [[ -x "${bin}" ]]; then
    run_step run-gpu 150 "${bin}" run --config configs/field-gpu.toml --output none --duration 100 || true
fi

# 3. The serving fallback with a CUDA primary.
fb="${work}/fallback"
mkdir -p "${fb}"
cat >"${fb}/run.toml" <<EOF
model = "${root}/models/mnist-cnn"
state_dir = "${fb}/state"
[source]
paths = ["${root}/data/mnist"]
fps = 0.0
limit = 1500
preload = true
[pipeline]
when_full = "block"
output_queue = 8192
[output]
path = "${fb}/predictions.jsonl"
[trigger]
drift = false
manual_signal = false
[engine]
inference = "ort:cuda"
fallback = "tract"
retry_s = 0.2
gpu_memory_mb = 1024
[fault]
inference_errors = [[300, 600]]
EOF
if [[ -x "${bin}" ]]; then
    run_step fallback-cuda 90 "${bin}" run --config "${fb}/run.toml" || true
fi

# 4. Benchmarks beside PyTorch CUDA, and the provider placement of each graph.
models="mnist"
if [[ -f models/mobilenetv2/model.onnx ]] \
    || run_step prepare-mobilenetv2 60 python3 scripts/data/prepare_backbones.py --only mobilenetv2; then
    models="mnist,mobilenetv2"
fi
if [[ -x "${bin}" ]]; then
    run_step bench-gpu 400 python3 scripts/bench/bench_gpu.py --models "${models}" --bin "${bin}" \
        --ort-lib "${lib}" --steps 10 --latency-runs 30 --timeout 60 \
        --trt-cache "${work}/bench-trt" --out "${work}/bench_gpu.json" || true
fi

# The record.
mkdir -p scripts/results
python3 - "${steps}" "${gpu}" "${lib}" "${gpu_state}" "${fb}" "${work}/bench_gpu.json" \
    "$((SECONDS - t0))" "${budget}" >scripts/results/gpu-check.json <<'PY'
import json, os, sys
steps_f, gpu, lib, gpu_state, fb, bench_f, elapsed, budget = sys.argv[1:9]

def lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return []

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def run_record(state):
    ev = lines(os.path.join(state, "events.jsonl"))
    trt = [e for e in ev if e.get("event") == "trt_engine"]
    by_path = {}
    for e in trt:
        by_path.setdefault(e.get("path"), []).append(e.get("ms"))
    return {
        "summary": load(os.path.join(state, "summary.json")),
        "engine_events": [e for e in ev if e.get("event", "").startswith("engine_")],
        "trt_engine_events": trt,
        "trt_ms_by_path": {k: {"n": len(v), "max": max(v), "min": min(v)} for k, v in by_path.items()},
        "commits": sum(1 for e in ev if e.get("event") == "committed"),
    }

fallback = run_record(os.path.join(fb, "state"))
preds = lines(os.path.join(fb, "predictions.jsonl"))
ids = [p.get("frame") for p in preds]
fallback["frames_out"] = len(ids)
fallback["answered_once"] = len(ids) == len(set(ids)) == 1500
kinds = {e.get("event") for e in fallback["engine_events"]}
fallback["fallback_and_restore"] = {"engine_fallback", "engine_restored"} <= kinds

steps = lines(steps_f)
record = {
    "script": "scripts/gpu-check.sh",
    "gpu": gpu,
    "ort_library": lib,
    "elapsed_s": int(elapsed),
    "budget_s": int(budget),
    "steps": steps,
    "run_gpu": run_record(gpu_state),
    "fallback_cuda": fallback,
    "bench_gpu": load(bench_f),
    "passed": all(s["status"] == "ok" for s in steps)
              and fallback["answered_once"] and fallback["fallback_and_restore"],
}
json.dump(record, sys.stdout, indent=1)
sys.stdout.write("\n")
PY
log "wrote scripts/results/gpu-check.json (work files in ${work})"
passed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["passed"])' scripts/results/gpu-check.json)"
if [[ "${passed}" != "True" ]] || ((failed)); then
    log "some steps failed: see scripts/results/gpu-check.json"
    exit 1
fi
log "all steps passed"
