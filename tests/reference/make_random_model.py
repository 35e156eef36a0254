"""Writes a small random-weight model with mlx-lm's own classes, so that Wuwei's
implementation of the same architecture can be compared with mlx-lm's, logit for logit.

usage: make_random_model.py ARCH OUT_DIR [--bits N] [--group-size G] [--mode M] [--seed S]
                            [--dtype float32|bfloat16|float16] [--tokenizer DIR]

Quantized models are quantized as `mlx_lm convert -q` does it (mlx_lm.utils.quantize_model with
the model's own quant_predicate: MoE routers stay 8-bit affine), with `--mode` affine, mxfp4,
mxfp8 or nvfp4.
--dtype writes the checkpoint in that dtype, as published bf16/fp16 models are (quantized
layers then keep their scales and biases in it, as `nn.quantize` of such a model does; what
the model's `cast_predicate` exempts, such as MoE score-correction biases, stays float32, as
mlx_lm convert keeps it).
--tokenizer DIR makes a servable model: the vocabulary and tokenizer files of DIR (an MLX
model folder), with the rows of its special tokens zeroed in the output head so that greedy
decoding of random weights does not stop at once.
"""
import argparse
import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import quantize_model

CONFIGS = {
    "llama": dict(
        model_type="llama", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=512,
        rope_theta=10000.0, tie_word_embeddings=False, max_position_embeddings=2048,
    ),
    "llama3": dict(
        model_type="llama", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=512,
        rope_theta=500000.0, tie_word_embeddings=True, max_position_embeddings=131072,
        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192, rope_type="llama3"),
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=512,
        rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "qwen3": dict(
        model_type="qwen3", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=512,
        head_dim=64, rope_theta=1000000.0, tie_word_embeddings=False,
        max_position_embeddings=40960,
    ),
    # Mixture-of-Experts: a few layers, a few experts, the routing features each one has.
    # Layer 1 of qwen3_moe is a dense MLP (mlp_only_layers).
    "qwen3_moe": dict(
        model_type="qwen3_moe", hidden_size=128, num_hidden_layers=3, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, num_experts=16, num_experts_per_tok=4, decoder_sparse_step=1,
        mlp_only_layers=[1], moe_intermediate_size=64, norm_topk_prob=True,
        rope_theta=1000000.0, tie_word_embeddings=False, max_position_embeddings=4096,
    ),
    "minimax": dict(
        model_type="minimax", hidden_size=128, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rotary_dim=16,
        rms_norm_eps=1e-6, vocab_size=512, num_local_experts=16, num_experts_per_tok=4,
        shared_intermediate_size=0, rope_theta=5000000.0, tie_word_embeddings=False,
        max_position_embeddings=4096, use_qk_norm=True, scoring_func="sigmoid",
    ),
    # Layer 0 dense (first_k_dense_replace), then routed experts in 4 groups of which the best
    # 2 are eligible, a shared expert and a routed scaling factor.
    "glm4_moe": dict(
        model_type="glm4_moe", hidden_size=128, num_hidden_layers=3, intermediate_size=256,
        moe_intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        partial_rotary_factor=0.5, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1,
        norm_topk_prob=True, routed_scaling_factor=2.5, use_qk_norm=True, attention_bias=True,
        rms_norm_eps=1e-5, vocab_size=512, rope_theta=1000000.0, rope_scaling=None,
        tie_word_embeddings=False, max_position_embeddings=4096,
    ),
    # Sliding-window layers (a window far shorter than the test prompts) alternating with full
    # ones, attention sinks, YaRN RoPE, biased experts with gpt-oss's clipped SwiGLU.
    "gpt_oss": dict(
        model_type="gpt_oss", hidden_size=128, num_hidden_layers=4, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-5,
        vocab_size=512, num_local_experts=16, num_experts_per_tok=4, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"] * 2, rope_theta=150000.0,
        rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0,
                          truncate=False, original_max_position_embeddings=4096),
        tie_word_embeddings=False, max_position_embeddings=131072,
    ),
    # Gemma 3: sliding-window layers (a window far shorter than the test prompts, their own
    # RoPE base) alternating with global ones; a softmax scale other than head_dim's; tied
    # embeddings (no lm_head, as Gemma checkpoints are).
    "gemma3_text": dict(
        model_type="gemma3_text", hidden_size=128, num_hidden_layers=4, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        query_pre_attn_scalar=48, sliding_window=16, sliding_window_pattern=2,
        max_position_embeddings=4096,
    ),
    # Gemma 4 (the small "E" models' layout): sliding-window layers (head_dim 32, plain RoPE)
    # and full ones (global_head_dim 64, proportional RoPE on a quarter of it); per-layer
    # embeddings projected into every layer; the last 2 layers (one of each kind) reuse the
    # KV of the last earlier layer of their kind, with double-wide MLPs; logits soft-capped at
    # 0.5 (the random logits are within ±1, so the cap bends them).
    "gemma4_text": dict(
        model_type="gemma4_text", hidden_size=128, num_hidden_layers=6, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=64,
        rms_norm_eps=1e-6, vocab_size=512, vocab_size_per_layer_input=512,
        hidden_size_per_layer_input=32, num_kv_shared_layers=2, use_double_wide_mlp=True,
        sliding_window=16, sliding_window_pattern=3, final_logit_softcapping=0.5,
        max_position_embeddings=4096,
        rope_parameters=dict(
            full_attention=dict(partial_rotary_factor=0.25, rope_theta=1000000.0,
                                rope_type="proportional"),
            sliding_attention=dict(rope_theta=10000.0, rope_type="default"),
        ),
    ),
    # Gemma 4's MoE layout (26B-A4B): a dense MLP beside routed experts in every layer, full
    # layers whose values are their keys (attention_k_eq_v) with their own KV head count, no
    # per-layer embeddings and no KV sharing.
    "gemma4_text_moe": dict(
        model_type="gemma4_text", hidden_size=128, num_hidden_layers=4, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, num_global_key_value_heads=1,
        head_dim=32, global_head_dim=64, rms_norm_eps=1e-6, vocab_size=512,
        hidden_size_per_layer_input=0, num_kv_shared_layers=0, attention_k_eq_v=True,
        enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=64,
        sliding_window=16, layer_types=["sliding_attention", "full_attention"] * 2,
        final_logit_softcapping=30.0, max_position_embeddings=4096,
        rope_parameters=dict(
            full_attention=dict(partial_rotary_factor=0.25, rope_theta=1000000.0,
                                rope_type="proportional"),
            sliding_attention=dict(rope_theta=10000.0, rope_type="default"),
        ),
    ),
    # Qwen3-Next: Gated DeltaNet layers (2 key heads shared by 4 value heads) alternating with
    # gated attention (partial RoPE); MoE with a gated shared expert, layer 2 a dense MLP.
    "qwen3_next": dict(
        model_type="qwen3_next", hidden_size=128, num_hidden_layers=4, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        num_experts=16, num_experts_per_tok=4, decoder_sparse_step=1,
        shared_expert_intermediate_size=64, mlp_only_layers=[2], moe_intermediate_size=64,
        norm_topk_prob=True, rope_theta=10000000.0, partial_rotary_factor=0.25,
        max_position_embeddings=4096, tie_word_embeddings=False, full_attention_interval=2,
    ),
    # Qwen3.5: the same layers with the DeltaNet's projections apart, RoPE under
    # rope_parameters, tied embeddings; the MoE variant has experts on every layer and mRoPE
    # settings (plain RoPE for text).
    "qwen3_5": dict(
        model_type="qwen3_5", hidden_size=128, num_hidden_layers=4, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        full_attention_interval=2, tie_word_embeddings=True, max_position_embeddings=4096,
        rope_parameters=dict(type="default", rope_theta=100000.0, partial_rotary_factor=0.25),
    ),
    "qwen3_5_moe": dict(
        model_type="qwen3_5_moe", hidden_size=128, num_hidden_layers=4, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        full_attention_interval=2, tie_word_embeddings=False, max_position_embeddings=4096,
        num_experts=16, num_experts_per_tok=4, moe_intermediate_size=64,
        shared_expert_intermediate_size=64, norm_topk_prob=True,
        rope_parameters=dict(type="mrope", mrope_section=[2, 1, 1], rope_theta=1000000.0,
                             partial_rotary_factor=0.25),
    ),
}

# Architectures whose checkpoints tie the embeddings by having no lm_head (mlx-lm's sanitize
# drops the head when the weights lack it).
TIED_BY_ABSENCE = {"gemma3_text"}

# Routers get larger weights than the rest, so that experts' scores are well apart and a
# rounding difference in the hidden state cannot flip which experts a token picks.
ROUTER = re.compile(r"\.(gate|router|router\.proj)\.weight$")
# Scales that multiply a whole layer's output or an expert's weight: near one, as trained
# ones are (a random small one would shrink the signal away).
NEAR_ONE = re.compile(r"(norm|layer_scalar|router\.scale|per_expert_scale)")


def scale_of(name, value):
    if ROUTER.search(name):
        return 0.1
    if "conv1d" in name:
        # A depthwise kernel of a few taps: large enough that the conv carries the signal.
        return 0.5
    return 0.02 if value.ndim > 1 else 0.1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(CONFIGS))
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--mode", default="affine", choices=["affine", "mxfp4", "mxfp8", "nvfp4"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokenizer", help="an MLX model folder whose tokenizer the model takes")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a config entry (e.g. another layer layout)")
    a = ap.parse_args()

    mx.random.seed(a.seed)
    config = dict(CONFIGS[a.arch])
    for entry in a.set:
        key, value = entry.split("=", 1)
        config[key] = json.loads(value)
    special = []
    if a.tokenizer:
        tok = json.loads((Path(a.tokenizer) / "tokenizer.json").read_text())
        config["vocab_size"] = len(tok["model"]["vocab"]) + sum(
            1 for t in tok.get("added_tokens", []) if t["id"] >= len(tok["model"]["vocab"]))
        special = [t["id"] for t in tok.get("added_tokens", []) if t.get("special")]
    module = __import__(f"mlx_lm.models.{config['model_type']}", fromlist=["Model", "ModelArgs"])
    model = module.Model(module.ModelArgs.from_dict(config))
    # Random weights with a realistic scale (default init makes near-uniform logits).
    params = tree_flatten(model.parameters())
    dtype = getattr(mx, a.dtype)
    cast = getattr(model, "cast_predicate", lambda _: True)
    weights = {}
    for k, v in params:
        w = mx.random.normal(v.shape) * scale_of(k, v) + (1.0 if NEAR_ONE.search(k) else 0.0)
        weights[k] = w.astype(dtype) if cast(k) else w
    if a.arch in TIED_BY_ABSENCE:
        weights.pop("lm_head.weight")
        weights = model.sanitize(weights)
    if special:
        # The output head: lm_head, else the tied embedding (under a wrapper's prefix in
        # models such as qwen3_5_moe).
        head = next((k for k in weights if k.endswith("lm_head.weight")), None) or next(
            k for k in weights if k.endswith("embed_tokens.weight"))
        rows = mx.array(special)
        weights[head][rows] = mx.zeros((len(special), weights[head].shape[1]), dtype=dtype)
    model.load_weights(list(weights.items()))
    if a.bits or a.mode != "affine":
        model, config = quantize_model(
            model, config, group_size=a.group_size, bits=a.bits or None, mode=a.mode
        )

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if a.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json"):
            if (Path(a.tokenizer) / name).exists():
                shutil.copy(Path(a.tokenizer) / name, out / name)


if __name__ == "__main__":
    main()
