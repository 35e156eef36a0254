"""Single-stream decode per model family: `wuwei generate` vs `mlx_lm generate` on random-weight
models of each family's real layer shapes (fewer layers, and fewer experts where a layer's
experts would not fit this machine), quantized as `mlx_lm convert -q` does (tests/reference/
make_random_model.py with the shapes below). Writes docs/BENCHMARKS.md (section "families").

Decode is timed from outside, as bench/moe_bench.py times it: two runs that differ only in
the number of new tokens (N1 < N2), rate = (N2 - N1) / (T2 - T1) over whole-process wall
times, so start-up, loading and prefill cancel. Implementations alternate; medians.

usage: .venv/bin/python bench/family_bench.py [--families gemma3,gemma4,qwen3_next,qwen3_5_moe]
           [--rounds 2] [--n1 8] [--n2 40]
       (build first: cargo build --release --bin wuwei)

The section is rewritten after each family, so a family that fails to build (gpt_oss's
random model was killed for memory on a 23 GB machine, in mlx-lm's model building) leaves
the others' rows.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from moe_bench import PYTHON, TOKENIZER_DIR, decode_rates, run_mlx_lm, run_wuwei  # noqa: E402
from report import write_section  # noqa: E402

# Each family: the architecture in make_random_model.py, its real layer shapes (what the
# overrides say), the quantization its MLX checkpoints ship in, and what was cut.
FAMILIES = {
    "gemma3": dict(
        arch="gemma3_text", what="Gemma 3 4B's layer shapes, 6 layers (5 sliding-window of "
        "1,024 + 1 global)", quant=["--bits", "4", "--group-size", "64"],
        set=dict(hidden_size=2560, num_hidden_layers=6, intermediate_size=10240,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                 query_pre_attn_scalar=256, sliding_window=1024, sliding_window_pattern=6,
                 max_position_embeddings=32768),
    ),
    "gemma4": dict(
        arch="gemma4_text", what="Gemma 4 E2B's layer shapes, 6 layers (4 sliding-window of "
        "512 with 1 KV head of 256, 2 full with a 512-wide head; the last sliding and full "
        "layers read earlier layers' KV; per-layer embeddings)",
        quant=["--bits", "4", "--group-size", "64"],
        set=dict(hidden_size=1536, num_hidden_layers=6, intermediate_size=6144,
                 num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                 global_head_dim=512, hidden_size_per_layer_input=256,
                 vocab_size_per_layer_input=49152, num_kv_shared_layers=2,
                 sliding_window=512, final_logit_softcapping=30.0,
                 layer_types=["sliding_attention"] * 3 + ["full_attention", "sliding_attention",
                                                         "full_attention"],
                 max_position_embeddings=32768),
    ),
    "qwen3_next": dict(
        arch="qwen3_next", what="Qwen3-Next-80B-A3B's layer shapes, 4 layers (3 Gated DeltaNet "
        "+ 1 gated attention), 64 of its 512 experts (top-10 + a shared expert)",
        quant=["--bits", "4", "--group-size", "64"],
        set=dict(hidden_size=2048, num_hidden_layers=4, full_attention_interval=4,
                 intermediate_size=5120, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=256, linear_num_value_heads=32, linear_num_key_heads=16,
                 linear_key_head_dim=128, linear_value_head_dim=128, num_experts=64,
                 num_experts_per_tok=10, moe_intermediate_size=512,
                 shared_expert_intermediate_size=512, mlp_only_layers=[],
                 max_position_embeddings=32768),
    ),
    "qwen3_5_moe": dict(
        arch="qwen3_5_moe", what="Qwen3.5's MoE layout (experts on every layer) on "
        "Qwen3-Next-80B-A3B's layer shapes, 4 layers (3 Gated DeltaNet + 1 gated attention), "
        "64 experts (top-10 + a shared expert)", quant=["--bits", "4", "--group-size", "64"],
        set=dict(hidden_size=2048, num_hidden_layers=4, full_attention_interval=4,
                 intermediate_size=5120, num_attention_heads=16, num_key_value_heads=2,
                 head_dim=256, linear_num_value_heads=32, linear_num_key_heads=16,
                 linear_key_head_dim=128, linear_value_head_dim=128, num_experts=64,
                 num_experts_per_tok=10, moe_intermediate_size=512,
                 shared_expert_intermediate_size=512, max_position_embeddings=32768),
    ),
    "gpt_oss": dict(
        arch="gpt_oss", what="gpt-oss-20b's layer shapes, 2 layers (sliding-window of 128 + "
        "full), 8 of its 32 experts (top-4), mxfp4 as published",
        quant=["--mode", "mxfp4"],
        set=dict(hidden_size=2880, num_hidden_layers=2, intermediate_size=2880,
                 num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                 num_local_experts=8, num_experts_per_tok=4, sliding_window=128,
                 layer_types=["sliding_attention", "full_attention"],
                 max_position_embeddings=32768),
    ),
}


def make_model(name, family):
    out = ROOT / f"target/bench-models/family-{name}"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    cmd = [str(PYTHON), str(ROOT / "tests/reference/make_random_model.py"), family["arch"],
           str(tmp), "--tokenizer", str(TOKENIZER_DIR), *family["quant"]]
    for key, value in family["set"].items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    subprocess.run(cmd, check=True)
    tmp.rename(out)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="gemma3,gemma4,qwen3_next,qwen3_5_moe")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n1", type=int, default=8)
    ap.add_argument("--n2", type=int, default=40)
    a = ap.parse_args()

    runners = {
        "mlx-lm": run_mlx_lm,
        "wuwei native": lambda m, n: run_wuwei(m, n, "native"),
        "wuwei auto": lambda m, n: run_wuwei(m, n, "auto"),
    }
    lines = ["| family | mlx-lm tok/s | Wuwei native tok/s | vs mlx-lm | Wuwei auto tok/s | vs mlx-lm |",
             "|---|---|---|---|---|---|"]
    notes = []
    for name in a.families.split(","):
        family = FAMILIES[name]
        model = make_model(name, family)
        rates, _ = decode_rates(model, runners, a.rounds, a.n1, a.n2, f"{name} ")
        med = {k: statistics.median(v) for k, v in rates.items()}
        ref = med["mlx-lm"]
        lines.append(f"| {name} | {ref:.2f} | {med['wuwei native']:.2f} | "
                     f"{med['wuwei native'] / ref:.2f}x | {med['wuwei auto']:.2f} | "
                     f"{med['wuwei auto'] / ref:.2f}x |")
        notes.append(f"- {name}: {family['what']}; `{' '.join(family['quant'])}`.")
        write(a, lines, notes)


def write(a, lines, notes):
    body = "\n".join(lines) + "\n\nModels (random weights through mlx-lm's classes, SmolLM2's " \
        "tokenizer and vocabulary):\n" + "\n".join(notes) + (
        f"\n\nWuwei native: weights as stored, the same kernels as mlx-lm (the GPU "
        f"configuration's weights; activations float32 on this CPU as the CPU levers choose, "
        f"which also split the single-threaded quantized matmuls over two CPU streams); auto: "
        f"what `wuwei serve` picks here (dense layers expanded for OpenBLAS, expert stacks as "
        f"stored). Rates: (N2 - N1) / (T2 - T1) over whole-process wall times, N1 = {a.n1}, "
        f"N2 = {a.n2} new tokens, {a.rounds} alternating rounds, medians.")
    print(body)
    write_section("families", "Single-stream decode per model family vs mlx-lm",
                  f".venv/bin/python bench/family_bench.py --families {a.families} "
                  f"--rounds {a.rounds} --n1 {a.n1} --n2 {a.n2}", body)


if __name__ == "__main__":
    main()
