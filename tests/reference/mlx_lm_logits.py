"""Prints mlx-lm's logits for a model folder, as JSON on stdout: the prompt's logits at every
position, then the logits of each decode step, feeding the given tokens one at a time through
mlx-lm's KV cache; with "greedy": N, also the N tokens greedy decoding picks after the prompt.

usage: mlx_lm_logits.py MODEL_DIR '{"prompt": [ids], "decode": [ids][, "greedy": N]}'
"""
import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

sys.path.insert(0, str(Path(__file__).parent))
import mlx_compat  # noqa: E402,F401  (quantized MoE on MLX 0.32.2)


def main():
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    model, _ = load_model(Path(model_dir))
    cache = make_prompt_cache(model)
    prompt = mx.array([spec["prompt"]])
    out = {"prompt": model(prompt, cache=cache)[0].astype(mx.float32).tolist(), "decode": []}
    for tok in spec["decode"]:
        logits = model(mx.array([[tok]]), cache=cache)[0, -1]
        out["decode"].append(logits.astype(mx.float32).tolist())
    if spec.get("greedy"):
        cache = make_prompt_cache(model)
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
