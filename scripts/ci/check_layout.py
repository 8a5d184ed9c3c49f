#!/usr/bin/env python3
"""Checks two layout rules of ARCHITECTURE.md on every crate under runtime/ and boards/:

1. no source file over 700 lines (files under tests/, and the tests.rs unit-test files, aside);
2. no two files of a crate import each other (`crate::a::b` and `super::x` paths, resolved to
   the module file they name). A module's own parent (the `mod.rs`/`lib.rs` that declares it) is
   not counted: a parent owns its children, and children reach shared items through it.

Exits 1 and names each offending file or pair. Usage: python3 scripts/ci/check_layout.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 700
PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_of(src: Path, f: Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    """The file without comments and without its inline `#[cfg(test)]` module."""
    text = re.sub(r"//[^\n]*", "", text)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def main() -> int:
    bad = []
    crates = [p.parent for p in ROOT.glob("runtime/*/Cargo.toml")]
    crates += [p.parent for p in ROOT.glob("boards/*/Cargo.toml")]
    for crate in sorted(crates):
        src = crate / "src"
        files = sorted(src.rglob("*.rs"))
        mods = {module_of(src, f): f for f in files}
        edges = set()
        for f in files:
            lines = f.read_text().count("\n")
            if lines > MAX_LINES and f.name != "tests.rs":
                bad.append(f"{f.relative_to(ROOT)}: {lines} lines (limit {MAX_LINES})")
            me = module_of(src, f)
            is_dir_module = f.name in ("mod.rs", "lib.rs", "main.rs")
            for kind, rest in PATH_RE.findall(strip(f.read_text())):
                names = [n for n in rest.split("::") if n]
                if kind == "crate":
                    base = ()
                else:
                    # `super` of a mod.rs is its parent folder's module; of a plain file, the
                    # module of its folder.
                    base = me[:-1]
                    while names and names[0] == "super":
                        base, names = base[:-1], names[1:]
                # The longest prefix that names a module file.
                target = None
                for i in range(len(names), -1, -1):
                    cand = base + tuple(names[:i])
                    if cand in mods:
                        target = cand
                        break
                if target is None or target == me:
                    continue
                parent = me[:-1] if not is_dir_module or me else me
                if target == parent or me == target[:-1]:
                    continue
                edges.add((me, target))
        for a, b in sorted(edges):
            if (b, a) in edges and a < b:
                fa, fb = mods[a].relative_to(ROOT), mods[b].relative_to(ROOT)
                bad.append(f"{fa} and {fb} import each other")
    for line in bad:
        print(line)
    print(f"layout: {len(crates)} crates checked, {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
