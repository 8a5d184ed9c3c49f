"""PyTorch reference for Resize: exports F.interpolate cases with Debian's torch 1.13 and
writes each model with its expected output, for tests/tests/gradcheck.rs
(`resize_forward_matches_pytorch`). Usage: /usr/bin/python3 scripts/reference/torch_resize_reference.py DIR
Writes DIR/<case>.onnx and DIR/<case>.json ({"input": [...], "shape": [...], "output": [...],
"output_shape": [...]})."""
import json
import os
import sys
import warnings

import torch
import torch.nn.functional as F

CASES = {
    "nearest_x2": dict(scale_factor=2, mode="nearest"),
    "nearest_1.5x1.7": dict(scale_factor=(1.5, 1.7), mode="nearest"),
    "nearest_size_7x9": dict(size=(7, 9), mode="nearest"),
    "nearest_down_3x4": dict(size=(3, 4), mode="nearest"),
    "bilinear_x2": dict(scale_factor=2, mode="bilinear", align_corners=False),
    "bilinear_x2_align": dict(scale_factor=2, mode="bilinear", align_corners=True),
    "bilinear_size_8x11_align": dict(size=(8, 11), mode="bilinear", align_corners=True),
    "bilinear_down_3x4": dict(size=(3, 4), mode="bilinear", align_corners=False),
    "bilinear_down_0.5": dict(scale_factor=0.5, mode="bilinear", align_corners=False),
}


class Interp(torch.nn.Module):
    def __init__(self, kw):
        super().__init__()
        self.kw = kw

    def forward(self, x):
        return F.interpolate(x, **self.kw)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    warnings.filterwarnings("ignore")
    x = torch.sin(torch.arange(2 * 3 * 5 * 6, dtype=torch.float32) * 0.37).reshape(2, 3, 5, 6)
    for name, kw in CASES.items():
        m = Interp(kw).eval()
        y = m(x)
        torch.onnx.export(m, x, os.path.join(out, name + ".onnx"), opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}})
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump({"input": x.flatten().tolist(), "shape": list(x.shape),
                       "output": y.flatten().tolist(), "output_shape": list(y.shape)}, f)
    print(" ".join(CASES))


if __name__ == "__main__":
    main()
