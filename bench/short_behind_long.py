"""A short request sent while a long prompt is being read: its time to first token, and the long
one's, for two `wuwei serve` builds in the same run, alternately: the build before the step's
prefill budget went first to prompts it finishes (--old-bin), where the short request waited
for the long prompt, and this one.

Each round on a fresh daemon: a long chat prompt (~LONG_WORDS words, its own per round, so
nothing is cached) is streamed; once the daemon has read its first chunk (its /metrics prompt
counter), a short question is sent. Timed from outside: each request's first content.
Writes docs/BENCHMARKS.md section "short-behind-long".

usage: .venv/bin/python bench/short_behind_long.py --old-bin OLD [--bin target/debug/wuwei]
       [--rounds 2] [--long-words 4800]
"""
import argparse
import concurrent.futures as cf
import random
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from hybrid_turns import WORDS  # noqa: E402
from report import write_section  # noqa: E402
from shared_prefill import MODEL, chat_chunks, metric, served  # noqa: E402


def first_token(url, prompt):
    """(when its first token arrived, monotonic; prompt tokens) of a streamed greedy answer."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first, tokens = None, None
    for chunk in chat_chunks(url, body):
        # The first token: content, or the finish of an answer that ended at once.
        if first is None and any(c["delta"].get("content") or c.get("finish_reason")
                                 for c in chunk["choices"]):
            first = time.monotonic()
        if chunk.get("usage"):
            tokens = chunk["usage"]["prompt_tokens"]
    return first, tokens


def run(binary, words, round_):
    rng = random.Random(round_)
    long_prompt = "Summarize these notes: " + " ".join(rng.choice(WORDS) for _ in range(words))
    with served(binary) as url:
        before = metric(url, "wuwei_prompt_tokens_total")
        with cf.ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            long = pool.submit(first_token, url, long_prompt)
            while metric(url, "wuwei_prompt_tokens_total") < before + 512:
                time.sleep(0.02)
            sent = time.monotonic()
            short = pool.submit(first_token, url, "What is the capital of France?")
            (long_at, long_tokens), (short_at, _) = long.result(), short.result()
        return {"long_ttft": long_at - started, "short_ttft": short_at - sent,
                "long_tokens": long_tokens, "sent_after": sent - started}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-bin", required=True)
    ap.add_argument("--bin", default=str(ROOT / "target/debug/wuwei"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--long-words", type=int, default=4800)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    got = {"old": [], "new": []}
    for round_ in range(a.rounds):
        for build, binary in (("old", a.old_bin), ("new", a.bin)):
            r = run(binary, a.long_words, round_)
            got[build].append(r)
            print(f"round {round_} {build}: {r}", flush=True)
    lines = ["| build | long prompt tokens | short sent after (s) | short TTFT (s, per round) | long TTFT (s, per round) |",
             "|---|---|---|---|---|"]
    for build in ("old", "new"):
        rs = got[build]
        lines.append(
            f"| {'before' if build == 'old' else 'now'} | {rs[0]['long_tokens']} | "
            f"{statistics.mean(r['sent_after'] for r in rs):.1f} | "
            + " / ".join(f"{r['short_ttft']:.1f}" for r in rs) + " | "
            + " / ".join(f"{r['long_ttft']:.1f}" for r in rs) + " |")
    med = {b: {k: statistics.median(r[k] for r in got[b]) for k in ("short_ttft", "long_ttft")}
           for b in got}
    body = "\n".join(lines) + (
        f"\n\nShort request's TTFT now/before {med['new']['short_ttft'] / med['old']['short_ttft']:.2f}x, "
        f"the long one's {med['new']['long_ttft'] / med['old']['long_ttft']:.2f}x (medians).\n\n"
        "SmolLM2-135M-Instruct (weights `auto`: float32 on this CPU), chat API, greedy, streamed; "
        "prefill chunk 512 (the default); each build on a fresh daemon per round, alternating. "
        "The short request (a one-line question, ~35 prompt tokens) is sent once the daemon has "
        f"read the long prompt's first chunk. Before: {Path(a.old_bin).name}, the build whose "
        "steps gave their prefill budget to prompts in arrival order only.")
    print(body)
    if not a.no_write:
        write_section("short-behind-long", "A short request sent while a long prompt is read",
                      f"python bench/short_behind_long.py --old-bin OLD --rounds {a.rounds} "
                      f"--long-words {a.long_words}", body)


if __name__ == "__main__":
    main()
