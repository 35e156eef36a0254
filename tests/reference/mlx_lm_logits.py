"""Prints mlx-lm's logits for a model folder, as JSON on stdout: the prompt's logits at every
position, then the logits of each decode step, feeding the given tokens one at a time through
mlx-lm's KV cache; with "greedy": N, also the N tokens greedy decoding picks after the prompt.
With "kv_bits" (and "kv_group_size", default 64) the cache is mlx-lm's QuantizedKVCache from
the first token on.

usage: mlx_lm_logits.py MODEL_DIR '{"prompt": [ids], "decode": [ids][, "greedy": N]
                                    [, "kv_bits": B, "kv_group_size": G]}'
"""
import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import QuantizedKVCache, make_prompt_cache
from mlx_lm.utils import load_model

sys.path.insert(0, str(Path(__file__).parent))
import mlx_compat  # noqa: E402,F401  (quantized MoE on MLX 0.32.2)


def main():
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    model, _ = load_model(Path(model_dir))

    def make_prompt_cache_(model):
        if not spec.get("kv_bits"):
            return make_prompt_cache(model)
        group = spec.get("kv_group_size", 64)
        return [QuantizedKVCache(group_size=group, bits=spec["kv_bits"]) for _ in model.layers]

    cache = make_prompt_cache_(model)
    prompt = mx.array([spec["prompt"]])
    out = {"prompt": model(prompt, cache=cache)[0].astype(mx.float32).tolist(), "decode": []}
    for tok in spec["decode"]:
        logits = model(mx.array([[tok]]), cache=cache)[0, -1]
        out["decode"].append(logits.astype(mx.float32).tolist())
    if spec.get("greedy"):
        cache = make_prompt_cache_(model)
        logits = model(prompt, cache=cache)[0, -1]
        tokens = []
        for _ in range(spec["greedy"]):
            tok = int(mx.argmax(logits))
            tokens.append(tok)
            logits = model(mx.array([[tok]]), cache=cache)[0, -1]
        out["greedy"] = tokens
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
