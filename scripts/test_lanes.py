"""Runs the workspace's compiled test binaries two at a time (scripts/test.sh).

`cargo test` runs its test binaries one after another, and most of them leave one of CI's
two cores idle: the parity tests wait on their Python reference beside a single-threaded
greedy loop, the daemon tests on HTTP. Two at a time, the slowest first, the step takes
~40% less time (measured on this project's 2-core machines). Each binary runs as cargo would
run it (in its package's folder, with its own test threads); its output is printed whole
when it ends, so two never interleave.

usage: cargo test --workspace --no-run --message-format=json-render-diagnostics \
           | python scripts/test_lanes.py [--jobs 2] [--log FILE]
Exit status: 0 when every binary passed.
"""
import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Seconds each binary took alone (2026-11-28, 2-core machine): the longest start first so
# that the two lanes end together. A binary not listed counts as short.
MEASURED_S = {
    "smollm2_parity": 119, "arch_parity": 104, "kv_quant": 76, "half_precision": 47,
    "real_daemon": 35, "gguf_convert": 23, "supervise": 15,
}


def test_binaries(messages):
    """(name, executable, package folder) of every test binary cargo built."""
    out = []
    for line in messages:
        if not line.startswith("{"):
            continue
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
            name = m["target"]["name"]
            kind = m["target"]["kind"][0]
            label = name if kind == "test" else f"{name} ({kind})"
            out.append((label, m["executable"], str(Path(m["manifest_path"]).parent)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--log")
    a = ap.parse_args()
    binaries = test_binaries(sys.stdin)
    if not binaries:
        sys.exit("no test binaries in cargo's output")
    binaries.sort(key=lambda b: -MEASURED_S.get(b[0], 0))
    log = open(a.log, "w") if a.log else None
    # One BLAS thread per binary: two binaries with OpenBLAS's default of a thread per core
    # oversubscribe the cores, and its threads spin while they wait (measured: 5m24s against
    # 5m50s for the step).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    lock = threading.Lock()

    def run(binary):
        label, exe, folder = binary
        t0 = time.monotonic()
        p = subprocess.run([exe], cwd=folder, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        took = time.monotonic() - t0
        text = p.stdout.decode("utf-8", "replace")
        with lock:
            head = f"\n---- {label}: {'ok' if p.returncode == 0 else 'FAILED'} in {took:.1f}s ({exe})\n"
            for stream in filter(None, (sys.stdout, log)):
                stream.write(head + text)
                stream.flush()
        return label, p.returncode, took

    with cf.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(run, binaries))
    print("\n---- test binaries, slowest first:")
    for label, rc, took in sorted(results, key=lambda r: -r[2]):
        print(f"  {took:6.1f}s  {'ok    ' if rc == 0 else 'FAILED'}  {label}")
    failed = [label for label, rc, _ in results if rc != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
