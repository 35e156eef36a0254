"""Serving throughput and latency: a concurrency sweep (1, 2, 4, 8, 16 streams) against
`wuwei serve` and `mlx_lm.server` (mlx-lm 0.32.2, same model, same MLX build), alternating per
level in one run. Also compares single-stream decode over HTTP with `wuwei generate`.
Writes its tables to docs/BENCHMARKS.md (section "serve").

usage: .venv/bin/python bench/serve_bench.py [--levels 1,2,4,8,16] [--max-tokens 64]
       (build first: cargo build --release)
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402

ROUNDS = 5  # alternating HTTP / `wuwei generate` pairs for the overhead comparison
MODEL_DIR = ROOT / ".deps/test-models/SmolLM2-135M-Instruct"
PROMPTS = [
    f"Write a detailed story about a traveller number {i} who crosses a desert, a forest and "
    f"a sea, describing every day of the journey."
    for i in range(16)
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            requests.post(f"{url}/v1/chat/completions", json={
                "model": "SmolLM2-135M-Instruct" if "wuwei" in url else str(MODEL_DIR),
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
            return
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def one_stream(url, model, prompt, max_tokens, out):
    """One streamed chat request. Tokens are counted from the final usage chunk, not from the
    content chunks: a detokenizer or output parser that holds a token back (a partial UTF-8
    character, text that may open a tag) sends fewer chunks than tokens, and counting chunks
    would understate the decode rate by the tokens it merged (~3% at 64 tokens here)."""
    t0 = time.perf_counter()
    stamps, usage, done = [], None, None
    with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=600, json={
        "model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                stamps.append(now)
            if choices and choices[0].get("finish_reason"):
                done = now
            if chunk.get("usage"):
                usage = chunk["usage"]
    tokens = usage["completion_tokens"] if usage else len(stamps)
    done = done or (stamps[-1] if stamps else time.perf_counter())
    # Decode rate: the tokens after the first over the time from the first to the last one,
    # the same definition `wuwei generate` prints.
    decode = (tokens - 1) / (done - stamps[0]) if stamps and done > stamps[0] else float("nan")
    out.append(dict(ttft=stamps[0] - t0 if stamps else float("nan"), stamps=stamps, first=stamps[0] if stamps else done,
                    done=done, tokens=tokens, decode=decode, end=time.perf_counter()))


def http_decode_rate(url, max_tokens):
    out = []
    one_stream(url, MODEL_DIR.name, PROMPTS[0], max_tokens, out)
    return out[0]["decode"]


def sweep_level(url, model, level, max_tokens):
    results, threads = [], []
    t0 = time.perf_counter()
    for i in range(level):
        t = threading.Thread(target=one_stream, args=(url, model, PROMPTS[i], max_tokens, results))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    # Mean inter-token latency: each stream's decode time over its tokens after the first.
    itls = [(r["done"] - r["first"]) / (r["tokens"] - 1) for r in results if r["tokens"] > 1]
    return dict(agg=tokens / wall, ttft_p50=statistics.median(ttfts),
                ttft_p99=ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))],
                itl=statistics.mean(itls) if itls else float("nan"), tokens=tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--weights", default="auto")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]

    wport, mport = free_port(), free_port()
    env = dict(os.environ, WUWEI_LOG="warn", WUWEI_WEIGHTS=a.weights, WUWEI_MAX_RUNNING="16")
    wuwei = subprocess.Popen([str(ROOT / "target/release/wuwei"), "serve", "--port", str(wport),
                              "--models", str(MODEL_DIR.parent), "--default-model", MODEL_DIR.name],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mlx = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "mlx_lm", "server", "--model", str(MODEL_DIR),
                            "--port", str(mport), "--log-level", "WARNING"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wurl, murl = f"http://127.0.0.1:{wport}", f"http://127.0.0.1:{mport}"
    try:
        wait_ready(wurl + "#wuwei", wuwei)
        wait_ready(murl, mlx)
        # Single-stream HTTP overhead, first, while the server has served nothing else: the same
        # chat prompt through the server and through `wuwei generate` (same engine code, no
        # HTTP, a fresh process each time), alternating, decode speed of each.
        http, direct = [], []
        for _ in range(ROUNDS):
            http.append(http_decode_rate(wurl, a.max_tokens))
            gen = subprocess.run([str(ROOT / "target/release/wuwei"), "generate", "--model", str(MODEL_DIR), "--chat",
                                  "--prompt", PROMPTS[0], "--max-tokens", str(a.max_tokens), "--quiet",
                                  "--weights", a.weights], capture_output=True, text=True, check=True).stdout
            direct.append(float(gen.split("generation:")[1].split("tokens,")[1].split("tok/s")[0]))
            print(f"overhead round: http {http[-1]:.1f} tok/s, generate {direct[-1]:.1f} tok/s", flush=True)
        rows = {}
        for level in levels:
            rows[("wuwei", level)] = sweep_level(wurl, MODEL_DIR.name, level, a.max_tokens)
            rows[("mlx_lm.server", level)] = sweep_level(murl, str(MODEL_DIR), level, a.max_tokens)
            print(level, {k[0]: round(v["agg"], 1) for k, v in rows.items() if k[1] == level}, flush=True)
        # The same single stream again after the sweep: does a server that has run a full batch
        # decode as fast as a fresh one? (It did not with glibc's malloc; see docs/BENCHMARKS.md.)
        after = [http_decode_rate(wurl, a.max_tokens) for _ in range(ROUNDS)]
        print("after the sweep:", [round(x, 1) for x in after], flush=True)
        http_decode, gen_decode = statistics.median(http), statistics.median(direct)
        after_decode = statistics.median(after)
    finally:
        for p in (wuwei, mlx):
            p.terminate()
            p.wait(timeout=30)

    lines = ["| server | streams | aggregate tok/s | TTFT p50 (s) | TTFT p99 (s) | mean inter-token (ms) |",
             "|---|---|---|---|---|---|"]
    for (name, level), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {name} | {level} | {r['agg']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | {r['itl'] * 1000:.0f} |")
    w1 = rows[("wuwei", levels[0])]["agg"]
    summary = []
    if 8 in levels:
        w8, m8 = rows[("wuwei", 8)]["agg"], rows[("mlx_lm.server", 8)]["agg"]
        summary.append(f"- Wuwei at 8 streams: {w8 / w1:.2f}x its own single stream (target >= 3x), "
                       f"{w8 / m8:.2f}x mlx_lm.server at 8 streams (target >= 1.5x).")
    summary.append(f"- Single-stream decode over HTTP {http_decode:.1f} tok/s vs `wuwei generate` {gen_decode:.1f} tok/s "
                   f"(medians of {ROUNDS} alternating runs): HTTP overhead {100 * (1 - http_decode / gen_decode):.1f}% "
                   f"(target <= 5%; negative means HTTP was faster, i.e. within noise).")
    slower = 100 * (1 - after_decode / gen_decode)
    summary.append(f"- The same single stream after the sweep: {after_decode:.1f} tok/s, "
                   + (f"{slower:.1f}% slower than" if slower >= 0 else f"{-slower:.1f}% faster than (noise)")
                   + " `wuwei generate`.")
    body = "\n".join(lines) + "\n\n" + "\n".join(summary) + (
        f"\n\nModel `{MODEL_DIR.name}`, chat prompts of ~40 tokens, up to {a.max_tokens} new tokens each "
        f"(greedy; a stream may end earlier at EOS, so throughput counts the tokens actually streamed), "
        f"Wuwei weights mode `{a.weights}`, max_running 16.")
    print(body)
    write_section("serve", "Serving: concurrency sweep vs mlx_lm.server",
                  f".venv/bin/python bench/serve_bench.py --levels {a.levels} --max-tokens {a.max_tokens} --weights {a.weights}",
                  body)


if __name__ == "__main__":
    main()
