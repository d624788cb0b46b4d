#!/usr/bin/env python3
"""Import circles between the crate's modules (files under src/).

Reads every `crate::a::b` path in src/ (use lines and inline paths, not
comments or doc text), maps it to the file that defines it, and prints
the strongly connected components of more than one file. Exits 1 if any.
Test modules (`#[cfg(test)] mod tests`) are skipped: they may use anything.
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)

files = {}
for d, _, fs in os.walk(ROOT):
    for f in fs:
        if f.endswith(".rs"):
            p = os.path.join(d, f)
            files[module_of(p)] = p

def resolve(parts):
    """The longest module prefix of `parts` that is a file."""
    for n in range(len(parts), 0, -1):
        if tuple(parts[:n]) in files:
            return tuple(parts[:n])
    return ()

def strip(text):
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("//"):
            continue
        out.append(line.split("//")[0])
    text = "\n".join(out)
    # drop test modules
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: m.start()] if m else text

edges = {m: set() for m in files}
for mod, path in files.items():
    text = strip(open(path).read())
    # expand `use crate::{a, b::{c}}` roughly: collect every crate::x::y path
    for block in re.findall(r"crate::\{([^;]*)\}", text):
        for name in re.findall(r"(?:^|[{,\s])([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", block):
            t = resolve(name.split("::"))
            if t and t != mod:
                edges[mod].add(t)
    for path_ in re.findall(r"crate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
        t = resolve(path_.split("::"))
        if t and t != mod and t != ():
            edges[mod].add(t)
    # a parent module's file declares its children: not an import
    edges[mod] = {t for t in edges[mod] if t[: len(mod)] != mod or len(mod) == 0}

# Tarjan
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
for v in edges:
    if v not in index and v != ():
        visit(v)

circles = [sorted("::".join(c) for c in comp) for comp in sccs if len(comp) > 1]
for c in circles:
    print(f"import circle of {len(c)} modules: {', '.join(c)}")
if not circles:
    print(f"no import circle among {len(files)} modules")
sys.exit(1 if circles else 0)
