"""Writes a float llama-architecture MLX model (config.json + safetensors, as
tests/reference/make_random_model.py writes them) as a GGUF that llama.cpp runs, so that
bench/long_context.py can time llama.cpp on the very weights Wuwei and mlx-lm run (the 32k
bench's random model has no GGUF of its own).

Bench-only: Wuwei reads GGUF (`wuwei convert`), it never writes one. Only what the bench
needs: the `llama` architecture, float weights, the tokenizer's GGUF metadata copied from a
GGUF of the same tokenizer (SmolLM2's, by default). Tensors go out in float32 (the same
numbers), or quantized by llama.cpp's own `llama_model_quantize` (`--quantize q4_1`, as
SmolLM2's GGUF), which needs llama-cpp-python in .venv.

usage: python bench/mlx_to_gguf.py MODEL_DIR OUT.gguf [--tokenizer-gguf FILE] [--quantize q4_1]
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent

# MLX/Hugging Face names -> GGUF names (llama.cpp's llama tensor names).
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# llama.cpp's quantization types by name (llama.h's llama_ftype).
FTYPES = {"q4_1": 3, "q8_0": 7}


def interleave_rope(w, heads):
    """Hugging Face's (and mlx-lm's) RoPE rotates the two halves of each head; llama.cpp's
    llama rotates adjacent pairs. Reordering each head's rows of q/k (as llama.cpp's own
    converter does) makes the two compute the same attention."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def copy_tokenizer(src, writer):
    for key, field in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        value = field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, value)
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(key, value)
        elif kind == gguf.GGUFValueType.UINT32:
            writer.add_uint32(key, value)
        else:
            sys.exit(f"tokenizer field {key} of type {kind} not handled")


def write_f32(model_dir, out, tokenizer_gguf):
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        sys.exit(f"only llama models, not {cfg.get('model_type')}")
    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(f))
    if any(k.endswith(".scales") for k in weights):
        sys.exit("quantized MLX weights: write the float model and use --quantize")
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(model_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg.get("head_dim", hidden // heads))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    copy_tokenizer(gguf.GGUFReader(str(tokenizer_gguf)), w)
    for name, t in weights.items():
        t = t.astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        elif name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if rest not in LAYER_NAMES:
                sys.exit(f"unexpected tensor {name}")
            if rest == "self_attn.q_proj.weight":
                t = interleave_rope(t, heads)
            elif rest == "self_attn.k_proj.weight":
                t = interleave_rope(t, kv_heads)
            gname = f"blk.{i}.{LAYER_NAMES[rest]}"
        else:
            sys.exit(f"unexpected tensor {name}")
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, out, kind):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer-gguf", type=Path,
                    default=ROOT / ".deps/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="a GGUF with the model's tokenizer (default: SmolLM2's)")
    ap.add_argument("--quantize", choices=sorted(FTYPES))
    a = ap.parse_args()
    if not a.quantize:
        write_f32(a.model, a.out, a.tokenizer_gguf)
        return
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.gguf"
        write_f32(a.model, f32, a.tokenizer_gguf)
        quantize(f32, a.out, a.quantize)


if __name__ == "__main__":
    main()
