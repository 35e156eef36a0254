"""Constrained decoding's cost: decode time per token of the same chat request with and without
a JSON-schema `response_format`, greedy, run alternately on one daemon; and (with --baseline)
the unconstrained request on this build vs another build (e.g. main's), alternately, each
its own daemon. Decode time per token is measured from the stream: from the first content
chunk to the last, over the tokens between (usage's completion_tokens - 1).

Writes docs/BENCHMARKS.md (section "constrained") unless --no-write.

usage: .venv/bin/python bench/constrained_bench.py [--bin PATH] [--baseline PATH] [--models DIR]
       [--rounds N] [--tokens N] [--no-write]
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402

# Long enough to decode for --tokens without finishing: a list of up to 200 short records.
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 16},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "role": {"enum": ["engineer", "doctor", "teacher", "artist"]},
                },
                "required": ["name", "age", "role"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}
PROMPT = "List two hundred people with their name, age and job, as JSON."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, models, log_dir):
    """Starts a daemon; its engine's per-sequence lines (debug) go to `log_dir`/daemon-PORT.log."""
    port = free_port()
    env = dict(os.environ, WUWEI_LOG="warn,wuwei::scheduler=debug", WUWEI_KV_SSD_DIR=str(Path(log_dir) / f"kv{port}"))
    log = open(Path(log_dir) / f"daemon-{port}.log", "w")
    proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--models", models],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = Path(log.name)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"{binary} exited: {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise SystemExit("daemon did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mask_ms_per_token(log_path):
    """Host time computing masks per constrained token, from the engine's `sequence finished`
    lines (`mask_ms` is logged for constrained sequences only)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text())
    total_ms = tokens = 0
    for line in text.splitlines():
        m = re.search(r'completion_tokens=(\d+).*mask_ms="?([\d.]+)', line)
        if "sequence finished" in line and m:
            tokens += int(m.group(1))
            total_ms += float(m.group(2))
    return total_ms / tokens if tokens else None


def model_of(url):
    return requests.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def decode_ms_per_token(url, model, tokens, constrained):
    """Streams one greedy request; returns (ms per decoded token, completion tokens)."""
    body = {
        "model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA}}
    first = last = None
    completion = 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            if any(c["delta"].get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                last = now
    if completion < 2 or first is None or last == first:
        raise SystemExit(f"too few tokens decoded ({completion})")
    return (last - first) * 1000 / (completion - 1), completion


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/wuwei"))
    ap.add_argument("--baseline", help="another build's binary to compare the unconstrained request with")
    ap.add_argument("--models", default=str(ROOT / ".deps/test-models"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a line added to the section (e.g. machine load)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(args.bin, args.models, tmp)
        base = None
        try:
            model = model_of(url)
            # Warm-up: load the model, build the grammar compiler.
            decode_ms_per_token(url, model, 8, False)
            decode_ms_per_token(url, model, 8, True)
            if args.baseline:
                base, base_url = start(args.baseline, args.models, tmp)
                decode_ms_per_token(base_url, model, 8, False)
            free, constrained, main_free = [], [], []
            counts = set()
            for i in range(args.rounds):
                # Alternate which goes first, so that drifting load favours neither.
                order = [False, True] if i % 2 == 0 else [True, False]
                for c in order:
                    ms, n = decode_ms_per_token(url, model, args.tokens, c)
                    (constrained if c else free).append(ms)
                    counts.add((c, n))
                if base:
                    main_free.append(decode_ms_per_token(base_url, model, args.tokens, False)[0])
                print(f"round {i}: free {free[-1]:.2f} ms/tok, constrained {constrained[-1]:.2f} ms/tok"
                      + (f", baseline free {main_free[-1]:.2f}" if base else ""), flush=True)
        finally:
            stop(proc)
            if base:
                stop(base)
        mask_ms = mask_ms_per_token(proc.log_path)

    f, c = statistics.median(free), statistics.median(constrained)
    rows = [
        "| request | decode ms/token (median) | runs |",
        "|---|---|---|",
        f"| unconstrained | {f:.2f} | {', '.join(f'{x:.2f}' for x in free)} |",
        f"| json_schema | {c:.2f} | {', '.join(f'{x:.2f}' for x in constrained)} |",
    ]
    if main_free:
        m = statistics.median(main_free)
        rows.append(f"| unconstrained, baseline build | {m:.2f} | {', '.join(f'{x:.2f}' for x in main_free)} |")
    body = "\n".join(rows) + f"\n\nConstrained / unconstrained: **{c / f:.3f}x** per decoded token"
    if main_free:
        body += f"; unconstrained this build / baseline: **{f / statistics.median(main_free):.3f}x**"
    if mask_ms is not None:
        body += (f".\nMask computation on the host (llguidance), per constrained token: {mask_ms:.2f} ms "
                 f"({100 * mask_ms / c:.1f}% of a decode step; it runs while the device computes the "
                 f"forward pass)")
    body += (f".\nGreedy, {args.tokens} tokens, SmolLM2-135M-Instruct, {args.rounds} alternating rounds; "
             f"tokens decoded: {sorted(counts)}.")
    if args.note:
        body += f"\n{args.note}"
    print(body)
    if not args.no_write:
        cmd = "bench/constrained_bench.py" + (" --baseline PATH" if args.baseline else "")
        write_section("constrained", "Constrained decoding: decode time per token", cmd, body)


if __name__ == "__main__":
    main()
