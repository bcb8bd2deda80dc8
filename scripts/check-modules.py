#!/usr/bin/env python3
"""Checks that no two modules of a crate import each other, directly or in a circle.

A crate's modules are its top-level ones (`src/<m>.rs` with everything under `src/<m>/`); module
A imports B when code of A (outside `#[cfg(test)] mod tests` and `tests.rs` files) names
`crate::B`. Each strongly connected set of more than one module is a circle and is printed
with the edges inside it.

Usage: check-modules.py [--allow CRATE:M1,M2,...]... CRATE_DIR...
An --allow names a circle still being taken apart (its exact set of modules): it is reported,
not failed; a circle that grows, or a new one, fails.
"""
import os
import re
import sys
from collections import defaultdict

TESTS = re.compile(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+tests\b")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def crate_graph(src):
    mods, edges = set(), defaultdict(set)
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs":
                continue
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            top = rel[0]
            if top in ("lib", "main", "bin"):
                continue
            mods.add(top)
            text = strip_comments(open(os.path.join(root, f), encoding="utf-8").read())
            m = TESTS.search(text)
            if m:
                text = text[: m.start()]
            names = set(re.findall(r"\bcrate::(\w+)", text))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                names.update(re.findall(r"(?:^|,)\s*(\w+)", group))
            edges[top].update(n for n in names if n != top)
    return mods, edges


def circles(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop()
                on.discard(w)
                c.append(w)
                if w == v:
                    break
            if len(c) > 1:
                out.append(sorted(c))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main(argv):
    allowed, crates = {}, []
    it = iter(argv)
    for a in it:
        if a == "--allow":
            crate, mods = next(it).split(":", 1)
            allowed.setdefault(crate, []).append(sorted(mods.split(",")))
        else:
            crates.append(a)
    failed = False
    for crate in crates:
        name = os.path.basename(os.path.normpath(crate))
        mods, edges = crate_graph(os.path.join(crate, "src"))
        bad = False
        for c in circles(mods, edges):
            inside = ", ".join(
                f"{a} -> {b}" for a in c for b in sorted(edges[a]) if b in c
            )
            if c in allowed.get(name, []):
                print(f"check-modules: {name}: known circle {c} ({inside})")
            else:
                failed = bad = True
                print(f"check-modules: {name}: modules import each other: {c} ({inside})")
        if not bad:
            print(f"check-modules: {name}: {len(mods)} modules, no new circle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
