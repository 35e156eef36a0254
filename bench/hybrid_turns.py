"""Prefix reuse on a hybrid model over a 10-turn agent-like conversation (issue 16): per turn,
the prompt tokens, the tokens taken from the prefix cache and the tokens recomputed (prompt
minus cached, from `usage.prompt_tokens_details.cached_tokens`), for `wuwei serve` and for
`mlx_lm.server` (mlx-lm 0.32.2 reports its prompt-cache reuse in the same field) in the same
run, on the same random-weight Qwen3-Next checkpoint (written by mlx-lm's own classes, as the
tests do, with SmolLM2's tokenizer and chat template).

The conversation: a long system prompt (tool descriptions, as a coding agent sends), then per
turn a user message or a tool result of a few hundred tokens; each server's own greedy reply
is appended before the next turn, as a client does. "New" is what the prompt grew by since the
previous turn (the previous reply and the new message); the target is that each turn
recomputes at most new + one snapshot interval. Counts, not speeds: they are deterministic.

Writes its table to docs/BENCHMARKS.md (section "hybrid-turns").

usage: .venv/bin/python bench/hybrid_turns.py [--turns 10] [--interval N] [--bin target/debug/wuwei]
       [--no-mlx]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402
from serve_bench import free_port  # noqa: E402

MODEL = "rand-qwen3next-bf16-q4"
# mlx_lm.server, with the shim MLX 0.32.2 needs for mlx-lm's quantized MoE layers.
MLX_LM_SERVER = (
    "import sys; sys.path.insert(0, {ref!r}); import mlx_compat; "
    "from mlx_lm.server import main; sys.argv = ['mlx_lm.server'] + sys.argv[1:]; main()"
)
WORDS = ("file function test error build cache token layer state module return value path "
         "config request stream block index write read commit branch merge patch line").split()


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conversation(turns, seed=16):
    """The system prompt and each turn's new message (deterministic)."""
    rng = random.Random(seed)
    tools = "\n".join(
        f"Tool {i}: {words(rng, 60)}. Parameters: {words(rng, 20)}." for i in range(20))
    system = f"You are a coding agent. You have these tools:\n{tools}"
    messages = []
    for t in range(turns):
        if t % 2:
            messages.append(f"Tool result (exit 0):\n{words(rng, rng.randint(150, 400))}")
        else:
            messages.append(f"Task {t}: {words(rng, rng.randint(30, 120))}")
    return system, messages


def wait_ready(url, proc, model, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/v1/models", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


def run_turns(url, model, system, user_turns, max_tokens):
    """One conversation; per turn (prompt tokens, cached tokens)."""
    messages = [{"role": "system", "content": system}]
    rows = []
    for text in user_turns:
        messages.append({"role": "user", "content": text})
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
        if model:
            body["model"] = model
        r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=900)
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:500]}")
        out = r.json()
        usage = out["usage"]
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        rows.append((usage["prompt_tokens"], cached))
        messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
    return rows


def make_model(root):
    tokenizer = ROOT / ".deps/test-models/SmolLM2-135M-Instruct"
    out = root / MODEL
    subprocess.run([sys.executable, str(ROOT / "tests/reference/make_random_model.py"),
                    "qwen3_next", str(out), "--dtype", "bfloat16", "--bits", "4",
                    "--group-size", "32", "--tokenizer", str(tokenizer),
                    "--set", "max_position_embeddings=16384"],
                   check=True, capture_output=True)
    return out


def table(rows, interval):
    lines = ["| turn | prompt | new | Wuwei cached | Wuwei recomputed | recomputed − new "
             "| mlx_lm.server cached | mlx_lm.server recomputed |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst = 0
    prev = 0
    for i, ((prompt, cached), mlx) in enumerate(rows, 1):
        new = prompt - prev
        recomputed = prompt - cached
        over = recomputed - new if i > 1 else 0
        worst = max(worst, over)
        m = "n/a" if mlx is None else f"{mlx[1]} | {mlx[0] - mlx[1]}"
        if mlx is not None and mlx[0] != prompt:
            m += f" (prompt {mlx[0]})"
        lines.append(f"| {i} | {prompt} | {new} | {cached} | {recomputed} | {over} | {m} |")
        prev = prompt
    return "\n".join(lines), worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--interval", type=int, default=None,
                    help="WUWEI_KV_SNAPSHOT_INTERVAL (default: the engine's)")
    ap.add_argument("--bin", default=str(ROOT / "target/debug/wuwei"))
    ap.add_argument("--no-mlx", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()

    system, turns = conversation(a.turns)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_model(root)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, WUWEI_ACTIVATIONS="checkpoint", WUWEI_KV_SSD_DIR=str(root / "kv"),
                   WUWEI_LOG="warn")
        for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS"):
            env.pop(var, None)
        if a.interval:
            env["WUWEI_KV_SNAPSHOT_INTERVAL"] = str(a.interval)
        proc = subprocess.Popen([a.bin, "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--models", str(root)], env=env)
        try:
            wait_ready(url, proc, MODEL)
            wuwei = run_turns(url, MODEL, system, turns, a.max_tokens)
        finally:
            proc.terminate()
            proc.wait()
        interval = a.interval or 512  # kv::DEFAULT_SNAPSHOT_INTERVAL
        mlx = [None] * len(wuwei)
        if not a.no_mlx:
            port = free_port()
            murl = f"http://127.0.0.1:{port}"
            shim = MLX_LM_SERVER.format(ref=str(ROOT / "tests/reference"))
            mproc = subprocess.Popen([sys.executable, "-c", shim, "--model",
                                      str(model_dir), "--port", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=open(root / "mlx.log", "w"))
            try:
                wait_ready(murl, mproc, None)
                mlx = run_turns(murl, None, system, turns, a.max_tokens)
            except Exception:
                print((root / "mlx.log").read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                mproc.terminate()
                mproc.wait()

    body, worst = table(list(zip(wuwei, mlx)), interval)
    verdict = (f"Snapshot interval {interval} positions (blocks of 32). Worst turn after the "
               f"first: Wuwei recomputed {worst} tokens beyond the new ones "
               f"({'within' if worst <= interval else 'OVER'} one interval, the target).")
    print(body)
    print(verdict)
    if not a.no_write:
        write_section("hybrid-turns", "Hybrid model: tokens recomputed per turn of a 10-turn "
                      "agent conversation vs mlx_lm.server",
                      "python bench/hybrid_turns.py" + (f" --interval {a.interval}" if a.interval else ""),
                      body + "\n\n" + verdict + "\n\n'new': the prompt's growth since the previous "
                      "turn (the previous reply and the new message). mlx_lm.server's figures are its "
                      "own `cached_tokens` (its LRU prompt cache); its replies are its own, so its "
                      "prompts can differ by a few tokens (shown when they do).")


if __name__ == "__main__":
    main()
