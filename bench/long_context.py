"""Long prompts: time to first token (TTFT, hence prefill speed) and decode speed at that
length, for `wuwei serve` (timed by the client over HTTP, server warm, prefix cache off),
mlx-lm (`mlx_lm.stream_generate` in its own process on the same weights, timed around the call,
model load and a short warm-up generation excluded) and llama.cpp on the GGUF where there is
one (llama-cpp-python's `Llama.generate` in its own process, all cores, flash attention on,
timed the same way), one after another per prompt length in one run. The same token ids go
to all: a raw completion (no chat template) of random words cut to the length.

llama.cpp is optional: `pip install llama-cpp-python==0.3.36` into .venv (it compiles
llama.cpp for this CPU, ~15 minutes on 2 cores); without it its rows are left out.
`--context N` serves a copy of the model with its context raised to N (and gives mlx-lm and
llama.cpp the same), for prompts past the trained 8k; `--engines` picks which engines run.
Writes its table to docs/BENCHMARKS.md (section "long-context").

With --claude-code, also replays Claude Code's first request of a session (recorded by
tests/e2e/test_claude_code.py into artifacts/claude_code/long_context.json: its system prompt,
tools and message, ~12k tokens) to `wuwei serve` over the Anthropic API on the same model with
its context raised to 32k in a copy of its config (as the issue measured it), prefix cache off,
and reports the time to its first token.

usage: .venv/bin/python bench/long_context.py [--lengths 2000,8000] [--max-tokens 32]
       [--model DIR] [--gguf FILE] [--context N] [--engines wuwei,mlx-lm,llama.cpp]
       [--bin target/release/wuwei] [--kv-bits N] [--claude-code [JSON]] [--section NAME]
       (build first: cargo build --release --bin wuwei)
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = ROOT / ".deps/SmolLM2-135M-Instruct.Q4_1.gguf"
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402
from serve_bench import free_port  # noqa: E402

MLX_LM = r"""
import json, sys, time
import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
spec = json.loads(sys.stdin.read())
model, tok = load(spec["model"])
if spec.get("dequantize"):
    # Wuwei's `weights = auto` on the CPU: quantized layers expanded to floats (BLAS matmuls).
    from mlx_lm.utils import dequantize_model
    model = dequantize_model(model)
    mx.eval(model.parameters())
ids = spec["prompt"]
kw = {}
if spec.get("kv_bits"):
    kw = dict(kv_bits=spec["kv_bits"], kv_group_size=64,
              quantized_kv_start=spec.get("kv_start", 0))
# Warm-up (as the server's first request): MLX builds its CPU kernels on first use.
for _ in stream_generate(model, tok, ids[:16], max_tokens=2, sampler=make_sampler(0.0), **kw):
    pass
t0 = time.perf_counter()
first, n, last = None, 0, None
for r in stream_generate(model, tok, ids, max_tokens=spec["max_tokens"],
                         sampler=make_sampler(0.0), **kw):
    now = time.perf_counter()
    if first is None:
        first = now
    n = r.generation_tokens
    last = now
print(json.dumps(dict(ttft=first - t0, tokens=n,
                      decode=(n - 1) / (last - first) if n > 1 and last > first else float("nan"))))
"""


LLAMA_CPP = r"""
import json, os, sys, time
from llama_cpp import Llama
spec = json.loads(sys.stdin.read())
ids = spec["prompt"]
llm = Llama(model_path=spec["gguf"], n_ctx=len(ids) + spec["max_tokens"] + 64,
            n_threads=os.cpu_count(), n_threads_batch=os.cpu_count(), flash_attn=True,
            seed=0, verbose=False)
def run(tokens, max_tokens):
    llm.reset()
    first, n, last = None, 0, None
    t0 = time.perf_counter()
    for _ in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        now = time.perf_counter()
        first = first or now
        last = now
        n += 1
        if n >= max_tokens:
            break
    return t0, first, n, last
run(ids[:16], 2)  # warm-up, as the others
t0, first, n, last = run(ids, spec["max_tokens"])
print(json.dumps(dict(ttft=first - t0, tokens=n,
                      decode=(n - 1) / (last - first) if n > 1 and last > first else float("nan"))))
"""


def prompt_ids(tokenizer, length, seed):
    """`length` token ids of random words that detokenize and retokenize to themselves."""
    rng = random.Random(seed)
    words = [w.strip() for w in (ROOT / "README.md").read_text().split() if w.isalpha()]
    text = " ".join(rng.choice(words) for _ in range(length * 2))
    ids = tokenizer.encode(text)[:length]
    # Cut at a word boundary that round-trips, so the server tokenizes the text to these ids.
    for cut in range(length, length - 64, -1):
        text = tokenizer.decode(ids[:cut])
        again = tokenizer.encode(text)
        if again == ids[:cut]:
            return text, again
    return tokenizer.decode(ids), ids


def wuwei_run(url, model, text, max_tokens):
    t0 = time.perf_counter()
    stamps, usage = [], None
    with requests.post(f"{url}/v1/completions", stream=True, timeout=3600, json={
        "model": model, "prompt": text, "stream": True, "temperature": 0, "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                stamps.append(now)
            if chunk.get("usage"):
                usage = chunk["usage"]
    n = usage["completion_tokens"] if usage else len(stamps)
    return dict(ttft=stamps[0] - t0, tokens=n, prompt_tokens=usage and usage["prompt_tokens"],
                decode=(n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else float("nan"))


def mlx_run(model_dir, ids, max_tokens, kv_bits, dequantize, kv_start=0):
    spec = dict(model=str(model_dir), prompt=ids, max_tokens=max_tokens, kv_bits=kv_bits,
                dequantize=dequantize, kv_start=kv_start)
    # The spec on stdin: a 32k-token prompt is past the kernel's limit for one argument.
    out = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", MLX_LM], input=json.dumps(spec),
                         capture_output=True, text=True, check=True, env=mlx_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_cpp_run(gguf, ids, max_tokens):
    spec = dict(gguf=str(gguf), prompt=ids, max_tokens=max_tokens)
    out = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", LLAMA_CPP], input=json.dumps(spec),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def have_llama_cpp():
    return subprocess.run([str(ROOT / ".venv/bin/python"), "-c", "import llama_cpp"],
                          capture_output=True).returncode == 0


def with_context(model_dir, context, tmp):
    """A copy of `model_dir` (links to its files) whose config allows `context` positions."""
    folder = Path(tmp) / "models" / f"{model_dir.name}-{context // 1024}k"
    folder.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f.resolve())
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = context
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# The mlx CPU wheel's own BLAS is a slow reference one (a 200-token prefill of SmolLM2 took
# 40 s with it, 6.4 s with OpenBLAS, measured); Wuwei links OpenBLAS. Give mlx-lm the same.
OPENBLAS = Path("/lib/x86_64-linux-gnu/libopenblas.so.0")


def mlx_env():
    env = dict(os.environ)
    if OPENBLAS.exists():
        env["LD_PRELOAD"] = str(OPENBLAS)
    return env


CLAUDE_CODE_RECORDING = ROOT / "artifacts/claude_code/long_context.json"


def claude_code_replay(binary, model_dir, recording):
    """TTFT of Claude Code's recorded first request, streamed as Claude Code asks for it."""
    import tempfile

    exchanges = json.loads(Path(recording).read_text())["exchanges"]
    body = max((e["body"] for e in exchanges if e["path"].startswith("/v1/messages")),
               key=lambda b: len(json.dumps(b)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = with_context(model_dir, 32768, tmp)
        server, url = start_wuwei(binary, folder)
        try:
            body = dict(body, model=folder.name, max_tokens=8, stream=True)
            load = load_avg()
            t0 = time.perf_counter()
            first, input_tokens = None, None
            with requests.post(f"{url}/v1/messages", json=body, stream=True, timeout=3600,
                               headers={"anthropic-version": "2023-06-01"}) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("type") == "message_start":
                        input_tokens = event["message"]["usage"]["input_tokens"]
                    if event.get("type") == "content_block_delta" and first is None:
                        first = time.perf_counter()
            return dict(ttft=(first or time.perf_counter()) - t0, input_tokens=input_tokens, load=load)
        finally:
            server.terminate()
            server.wait(timeout=30)


def start_wuwei(binary, folder, env=None):
    """`wuwei serve` of the model in `folder`, prefix cache off, once it answers a completion:
    (its process, its URL)."""
    port = free_port()
    env = dict(os.environ, WUWEI_LOG="warn", WUWEI_KV_CACHE="false", **(env or {}))
    server = subprocess.Popen([binary, "serve", "--port", str(port), "--models", str(folder.parent),
                               "--default-model", folder.name],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            wuwei_run(url, folder.name, "Hello there", 2)
            return server, url
        except requests.RequestException:
            if server.poll() is not None or time.monotonic() > deadline:
                server.terminate()
                raise RuntimeError("wuwei serve did not start")
            time.sleep(0.5)


def load_avg():
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2000,8000")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default=str(ROOT / ".deps/test-models/SmolLM2-135M-Instruct"))
    ap.add_argument("--gguf", default=str(DEFAULT_GGUF),
                    help="the same model as GGUF, for llama.cpp (default: SmolLM2's, the "
                         "file the MLX-format test model is converted from)")
    ap.add_argument("--context", type=int, default=0,
                    help="serve a copy of the model with its context raised to this")
    ap.add_argument("--engines", default="wuwei,mlx-lm,llama.cpp")
    ap.add_argument("--bin", default=str(ROOT / "target/release/wuwei"))
    ap.add_argument("--kv-bits", type=int, default=0)
    ap.add_argument("--mlx-kv-start", type=int, default=0,
                    help="mlx-lm's quantized_kv_start with --kv-bits (0: quantized from the start, "
                         "as Wuwei; past most of the prompt: a float prefill, then quantized decode)")
    ap.add_argument("--mlx-quantized", action="store_true",
                    help="mlx-lm keeps quantized weights as stored (default: dequantized, as Wuwei's auto)")
    ap.add_argument("--claude-code", nargs="?", const=str(CLAUDE_CODE_RECORDING), default=None,
                    help="also replay Claude Code's recorded first request (default recording: "
                         "artifacts/claude_code/long_context.json, written by the e2e tests)")
    ap.add_argument("--section", default=None,
                    help="the BENCHMARKS.md section to write (default: long-context, or "
                         "long-context-Nk with --context)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    import tempfile
    model_dir = Path(a.model)
    lengths = [int(x) for x in a.lengths.split(",")]
    engines = a.engines.split(",")
    gguf = Path(a.gguf)
    if "llama.cpp" in engines and not (gguf.exists() and have_llama_cpp()):
        print("llama.cpp left out: no llama-cpp-python in .venv or no GGUF", file=sys.stderr)
        engines.remove("llama.cpp")
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    tmp = tempfile.TemporaryDirectory()
    served = with_context(model_dir, a.context, tmp.name) if a.context else model_dir
    rows = []
    server, url = None, None
    if "wuwei" in engines:
        env = {"WUWEI_KV_BITS": str(a.kv_bits)} if a.kv_bits else None
        server, url = start_wuwei(a.bin, served, env)
    try:
        for i, length in enumerate(lengths):
            text, ids = prompt_ids(tokenizer, length, seed=i)
            runs = {
                "wuwei serve": ("wuwei", lambda: wuwei_run(url, served.name, text, a.max_tokens)),
                "mlx-lm": ("mlx-lm", lambda: mlx_run(model_dir, ids, a.max_tokens, a.kv_bits,
                                                     not a.mlx_quantized, a.mlx_kv_start)),
                "llama.cpp": ("llama.cpp", lambda: llama_cpp_run(gguf, ids, a.max_tokens)),
            }
            for name, (engine, run) in runs.items():
                if engine not in engines:
                    continue
                load = load_avg()
                r = run()
                r.update(name=name, length=len(ids), prefill=len(ids) / r["ttft"], load=load)
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
        tmp.cleanup()

    lines = ["| prompt tokens | engine | TTFT (s) | prefill tok/s | decode tok/s | tokens | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['name']} | {r['ttft']:.1f} | {r['prefill']:.0f} | "
                     f"{r['decode']:.1f} | {r['tokens']} | {r['load']:.1f} |")
    ratios = []
    for length in sorted({r["length"] for r in rows}):
        w = next((r for r in rows if r["length"] == length and r["name"] == "wuwei serve"), None)
        if not w:
            continue
        parts = []
        for other, target in (("mlx-lm", "prefill target >= 1.5x at 8k and 32k, decode >= 1.0x"),
                              ("llama.cpp", "prefill target >= 1.0x")):
            o = next((r for r in rows if r["length"] == length and r["name"] == other), None)
            if o:
                parts.append(f"prefill {w['prefill'] / o['prefill']:.2f}x {other}, decode "
                             f"{w['decode'] / o['decode']:.2f}x ({target})")
        if parts:
            ratios.append(f"- {length} tokens: Wuwei " + "; ".join(parts) + ".")
    body = "\n".join(lines) + "\n\n" + "\n".join(ratios) + (
        f"\n\nModel `{model_dir.name}`"
        + (f" with its context raised to {a.context} in a copy of its config" if a.context else "")
        + ", raw completion of random README words (the same ids to every engine), "
        f"greedy, up to {a.max_tokens} new tokens; Wuwei's prefix cache off"
        + (f", KV {a.kv_bits}-bit in both" if a.kv_bits else "")
        + (f" (mlx-lm's from position {a.mlx_kv_start}: its prefill runs on float KV)"
           if a.kv_bits and a.mlx_kv_start else "")
        + f"; Wuwei binary `{Path(a.bin).name}`, default weights/activations (auto: float32, quantized layers expanded)")
    if "mlx-lm" in engines:
        body += ("; mlx-lm " + ("with the weights as stored" if a.mlx_quantized else
                 "with the weights dequantized in-process (`mlx_lm.utils.dequantize_model`, the "
                 "same float32 matrices)")
                 + (", OpenBLAS preloaded" if OPENBLAS.exists() else "")
                 + ", `stream_generate` defaults (prefill_step_size 2048)")
    if "llama.cpp" in engines:
        what = ("the GGUF the test model is converted from" if gguf == DEFAULT_GGUF else
                "the same weights written as GGUF by bench/mlx_to_gguf.py")
        body += (f"; llama.cpp: llama-cpp-python on `{gguf.name}` ({what}), all cores, flash "
                 "attention on, n_batch 512")
    body += (". One run per length and engine, in the table's order; the load column is the "
             "1-minute load average when each started (other jobs share these cores, so compare "
             "ratios within a length).")
    if a.claude_code:
        cc = claude_code_replay(a.bin, model_dir, a.claude_code)
        print(json.dumps(cc), flush=True)
        body += (f"\n\nClaude Code's recorded first request ({cc['input_tokens']} prompt tokens after "
                 f"Wuwei's chat template), replayed over the Anthropic API to `{model_dir.name}` with "
                 f"its context raised to 32k, prefix cache off: **TTFT {cc['ttft']:.1f} s** "
                 f"({cc['input_tokens'] / cc['ttft']:.0f} tok/s; load {cc['load']:.1f}). The issue "
                 "measured ~6.5 minutes for the same kind of request (11,860 tokens) before the "
                 "long-context work.")
    print(body)
    if not a.no_write:
        cmd = f".venv/bin/python bench/long_context.py --lengths {a.lengths} --max-tokens {a.max_tokens}"
        if a.context:
            cmd += f" --context {a.context}"
        if a.engines != "wuwei,mlx-lm,llama.cpp":
            cmd += f" --engines {a.engines}"
        if a.kv_bits:
            cmd += f" --kv-bits {a.kv_bits}"
        if a.mlx_kv_start:
            cmd += f" --mlx-kv-start {a.mlx_kv_start}"
        if a.claude_code:
            cmd += " --claude-code"
        # Prompts past the trained context get a section of their own.
        key, title = "long-context", "Long context: TTFT and decode vs mlx-lm and llama.cpp"
        if a.context:
            key += f"-{a.context // 1024}k"
            title += f" (context raised to {a.context // 1024}k)"
        if a.section:
            key, title = a.section, f"Long context: {model_dir.name}"
            cmd += f" --model {a.model} --section {a.section}"
        if "llama.cpp" in engines and gguf != DEFAULT_GGUF:
            cmd += f" --gguf {a.gguf}"
        write_section(key, title, cmd, body)


if __name__ == "__main__":
    main()
