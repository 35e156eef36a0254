"""mlx-lm's side of the GPU benchmark, in one process (run by bench.py with a timeout):

- greedy token ids for the agreement prompt (the ids Wuwei's output is checked against);
- single-stream decode timed from outside the generation loop: the wall time of generating
  N+k tokens minus that of N tokens from the same prompt, so loading, tokenization and prefill
  cancel and k tokens / difference is the decode rate;
- mlx-lm's own prompt tok/s for the long prompt, and MLX's peak memory.

A warm-up generation for each prompt first (MLX compiles kernels on first use: discarded).
Writes its results to --out after every measurement, so a timeout still leaves what was done.

usage: mlx_ref.py --model DIR --prompts prompts.json --out ref.json [--rounds 3]
"""
import argparse
import json
import os
import time

import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler

R = {"decode": {}, "errors": []}


def save(path):
    R["mlx_peak_mib"] = mx.get_peak_memory() >> 20
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(R, f, indent=1)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="bench.py's prompts.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    prompts = json.load(open(a.prompts))
    import mlx_lm
    R["mlx_version"], R["mlx_lm_version"] = mx.__version__, getattr(mlx_lm, "__version__", "?")
    R["mlx_device"] = str(mx.default_device())
    t = time.time()
    model, tok = load(a.model)
    R["load_s"] = round(time.time() - t, 2)
    greedy = make_sampler(temp=0.0)

    def gen(prompt, n):
        """(wall seconds, generated ids, last response) of one greedy generation."""
        ids, last = [], None
        t0 = time.perf_counter()
        for r in stream_generate(model, tok, prompt, max_tokens=n, sampler=greedy):
            ids.append(r.token)
            last = r
        return time.perf_counter() - t0, ids, last

    # Warm-up: every shape the timed runs use (short and long prompt, decode).
    for key in prompts["decode"]:
        gen(prompts["decode"][key]["text"], 4)
    print(f"mlx_ref: loaded in {R['load_s']}s, warmed up", flush=True)

    R["agree"] = []
    for ag in prompts["agree"]:
        _, ids, _ = gen(ag["ids"], ag["max_tokens"])
        R["agree"].append({"ids": ids, "text": tok.decode(ids), "prompt_tokens": len(ag["ids"])})
    save(a.out)

    n0 = prompts["decode_n"]
    for key, p in prompts["decode"].items():
        rows = []
        for rnd in range(a.rounds):
            wa, ids_a, _ = gen(p["text"], n0)
            wb, ids_b, last = gen(p["text"], n0 + p["k"])
            row = {"round": rnd + 1, "wall_n_s": round(wa, 4), "wall_nk_s": round(wb, 4),
                   "tokens": [len(ids_a), len(ids_b)],
                   "decode_tps": round(p["k"] / (wb - wa), 1) if wb > wa else None,
                   "prompt_tokens": last.prompt_tokens if last else None,
                   "mlx_lm_prompt_tps": round(last.prompt_tps, 1) if last else None,
                   "mlx_lm_generation_tps": round(last.generation_tps, 1) if last else None}
            if len(ids_a) != n0 or len(ids_b) != n0 + p["k"]:
                R["errors"].append(f"{key}: generated {row['tokens']} tokens, wanted {[n0, n0 + p['k']]}")
            rows.append(row)
            R["decode"][key] = rows
            save(a.out)
            print(f"mlx_ref: {key} round {rnd + 1}: decode {row['decode_tps']} tok/s "
                  f"(N={n0} {wa:.3f}s, N+{p['k']} {wb:.3f}s), prompt {row['mlx_lm_prompt_tps']} tok/s",
                  flush=True)
    save(a.out)


if __name__ == "__main__":
    main()
