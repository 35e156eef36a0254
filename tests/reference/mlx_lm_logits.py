"""Prints mlx-lm's logits for a model folder, as JSON on stdout: the prompt's logits at every
position, then the logits of each decode step, feeding the given tokens one at a time through
mlx-lm's KV cache.

usage: mlx_lm_logits.py MODEL_DIR '{"prompt": [ids], "decode": [ids]}'
"""
import json
import sys

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model


def main():
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    model, _ = load_model(__import__("pathlib").Path(model_dir))
    cache = make_prompt_cache(model)
    prompt = mx.array([spec["prompt"]])
    out = {"prompt": model(prompt, cache=cache)[0].astype(mx.float32).tolist(), "decode": []}
    for tok in spec["decode"]:
        logits = model(mx.array([[tok]]), cache=cache)[0, -1]
        out["decode"].append(logits.astype(mx.float32).tolist())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
