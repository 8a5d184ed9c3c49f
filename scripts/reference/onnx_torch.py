"""Runs an ONNX inference graph with PyTorch ops, so PyTorch autograd can differentiate it.

An independent reference for fieldtune's train-step compiler: the forward ops here are
torch's own (F.conv2d, F.max_pool2d, ...) and the gradients come from torch autograd, not
from fieldtune's vector-Jacobian rules. Covers the ops of the shipped models, the
exporter's shape chains and a vision transformer (LayerNormalization, exact GELU, attention).
"""
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxModule:
    """`bn_mode`: "eval" (running statistics; the model as exported), "train" (batch
    statistics, PyTorch's training mode; running statistics in `self.buffers` are updated
    when the call passes `update_stats=True`)."""

    def __init__(self, path, params=None, bn_mode="eval"):
        m = onnx.load(path)
        self.bn_mode = bn_mode
        self.update_stats = False
        self.buffers = {}
        self.graph = m.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        self.input = [i.name for i in m.graph.input if i.name not in self.inits][0]
        self.output = m.graph.output[0].name

    def float_initializers(self):
        return {k: v for k, v in self.inits.items() if v.dtype == np.float32 and v.ndim > 0}

    def __call__(self, x, params, update_stats=False, output=None):
        """The model's output on `x`, or the tensor named `output` (an intermediate one), or
        the list of the tensors `output` names when it is a list or tuple (one pass)."""
        self.update_stats = update_stats
        env = {}
        for k, v in self.inits.items():
            if k in params:
                env[k] = params[k]
            elif k in self.buffers:
                env[k] = self.buffers[k]
            else:
                env[k] = torch.from_numpy(np.array(v))
        env[self.input] = x
        for n in self.graph.node:
            ins = [env[i] if i else None for i in n.input]
            outs = self._run(n, ins, _attrs(n))
            # A trained per-channel affine after this convolution (folded-BatchNorm models).
            if n.op_type == "Conv" and n.input[1] + ".affine_scale" in params:
                outs = [outs[0] * params[n.input[1] + ".affine_scale"] + params[n.input[1] + ".affine_shift"]]
            for name, v in zip(n.output, outs):
                env[name] = v
        if isinstance(output, (list, tuple)):
            return [env[o] for o in output]
        return env[output or self.output]

    def _run(self, n, x, a):
        op = n.op_type
        if op == "Conv":
            k = x[1].shape[2:]
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[0] == pads[2] and pads[1] == pads[3], "asymmetric pads"
            return [F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=a.get("strides", [1, 1]),
                             padding=(pads[0], pads[1]), dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))]
        if op == "Relu":
            return [F.relu(x[0])]
        if op == "BatchNormalization":
            eps, mom = a.get("epsilon", 1e-5), a.get("momentum", 0.9)
            if self.bn_mode == "train":
                rm, rv = n.input[3], n.input[4]
                if self.update_stats:
                    # F.batch_norm updates these in place (torch's momentum = 1 - ONNX's).
                    for k in (rm, rv):
                        self.buffers.setdefault(k, torch.from_numpy(np.array(self.inits[k])))
                    return [F.batch_norm(x[0], self.buffers[rm], self.buffers[rv], x[1], x[2], True, 1 - mom, eps)]
                return [F.batch_norm(x[0], None, None, x[1], x[2], True, 0.0, eps)]
            return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, eps)]
        if op == "Clip":
            lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
            hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
            if torch.is_tensor(lo) and torch.is_tensor(hi) and lo.item() == 0.0 and hi.item() == 6.0:
                return [F.relu6(x[0])]
            return [torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))]
        if op == "GlobalAveragePool":
            return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]
        if op == "AveragePool":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[0] == pads[2] and pads[1] == pads[3], "asymmetric pads"
            return [F.avg_pool2d(x[0], a["kernel_shape"], stride=a.get("strides", [1, 1]), padding=(pads[0], pads[1]),
                                 count_include_pad=bool(a.get("count_include_pad", 0)))]
        if op == "HardSigmoid":
            return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0)]
        if op == "HardSwish":
            return [F.hardswish(x[0])]
        if op == "LeakyRelu":
            return [F.leaky_relu(x[0], a.get("alpha", 0.01))]
        if op == "Sigmoid":
            return [torch.sigmoid(x[0])]
        if op == "Tanh":
            return [torch.tanh(x[0])]
        if op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            return [F.max_pool2d(x[0], a["kernel_shape"], stride=a.get("strides", [1, 1]), padding=(pads[0], pads[1]),
                                 dilation=a.get("dilations", [1, 1]))]
        if op == "Flatten":
            ax = a.get("axis", 1)
            return [x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)]
        if op == "Gemm":
            A = x[0].t() if a.get("transA", 0) else x[0]
            B = x[1].t() if a.get("transB", 0) else x[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(x) > 2 and x[2] is not None:
                y = y + a.get("beta", 1.0) * x[2]
            return [y]
        if op == "MatMul":
            return [x[0] @ x[1]]
        if op in ("Add", "Sub", "Mul", "Div"):
            if op == "Div" and not x[0].is_floating_point() and not x[1].is_floating_point():
                return [torch.div(x[0], x[1], rounding_mode="trunc")]  # ONNX integer division
            f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
            return [f(x[0], x[1])]
        if op in ("Identity", "Dropout"):  # Dropout: inference form
            return [x[0]]
        if op == "Constant":
            return [torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))]
        if op == "Shape":
            return [torch.tensor(list(x[0].shape), dtype=torch.int64)]
        if op == "Gather":
            ax = a.get("axis", 0) % x[0].dim()
            idx = x[1].reshape(-1).to(torch.int64)
            idx = torch.where(idx < 0, idx + x[0].shape[ax], idx)  # negative indices count from the end
            return [torch.index_select(x[0], ax, idx).reshape(
                list(x[0].shape[:ax]) + list(x[1].shape) + list(x[0].shape[ax + 1:]))]
        if op == "Unsqueeze":
            y = x[0]
            for ax in sorted(int(v) for v in x[1]):
                y = y.unsqueeze(ax)
            return [y]
        if op == "Concat":
            return [torch.cat(x, dim=a["axis"])]
        if op == "Reshape":
            shape = [int(v) for v in x[1]]
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [x[0].reshape(shape)]
        if op == "Softmax":
            return [torch.softmax(x[0], a.get("axis", -1))]
        if op == "LogSoftmax":
            return [torch.log_softmax(x[0], a.get("axis", -1))]
        if op == "LayerNormalization":
            ax = a.get("axis", -1) % x[0].dim()
            return [F.layer_norm(x[0], x[0].shape[ax:], x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))]
        if op == "Erf":
            return [torch.erf(x[0])]
        if op in ("Equal", "Less", "Greater"):
            f = {"Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt}[op]
            return [f(x[0], x[1])]
        if op == "Where":
            return [torch.where(x[0], x[1], x[2])]
        if op == "ConstantOfShape":
            v = torch.from_numpy(np.array(numpy_helper.to_array(a["value"]))) if "value" in a else torch.zeros(1)
            return [v.reshape(-1)[0].expand([int(d) for d in x[0]]).clone()]
        if op == "Expand":
            shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(int(d) for d in x[1]))
            return [x[0].expand(shape)]
        if op == "Transpose":
            return [x[0].permute(*a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].dim())))]
        if op == "Slice":
            starts, ends = [int(v) for v in x[1]], [int(v) for v in x[2]]
            axes = [int(v) for v in x[3]] if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = [int(v) for v in x[4]] if len(x) > 4 and x[4] is not None else [1] * len(starts)
            idx = [slice(None)] * x[0].dim()
            for s0, e0, ax, st in zip(starts, ends, axes, steps):
                assert st > 0, "negative Slice steps"
                dim = x[0].shape[ax]
                s0 = max(0, min(dim, s0 + dim if s0 < 0 else s0))
                e0 = max(0, min(dim, e0 + dim if e0 < 0 else e0))
                idx[ax] = slice(s0, e0, st)
            return [x[0][tuple(idx)]]
        if op == "Cast":
            to = a["to"]
            if to == onnx.TensorProto.INT64:
                return [x[0].to(torch.int64)]
            if to == onnx.TensorProto.BOOL:
                return [x[0].to(torch.bool)]
            # A float cast keeps the reference's float width (float64 runs stay float64).
            return [x[0].to(torch.get_default_dtype()) if x[0].is_floating_point() else x[0].to(torch.float32)]
        if op == "Pow":
            return [torch.pow(x[0], x[1])]
        if op == "Sqrt":
            return [torch.sqrt(x[0])]
        if op == "ReduceMean":
            axes = a.get("axes") if len(x) < 2 or x[1] is None else [int(v) for v in x[1]]
            return [x[0].mean(dim=tuple(axes), keepdim=bool(a.get("keepdims", 1)))]
        raise NotImplementedError(f"reference interpreter has no op {op}")
