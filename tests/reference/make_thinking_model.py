"""Writes a small random-weight Qwen3 model that "thinks": SmolLM2's tokenizer plus the
`<think>`, `</think>`, `<tool_call>`, `</tool_call>` tokens, a Qwen3 thinking-style chat
template (the generation prompt ends in an open `<think>` unless `enable_thinking` is false),
and weights rigged so that sampled output (temperature 1) is random text that closes the
thinking block and ends the turn after a few dozen tokens.

The rig: one hidden dimension carries a constant (every input embedding has it), the final
norm passes it, and only `</think>` and `<|im_end|>` read it in the output head. Their logits
are then about THINK_CLOSE_LOGIT and EOS_LOGIT whatever the input, and every other token's is
near 0, so per token P(</think>) ~ 1/8 and P(end) ~ 1/40 (greedy decoding ends at once).

usage: make_thinking_model.py SMOLLM2_DIR TEMPLATE OUT_DIR [--context N]
"""
import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tokenizers import AddedToken, Tokenizer

ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
CARRIER = 0
EOS_LOGIT = 7.2
THINK_CLOSE_LOGIT = 8.9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("smollm2")
    ap.add_argument("template")
    ap.add_argument("out")
    ap.add_argument("--context", type=int, default=40960)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src, out = Path(a.smollm2), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    # Not special: the detokenizer must show them so that the output parser sees the markup.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in ADDED + ["<|im_end|>", "<|im_start|>"]}
    assert all(v is not None for v in ids.values()), ids

    template = Path(a.template).read_text()
    # Qwen3 thinking-model style: the assistant turn opens its reasoning in the prompt.
    closed = "{{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}"
    assert closed in template, "unexpected Qwen3 template (generation prompt changed?)"
    template = template.replace(
        closed, "{{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- else %}\n        {{- '<think>\\n' }}\n    {%- endif %}"
    )
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["chat_template"] = template
    tok_config["model_max_length"] = a.context
    decoder = tok_config.setdefault("added_tokens_decoder", {})
    for t in ADDED:
        decoder[str(ids[t])] = {"content": t, "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False, "special": False}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    shutil.copy(src / "generation_config.json", out / "generation_config.json")

    config = dict(
        model_type="qwen3", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=vocab,
        head_dim=64, rope_theta=1000000.0, tie_word_embeddings=False,
        max_position_embeddings=a.context, bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    from mlx_lm.models import qwen3

    mx.random.seed(a.seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    params = {}
    for k, v in tree_flatten(model.parameters()):
        scale = 0.02 if v.ndim > 1 else 0.1
        params[k] = mx.random.normal(v.shape) * scale + (1.0 if "norm" in k else 0.0)
    embed = params["model.embed_tokens.weight"]
    embed[:, CARRIER] = 1.0
    params["model.norm.weight"][CARRIER] = 1.0
    params["lm_head.weight"][:, CARRIER] = 0.0
    model.load_weights(list(params.items()))
    # How large the carrier is after the final norm: measured, since the layers add to it.
    sample = mx.array([list(range(1000, 1512))])
    carried = model.model(sample)[0, :, CARRIER].mean().item()
    assert carried > 1.0, f"carrier too weak ({carried})"
    head = params["lm_head.weight"]
    head[ids["<|im_end|>"], CARRIER] = EOS_LOGIT / carried
    head[ids["</think>"], CARRIER] = THINK_CLOSE_LOGIT / carried
    model.load_weights(list(params.items()))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
