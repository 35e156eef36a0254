"""Mixture-of-Experts decode speed: `wuwei generate` vs `mlx_lm generate` single-stream, and
`wuwei serve` with 8 concurrent streams vs 1, on a random-weight qwen3_moe with
Qwen3-30B-A3B's layer shapes (hidden 2048, 32 query / 4 KV heads of 128, 128 experts of 768,
top-8) but few layers, quantized as `mlx_lm convert -q` does (4-bit affine, 8-bit routers).
Writes docs/BENCHMARKS.md (section "moe").

Single-stream decode is timed from outside: the wall time of two runs that differ only in
the number of new tokens (N1 < N2), so process start-up, loading and prefill cancel:
rate = (N2 - N1) / (T2 - T1). Runs alternate between the two implementations; medians.

usage: .venv/bin/python bench/moe_bench.py [--layers 4] [--rounds 3] [--n1 16] [--n2 80]
           [--streams 8] [--serve-tokens 48] [--serve-weights native,dequantized]
           [--serve-rounds 2] [--skip-serve]
       (build first: cargo build --release --bin wuwei)
"""
import argparse
import json
import os
import re
import shutil
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

TOKENIZER_DIR = ROOT / ".deps/test-models/SmolLM2-135M-Instruct"
WUWEI = ROOT / "target/release/wuwei"
PYTHON = ROOT / ".venv/bin/python"
PROMPT = ("The history of the printing press begins in the fifteenth century, when movable type "
          "changed the way books were made, sold and read across Europe. Continue:")
PROMPTS = [f"Tell me story number {i} about a traveller who crosses a desert and a sea." for i in range(16)]

# mlx_lm generate, with the shim MLX 0.32.2 needs for mlx-lm's quantized MoE layers.
MLX_LM_GENERATE = (
    "import sys; sys.path.insert(0, {ref!r}); import mlx_compat; "
    "from mlx_lm.generate import main; sys.argv = ['mlx_lm.generate'] + sys.argv[1:]; main()"
)


def qwen3_30b_a3b_shape(layers, vocab):
    return dict(
        model_type="qwen3_moe", hidden_size=2048, num_hidden_layers=layers,
        intermediate_size=6144, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        rms_norm_eps=1e-6, vocab_size=vocab, num_experts=128, num_experts_per_tok=8,
        decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=768,
        norm_topk_prob=True, rope_theta=1000000.0, tie_word_embeddings=False,
        max_position_embeddings=40960,
    )


def make_model(out, layers, bits, group_size):
    """Random weights through mlx-lm's own classes, quantized as mlx_lm convert does; the
    SmolLM2 tokenizer (its vocabulary sets the model's)."""
    if (out / "config.json").exists():
        return
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3_moe
    from mlx_lm.utils import quantize_model
    sys.path.insert(0, str(ROOT / "tests/reference"))
    from make_random_model import scale_of

    vocab = json.loads((TOKENIZER_DIR / "config.json").read_text())["vocab_size"]
    config = qwen3_30b_a3b_shape(layers, vocab)
    mx.random.seed(0)
    model = qwen3_moe.Model(qwen3_moe.ModelArgs.from_dict(config))
    params = tree_flatten(model.parameters())
    model.load_weights([(k, mx.random.normal(v.shape) * scale_of(k, v) + (1.0 if "norm" in k else 0.0))
                        for k, v in params])
    model, config = quantize_model(model, config, group_size=group_size, bits=bits)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    src = json.loads((TOKENIZER_DIR / "config.json").read_text())
    for k in ("bos_token_id", "eos_token_id"):
        if k in src:
            config[k] = src[k]
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (TOKENIZER_DIR / f).exists():
            shutil.copy(TOKENIZER_DIR / f, tmp / f)
    tmp.rename(out)


def timed(cmd):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def run_wuwei(model, n, weights):
    wall, out = timed([str(WUWEI), "generate", "--model", str(model), "--prompt", PROMPT,
                       "--max-tokens", str(n), "--weights", weights, "--quiet"])
    m = re.search(r"generation: (\d+) tokens, ([\d.]+) tok/s", out)
    return wall, int(m[1]), float(m[2])


def run_mlx_lm(model, n):
    code = MLX_LM_GENERATE.format(ref=str(ROOT / "tests/reference"))
    wall, out = timed([str(PYTHON), "-c", code, "--model", str(model), "--prompt", PROMPT,
                       "--max-tokens", str(n), "--ignore-chat-template"])
    m = re.search(r"Generation: (\d+) tokens, ([\d.]+) tokens-per-sec", out)
    return wall, int(m[1]), float(m[2])


def decode_rates(model, runners, rounds, n1, n2, label=""):
    """Each runner's decode rate per round, (N2 - N1) / (T2 - T1) over two runs that differ
    only in new tokens, the runners alternating within a round; and their self-reported
    rates. Fails if a run stops early."""
    rates = {k: [] for k in runners}
    reported = {k: [] for k in runners}
    for r in range(rounds):
        for name, run in runners.items():
            t1, g1, _ = run(model, n1)
            t2, g2, rep = run(model, n2)
            if (g1, g2) != (n1, n2):
                raise RuntimeError(f"{label}{name} stopped early: {g1}/{n1}, {g2}/{n2} tokens")
            rates[name].append((n2 - n1) / (t2 - t1))
            reported[name].append(rep)
        print(f"{label}round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {v[-1]:.2f} tok/s (self-reported {reported[k][-1]:.2f})"
            for k, v in rates.items()), flush=True)
    return rates, reported


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_stream(url, model, prompt, max_tokens, out):
    t0 = time.perf_counter()
    first, usage = None, None
    with requests.post(f"{url}/v1/chat/completions", stream=True, timeout=1800, json={
        "model": model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    end = time.perf_counter()
    out.append(dict(tokens=usage["completion_tokens"], start=t0, first=first or end, end=end))


def concurrent(url, model, streams, max_tokens):
    """Aggregate tokens/s of `streams` simultaneous requests (wall time of the whole burst,
    prefill included), and the decode rate once all have their first token."""
    results, threads = [], []
    t0 = time.perf_counter()
    for i in range(streams):
        t = threading.Thread(target=one_stream, args=(url, model, PROMPTS[i], max_tokens, results))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    return tokens / wall, tokens


def serve_ratio(model, streams, max_tokens, rounds, weights):
    port = free_port()
    env = dict(os.environ, WUWEI_LOG="warn", WUWEI_WEIGHTS=weights)
    proc = subprocess.Popen([str(WUWEI), "serve", "--port", str(port), "--models", str(model.parent),
                             "--default-model", model.name],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"wuwei serve exited with {proc.returncode}")
            try:
                requests.post(f"{url}/v1/chat/completions", timeout=600, json={
                    "model": model.name, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        single, multi = [], []
        for r in range(rounds):
            single.append(concurrent(url, model.name, 1, max_tokens)[0])
            multi.append(concurrent(url, model.name, streams, max_tokens)[0])
            print(f"serve ({weights}) round {r + 1}: 1 stream {single[-1]:.2f} tok/s, "
                  f"{streams} streams {multi[-1]:.2f} tok/s", flush=True)
        return statistics.median(single), statistics.median(multi)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n1", type=int, default=16)
    ap.add_argument("--n2", type=int, default=80)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--serve-tokens", type=int, default=48)
    ap.add_argument("--serve-weights", default="native,dequantized")
    ap.add_argument("--serve-rounds", type=int, default=2)
    ap.add_argument("--skip-serve", action="store_true")
    a = ap.parse_args()

    model = ROOT / f"target/bench-models/qwen3-moe-30b-a3b-shape-{a.layers}l-q{a.bits}"
    make_model(model, a.layers, a.bits, a.group_size)

    runners = {
        "mlx-lm": run_mlx_lm,
        "wuwei native": lambda m, n: run_wuwei(m, n, "native"),
        "wuwei dequantized": lambda m, n: run_wuwei(m, n, "dequantized"),
    }
    rates, reported = decode_rates(model, runners, a.rounds, a.n1, a.n2)
    med = {k: statistics.median(v) for k, v in rates.items()}
    rep = {k: statistics.median(v) for k, v in reported.items()}
    ratio = med["wuwei native"] / med["mlx-lm"]

    lines = ["| implementation | decode tok/s (wall-time difference, median) | self-reported decode tok/s (median) | vs mlx-lm |",
             "|---|---|---|---|"]
    for k in runners:
        lines.append(f"| {k} | {med[k]:.2f} | {rep[k]:.2f} | {med[k] / med['mlx-lm']:.2f}x |")
    summary = [f"- Single-stream decode: Wuwei (native weights, the same kernels) {ratio:.2f}x mlx-lm "
               f"(target >= 1.0x); with `--weights dequantized` (attention and head in float32 "
               f"through BLAS, experts as stored) {med['wuwei dequantized'] / med['mlx-lm']:.2f}x."]
    if not a.skip_serve:
        lines += ["", "| `wuwei serve` weights | 1 stream aggregate tok/s | "
                  f"{a.streams} streams aggregate tok/s | ratio |", "|---|---|---|---|"]
        for weights in a.serve_weights.split(","):
            single, multi = serve_ratio(model, a.streams, a.serve_tokens, a.serve_rounds, weights)
            lines.append(f"| {weights} | {single:.2f} | {multi:.2f} | {multi / single:.2f}x |")
            summary.append(f"- `wuwei serve --weights {weights}`: {a.streams} concurrent streams "
                           f"{multi / single:.2f}x one stream (target >= 3x).")
        summary.append(f"  Aggregate = tokens streamed / wall time of the burst, prefill included, "
                       f"{a.serve_tokens} new tokens per stream, medians of {a.serve_rounds} rounds.")
    body = "\n".join(lines) + "\n\n" + "\n".join(summary) + (
        f"\n\nModel: random-weight `qwen3_moe` with Qwen3-30B-A3B's layer shapes and {a.layers} layers "
        f"(vocabulary {json.loads((model / 'config.json').read_text())['vocab_size']}, SmolLM2's tokenizer), "
        f"{a.bits}-bit affine (groups of {a.group_size}) with 8-bit routers, made with mlx-lm's classes and "
        f"`quantize_model`. Decode rates: (N2 - N1) / (T2 - T1) over whole-process wall "
        f"times with N1 = {a.n1} and N2 = {a.n2} new tokens, {a.rounds} alternating rounds.")
    print(body)
    write_section("moe", "Mixture-of-Experts decode: qwen3_moe (Qwen3-30B-A3B shapes)",
                  f".venv/bin/python bench/moe_bench.py --layers {a.layers} --rounds {a.rounds} "
                  f"--n1 {a.n1} --n2 {a.n2} --streams {a.streams} --serve-tokens {a.serve_tokens} "
                  f"--serve-weights {a.serve_weights} --serve-rounds {a.serve_rounds}"
                  + (" --skip-serve" if a.skip_serve else ""),
                  body)


if __name__ == "__main__":
    main()
