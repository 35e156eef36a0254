"""Decode and prefill speed of `wuwei generate` against `mlx_lm generate`, same model, same
MLX build, runs alternating so that machine noise hits both alike. Writes a table to
docs/BENCHMARKS.md (section "generate").

Two decode figures: what each program prints, and one timed from outside — the wall time of a
run of --max-tokens new tokens minus that of a run of a quarter as many, over the tokens in
between — so that start-up, loading and prefill cancel and neither program's own clock is
trusted.

usage: .venv/bin/python bench/generate_bench.py [--model DIR] [--rounds N] [--max-tokens N]
       (build first: cargo build --release)
"""
import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from report import write_section  # noqa: E402

# A raw (no chat template) prompt of ~300 tokens that the model continues at length.
PROMPT = (
    "The history of the printing press begins in the fifteenth century. "
    * 1
    + " ".join(
        f"In chapter {i}, the author describes how movable type changed the way books were "
        f"made, sold and read across Europe, and how printers in each city competed."
        for i in range(1, 12)
    )
    + " Continue the story in detail:"
)


def timed(cmd):
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return out, time.monotonic() - t


def run_wuwei(model, max_tokens, weights):
    out, wall = timed(
        [str(ROOT / "target/release/wuwei"), "generate", "--model", str(model),
         "--prompt", PROMPT, "--max-tokens", str(max_tokens), "--quiet", "--weights", weights])
    m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tok/s \| generation: (\d+) tokens, ([\d.]+) tok/s", out)
    return dict(prompt_tokens=int(m[1]), prefill=float(m[2]), gen_tokens=int(m[3]), decode=float(m[4]),
                wall=wall)


def run_mlx_lm(model, max_tokens):
    out, wall = timed(
        [str(ROOT / ".venv/bin/python"), "-m", "mlx_lm", "generate", "--model", str(model),
         "--prompt", PROMPT, "--max-tokens", str(max_tokens), "--ignore-chat-template"])
    p = re.search(r"Prompt: (\d+) tokens, ([\d.]+) tokens-per-sec", out)
    g = re.search(r"Generation: (\d+) tokens, ([\d.]+) tokens-per-sec", out)
    return dict(prompt_tokens=int(p[1]), prefill=float(p[2]), gen_tokens=int(g[1]), decode=float(g[2]),
                wall=wall)


def outside(long, short):
    """Decode tok/s from two runs' wall times: the tokens between them over the time between."""
    extra = long["gen_tokens"] - short["gen_tokens"]
    return extra / max(long["wall"] - short["wall"], 1e-9) if extra > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / ".deps/test-models/SmolLM2-135M-Instruct"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()

    impls = {
        "mlx-lm": lambda n: run_mlx_lm(a.model, n),
        "wuwei native": lambda n: run_wuwei(a.model, n, "native"),
        "wuwei dequantized": lambda n: run_wuwei(a.model, n, "dequantized"),
    }
    runs = {k: [] for k in impls}
    short_tokens = max(a.max_tokens // 4, 1)
    for r in range(a.rounds):
        for k, run in impls.items():
            long, short = run(a.max_tokens), run(short_tokens)
            runs[k].append(dict(long, outside=outside(long, short)))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{k} {v[-1]['decode']:.1f}/{v[-1]['outside']:.1f}/{v[-1]['prefill']:.0f}"
            for k, v in runs.items()), flush=True)

    metrics = ("prefill", "decode", "outside")
    med = {k: {m: statistics.median(x[m] for x in v) for m in metrics} for k, v in runs.items()}
    ref = med["mlx-lm"]
    rows = ["| implementation | prompt tokens | prefill tok/s (median) | decode tok/s, printed (median) "
            "| decode tok/s, timed from outside (median) | prefill vs mlx-lm | decode vs mlx-lm (outside) |",
            "|---|---|---|---|---|---|---|"]
    for k, v in med.items():
        rows.append(f"| {k} | {runs[k][0]['prompt_tokens']} | {v['prefill']:.1f} | {v['decode']:.1f} | "
                    f"{v['outside']:.1f} | {v['prefill'] / ref['prefill']:.2f}x | "
                    f"{v['outside'] / ref['outside']:.2f}x |")
    table = "\n".join(rows)
    print(table)
    write_section(
        "generate",
        "Single-stream decode and prefill: `wuwei generate` vs `mlx_lm generate`",
        f".venv/bin/python bench/generate_bench.py --rounds {a.rounds} --max-tokens {a.max_tokens}",
        table + f"\n\nModel: `{Path(a.model).name}`; {a.rounds} alternating rounds, {a.max_tokens} new tokens "
        f"(and {short_tokens} for the outside timing), greedy; medians.",
    )


if __name__ == "__main__":
    main()
