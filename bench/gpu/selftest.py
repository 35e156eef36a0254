"""MLX self-test on the default device: a few seconds (plus the first run's kernel
compilation) that stop the benchmark early when the carried libmlx does not work on this
machine, instead of failing in every later stage.

usage: selftest.py [--expect-gpu]      exit 0: all passed; 1: a step failed; 2: no GPU device
"""
import sys
import time

import mlx.core as mx

ok = True


def step(name, fn):
    global ok
    t = time.time()
    try:
        print(f"  {name}: {fn()} ({time.time() - t:.2f}s)", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next step runs
        ok = False
        print(f"  {name}: FAILED {type(e).__name__}: {e}", flush=True)


def q4():
    w = mx.random.normal((2048, 2048)).astype(mx.bfloat16)
    wq, s, b = mx.quantize(w, group_size=64, bits=4)
    x = mx.random.normal((4, 2048)).astype(mx.bfloat16)
    return mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=64, bits=4).sum().item()


def main():
    dev = mx.default_device()
    print(f"mlx {mx.__version__}, default device {dev}", flush=True)
    a = mx.random.normal((1024, 1024))
    step("f32 matmul", lambda: (a @ a.T).sum().item())
    step("bf16 matmul", lambda: (a.astype(mx.bfloat16) @ a.T.astype(mx.bfloat16)).sum().item())
    step("q4 quantized_matmul", q4)
    q = mx.ones((1, 8, 16, 64))
    step("sdpa", lambda: mx.fast.scaled_dot_product_attention(q, q, q, scale=0.125).sum().item())
    step("compiled (NVRTC on CUDA)", lambda: mx.compile(lambda x: mx.exp(x) * 2 + 1)(mx.ones((1000,))).sum().item())
    step("gather", lambda: mx.take(mx.arange(100), mx.array([3, 5, 7])).tolist())
    print(f"  peak memory {mx.get_peak_memory() >> 20} MiB", flush=True)
    if "--expect-gpu" in sys.argv and dev != mx.gpu:
        print("FAILED: a GPU was expected and MLX's default device is not one", flush=True)
        sys.exit(2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
