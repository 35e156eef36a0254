"""Requests sent together whose prompts start alike: a coding agent's parallel calls that share
its system prompt and tools, and the `n` choices of one request. Two `wuwei serve` builds in
the same run, alternately: the build before the scheduler's shared-prefill wait (--old-bin),
which computes the shared part once per request, and this one, which computes it once.

Scenarios (SmolLM2-135M-Instruct, the test model, chat API, greedy, streamed):
- agents: AGENTS requests sent at once, each the same system prompt with tools (~SYSTEM
  tokens) and its own task;
- choices: one prompt's CHOICES answers; the old build gets CHOICES identical requests sent at
  once (it had no `n`), this one one request with `n`.

Timed from outside: the wall time until every answer is in, and each request's time to first
content; prompt tokens computed from the daemon's own counters (/metrics: prompt tokens minus
those taken from the cache). Writes docs/BENCHMARKS.md section "shared-prefill".

usage: .venv/bin/python bench/shared_prefill.py --old-bin OLD [--bin target/debug/wuwei]
       [--rounds 2] [--agents 4] [--choices 4] [--system-words 1100]
"""
import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from hybrid_turns import WORDS  # noqa: E402
from report import write_section  # noqa: E402
from serve_bench import free_port  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 16


def system_prompt(words, seed=5):
    rng = random.Random(seed)
    tools = "\n".join(
        f"Tool {i}: " + " ".join(rng.choice(WORDS) for _ in range(words // 12)) + "."
        for i in range(12))
    return "You are a coding agent working in a repository. Tools:\n" + tools


def task(i):
    rng = random.Random(100 + i)
    return f"Task {i}: " + " ".join(rng.choice(WORDS) for _ in range(40))


def metric(url, name):
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def computed(url):
    return metric(url, "wuwei_prompt_tokens_total") - metric(url, "wuwei_cached_prompt_tokens_total")


def chat_chunks(url, body):
    """The chunks (parsed) of a streamed chat request, as they arrive."""
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=1800) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                yield json.loads(line[6:])


def stream(url, messages, n=1):
    """One streamed chat request: (seconds to first content, seconds to the end, prompt tokens)."""
    started = time.monotonic()
    first, usage = None, None
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if n > 1:
        body["n"] = n
    for chunk in chat_chunks(url, body):
        if chunk.get("usage"):
            usage = chunk["usage"]
        if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
            first = time.monotonic() - started
    return first, time.monotonic() - started, usage["prompt_tokens"]


def together(url, requests_):
    """Sends (messages, n) requests at once; wall time, per-request results, tokens computed."""
    before = computed(url)
    started = time.monotonic()
    with cf.ThreadPoolExecutor(len(requests_)) as pool:
        results = list(pool.map(lambda r: stream(url, *r), requests_))
    wall = time.monotonic() - started
    return wall, results, computed(url) - before


@contextlib.contextmanager
def served(binary):
    """`binary serve` on a free port with a fresh SSD folder (nothing cached), warmed up by
    one request; its URL. Stopped on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, WUWEI_KV_SSD_DIR=str(Path(tmp) / "kv"), WUWEI_LOG="warn")
        for var in ("WUWEI_CONFIG", "WUWEI_API_KEY"):
            env.pop(var, None)
        proc = subprocess.Popen(
            [binary, "serve", "--port", str(port), "--models", str(ROOT / ".deps/test-models")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    requests.post(f"{url}/v1/chat/completions", timeout=120, json={
                        "model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 2})
                    break
                except requests.RequestException:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{binary} did not start")
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def run(binary, new, a, round_):
    """Both scenarios on a fresh daemon (empty prefix cache); distinct prompts per round."""
    with served(binary) as url:
        system = {"role": "system", "content": system_prompt(a.system_words, seed=round_)}
        agents = [([system, {"role": "user", "content": task(i)}], 1) for i in range(a.agents)]
        rows = {"agents": together(url, agents)}
        # A prompt of its own: nothing of it is in the cache from the first scenario.
        other = {"role": "system", "content": system_prompt(a.system_words, seed=500 + round_)}
        question = [other, {"role": "user", "content": task(1000 + round_)}]
        asked = [(question, a.choices)] if new else [(question, 1)] * a.choices
        rows["choices"] = together(url, asked)
        return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-bin", required=True)
    ap.add_argument("--bin", default=str(ROOT / "target/debug/wuwei"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--system-words", type=int, default=1100)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()

    got = {("old", s): [] for s in ("agents", "choices")} | {("new", s): [] for s in ("agents", "choices")}
    for round_ in range(a.rounds):
        for build, binary in (("old", a.old_bin), ("new", a.bin)):
            rows = run(binary, build == "new", a, round_)
            for scenario, (wall, results, tokens) in rows.items():
                got[(build, scenario)].append((wall, results, tokens))
                ttfts = [r[0] for r in results]
                print(f"round {round_} {build} {scenario}: wall {wall:.1f}s, TTFT mean "
                      f"{statistics.mean(ttfts):.1f}s max {max(ttfts):.1f}s, prompt {results[0][2]}, "
                      f"computed {tokens:.0f}", flush=True)

    lines = ["| scenario | build | prompt tokens | computed (per round) | wall s (per round) | mean TTFT s | last TTFT s |",
             "|---|---|---|---|---|---|---|"]
    ratios = []
    for scenario in ("agents", "choices"):
        walls = {}
        for build in ("old", "new"):
            runs = got[(build, scenario)]
            walls[build] = statistics.median(w for w, _, _ in runs)
            prompt = runs[0][1][0][2]
            count = a.agents if scenario == "agents" else a.choices
            lines.append(
                f"| {scenario} ({count}) | {'before' if build == 'old' else 'now'} | {prompt} | "
                + " / ".join(f"{t:.0f}" for _, _, t in runs) + " | "
                + " / ".join(f"{w:.1f}" for w, _, _ in runs) + " | "
                + f"{statistics.mean(r[0] for _, rs, _ in runs for r in rs):.1f} | "
                + f"{statistics.mean(max(r[0] for r in rs) for _, rs, _ in runs):.1f} |")
        ratios.append(f"{scenario}: wall time now/before {walls['new'] / walls['old']:.2f}x (medians)")
    body = "\n".join(lines) + "\n\n" + "; ".join(ratios) + (
        f".\n\nSmolLM2-135M-Instruct (weights `auto`: float32 on this CPU), chat API, greedy, "
        f"{MAX_TOKENS} new tokens per answer, streamed; each build on a fresh daemon per round "
        "(empty prefix cache), the builds alternating, distinct prompts per round. 'computed': "
        "prompt tokens the daemon computed (its /metrics: prompt minus cached tokens). "
        f"Before: the build without the shared-prefill wait ({Path(a.old_bin).name}); for "
        f"'choices' it gets {a.choices} identical requests at once (it had no `n`), now one "
        f"request with `n = {a.choices}`.")
    print(body)
    if not a.no_write:
        cmd = f"python bench/shared_prefill.py --old-bin OLD --rounds {a.rounds}"
        write_section("shared-prefill", "Requests sent together that share a prompt prefix",
                      cmd, body)


if __name__ == "__main__":
    main()
