"""Writes a random-weight Llama in MLX / Hugging Face format (config.json, one bf16
model.safetensors, the tokenizer files of a folder given) for the GPU benchmark: a model of a
real size is made on the GPU machine in seconds instead of being copied to it.

numpy only; the safetensors file is written directly.

Weights are normal * 0.02, drawn once into a pool and laid out from random offsets (a
1B-parameter model in seconds); norm weights are 1. The embedding rows of the tokenizer's
special tokens (EOS among them) and of its whitespace-only tokens are zero, so with tied
embeddings their logits are 0 and greedy decoding never picks them: every run produces exactly
max_tokens tokens (decode timings subtract runs of different lengths), and streamed text never
starts with whitespace a server may hold back (which would distort time to first token).

usage: make_model.py --out DIR --tok TOKDIR [--hidden 2048 --layers 16 --heads 32 --kv-heads 8
       --intermediate 8192 --context 16384]
"""
import argparse
import json
import os
import shutil
import struct
import time

import numpy as np


def byte_decoder():
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode), inverted."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def silent_ids(tok):
    """Special tokens and tokens whose text is only whitespace."""
    ids = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    dec = byte_decoder()
    for piece, i in tok["model"]["vocab"].items():
        try:
            raw = bytes(dec[c] for c in piece)
        except KeyError:
            continue
        if raw and not raw.strip():
            ids.add(i)
    return sorted(ids)


def to_bf16(x):
    """float32 -> bf16 bits, rounded to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tok", required=True, help="folder with tokenizer.json etc.")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=8192)
    # Room for an 8k-token prompt plus the longest timed generation: Wuwei clamps max_tokens
    # to the context, which would break the N+k minus N subtraction.
    ap.add_argument("--context", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    # float32: the CPU dry run, where Wuwei computes in float32, so both sides compute the same.
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    a = ap.parse_args()
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    for f in sorted(os.listdir(a.tok)):
        if f.startswith("tokenizer") or f in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(os.path.join(a.tok, f), os.path.join(a.out, f))
    tok = json.load(open(os.path.join(a.tok, "tokenizer.json")))
    special = silent_ids(tok)
    vocab = max(tok["model"]["vocab"].values()) + 1
    vocab = max([vocab] + [t["id"] + 1 for t in tok.get("added_tokens", [])])
    H, L, I, V = a.hidden, a.layers, a.intermediate, vocab
    hd = H // a.heads
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "num_hidden_layers": L,
        "intermediate_size": I,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": hd,
        "rms_norm_eps": 1e-5,
        "vocab_size": V,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "max_position_embeddings": a.context,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": a.dtype,
    }
    json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)

    shapes = {"model.embed_tokens.weight": [V, H]}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = [H]
        shapes[p + "self_attn.q_proj.weight"] = [a.heads * hd, H]
        shapes[p + "self_attn.k_proj.weight"] = [a.kv_heads * hd, H]
        shapes[p + "self_attn.v_proj.weight"] = [a.kv_heads * hd, H]
        shapes[p + "self_attn.o_proj.weight"] = [H, a.heads * hd]
        shapes[p + "post_attention_layernorm.weight"] = [H]
        shapes[p + "mlp.gate_proj.weight"] = [I, H]
        shapes[p + "mlp.up_proj.weight"] = [I, H]
        shapes[p + "mlp.down_proj.weight"] = [H, I]
    shapes["model.norm.weight"] = [H]

    f32 = a.dtype == "float32"
    width, st_dtype = (4, "F32") if f32 else (2, "BF16")
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * width
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)

    rng = np.random.default_rng(a.seed)
    pool = rng.standard_normal(1 << 25, dtype=np.float32) * 0.02
    pool = pool if f32 else to_bf16(pool)
    one = np.float32(1.0) if f32 else np.uint16(0x3F80)  # 1.0 as float32 or as bf16 bits

    def random_values(n):
        out = np.empty(n, dtype=pool.dtype)
        pos = 0
        while pos < n:
            o = int(rng.integers(0, len(pool) - 1))
            k = min(n - pos, len(pool) - o)
            out[pos:pos + k] = pool[o:o + k]
            pos += k
        return out

    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, shape in shapes.items():
            n = int(np.prod(shape))
            if name.endswith("norm.weight"):
                f.write(memoryview(np.full(n, one, dtype=pool.dtype)))
            elif name == "model.embed_tokens.weight":
                rows = random_values(n).reshape(shape)
                rows[[s for s in special if s < V]] = 0
                f.write(memoryview(rows.reshape(-1)))
            else:
                # In slices, so a 1B model never needs a second copy of a layer in memory.
                step = 1 << 24
                for s in range(0, n, step):
                    f.write(memoryview(random_values(min(step, n - s))))
    params = sum(int(np.prod(s)) for s in shapes.values())
    print(f"wrote {a.out}: {params / 1e9:.3f}B parameters, "
          f"{os.path.getsize(os.path.join(a.out, 'model.safetensors')) / 2**30:.2f} GiB {a.dtype}, "
          f"{len(special)} special/whitespace token rows zeroed, {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
