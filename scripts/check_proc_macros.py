"""Fails when a proc macro in the dependency graph builds optimized in the dev profile.

Cargo.toml's `[profile.dev.package."*"] opt-level = 2` optimizes every dependency, proc
macros too, which only run at compile time: built at opt-level 2 they were 35% of a clean
build of the binaries here (Cargo.toml says more). They are listed there one by one at
opt-level 0, so a new dependency's proc macro must be added; this check names it.

usage: .venv/bin/python scripts/check_proc_macros.py
"""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    in_graph = {node["id"] for node in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    macros = sorted({
        p["name"] for p in meta["packages"]
        if p["id"] in in_graph and p["id"] not in members
        and any("proc-macro" in t["kind"] for t in p["targets"])})
    profile = tomllib.loads((ROOT / "Cargo.toml").read_text())["profile"]["dev"]["package"]
    missing = [m for m in macros if profile.get(m, {}).get("opt-level") != 0]
    if missing:
        print("proc macros built at opt-level 2 in the dev profile; add to Cargo.toml:")
        for m in missing:
            print(f'\n[profile.dev.package.{m}]\nopt-level = 0')
        sys.exit(1)
    print(f"{len(macros)} proc macros, all unoptimized in the dev profile")


if __name__ == "__main__":
    main()
