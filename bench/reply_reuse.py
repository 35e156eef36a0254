"""Reply reuse on hybrid and sliding-window models: how much of each turn of an agent-like
conversation is recomputed when the client sends back the tokens the model generated (its
reply) followed by a new message, for two `wuwei serve` builds in the same run (the build
before end-of-sequence snapshots, given with --old-bin, and this one).

Plain models reuse a reply through its published blocks; hybrid models (recurrent state) and
sliding-window models (windows kept in snapshots) can restore only at a snapshot, which before
this change was the previous prompt's tail: every turn recomputed the previous reply. Now a
sequence ends in a snapshot at its reply's last block boundary.

The conversation goes as token ids through /v1/completions (the reply's ids from the logprobs'
token texts, tests/reference/token_pieces.py; the reply held to ASCII words by a JSON schema):
a random-weight model's reply text is not a canonical tokenization of itself, so re-rendered as chat text it would not match the tokens the
model saw (a real model's reply re-rendered by its chat template mostly does; where a template
rewrites the reply, e.g. dropping its reasoning, reuse stops where the tokens part).

Counts, not speeds: they are deterministic. Writes docs/BENCHMARKS.md section "reply-reuse".

usage: .venv/bin/python bench/reply_reuse.py --old-bin OLD [--bin target/debug/wuwei]
       [--arch qwen3_next|gemma3_text ...] [--turns 10] [--reply-tokens 160]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests/reference"))
from hybrid_turns import WORDS, wait_ready  # noqa: E402
from report import write_section  # noqa: E402
from serve_bench import free_port  # noqa: E402
from token_pieces import ids_of_pieces  # noqa: E402

TOKENIZER = ROOT / ".deps/test-models/SmolLM2-135M-Instruct"
# Replies held to whole ASCII tokens (a JSON string of lowercase words, longer than any reply
# gets): a random model otherwise emits tokens that are part of a UTF-8 character, whose id
# the logprobs' token text does not tell.
REPLY_FORMAT = {"type": "json_schema", "json_schema": {"name": "reply", "schema": {
    "type": "string", "pattern": "^[a-z ]+$", "minLength": 1000}}}


def messages(turns, seed=17):
    """A system prompt, then per turn a task or a tool result (deterministic)."""
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    system = "You are a coding agent. Tools:\n" + "\n".join(
        f"Tool {i}: {words(60)}." for i in range(12))
    out = [system + "\nTask: " + words(80)]
    for t in range(1, turns):
        out.append(f"\nTool result (exit 0):\n{words(rng.randint(60, 240))}\n")
    return out


def make_model(root, arch):
    out = root / f"rand-{arch}"
    subprocess.run([sys.executable, str(ROOT / "tests/reference/make_random_model.py"), arch,
                    str(out), "--dtype", "bfloat16", "--bits", "4", "--group-size", "32",
                    "--tokenizer", str(TOKENIZER), "--set", "max_position_embeddings=16384"],
                   check=True, capture_output=True)
    return out.name


def run_turns(binary, root, model, turns, reply_tokens, interval):
    """One conversation on a fresh daemon; per turn (prompt, cached, reply tokens)."""
    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, WUWEI_ACTIVATIONS="checkpoint", WUWEI_LOG="warn",
               WUWEI_KV_SSD_DIR=str(root / f"kv-{Path(binary).stat().st_ino}-{model}"))
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS"):
        env.pop(var, None)
    if interval:
        env["WUWEI_KV_SNAPSHOT_INTERVAL"] = str(interval)
    proc = subprocess.Popen([binary, "serve", "--port", str(port), "--models", str(root)], env=env)
    rows, ids = [], []
    try:
        wait_ready(url, proc, model)
        for text in turns:
            ids += tok.encode(text, add_special_tokens=False).ids
            r = requests.post(f"{url}/v1/completions", timeout=900, json={
                "model": model, "prompt": ids, "max_tokens": reply_tokens, "temperature": 0,
                "logprobs": 0, "response_format": REPLY_FORMAT})
            r.raise_for_status()
            out = r.json()
            reply = ids_of_pieces(tok, out["choices"][0]["logprobs"]["tokens"])
            if None in reply:
                raise RuntimeError("a generated token is not a whole token's text")
            usage = out["usage"]
            rows.append((usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"],
                         len(reply)))
            ids += reply
    finally:
        proc.terminate()
        proc.wait()
    return rows


def table(arch, old, new):
    lines = [f"**{arch}**", "",
             "| turn | prompt | previous reply | new message | recomputed, before | "
             "recomputed, now |", "|---:|---:|---:|---:|---:|---:|"]
    totals = [0, 0]
    prev_prompt, prev_reply = 0, 0
    for i, ((prompt, c_old, reply), (p_new, c_new, _)) in enumerate(zip(old, new), 1):
        assert prompt == p_new, "both builds must see the same conversation"
        message = prompt - prev_prompt - prev_reply
        r_old, r_new = prompt - c_old, prompt - c_new
        if i > 1:
            totals[0] += r_old
            totals[1] += r_new
        lines.append(f"| {i} | {prompt} | {prev_reply} | {message} | {r_old} | {r_new} |")
        prev_prompt, prev_reply = prompt, reply
    lines.append(f"| turns 2-{len(old)} | | | | {totals[0]} | {totals[1]} "
                 f"({totals[1] / totals[0]:.2f}x) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-bin", required=True)
    ap.add_argument("--bin", default=str(ROOT / "target/debug/wuwei"))
    ap.add_argument("--arch", nargs="+", default=["qwen3_next", "gemma3_text"])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--reply-tokens", type=int, default=160)
    ap.add_argument("--interval", type=int, default=None,
                    help="WUWEI_KV_SNAPSHOT_INTERVAL (default: the engine's)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()

    turns = messages(a.turns)
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for arch in a.arch:
            model = make_model(root, arch)
            old = run_turns(a.old_bin, root, model, turns, a.reply_tokens, a.interval)
            new = run_turns(a.bin, root, model, turns, a.reply_tokens, a.interval)
            sections.append(table(arch, old, new))
            print(sections[-1], flush=True)
    body = "\n\n".join(sections)
    if not a.no_write:
        cmd = "python bench/reply_reuse.py --old-bin OLD" + (
            f" --interval {a.interval}" if a.interval else "")
        write_section(
            "reply-reuse",
            "Hybrid and sliding-window models: the previous reply reused by the next turn",
            cmd,
            body + "\n\nRandom-weight checkpoints written by mlx-lm's classes (bf16, 4-bit "
            "weights), SmolLM2's tokenizer; each turn sends the conversation so far as token "
            f"ids: the previous prompt, the model's reply ({a.reply_tokens} tokens), a new "
            "message. 'recomputed': prompt tokens minus `cached_tokens`. Before: the build "
            "without end-of-sequence snapshots (OLD); now: this one.")


if __name__ == "__main__":
    main()
