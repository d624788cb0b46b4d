#!/usr/bin/env python3
"""Import circles between the crate's modules (files under src/).

Reads every `crate::`, `super::` and `self::` path in src/ (use lines and
inline paths, not comments or doc text), maps it to the file that defines
the item and to every module the path goes through (following `pub use`
re-exports, so `crate::store::Counter` imports both store and counter.rs),
and prints the strongly connected components of more than one module.
Exits 1 if any. A top-level module and its
submodules are one unit: edges inside it are not counted, and edges from
any of its files count as the unit's. Comments, string
literals and test modules (`#[cfg(test)] mod ...`, by their braces, or
their files) are skipped: tests may use anything.
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

# Test modules in files of their own (`#[cfg(test)] mod tests;`) are left
# out with their submodules, as inline ones are.
test_mods = set()
for mod, path in files.items():
    for name in re.findall(r"#\[cfg\(test\)\]\s*mod (\w+)\s*;", open(path).read()):
        test_mods.add(mod + (name,))
files = {m: p for m, p in files.items()
         if not any(m[:len(t)] == t for t in test_mods)}

def resolve(parts):
    """The longest module prefix of `parts` that is a file."""
    for n in range(len(parts), -1, -1):
        if tuple(parts[:n]) in files:
            return tuple(parts[:n])
    return ()

def strip(text):
    # Comments and string/char literal contents out, by a small lexer.
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i); i = n if j < 0 else j; continue
        if text.startswith("/*", i):
            depth = 0
            while i < n:
                if text.startswith("/*", i): depth += 1; i += 2
                elif text.startswith("*/", i): depth -= 1; i += 2
                    
                else: i += 1
                if depth == 0: break
            continue
        m = re.match(r'b?r(#*)"', text[i:])
        if m and (i == 0 or not (text[i-1].isalnum() or text[i-1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end()); i = n if j < 0 else j + len(end)
            out.append('""'); continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1; out.append('""'); continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m: i += m.end(); out.append("' '"); continue
        out.append(c); i += 1
    text = "".join(out)
    # drop test modules (by braces)
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod \w+\s*([;{])", text)
        if not m: break
        if m.group(1) == ";":
            text = text[:m.start()] + text[m.end():]; continue
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "{": depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0: break
            j += 1
        text = text[:m.start()] + text[j+1:]
    return text

def absolute(mod, path_):
    """`path_` (segments after crate::, super:: or self::) as a path from
    the crate root, seen from `mod`."""
    kind, rest = path_[0], path_[1:]
    if kind == "crate":
        return list(rest)
    base = list(mod)
    if kind == "super":
        base = base[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    return base + list(rest)

def split_top(t):
    """`a, b::{c, d}, e` split at its top-level commas."""
    depth, part, parts = 0, "", []
    for ch in t:
        if ch == "," and depth == 0:
            parts.append(part.strip()); part = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        part += ch
    parts.append(part.strip())
    return [p for p in parts if p]

def walk_use(mod, prefix, t, out):
    """Records in `out` each name a `use` tree `t` (under `prefix`) binds."""
    t = t.replace(" ::", "::").replace(":: ", "::")
    if t.startswith("{") and t.endswith("}"):
        for part in split_top(t[1:-1]):
            walk_use(mod, prefix, part, out)
        return
    if "::{" in t:
        head, tail = t.split("::{", 1)
        walk_use(mod, prefix + head.split("::"), "{" + tail, out)
        return
    path_, _, alias = t.partition(" as ")
    segs = prefix + path_.strip().split("::")
    if segs[0] not in ("crate", "super", "self"):
        segs = ["self"] + segs
    if segs[-1] in ("*", "self"):
        # A glob, or `{self}`: an import of the module itself.
        out[f"{segs[-1]}#{len(out)}"] = absolute(mod, segs[:-1])
        return
    out[(alias or segs[-1]).strip()] = absolute(mod, segs)

USE = re.compile(r"pub(?:\([a-z]+\))?\s+use\s+([^;]+);", re.S)

def reexports(mod):
    """name -> absolute path of what `mod` re-exports under that name."""
    out = {}
    text = strip(open(files[mod]).read())
    for tree in USE.findall(text):
        walk_use(mod, [], re.sub(r"\s+", " ", tree).strip(), out)
    return out

REEXPORTS = {m: reexports(m) for m in files}

def define(parts, depth=0):
    """The file that defines the item at absolute path `parts`."""
    t = resolve(parts)
    if depth > 8:
        return t
    rest = parts[len(t):]
    if rest and rest[0] in REEXPORTS.get(t, {}):
        target = REEXPORTS[t][rest[0]] + list(rest[1:])
        found = define(target, depth + 1)
        if found:
            return found
    return t

def chain(parts, depth=0):
    """Every module a path goes through: the one it names and, through
    re-exports, the one that defines the item (the crate root left out)."""
    t = resolve(parts)
    out = [t] if t else []
    rest = parts[len(t):]
    if depth <= 8 and rest and rest[0] in REEXPORTS.get(t, {}):
        out += chain(REEXPORTS[t][rest[0]] + list(rest[1:]), depth + 1)
    return out

def related(a, b):
    """One is the other's ancestor (or the same module)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
ANY_USE = re.compile(r"\buse\s+([^;]+);", re.S)

edges = {m: set() for m in files}
for mod, path in files.items():
    text = strip(open(path).read())
    found = []
    # `use` trees, nested groups and aliases included, parsed as trees.
    for tree in ANY_USE.findall(text):
        bound = {}
        walk_use(mod, [], re.sub(r"\s+", " ", tree).strip(), bound)
        found.extend(bound.values())
    # Inline paths (`crate::a::b(..)`, `super::x`), outside `use` lines too.
    for kind, rest in PATH.findall(ANY_USE.sub("", text)):
        found.append(absolute(mod, [kind] + [p for p in rest.split("::") if p]))
    for parts in found:
        for t in chain(parts):
            if t and not related(t, mod):
                edges[mod].add(t)

# A module and its submodules are one unit: a circle through a parent or a
# child (a.rs -> b.rs -> a/inner.rs) is a circle between units.
def unit(m):
    return m[:1]

units = {unit(m): set() for m in files if m}
for m, targets in edges.items():
    for t in targets:
        if m and t and unit(m) != unit(t):
            units[unit(m)].add(unit(t))
edges = units

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
    print(f"no import circle among {len(edges)} modules (their submodules in them; {len(files)} files)")
sys.exit(1 if circles else 0)
