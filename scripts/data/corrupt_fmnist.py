#!/usr/bin/env python3
"""Fashion-MNIST-C: the 15 standard ImageNet-C corruptions of a fixed Fashion-MNIST test subset.

    python3 -m venv .venv-fmnist-c && .venv-fmnist-c/bin/pip install corrupt-tta==0.1.7
    .venv-fmnist-c/bin/python scripts/data/corrupt_fmnist.py [--count 1024] [--severities 3,5]

(corrupt-tta pulls numpy 2, scikit-image and opencv: keep it out of the system Python, whose
Debian torch needs numpy 1.) Reads the test set from Debian's `dataset-fashion-mnist` and
writes data/fmnist-c/<corruption>-<severity>/<class>/<index>.png for the first --count test
images (<index> = position in the test set), and data/fmnist-c/clean/<class>/<index>.png.

Each image goes through `corrupt_tta.corrupt` as a 28x28x3 array (the grey image in all three
channels), and back to grey as the rounded mean of the three channels, clipped to 0..255. The
corruptions draw from numpy's global generator, seeded per image with
crc32("<corruption>-<severity>-<index>"), so a rerun writes identical pixels.
"""
import argparse
import gzip
import os
import sys
import time
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SRC = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(ROOT, "data", "fmnist-c")
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
CORRUPTIONS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression"]


def read(name, offset, shape):
    path = os.path.join(SRC, name)
    if not os.path.exists(path):
        sys.exit(f"{path} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset).reshape(shape)


def save(folder, idx, label, img):
    d = os.path.join(folder, CLASSES[label])
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{idx:05d}.png"), optimize=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--severities", default="3,5")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                    help="comma-separated subset (the field recovery benchmark needs gaussian_noise,brightness)")
    args = ap.parse_args()
    names = args.corruptions.split(",")
    unknown = sorted(set(names) - set(CORRUPTIONS))
    if unknown:
        sys.exit(f"unknown corruptions {unknown}; known: {', '.join(CORRUPTIONS)}")
    from corrupt_tta import corrupt, __version__
    x = read("t10k-images-idx3-ubyte.gz", 16, (-1, 28, 28))[:args.count]
    y = read("t10k-labels-idx1-ubyte.gz", 8, (-1,))[:args.count]
    for i in range(len(x)):
        save(os.path.join(args.out, "clean"), i, y[i], x[i])
    t0 = time.time()
    for sev in [int(s) for s in args.severities.split(",")]:
        for name in names:
            folder = os.path.join(args.out, f"{name}-{sev}")
            for i in range(len(x)):
                np.random.seed(zlib.crc32(f"{name}-{sev}-{i}".encode()))
                rgb = np.repeat(x[i][:, :, None], 3, axis=2)
                out = np.asarray(corrupt(rgb, severity=sev, corruption_name=name), dtype=np.float64)
                grey = np.clip(np.rint(out.mean(axis=2)), 0, 255).astype(np.uint8)
                save(folder, i, y[i], grey)
            print(f"{name}-{sev}: {len(x)} images ({time.time() - t0:.0f} s)", flush=True)
    print(f"wrote {args.out} (corrupt-tta {__version__}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
