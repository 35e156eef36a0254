"""Embedding models from mlx-lm's own classes, for the embeddings tests.

usage: embedding_model.py make SRC OUT POOLING [--no-normalize] [--context N]
       embedding_model.py embed SRC POOLING NORMALIZE TOKENS_JSON

`make` turns SRC, a random-weight model written by make_random_model.py, into an embedding
model folder laid out as Qwen3-Embedding is published: a transformers base-model checkpoint
(tensors without the `model.` prefix, no lm_head) with sentence-transformers' modules.json,
1_Pooling/config.json (POOLING: lasttoken, mean or cls) and a Normalize module.
`embed` prints the reference vectors of TOKENS_JSON (a list of token-id lists): mlx-lm's model
run on each input alone, its final norm's hidden states pooled, then L2-normalized when
NORMALIZE is 1.
"""
import json
import shutil
import sys
from pathlib import Path

import mlx.core as mx


def make(src, out, pooling, normalize=True, context=None):
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = mx.load(str(src / "model.safetensors"))
    base = {k.removeprefix("model."): v for k, v in weights.items() if not k.startswith("lm_head.")}
    mx.save_safetensors(str(out / "model.safetensors"), base)
    config = json.loads((src / "config.json").read_text())
    if context:
        config["max_position_embeddings"] = context
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    chosen = {"lasttoken": "lasttoken", "mean": "mean_tokens", "cls": "cls_token"}[pooling]
    modes = ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
             "weightedmean_tokens", "lasttoken"]
    flags = {f"pooling_mode_{m}": m == chosen for m in modes}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": config["hidden_size"], **flags, "include_prompt": True},
        indent=2))


def embed(src, pooling, normalize, inputs):
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(src))
    vectors = []
    for tokens in inputs:
        hidden = model.model(mx.array([tokens]))[0].astype(mx.float32)
        v = {"lasttoken": hidden[-1], "mean": hidden.mean(axis=0), "cls": hidden[0]}[pooling]
        if normalize:
            v = v / mx.maximum(mx.linalg.norm(v), 1e-12)
        vectors.append(v.tolist())
    return vectors


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "make":
        src, out, pooling, *flags = args
        context = int(flags[flags.index("--context") + 1]) if "--context" in flags else None
        make(src, out, pooling, "--no-normalize" not in flags, context)
    else:
        src, pooling, normalize, tokens = args
        print(json.dumps(embed(src, pooling, normalize == "1", json.loads(tokens))))
