"""Writes a small random-weight model with mlx-lm's own classes, so that Wuwei's
implementation of the same architecture can be compared with mlx-lm's, logit for logit.

usage: make_random_model.py ARCH OUT_DIR [--bits N] [--group-size G] [--seed S]
                            [--dtype float32|bfloat16|float16] [--tokenizer DIR]

--dtype writes the checkpoint in that dtype, as published bf16/fp16 models are (quantized
layers then keep their scales and biases in it, as `nn.quantize` of such a model does).
--tokenizer DIR makes a servable model: the vocabulary and tokenizer files of DIR (an MLX
model folder), with the rows of its special tokens zeroed in the output head so that greedy
decoding of random weights does not stop at once.
"""
import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

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
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(CONFIGS))
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--tokenizer", help="an MLX model folder whose tokenizer the model takes")
    a = ap.parse_args()

    mx.random.seed(a.seed)
    config = dict(CONFIGS[a.arch])
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
    weights = {k: (mx.random.normal(v.shape) * (0.02 if v.ndim > 1 else 0.1) + (1.0 if "norm" in k else 0.0)).astype(dtype)
               for k, v in params}
    if special:
        head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
        rows = mx.array(special)
        weights[head][rows] = mx.zeros((len(special), weights[head].shape[1]), dtype=dtype)
    model.load_weights(list(weights.items()))
    if a.bits:
        nn.quantize(model, group_size=a.group_size, bits=a.bits)
        config["quantization"] = {"group_size": a.group_size, "bits": a.bits}

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
