#!/usr/bin/env python3
"""Checks which GStreamer and GLib API a fieldtune binary imports (scripts/ci/ci-deploy.sh).

JetPack 5 ships GStreamer 1.16 and GLib 2.64 (Ubuntu 20.04). The gstreamer-rs -sys crates
declare each C function behind the version feature it appeared in (`#[cfg(feature = "v1_18")]`
above `pub fn gst_...`); functions without such a gate belong to the crates' baseline (GStreamer
1.14, GLib 2.56). This script reads those declarations from the crate sources that Cargo.lock
pins, takes every symbol the binary imports (`objdump -T`, undefined, not glibc's), and fails when
a symbol

- is gated on a newer version than --gst-max / --glib-max,
- is not declared by any of the -sys crates (something else links to the libraries), or
- is not defined by the libraries in --libdir (the ones the binary was linked against; CI uses
  Debian bullseye's GStreamer 1.18, the oldest that Debian's archive serves).

Weak undefined symbols (Rust's std probes for newer libc functions that way) are skipped.

Usage: check_gst_api.py BINARY --objdump TOOL --libdir DIR [--libdir DIR] [--lock Cargo.lock]
       [--gst-max 1.16] [--glib-max 2.64]
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tomllib

SYS_CRATES = {
    "glib-sys": "glib",
    "gobject-sys": "glib",
    "gio-sys": "glib",
    "gstreamer-sys": "gst",
    "gstreamer-base-sys": "gst",
    "gstreamer-video-sys": "gst",
    "gstreamer-app-sys": "gst",
}
BASELINE = {"gst": (1, 14), "glib": (2, 56)}
CFG = re.compile(r'#\[cfg\(feature = "v(\d+)_(\d+)(?:_\d+)?"\)\]')
FN = re.compile(r"pub fn (\w+)\s*\(")


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def crate_dirs(lock_path):
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    home = os.environ.get("CARGO_HOME") or os.path.expanduser("~/.cargo")
    dirs = {}
    for pkg in lock.get("package", []):
        name = pkg["name"]
        if name not in SYS_CRATES:
            continue
        found = glob.glob(os.path.join(home, "registry", "src", "*", f"{name}-{pkg['version']}"))
        if not found:
            fail(f"{name} {pkg['version']} (from {lock_path}) not unpacked under {home}/registry/src")
        dirs[name] = found[0]
    missing = set(SYS_CRATES) - set(dirs)
    if missing:
        fail(f"{lock_path} pins no {', '.join(sorted(missing))}")
    return dirs


def declarations(dirs):
    """symbol -> (family, (major, minor) the declaration is gated on, or None)."""
    decl = {}
    for name, d in dirs.items():
        family = SYS_CRATES[name]
        for path in glob.glob(os.path.join(d, "src", "**", "*.rs"), recursive=True):
            gate = None
            with open(path, encoding="utf-8") as f:
                for line in f:
                    s = line.strip()
                    m = CFG.fullmatch(s)
                    if m:
                        gate = (int(m.group(1)), int(m.group(2)))
                        continue
                    if s.startswith("#[") or s.startswith("//") or not s:
                        continue
                    m = FN.match(s)
                    if m:
                        decl[m.group(1)] = (family, gate)
                    gate = None
    return decl


def objdump_t(objdump, path):
    out = subprocess.run([objdump, "-T", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{objdump} -T {path}: {out.stderr.strip()}")
    return out.stdout.splitlines()


def imports(objdump, binary):
    syms = []
    for line in objdump_t(objdump, binary):
        if "*UND*" not in line or "GLIBC_" in line:
            continue
        flags = line[18:25] if len(line) > 25 else ""
        if "w" in flags:
            continue
        syms.append(line.split()[-1])
    return syms


def exports(objdump, libdirs, needed):
    defined = {}
    for lib in needed:
        for d in libdirs:
            p = os.path.join(d, lib)
            if os.path.exists(p):
                for line in objdump_t(objdump, p):
                    parts = line.split()
                    if len(parts) >= 2 and "*UND*" not in line and " DF " in line:
                        defined.setdefault(parts[-1], lib)
                break
    return defined


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], capture_output=True, text=True, check=True)
    return re.findall(r"\(NEEDED\).*\[(.*)\]", out.stdout)


def version(s):
    major, minor = s.split(".")
    return (int(major), int(minor))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("--libdir", action="append", required=True)
    ap.add_argument("--lock", default="Cargo.lock")
    ap.add_argument("--gst-max", type=version, default=(1, 16))
    ap.add_argument("--glib-max", type=version, default=(2, 64))
    a = ap.parse_args()
    limit = {"gst": a.gst_max, "glib": a.glib_max}

    decl = declarations(crate_dirs(a.lock))
    syms = imports(a.objdump, a.binary)
    libs = [n for n in needed(a.binary) if n.startswith(("libgst", "libglib", "libgobject", "libgio"))]
    defined = exports(a.objdump, a.libdir, libs)
    problems = []
    highest = {"gst": BASELINE["gst"], "glib": BASELINE["glib"]}
    for s in sorted(syms):
        if s not in decl:
            problems.append(f"{s}: not declared by the gstreamer-rs/glib -sys crates")
            continue
        family, gate = decl[s]
        v = gate or BASELINE[family]
        highest[family] = max(highest[family], v)
        if v > limit[family]:
            lib = "GStreamer" if family == "gst" else "GLib"
            problems.append(f"{s}: {lib} {v[0]}.{v[1]} API, newer than {limit[family][0]}.{limit[family][1]}")
        if s not in defined:
            problems.append(f"{s}: not defined by {', '.join(libs)} in {', '.join(a.libdir)}")
    if problems:
        fail(f"{a.binary}:\n  " + "\n  ".join(problems))
    gst, glib = highest["gst"], highest["glib"]
    print(
        f"{len(syms)} GStreamer/GLib symbols imported from {' '.join(libs)}: "
        f"newest API GStreamer {gst[0]}.{gst[1]}, GLib {glib[0]}.{glib[1]} "
        f"(limit {a.gst_max[0]}.{a.gst_max[1]} / {a.glib_max[0]}.{a.glib_max[1]}); "
        f"all defined by the libraries in {a.libdir[0]}"
    )


if __name__ == "__main__":
    main()
