"""Greedy token ids from mlx-lm for a list of prompts, as JSON on stdout.

usage: mlx_lm_greedy.py MODEL_DIR MAX_TOKENS '[{"text": "...", "chat": true}, ...]' [MODEL_CONFIG]
MODEL_CONFIG (JSON) amends the model's config.json as mlx_lm.load's model_config does (e.g. a
rope_scaling the checkpoint does not have).
Chat prompts go through the tokenizer's chat template (add_generation_prompt); raw prompts
through tokenizer.encode, as mlx_lm.generate does. Generation stops at an EOS token (not
included) or after MAX_TOKENS tokens.
"""
import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step

sys.path.insert(0, str(Path(__file__).parent))
import mlx_compat  # noqa: E402,F401  (quantized MoE on MLX 0.32.2)


def main():
    mx.set_default_device(mx.cpu)
    model_dir, max_tokens, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    model_config = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    model, tokenizer = load(model_dir, model_config=model_config)
    results = []
    for p in prompts:
        if p["chat"]:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": p["text"]}], add_generation_prompt=True
            )
        else:
            ids = tokenizer.encode(p["text"])
        out = []
        for token, _ in generate_step(mx.array(ids), model, max_tokens=max_tokens,
                                      sampler=lambda x: mx.argmax(x, axis=-1)):
            token = int(token)
            if token in tokenizer.eos_token_ids:
                break
            out.append(token)
        results.append({"prompt": list(map(int, ids)), "tokens": out})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
