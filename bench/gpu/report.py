"""The GPU benchmark's table, from the results.json that bench/gpu/run.sh brings back.

  report.py --render RESULTS.json      print the markdown (run.sh writes it to $OUT/results.md)
  report.py RESULTS.json [--command C] insert it into docs/BENCHMARKS.md as the `gpu` section,
                                       naming the device it was measured on
"""
import argparse
import json
import os
import statistics
import sys

# Issue 13's targets on a GPU: (ratio wuwei / mlx-lm, at least or at most).
TARGETS = {"decode short": (1.1, "min"), "decode long": (1.0, "min"), "prefill long": (1.0, "min"),
           "serve 32": (3.0, "min"), "memory": (1.1, "max")}


def med(rows, key):
    vals = [r[key] for r in rows or [] if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, unit=""):
    if v is None:
        return "–"
    return f"{v:,.0f}{unit}" if abs(v) >= 100 else f"{v:,.1f}{unit}"


def row(label, ref, wuwei, target_key=None, lower_is_better=False):
    ratio = wuwei / ref if ref and wuwei else None
    target, verdict = "", ""
    if target_key in TARGETS:
        t, kind = TARGETS[target_key]
        target = f"{'≤' if kind == 'max' else '≥'} {t}×"
        if ratio is not None:
            verdict = "met" if (ratio <= t if kind == "max" else ratio >= t) else "**not met**"
    return f"| {label} | {fmt(ref)} | {fmt(wuwei)} | {f'{ratio:.2f}×' if ratio else '–'} | {target} | {verdict} |"


def device(r):
    d = r.get("device") or {}
    if d.get("name"):
        return f"{d['name']} ({d.get('memory_total_mib', '?')} MiB, driver {d.get('driver', '?')})"
    return (r.get("mlx_lm") or {}).get("mlx_device") or "an unknown device (no nvidia-smi)"


def backend(r):
    dev = (r.get("mlx_lm") or {}).get("mlx_device", "")
    if "gpu" in dev:
        return f"the mlx-cuda-13 wheel's libmlx on the GPU ({dev})"
    return f"MLX's CPU build ({dev or 'device unknown'}: a dry run, not a GPU measurement)"


def render(r):
    ref, wd = r.get("mlx_lm") or {}, r.get("wuwei_decode") or {}
    sv = r.get("serve") or {}
    ws, ms = sv.get("wuwei") or {}, sv.get("mlx_lm") or {}
    p = r.get("prompts") or {}
    a = r.get("args") or {}
    lines = ["| measure | mlx-lm | Wuwei | Wuwei / mlx-lm | target | |", "|---|---|---|---|---|---|"]
    for key, label in (("short", "short"), ("long", "long")):
        lines.append(row(f"single-stream decode tok/s, {p.get(key, '?')}-token prompt (`generate`, timed outside)",
                         med((ref.get("decode") or {}).get(key), "decode_tps"), med(wd.get(key), "decode_tps"),
                         f"decode {label}"))
    lines.append(row(f"prefill tok/s, {p.get('long', '?')}-token prompt (server, 1-token completion)",
                     med(ms.get("prefill_long"), "prefill_tps"), med(ws.get("prefill_long"), "prefill_tps"),
                     "prefill long"))
    wl = {x["streams"]: x for x in ws.get("levels", [])}
    ml = {x["streams"]: x for x in ms.get("levels", [])}
    for n in sorted(set(wl) | set(ml)):
        lines.append(row(f"serving, {n} stream{'s' if n > 1 else ''}: aggregate tok/s (mlx_lm.server vs `wuwei serve`)",
                         (ml.get(n) or {}).get("agg_tps"), (wl.get(n) or {}).get("agg_tps"), f"serve {n}"))

    def mem(s):
        return s.get("gpu_app_mib") or s.get("gpu_peak_over_idle_mib")
    lines.append(row("GPU memory of the server after the serving levels, MiB", mem(ms), mem(ws), "memory"))
    ag = ws.get("agree")
    if ag:
        verdict = "met" if ag["equal_tokens"] == ag["of"] else "**not met**"
        lines.append(f"| greedy tokens equal to mlx-lm's (4-bit model; {ag.get('prompts', 1)} prompts, "
                     f"{ag['of']} tokens in all) | – | {ag['equal_tokens']} | – | all | {verdict} |")
    else:
        lines.append("| greedy tokens equal to mlx-lm's (4-bit model) | – | not measured | – | all | |")
    ch = r.get("chunks") or {}
    if ch.get("rows"):
        lines += ["", f"Prefill of the {ch.get('prompt_tokens', '?')}-token prompt by prefill chunk size "
                  "(`wuwei generate`, `WUWEI_PREFILL_CHUNK`; the GPU default is 2048):", "",
                  "| prompt tokens per step | prefill tok/s, timed outside | prefill tok/s, Wuwei's count |",
                  "|---|---|---|"]
        best = max(ch["rows"], key=lambda x: x.get("prefill_tps_outside") or 0)
        for x in ch["rows"]:
            mark = " (fastest)" if x is best else ""
            lines.append(f"| {x['chunk']}{mark} | {fmt(x.get('prefill_tps_outside'))} | {fmt(x.get('prefill_tps_wuwei'))} |")
    notes = [
        f"Model: a random-weight Llama made on the machine ({r.get('model', {}).get('params', '1.07B parameters')}), "
        "4-bit with `mlx_lm convert -q`; special and whitespace tokens can never be sampled, so every "
        f"generation runs to its token count. Same MLX build for both: {backend(r)}.",
        f"Decode: wall time of `wuwei generate` (one process per run) and of mlx-lm's `stream_generate` "
        f"(one process) for N+k minus N tokens (N={a.get('decode_n', '?')}, k={a.get('k_short', '?')} / "
        f"{a.get('k_long', '?')}), so start-up and prefill cancel; medians of {a.get('rounds', '?')} rounds "
        "after a warm-up run per prompt (MLX compiles kernels on first use).",
        f"Serving: {a.get('stream_tokens', '?')} tokens per stream, streamed chat completions timed by the "
        f"client; `wuwei serve` with max_running {a.get('max_running', '?')} and no SSD tier, "
        f"`mlx_lm.server --decode-concurrency {a.get('max_running', '?')}`; each server alone on the GPU. "
        "Prefill: a new prompt each time (no prefix-cache hit). Memory: the server process's GPU memory "
        "(nvidia-smi), else the GPU's peak over its idle use.",
        "Prefill chunk sizes: wall time of a 1-token `wuwei generate` at the long prompt minus that at "
        "the short prompt, same size (loading cancels); medians after a warm-up per size.",
    ]
    loaded = ((ws.get("status") or {}).get("loaded") or [{}])[0]
    if loaded.get("weights_mode"):
        notes.append(f"Wuwei held the 4-bit weights as `{loaded['weights_mode']}` "
                     f"({(loaded.get('weights_bytes') or 0) >> 20} MiB).")
    long_ref = (ref.get("decode") or {}).get("long")
    if long_ref or ref.get("mlx_peak_mib") is not None:
        notes.append(f"mlx-lm in its own process: {fmt(med(long_ref, 'mlx_lm_prompt_tps'))} prompt tok/s at the "
                     f"long prompt by its own count; MLX peak memory {ref.get('mlx_peak_mib', '?')} MiB.")
    if a.get("weights"):
        notes.append(f"Wuwei run with `--weights {a['weights']}` (`WUWEI_WEIGHTS` for the server).")
    if a.get("wuwei_env"):
        notes.append(f"Wuwei environment: `{a['wuwei_env']}`.")
    if ref.get("mlx_version"):
        notes.append(f"MLX {ref['mlx_version']}, mlx-lm {ref.get('mlx_lm_version', '?')}; "
                     f"Wuwei {r.get('wuwei_version', '?')}.")
    errs = r.get("errors") or []
    if errs:
        notes.append(f"{len(errs)} step(s) failed or were skipped (see results.json): "
                     + "; ".join(e.splitlines()[0][:160] for e in errs[:4]))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--render", action="store_true", help="print the markdown only")
    ap.add_argument("--command", default="bash bench/gpu/run.sh (bundle: bench/gpu/bundle.sh)")
    ap.add_argument("--force", action="store_true", help="write it even if it did not run on a GPU")
    a = ap.parse_args()
    r = json.load(open(a.results))
    body = render(r)
    if a.render:
        print(body)
        return
    if "gpu" not in ((r.get("mlx_lm") or {}).get("mlx_device") or "") and not a.force:
        sys.exit("not a GPU run (a dry run, or MLX never reported its device): not written; --force to write it")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from report import write_section
    stamp = (r.get("started_utc") or "")[:16] + " UTC" if r.get("started_utc") else None
    write_section("gpu", "GPU: Wuwei vs mlx-lm on CUDA", a.command, body, machine=device(r), stamp=stamp)
    print(f"wrote the gpu section of docs/BENCHMARKS.md ({device(r)})")


if __name__ == "__main__":
    main()
