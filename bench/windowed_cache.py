"""Prefix-cache memory on a sliding-window model (Gemma 3's layout): what the RAM and SSD tiers
hold after each turn of a 10-turn agent-like conversation, and the tokens each turn takes
from the cache, for two builds of `wuwei serve` in the same run: `--before` (blocks hold every
layer's KV) and `--bin` (blocks hold the full-attention layers; the windowed layers' window
before each snapshot boundary is in a snapshot). Then a second conversation that shares only
the system prompt: what it reuses from each.

The model: random weights written by mlx-lm's own classes (as the tests do) with Gemma 3's
proportions, 10 sliding-window layers of 12 (`sliding_window_pattern` 6) and a window of
`--window` positions, bf16 with 4-bit weights, SmolLM2's tokenizer. The conversation is
bench/hybrid_turns.py's. Bytes and token counts, not speeds: they are deterministic.

Writes its table to docs/BENCHMARKS.md (section "windowed-cache").

usage: .venv/bin/python bench/windowed_cache.py --before OLD_WUWEI [--bin target/debug/wuwei]
       [--window 512] [--turns 10] [--no-write]
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from hybrid_turns import conversation, run_turns, wait_ready  # noqa: E402
from report import write_section  # noqa: E402
from serve_bench import free_port  # noqa: E402

MODEL = "rand-gemma3-12l-bf16-q4"
LAYERS, PATTERN = 12, 6


def make_model(root, window):
    tokenizer = ROOT / ".deps/test-models/SmolLM2-135M-Instruct"
    out = root / "models" / MODEL
    sets = [f"num_hidden_layers={LAYERS}", f"sliding_window_pattern={PATTERN}",
            f"sliding_window={window}", "max_position_embeddings=16384"]
    subprocess.run([sys.executable, str(ROOT / "tests/reference/make_random_model.py"),
                    "gemma3_text", str(out), "--dtype", "bfloat16", "--bits", "4",
                    "--group-size", "32", "--tokenizer", str(tokenizer),
                    *[x for s in sets for x in ("--set", s)]],
                   check=True, capture_output=True)
    return out


def cache_state(url):
    c = requests.get(f"{url}/admin/api/cache", timeout=30).json()
    ram = c["ram"]["models"].get(MODEL, {})
    return ram.get("bytes", 0), ram.get("blocks_used", 0), c["bytes_used"]


def serve(binary, root, name):
    """A daemon of `binary` over the model folder with its own SSD folder; returns (url, proc)."""
    port = free_port()
    env = dict(os.environ, WUWEI_ACTIVATIONS="checkpoint", WUWEI_KV_SSD_DIR=str(root / name),
               WUWEI_LOG="warn")
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS",
                "WUWEI_KV_SNAPSHOT_INTERVAL"):
        env.pop(var, None)
    proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--models", str(root / "models")], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, MODEL)
    return url, proc


def settle(url, timeout=120):
    """Until the SSD writer has written everything queued (its byte count stops moving)."""
    import time

    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = cache_state(url)[2]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.5:
            return
        time.sleep(0.25)


def measure(binary, root, name, system, turns, branch, max_tokens):
    """Per turn (prompt, cached, RAM bytes, RAM blocks, SSD bytes), and the branch's cached."""
    url, proc = serve(binary, root, name)
    try:
        rows = []
        messages = [{"role": "system", "content": system}]
        # Turn by turn (run_turns runs a whole conversation): the tiers' state after each.
        for text in turns:
            messages.append({"role": "user", "content": text})
            r = requests.post(f"{url}/v1/chat/completions", timeout=900, json={
                "model": MODEL, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0})
            r.raise_for_status()
            out = r.json()
            usage = out["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            messages.append({"role": "assistant",
                             "content": out["choices"][0]["message"]["content"]})
            settle(url)
            rows.append((usage["prompt_tokens"], cached, *cache_state(url)))
        (b_prompt, b_cached), = run_turns(url, MODEL, system, [branch], max_tokens)
        return rows, (b_prompt, b_cached)
    finally:
        proc.terminate()
        proc.wait()


def mib(n):
    return f"{n / 2**20:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="a wuwei binary whose blocks hold every layer")
    ap.add_argument("--bin", default=str(ROOT / "target/debug/wuwei"))
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()

    system, turns = conversation(a.turns)
    branch = "Task 0: a different first request, so that only the system prompt is shared."
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root, a.window)
        before, b_branch = measure(a.before, root, "kv-before", system, turns, branch,
                                   a.max_tokens)
        after, a_branch = measure(a.bin, root, "kv-after", system, turns, branch, a.max_tokens)

    lines = ["| turn | prompt | cached before | cached after | RAM MiB before | RAM MiB after "
             "| RAM after/before | SSD MiB before | SSD MiB after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (b, n) in enumerate(zip(before, after), 1):
        prompt = n[0] if n[0] == b[0] else f"{b[0]} / {n[0]}"
        lines.append(f"| {i} | {prompt} | {b[1]} | {n[1]} | {mib(b[2])} | {mib(n[2])} "
                     f"| {n[2] / b[2]:.2f} | {mib(b[4])} | {mib(n[4])} |")
    body = "\n".join(lines)
    last_b, last_n = before[-1], after[-1]
    per_tok = lambda row: row[2] / max(1, row[3] * 32)  # noqa: E731 (RAM bytes per cached position)
    summary = (
        f"Model: random Gemma 3 layout, {LAYERS} layers of which {LAYERS - LAYERS // PATTERN} "
        f"windowed (window {a.window}; snapshots every {max(512, 4 * a.window)} positions, at "
        f"each prompt's tail and at its chat's head), bf16 KV, blocks of 32. After {a.turns} turns: RAM tier "
        f"{mib(last_n[2])} MiB against {mib(last_b[2])} MiB ({last_n[2] / last_b[2]:.2f}x; "
        f"{per_tok(last_n):.0f} against {per_tok(last_b):.0f} bytes per cached position), SSD "
        f"tier {mib(last_n[4])} against {mib(last_b[4])} MiB ({last_n[4] / last_b[4]:.2f}x). "
        f"Tokens recomputed over turns 2-{a.turns}: "
        f"{sum(r[0] - r[1] for r in before[1:])} before, {sum(r[0] - r[1] for r in after[1:])} "
        f"after. A second conversation sharing only the system prompt "
        f"({b_branch[0]} / {a_branch[0]} prompt tokens) reused {b_branch[1]} tokens before and "
        f"{a_branch[1]} after.")
    print(body)
    print(summary)
    if not a.no_write:
        write_section("windowed-cache", "Prefix-cache memory on a sliding-window model "
                      "(Gemma 3 layout): every layer in blocks vs windows in snapshots",
                      f"python bench/windowed_cache.py --before OLD --window {a.window}",
                      body + "\n\n" + summary + "\n\n'before': the build before this change "
                      "(c90c526), whose blocks hold every layer; 'after': blocks hold the full "
                      "layers and snapshots the windows. Bytes as the admin API reports them "
                      "(`/admin/api/cache`: the RAM tier's blocks and snapshots; the SSD tier's "
                      "files), after each turn's writes settled.")


if __name__ == "__main__":
    main()
