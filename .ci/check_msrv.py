#!/usr/bin/env python3
"""MSRV of the dependency graph: every package in Cargo.lock (all features,
all targets) that declares a `rust-version` must declare one at most the
crate's own. Run from the crate root: python3 .ci/check_msrv.py

What this checks and what it does not:
- Checked here: the declared `rust-version` of every locked dependency
  (cargo metadata), against the crate's (Cargo.toml, 1.88).
- Checked by clippy (.ci/run's clippy step): `clippy::incompatible_msrv`
  warns on a call of a std API stabilized after the crate's rust-version,
  which clippy reads from Cargo.toml.
- Resolution: edition 2024 uses resolver 3, which prefers dependency
  versions whose rust-version fits ours (incompatible-rust-versions =
  "fallback"), so `cargo update` keeps this check passing where it can.
- Not checked: compiling with a 1.88 toolchain. Only one toolchain is on
  the machines (no other can be fetched), so language features newer than
  1.88 and dependencies that declare no rust-version (listed below) are
  not proven to build on 1.88.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
root = next(p for p in meta["packages"] if p["id"] == meta["resolve"]["root"])
msrv = version(root["rust_version"])
too_new, undeclared = [], []
for package in meta["packages"]:
    if package["id"] == root["id"]:
        continue
    declared = package.get("rust_version")
    name = f'{package["name"]} {package["version"]}'
    if declared is None:
        undeclared.append(name)
    elif version(declared) > msrv:
        too_new.append(f"{name} needs Rust {declared}")

print(f'rust-version {root["rust_version"]}: {len(meta["packages"]) - 1} locked dependencies, '
      f"{len(too_new)} need a newer Rust, {len(undeclared)} declare no rust-version")
if undeclared:
    print("  no rust-version (not checked): " + ", ".join(sorted(undeclared)))
for line in sorted(too_new):
    print("  " + line)
sys.exit(1 if too_new else 0)
