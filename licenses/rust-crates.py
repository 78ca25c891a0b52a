#!/usr/bin/env python3
"""Writes licenses/rust-crates.txt: every Rust crate the flm-edge binary is built from (its
normal dependencies, on x86-64 and aarch64 Linux), with its license expression and the
license and notice files it ships, each distinct text once. Run from the repository root
after a change to Cargo.lock: python3 licenses/rust-crates.py [OUT] (default
licenses/rust-crates.txt)"""
import json, os, re, subprocess, sys

TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]
FILES = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|COPYRIGHT)", re.I)


def crates():
    found = {}
    for target in TARGETS:
        meta = json.loads(subprocess.run(
            [os.environ.get("CARGO", "cargo"), "metadata", "--format-version", "1", "--locked", "--filter-platform", target],
            check=True, capture_output=True, text=True).stdout)
        pkgs = {p["id"]: p for p in meta["packages"]}
        nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
        root = next(p["id"] for p in meta["packages"] if p["name"] == "flm-edge")
        todo, seen = [root], set()
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            for d in nodes[i]["deps"]:
                if any(k["kind"] is None for k in d["dep_kinds"]):
                    todo.append(d["pkg"])
        for i in seen:
            p = pkgs[i]
            if p["source"] is None:  # this workspace's own crates
                continue
            found[(p["name"], p["version"])] = p
    return [found[k] for k in sorted(found)]


def main():
    texts = {}  # the text with its spacing collapsed -> (text, [crate ...])
    lines = []
    for p in crates():
        d = os.path.dirname(p["manifest_path"])
        names = sorted(f for f in os.listdir(d) if FILES.match(f) and os.path.isfile(os.path.join(d, f)))
        lic = p.get("license") or ("see " + p["license_file"] if p.get("license_file") else "unstated")
        lines.append(f"{p['name']} {p['version']}: {lic}" + ("" if names else " (ships no license file)"))
        for f in names:
            t = open(os.path.join(d, f), encoding="utf-8", errors="replace").read().strip()
            key = " ".join(t.split())
            texts.setdefault(key, (t, []))[1].append(f"{p['name']} {p['version']} ({f})")
    out = ["The Rust crates built into flm-edge, their licenses, and the license and notice",
           "texts they ship (each distinct text once, after the crates that ship it).", ""]
    out += lines
    for t, who in texts.values():
        out += ["", "=" * 78, "Shipped by: " + ", ".join(who), "=" * 78, "", t]
    open(sys.argv[1] if len(sys.argv) > 1 else "licenses/rust-crates.txt", "w").write("\n".join(out) + "\n")
    print(f"{len(lines)} crates, {len(texts)} distinct texts", file=sys.stderr)


main()
