#!/usr/bin/python3
"""The shipped Fashion-MNIST CNN exported the default way: BatchNorm folded into the convolutions.

    /usr/bin/python3 scripts/data/export_folded.py

Rebuilds the module of scripts/data/prepare_fmnist.py, loads the weights and running statistics of
models/fmnist-cnn/model.onnx (the PRESERVE export, BatchNormalization kept), and exports it with a
plain `torch.onnx.export(net.eval(), x, path, opset_version=17, ...)`: the defaults
(`training=TrainingMode.EVAL`, `do_constant_folding=True`) fold each BatchNorm into the Conv before it,
which is what a user's first export gives. Writes models/fmnist-cnn-folded/ (model.onnx, model.toml,
MODEL.md with provenance and a check that both exports give the same logits). This is the test model
of `--train bn` / `--train affine` on a folded-BatchNorm export (runtime/graph/src/affine.rs).
"""
import hashlib
import os
import shutil
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, HERE)
sys.path.insert(0, SCRIPTS)
from prepare_fmnist import Net  # noqa: E402
from reference.onnx_torch import OnnxModule  # noqa: E402

SRC = os.path.join(ROOT, "models", "fmnist-cnn")
OUT = os.path.join(ROOT, "models", "fmnist-cnn-folded")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    torch.manual_seed(0)
    src = os.path.join(SRC, "model.onnx")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(src).graph.initializer}
    net = Net()
    state = net.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith("num_batches_tracked")]
    assert not missing, f"{src} lacks {missing}"
    net.load_state_dict({k: weights.get(k, v) for k, v in state.items()})
    net.eval()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "model.onnx")
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # The defaults: eval-mode export with constant folding, which folds BatchNorm away.
    torch.onnx.export(net, x, path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    folded = onnx.load(path)
    ops = sorted({n.op_type for n in folded.graph.node})
    assert "BatchNormalization" not in ops, f"the export kept BatchNormalization: {ops}"
    with torch.no_grad():
        want = net(x)
        got = OnnxModule(path)(x, {})
        preserve = OnnxModule(src)(x, {})
    err = float((got - want).abs().max() / want.abs().max())
    err_p = float((got - preserve).abs().max() / preserve.abs().max())
    assert err < 1e-4 and err_p < 1e-4, f"folded export differs: {err:.2e} (module), {err_p:.2e} (PRESERVE)"
    shutil.copy(os.path.join(SRC, "model.toml"), os.path.join(OUT, "model.toml"))
    inits = [(t.name, list(t.dims)) for t in folded.graph.initializer]
    n_params = sum(int(np.prod(d)) for _, d in inits)
    with open(os.path.join(OUT, "MODEL.md"), "w") as f:
        f.write(f"""# fmnist-cnn-folded: models/fmnist-cnn exported with BatchNorm folded

- What: the weights of models/fmnist-cnn (its MODEL.md: data, training, license) exported the way
  a default `torch.onnx.export` does it (eval mode, constant folding on): each BatchNorm is folded
  into the Conv before it, so the graph has no BatchNormalization and no running statistics.
- Made by: `/usr/bin/python3 scripts/data/export_folded.py` (python3-torch {torch.__version__}, onnx
  {onnx.__version__}, opset 17, dynamic batch). The script checks that the graph run with torch ops
  (scripts/reference/onnx_torch.py) matches the module (relative error {err:.1e}) and the PRESERVE
  export (relative error {err_p:.1e}) on 8 random inputs.
- ONNX ops: {", ".join(ops)}. Initializers ({n_params:,} values):
  {", ".join(f"`{n}` {d}" for n, d in inits)}.
- model.toml: as models/fmnist-cnn's (same input, normalisation and classes).
- sha256 of model.onnx: `{sha256(path)}`.
- Used for: `--train bn` / `--train affine` on a folded-BatchNorm export (a per-channel scale and
  shift after each Conv, folded back on write-out; README "Your own model"), its tests
  (runtime/graph/tests/affine.rs, tests/tests/affine_parity.rs, runtime/cli/tests) and
  scripts/bench/bench_folded.sh (docs/BENCHMARKS.md section 5).
""")
    print(f"wrote {OUT}: ops {ops}; relative error {err:.1e} (module), {err_p:.1e} (PRESERVE)")


if __name__ == "__main__":
    main()
