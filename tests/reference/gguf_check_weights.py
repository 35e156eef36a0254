"""Checks a converted model's weights against gguf-py's own dequantization of the GGUF.

usage: gguf_check_weights.py MODEL.gguf CONVERTED_DIR

Every tensor of the GGUF is dequantized with gguf-py (llama.cpp's reference Python
package) and compared with the converted tensor (mx.dequantize for quantized ones) after
applying llama.cpp's q/k row permutation, as its convert script defines it, to ours.
"""
import json
import pathlib
import re
import sys

import gguf
import mlx.core as mx
import numpy as np

NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name):
    base, kind = gguf_name.rsplit(".", 1)
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m:
        return f"model.layers.{m.group(1)}.{NAMES[m.group(2)]}", kind
    return NAMES[base], kind


def llama_cpp_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> GGUF rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    return reader.fields[key].contents()


def main():
    gguf_path, out_dir = sys.argv[1], pathlib.Path(sys.argv[2])
    reader = gguf.GGUFReader(gguf_path)
    config = json.loads((out_dir / "config.json").read_text())
    ours = mx.load(str(out_dir / "model.safetensors"))
    arch = field(reader, "general.architecture")
    n_head = field(reader, f"{arch}.attention.head_count")
    n_kv = field(reader, f"{arch}.attention.head_count_kv")

    # config.json against the metadata it came from.
    expect = {
        "hidden_size": field(reader, f"{arch}.embedding_length"),
        "num_hidden_layers": field(reader, f"{arch}.block_count"),
        "intermediate_size": field(reader, f"{arch}.feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "max_position_embeddings": field(reader, f"{arch}.context_length"),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }
    for key, value in expect.items():
        assert config[key] == value, f"config {key}: {config[key]} != {value}"
    assert abs(config["rms_norm_eps"] - field(reader, f"{arch}.attention.layer_norm_rms_epsilon")) < 1e-12
    assert config["rope_theta"] == field(reader, f"{arch}.rope.freq_base")

    bits_of = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
    quant = config.get("quantization")
    seen = set()
    worst = 0.0
    for tensor in reader.tensors:
        name, kind = hf_name(tensor.name)
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        type_name = tensor.tensor_type.name
        if type_name in bits_of:
            bits = bits_of[type_name]
            override = quant.get(name)
            assert (override or quant)["bits"] == bits, f"{name}: config bits do not match {type_name}"
            w, s, b = (ours[f"{name}.{k}"] for k in ("weight", "scales", "biases"))
            assert s.dtype == mx.float32 and b.dtype == mx.float32, f"{name}: scales/biases not float32"
            got = mx.dequantize(w, s, b, group_size=32, bits=bits)
            seen.update(f"{name}.{k}" for k in ("weight", "scales", "biases"))
        else:
            got = ours[f"{name}.{kind}"]
            assert got.dtype == mx.float32, f"{name}.{kind} is {got.dtype}"
            seen.add(f"{name}.{kind}")
        got = np.array(got)
        if arch == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            got = llama_cpp_permute(got, n_head if "attn_q" in tensor.name else n_kv)
        assert got.shape == reference.shape, f"{name}: shape {got.shape} != {reference.shape}"
        err = float(np.abs(got - reference).max())
        worst = max(worst, err)
        assert err <= 1e-6, f"{tensor.name} -> {name}: max abs difference {err}"
    assert seen == set(ours), f"unexpected converted weights: {sorted(set(ours) - seen)[:5]}"
    print(f"weights: {len(reader.tensors)} tensors match gguf-py dequantization (max abs diff {worst:g})")


if __name__ == "__main__":
    main()
