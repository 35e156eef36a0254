"""Writes a small Qwen3-architecture model that, greedily, always answers with one script: a
list of text chunks, each made a token of its own. With a family's chat template, its output
is a tool-call transcript in that family's format, so the daemon's parser choice and the
structured calls can be checked end to end through both APIs.

The tokenizer is SmolLM2's plus `<think>`, `</think>` and one added token per chunk (a chunk
marked special becomes a special token, as harmony's `<|channel|>` and friends are in
gpt-oss's tokenizer). The weights make a bigram machine: every layer adds nothing (its output
projections are zero), so a position's logits depend on its own token only. Chunk k has its
own direction in the embeddings and every other token shares direction 0; the output head
maps direction 0 to chunk 1, direction k to chunk k+1 and the last chunk's to `<|im_end|>`.
Whatever the prompt, greedy decoding then writes chunk 1, 2, ... and ends (or stops earlier on
a chunk listed as an end-of-sequence token).

usage: make_scripted_model.py SMOLLM2_DIR TEMPLATE OUT_DIR SCRIPT_JSON
SCRIPT_JSON: {"chunks": [[text, special], ...], "eos": [text, ...]}
"""
import argparse
import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import AddedToken, Tokenizer

THINK = ["<think>", "</think>"]
HIDDEN = 64
# Logit of the scripted next token: the normalized direction is sqrt(HIDDEN) long.
GAIN = 4.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("smollm2")
    ap.add_argument("template")
    ap.add_argument("out")
    ap.add_argument("script")
    a = ap.parse_args()
    src, out = Path(a.smollm2), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    script = json.loads(a.script)
    chunks = [c for c, _ in script["chunks"]]
    assert len(set(chunks)) == len(chunks), "a bigram machine needs distinct chunks"
    assert len(chunks) < HIDDEN

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK])
    for text, special in script["chunks"]:
        added = AddedToken(text, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = [tok.token_to_id(c) for c in chunks]
    assert None not in ids, ids
    eos = tok.token_to_id("<|im_end|>")

    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = Path(a.template).read_text()
    decoder = tok_config.setdefault("added_tokens_decoder", {})
    for text, special in [(t, False) for t in THINK] + script["chunks"]:
        decoder[str(tok.token_to_id(text))] = {
            "content": text, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    generation = json.loads((src / "generation_config.json").read_text())
    generation["eos_token_id"] = [eos] + [tok.token_to_id(t) for t in script.get("eos", [])]
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))

    config = dict(
        model_type="qwen3", hidden_size=HIDDEN, num_hidden_layers=1, intermediate_size=128,
        num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6, vocab_size=vocab,
        head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=eos,
    )
    from mlx_lm.models import qwen3

    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    params = {k: mx.zeros(v.shape) for k, v in tree_flatten(model.parameters())}
    for k in params:
        if "norm" in k:
            params[k] = mx.ones(params[k].shape)
    embed = mx.zeros((vocab, HIDDEN))
    embed[:, 0] = 1.0
    head = mx.zeros((vocab, HIDDEN))
    for k, token in enumerate(ids, start=1):
        embed[token, 0] = 0.0
        embed[token, k] = 1.0
        head[token, k - 1] = GAIN
    head[eos, len(ids)] = GAIN
    params["model.embed_tokens.weight"] = embed
    params["lm_head.weight"] = head
    model.load_weights(list(params.items()))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
