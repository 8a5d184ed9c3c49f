#!/usr/bin/python3
"""Writes the PIL parity fixtures checked by tests/pil_parity.rs.

Run with Debian's python3 (PIL 9.4, numpy): /usr/bin/python3 make_fixtures.py
Each line of cases.txt is `input op param expected.png`; the Rust test applies
fieldtune_augment::ops::<op>(input, param) and compares bytes.
"""
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
W, H = 24, 20


def inputs():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    base = 40 + 6 * xx + 3 * yy  # a gradient, so geometry is visible
    gray = np.clip(base + rng.integers(-25, 25, (H, W)), 30, 220).astype(np.uint8)
    rgb = np.stack(
        [gray, np.clip(255 - base + rng.integers(-40, 40, (H, W)), 10, 240), rng.integers(0, 256, (H, W))],
        axis=-1,
    ).astype(np.uint8)
    return {"gray": Image.fromarray(gray, "L"), "rgb": Image.fromarray(rgb, "RGB")}


def affine(img, a, b, c, d, e, f):
    return img.transform(img.size, Image.AFFINE, (a, b, c, d, e, f), Image.NEAREST, fillcolor=0)


OPS = {
    "autocontrast": ([0], lambda im, p: ImageOps.autocontrast(im)),
    "equalize": ([0], lambda im, p: ImageOps.equalize(im)),
    "rotate": ([30, -17.5, 90, 8], lambda im, p: im.rotate(p, resample=Image.NEAREST, fillcolor=0)),
    # out(x, y) = in(x + s * (y - cy), y) in pixel-index coordinates, cy = (h - 1) / 2.
    "shear_x": ([0.3, -0.17], lambda im, p: affine(im, 1, p, -p * im.size[1] / 2, 0, 1, 0)),
    "shear_y": ([0.3, -0.17], lambda im, p: affine(im, 1, 0, 0, p, 1, -p * im.size[0] / 2)),
    "translate_x": ([5, -3], lambda im, p: affine(im, 1, 0, -p, 0, 1, 0)),
    "translate_y": ([4, -6], lambda im, p: affine(im, 1, 0, 0, 0, 1, -p)),
    "contrast": ([0.1, 0.55, 1.37, 1.9], lambda im, p: ImageEnhance.Contrast(im).enhance(p)),
    "brightness": ([0.1, 0.55, 1.37, 1.9], lambda im, p: ImageEnhance.Brightness(im).enhance(p)),
    "sharpness": ([0.1, 0.55, 1.37, 1.9], lambda im, p: ImageEnhance.Sharpness(im).enhance(p)),
    "posterize": ([4, 6, 7], lambda im, p: ImageOps.posterize(im, p)),
    "solarize": ([128, 10, 200], lambda im, p: ImageOps.solarize(im, p)),
}


def main():
    lines = []
    for name, img in inputs().items():
        img.save(os.path.join(HERE, f"{name}.png"))
        for op, (params, fn) in OPS.items():
            for p in params:
                out = f"{name}_{op}_{p}.png"
                fn(img, p).save(os.path.join(HERE, out))
                lines.append(f"{name}.png {op} {p} {out}")
    with open(os.path.join(HERE, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
