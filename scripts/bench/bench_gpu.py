#!/usr/bin/env python3
"""GPU figures in one run, for a CUDA machine (data-centre GPU or Jetson), in under 5 minutes:
fieldtune's UDA train step on ONNX Runtime's CUDA execution provider (parameters and
optimizer state resident in GPU memory), the model's inference on the CUDA and TensorRT
providers (TensorRT engine cache on: the first run builds engines, the second loads them), and
PyTorch CUDA on the same model and recipe in the same run. For every fieldtune graph it reports
which execution provider actually ran its nodes (from ONNX Runtime's per-node profile), since
ONNX Runtime places nodes a provider cannot run on the next one silently.

    scripts/install-ort.sh --gpu --prefix .ort-gpu     # or a Jetson wheel's onnxruntime/capi
    cargo build --release
    python3 scripts/data/prepare_backbones.py --only mobilenetv2
    python3 scripts/bench/bench_gpu.py [--ort-lib .ort-gpu/lib] [--models mobilenetv2,mnist]
        [--steps 20] [--trt-cache .cache/trt] [--out scripts/bench/results/bench_gpu.json]

Needs: an NVIDIA GPU with its driver, ONNX Runtime with the CUDA (and TensorRT) providers
(PyPI onnxruntime-gpu 1.31 needs CUDA 13 + cuDNN 9, TensorRT 10), and for the PyTorch column a
CUDA build of torch (Debian's python3-torch is CPU-only: the column then says so).
Batches and recipe as scripts/bench/bench_speed.py (MNIST CNN 32/64/64, MobileNetV2 8/8/8 with
BatchNorm in train mode, textbook UDA loss, AdamW). Prints a table and writes JSON.
"""
import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench_speed  # noqa: E402  (same models, recipe and PyTorch worker)


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    # Jetson: no nvidia-smi; the device tree names the module.
    try:
        with open("/proc/device-tree/model") as f:
            return f.read().strip("\x00\n ")
    except OSError:
        return None


def placement(prefix):
    """Node runs and kernel time per execution provider, per graph, from ORT profiles."""
    graphs = {}
    for path in sorted(glob.glob(prefix + "*.json")):
        label = os.path.basename(path)[len(os.path.basename(prefix)) + 1:].split("_20")[0]
        with open(path) as f:
            events = json.load(f)
        runs, dur = collections.Counter(), collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                p = e.get("args", {}).get("provider", "?")
                runs[p] += 1
                dur[p] += e.get("dur", 0)
        total = sum(dur.values()) or 1
        graphs[label] = {p: {"node_runs": runs[p], "time_share": dur[p] / total} for p in runs}
    return graphs


def describe(graphs):
    parts = []
    for label, provs in graphs.items():
        shares = ", ".join(f"{p.replace('ExecutionProvider', '')} {100 * v['time_share']:.0f}%"
                           for p, v in sorted(provs.items(), key=lambda kv: -kv[1]["time_share"]))
        parts.append(f"{label}: {shares}")
    return "; ".join(parts) or "no profile written"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mobilenetv2,mnist")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/fieldtune"))
    ap.add_argument("--ort-lib", help="ONNX Runtime GPU library or its folder (default: discovery)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--trt-cache", default=os.path.join(ROOT, ".cache/trt"))
    ap.add_argument("--timeout", type=int, default=150, help="seconds per fieldtune process")
    ap.add_argument("--out", default=os.path.join(ROOT, "scripts/bench/results/bench_gpu.json"))
    a = ap.parse_args()
    t_start = time.time()
    gpu = gpu_name()
    if gpu is None:
        raise SystemExit("no NVIDIA GPU found (nvidia-smi and /proc/device-tree/model both missing)")
    print(f"GPU: {gpu}", flush=True)
    os.makedirs(a.trt_cache, exist_ok=True)
    common = ["--ort-lib", a.ort_lib] if a.ort_lib else []
    cuda = common + ["--ep", f"cuda:{a.device}"]
    trt = common + ["--ep", f"tensorrt:{a.device},cuda:{a.device}", "--trt-cache", a.trt_cache]
    results = {}
    with tempfile.TemporaryDirectory(prefix="fieldtune-gpu-") as tmp:
        for name in a.models.split(","):
            steps = a.steps
            runs = {}

            def ft(label, extra, profile=False, steps=steps, latency=a.latency_runs):
                env = dict(os.environ)
                prefix = os.path.join(tmp, f"{name}-{label}")
                if profile:
                    env["FIELDTUNE_ORT_PROFILE"] = prefix
                t = time.time()
                r = bench_speed.fieldtune(a.bin, "ort", name, steps, latency, extra=extra, env=env,
                                          timeout=a.timeout)
                r["wall_s"] = time.time() - t
                if profile:
                    r["placement"] = placement(prefix)
                print(f"{name} {label}: {r['wall_s']:.0f} s", flush=True)
                return r

            # Timed runs without profiling; short profiled runs for the node placement.
            runs["ort-cuda"] = ft("cuda", cuda)
            runs["ort-cuda"]["placement"] = ft("cuda-profile", cuda, True, 2, 3)["placement"]
            runs["ort-trt-build"] = ft("tensorrt-build", trt + ["--skip-train"])
            runs["ort-trt"] = ft("tensorrt", trt + ["--skip-train"])
            runs["ort-trt"]["placement"] = ft("tensorrt-profile", trt + ["--skip-train"], True, 2,
                                              3)["placement"]
            t = time.time()
            out = subprocess.run([sys.executable, bench_speed.__file__, "--torch-worker", name,
                                  "--steps", str(steps), "--latency-runs", str(a.latency_runs),
                                  "--device", f"cuda:{a.device}"],
                                 capture_output=True, text=True, timeout=a.timeout)
            if out.returncode == 0:
                runs["torch-cuda"] = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                runs["torch-cuda"] = {"error": out.stderr.strip().splitlines()[-1:]}
            print(f"{name} torch-cuda: {time.time() - t:.0f} s", flush=True)
            results[name] = runs

    print()
    print(f"GPU: {gpu}")
    print(f"{'model':12s} {'run':14s} | {'train img/s':>11s} {'x torch':>7s} | {'b1 ms':>6s} "
          f"{'p99':>6s} | {'infer img/s':>11s} {'x torch':>7s} | {'load s':>6s} | providers")
    for name, runs in results.items():
        t = runs["torch-cuda"]
        ok = "error" not in t
        for label in ("ort-cuda", "ort-trt-build", "ort-trt", "torch-cuda"):
            r = runs[label]
            if "error" in r:
                print(f"{name:12s} {label:14s} | PyTorch CUDA unavailable: {r['error']}")
                continue
            train = r["train_images_per_s"]
            tr = f"{train:11.1f} {train / t['train_images_per_s']:7.2f}" if ok and train else f"{'-':>11s} {'':7s}"
            inf = r["infer_images_per_s"]
            ir = f"{inf:11.0f} {inf / t['infer_images_per_s']:7.2f}" if ok else f"{inf:11.0f} {'':7s}"
            load = r.get("infer_load_ms", 0) / 1e3
            print(f"{name:12s} {label:14s} | {tr} | {r['infer_b1_ms_median']:6.2f} {r['infer_b1_ms_p99']:6.2f} | "
                  f"{ir} | {load:6.1f} | {describe(r.get('placement', {})) if label != 'torch-cuda' else 'PyTorch CUDA'}")
    elapsed = time.time() - t_start
    print(f"total {elapsed:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"script": "scripts/bench/bench_gpu.py", "gpu": gpu, "elapsed_s": elapsed, "results": results},
                  f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
