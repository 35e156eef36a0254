"""Writes a copy of an MLX-format model folder with every float tensor in another dtype, the
way a bf16 or fp16 checkpoint is published: quantized weights stay packed, their scales and
biases take the new dtype too (as `mlx_lm convert --dtype` and `nn.quantize` of a bf16 model
leave them). Tokenizer and config files are copied unchanged.

usage: cast_model.py SRC_DIR DST_DIR --dtype bfloat16|float16|float32
"""
import argparse
import shutil
from pathlib import Path

import mlx.core as mx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", required=True, choices=["bfloat16", "float16", "float32"])
    a = ap.parse_args()
    dtype = getattr(mx, a.dtype)
    src, dst = Path(a.src), Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    weights = {}
    for f in sorted(src.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    cast = {k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v) for k, v in weights.items()}
    mx.save_safetensors(str(dst / "model.safetensors"), cast, metadata={"format": "mlx"})


if __name__ == "__main__":
    main()
