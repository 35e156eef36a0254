"""Wuwei vs mlx-lm on one GPU machine and one MLX build: the measuring half of bench/gpu/run.sh.

Phases, in order, each under its own timeout inside one overall budget (a phase that fails or
runs out of time is recorded and the next one runs; results.json is rewritten after every
step, so whatever was measured comes back):

  1. mlx-lm in one process (mlx_ref.py): greedy ids for the agreement prompt, single-stream
     decode at a ~512- and a ~8k-token prompt timed as wall(N+k tokens) - wall(N tokens).
  2. `wuwei generate`, one process per run, timed the same way from outside, so start-up,
     loading and prefill cancel.
  3. `wuwei serve`, then `mlx_lm.server` (one at a time, each measured alone on the GPU):
     prefill of a ~8k-token prompt (time of a 1-token completion, a new prompt each time so
     no prefix cache helps), greedy agreement with mlx-lm (Wuwei), streams at each concurrency
     level timed by this client, and the GPU memory the server held.
  4. `wuwei generate` again: the long prompt's prefill at each prefill chunk size (`--chunks`,
     the choice the device default stands for), in the time kept for it (`--chunks-budget`).

Every first run of a shape is a warm-up (MLX compiles kernels on first use) and is discarded.
The Wuwei binary is driven only through its CLI and HTTP.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = time.time()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
R = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "errors": [], "phases": {}}
A = None


def log(msg):
    print(f"[bench +{time.time() - T0:5.0f}s] {msg}", flush=True)


def save():
    R["elapsed_s"] = round(time.time() - T0, 1)
    path = os.path.join(A.out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(R, f, indent=1)
    os.replace(path + ".tmp", path)


def left():
    return A.deadline - time.time()


def err(where, e):
    msg = f"{where}: {e}"
    log("ERROR " + msg[:600])
    R["errors"].append(msg[:2000])
    save()


# --- GPU memory (nvidia-smi; absent on the CPU dry run) ----------------------------------------
def smi(query, apps=False):
    if not shutil.which("nvidia-smi"):
        return None
    flag = "--query-compute-apps" if apps else "--query-gpu"
    try:
        out = subprocess.run(["nvidia-smi", f"{flag}={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except Exception:  # noqa: BLE001 - memory figures are optional
        return None
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def gpu_used_mib():
    rows = smi("memory.used")
    try:
        return int(rows[0][0]) if rows else None
    except (ValueError, IndexError):
        return None


class GpuPeak:
    """Polls the GPU's used memory while a phase runs; .peak_mib is the highest seen."""

    def __init__(self):
        self.peak_mib, self._stop = None, threading.Event()

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            threading.Thread(target=self._poll, daemon=True).start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            v = gpu_used_mib()
            if v is not None:
                self.peak_mib = max(self.peak_mib or 0, v)
            self._stop.wait(0.25)

    def __exit__(self, *exc):
        self._stop.set()


def over_idle(peak, idle):
    return peak - idle if peak is not None and idle is not None else None


# --- prompts -----------------------------------------------------------------------------------
WORDS = ("river mountain lantern harbor violet engine meadow copper signal garden thunder library "
         "compass orchard silver canyon whisper market glacier anchor").split()


def filler_text(tok, target, tag=""):
    """Text of about `target` tokens (with `tok`), distinct per `tag` from its first words."""
    parts, i = [f"Record {tag}." if tag else "Record."], 0
    while True:
        w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(9)]
        parts.append(f"Entry {i}: the {w[0]} near the {w[1]} kept its {w[2]} while a {w[3]} "
                     f"crossed the {w[4]}, and the {w[5]} answered the {w[6]} with {w[7]} and {w[8]}.")
        i += 1
        if i % 16 == 0 and len(tok.encode(" ".join(parts), add_special_tokens=False).ids) >= target:
            break
    ids = tok.encode(" ".join(parts), add_special_tokens=False).ids[:target]
    return tok.decode(ids)


def make_prompts(model_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    p = {
        "decode_n": A.decode_n,
        "decode": {
            "short": {"text": filler_text(tok, A.short_tokens), "k": A.k_short},
            "long": {"text": filler_text(tok, A.long_tokens), "k": A.k_long},
        },
        # Several prompts: a random model can fall into repeating one token, which alone
        # would say little about agreement.
        "agree": [{"ids": tok.encode(filler_text(tok, A.agree_prompt_tokens, f"agree {i} {w}"),
                                     add_special_tokens=False).ids, "max_tokens": A.agree_tokens}
                  for i, w in enumerate(WORDS[:A.agree_prompts])],
    }
    for key, v in p["decode"].items():
        v["tokens"] = len(tok.encode(v["text"], add_special_tokens=False).ids)
    path = os.path.join(A.work, "prompts.json")
    with open(path, "w") as f:
        json.dump(p, f)
    R["prompts"] = {k: v["tokens"] for k, v in p["decode"].items()}
    R["prompts"]["agree"] = [len(a["ids"]) for a in p["agree"]]
    return tok, p, path


# --- phase 1: mlx-lm in one process ------------------------------------------------------------
def phase_mlx_ref(prompts_path):
    out = os.path.join(A.work, "mlx_ref.json")
    timeout = max(20, min(A.ref_timeout, left() - A.reserve_serve - A.reserve_wuwei))
    log(f"mlx-lm reference (timeout {timeout:.0f}s)")
    idle = gpu_used_mib()
    with GpuPeak() as mem:
        # Its output goes straight to the log; its results to `out` after every measurement.
        try:
            rc = subprocess.run([sys.executable, os.path.join(HERE, "mlx_ref.py"), "--model", A.q4,
                                 "--prompts", prompts_path, "--out", out, "--rounds", str(A.rounds)],
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    ref = json.load(open(out)) if os.path.exists(out) else {}
    ref.update(rc=rc, gpu_peak_over_idle_mib=over_idle(mem.peak_mib, idle))
    R["mlx_lm"] = ref
    if rc != 0:
        err("mlx-lm reference", f"rc={rc} (see the log above)")
    save()
    return ref


# --- phase 2: wuwei generate, timed from outside ------------------------------------------------
def wuwei_env():
    env = dict(os.environ, WUWEI_LOG="info")
    for kv in filter(None, A.wuwei_env.split(",")):
        k, _, v = kv.partition("=")
        env[k] = v
    return env


def wuwei_generate(prompt, n, env=None):
    """(wall seconds, generated tokens as printed, stderr tail, Wuwei's own prompt tok/s as
    printed) of one `wuwei generate` (printed figures: None if absent), `env` added to its
    environment."""
    cmd = [A.wuwei, "generate", "--model", A.q4, "--prompt", prompt, "--max-tokens", str(n), "--quiet"]
    if A.weights:
        cmd += ["--weights", A.weights]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=A.step_timeout,
                       env=dict(wuwei_env(), **(env or {})))
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"wuwei generate rc={p.returncode}: {ANSI.sub('', p.stderr)[-1200:]}")
    gen = re.search(r"generation: (\d+) tokens", p.stdout)
    prompt_tps = re.search(r"prompt: \d+ tokens, ([\d.]+) tok/s", p.stdout)
    return (wall, int(gen[1]) if gen else None, ANSI.sub("", p.stderr)[-1500:],
            float(prompt_tps[1]) if prompt_tps else None)


def phase_wuwei_decode(prompts):
    log("wuwei generate: decode timed from outside")
    res = R.setdefault("wuwei_decode", {})
    idle = gpu_used_mib()
    n0 = prompts["decode_n"]
    with GpuPeak() as mem:
        for key, p in prompts["decode"].items():
            if left() < A.reserve_serve + 10:
                err("wuwei decode", f"skipping {key}: time")
                break
            try:
                _, _, stderr, _ = wuwei_generate(p["text"], n0)  # warm-up: JIT for this shape
                R.setdefault("wuwei_log", [l for l in stderr.splitlines() if "weights" in l or "device" in l or "dtype" in l][:6])
            except Exception as e:  # noqa: BLE001
                err(f"wuwei decode {key} warm-up", e)
                continue
            rows = res.setdefault(key, [])
            for rnd in range(A.rounds):
                if left() < A.reserve_serve + 5:
                    err("wuwei decode", f"skipping {key} round {rnd + 1}: time")
                    break
                try:
                    wa, ta, *_ = wuwei_generate(p["text"], n0)
                    wb, tb, *_ = wuwei_generate(p["text"], n0 + p["k"])
                except Exception as e:  # noqa: BLE001
                    err(f"wuwei decode {key} round {rnd + 1}", e)
                    break
                row = {"round": rnd + 1, "wall_n_s": round(wa, 4), "wall_nk_s": round(wb, 4),
                       "tokens": [ta, tb], "decode_tps": round(p["k"] / (wb - wa), 1) if wb > wa else None}
                if (ta, tb) != (n0, n0 + p["k"]) and None not in (ta, tb):
                    err(f"wuwei decode {key}", f"generated {[ta, tb]} tokens, wanted {[n0, n0 + p['k']]}")
                rows.append(row)
                save()
                log(f"  wuwei {key} round {rnd + 1}: decode {row['decode_tps']} tok/s "
                    f"(N={n0} {wa:.3f}s, N+{p['k']} {wb:.3f}s)")
    res["gpu_peak_over_idle_mib"] = over_idle(mem.peak_mib, idle)
    save()


# --- phase 4: prefill chunk size ---------------------------------------------------------------
def phase_chunks(prompts):
    """Prefill of the long prompt by `wuwei generate` at each `--chunks` size (prompt tokens per
    scheduler step, WUWEI_PREFILL_CHUNK): the device default is a guess until this has run on
    a GPU. Timed from outside as wall(long prompt, 1 token) - wall(short prompt, 1 token) at the
    same size (loading cancels), with Wuwei's own prompt tok/s beside it; a warm-up per size."""
    budget = min(A.chunks_budget, left() - 3)
    end = time.time() + budget
    log(f"wuwei generate: prefill chunk sizes {A.chunks} (budget {budget:.0f}s)")
    res = R.setdefault("chunks", {"prompt_tokens": prompts["decode"]["long"]["tokens"],
                                  "short_tokens": prompts["decode"]["short"]["tokens"], "rows": []})
    long_text, short_text = prompts["decode"]["long"]["text"], prompts["decode"]["short"]["text"]
    n = res["prompt_tokens"] - res["short_tokens"]
    for size in A.chunks:
        if time.time() > end - 5:
            err("chunks", f"skipping {size}: time")
            break
        env = {"WUWEI_PREFILL_CHUNK": str(size)}
        try:
            wuwei_generate(long_text, 1, env)  # warm-up: kernels for this chunk's shapes
            walls, own = [], []
            for _ in range(A.chunks_rounds):
                if time.time() > end - 5:
                    break
                ws, *_ = wuwei_generate(short_text, 1, env)
                wl, _, _, tps = wuwei_generate(long_text, 1, env)
                walls.append(wl - ws)
                own.append(tps)
        except Exception as e:  # noqa: BLE001
            err(f"chunks {size}", e)
            continue
        if not walls:
            break
        d = statistics.median(walls)
        row = {"chunk": size, "rounds": len(walls), "extra_wall_s": round(d, 4),
               "prefill_tps_outside": round(n / d, 1) if d > 0 else None,
               "prefill_tps_wuwei": round(statistics.median([x for x in own if x] or [0]), 1) or None}
        res["rows"].append(row)
        save()
        log(f"  chunk {size}: {row['prefill_tps_outside']} tok/s from outside, {row['prefill_tps_wuwei']} by Wuwei")


# --- phase 3: servers ----------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Server:
    def __init__(self, name, kind):
        self.name, self.kind = name, kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logpath = os.path.join(A.work, f"server-{kind}.log")
        self.proc = None

    def start(self):
        logf = open(self.logpath, "w")
        if self.kind == "wuwei":
            self.model = os.path.basename(A.q4)
            env = wuwei_env()
            # 32 sequences decoded together (the highest level); no SSD tier: the GPU is measured.
            env.update(WUWEI_MAX_RUNNING=str(A.max_running), WUWEI_KV_SSD="false",
                       WUWEI_WATCH_MODELS="false")
            if A.weights:
                env["WUWEI_WEIGHTS"] = A.weights
            cmd = [A.wuwei, "serve", "--port", str(self.port), "--models", os.path.dirname(A.q4),
                   "--default-model", self.model]
        else:
            self.model, env = "default_model", dict(os.environ)
            cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", A.q4, "--port", str(self.port),
                   "--log-level", "WARNING", "--decode-concurrency", str(A.max_running)]
        self.t_start = time.time()
        self.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_tail(1500)}")
            try:
                http_json(f"{self.url}/v1/chat/completions", {
                    "model": self.model, "max_tokens": 2, "temperature": 0,
                    "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
                return round(time.time() - self.t_start, 1)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError(f"not ready after {timeout:.0f}s: {self.log_tail(1500)}")

    def log_tail(self, n):
        try:
            return ANSI.sub("", open(self.logpath, errors="replace").read())[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def completion(srv, prompt, max_tokens, timeout):
    """(seconds, response) of one non-streamed greedy /v1/completions request."""
    t = time.perf_counter()
    r = http_json(f"{srv.url}/v1/completions", {"model": srv.model, "prompt": prompt, "max_tokens": max_tokens,
                                                  "temperature": 0}, timeout=timeout)
    return time.perf_counter() - t, r


async def one_stream(session, srv, prompt, max_tokens):
    t0 = time.perf_counter()
    first = done = None
    usage, chunks = None, 0
    body = {"model": srv.model, "stream": True, "temperature": 0, "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    async with session.post(f"{srv.url}/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[6:])
                ch = chunk.get("choices") or []
                if ch and (ch[0].get("delta") or {}).get("content"):
                    chunks += 1
                    first = first or now
                if ch and ch[0].get("finish_reason"):
                    done = now
                if chunk.get("usage"):
                    usage = chunk["usage"]
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    done = done or end
    return {"ttft": (first - t0) if first else None, "tokens": tokens,
            "decode": (tokens - 1) / (done - first) if first and done > first and tokens > 1 else None}


async def level_run(srv, n, max_tokens, tag):
    import aiohttp
    prompts = [f"Story {tag}-{i}: write a detailed story about a traveller who crosses a desert, a "
               f"forest and a sea, describing every day of the journey and every person met." for i in range(n)]
    timeout = aiohttp.ClientTimeout(total=A.step_timeout)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.perf_counter()
        res = await asyncio.gather(*[one_stream(s, srv, p, max_tokens) for p in prompts], return_exceptions=True)
        wall = time.perf_counter() - t0
    bad = [repr(r) for r in res if isinstance(r, BaseException)]
    ok = [r for r in res if not isinstance(r, BaseException)]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    decs = [r["decode"] for r in ok if r["decode"]]
    return {"streams": n, "ok": len(ok), "failed": len(bad), "errors": bad[:3], "wall_s": round(wall, 3),
            "tokens": sum(r["tokens"] for r in ok),
            "agg_tps": round(sum(r["tokens"] for r in ok) / wall, 1) if ok else None,
            "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
            "ttft_max_s": round(ttfts[-1], 4) if ttfts else None,
            "per_stream_decode_tps": round(statistics.mean(decs), 1) if decs else None}


def agreement(srv, ref, tok):
    """For each agreement prompt (token ids, the same for both), the greedy tokens of Wuwei's
    completion that equal mlx-lm's from the first: the longest prefix of mlx-lm's ids whose
    text starts Wuwei's text."""
    prompts = json.load(open(os.path.join(A.work, "prompts.json")))["agree"]
    rows = []
    for ag, want in zip(prompts, ref):
        _, r = completion(srv, ag["ids"], ag["max_tokens"], A.step_timeout)
        text, ids = r["choices"][0]["text"], want["ids"]
        same = next((i for i in range(len(ids), -1, -1) if text.startswith(tok.decode(ids[:i]))), 0)
        rows.append({"equal_tokens": same, "of": len(ids), "identical_text": text == want["text"],
                     "wuwei_completion_tokens": (r.get("usage") or {}).get("completion_tokens"),
                     "wuwei_head": text[:100], "mlx_lm_head": want["text"][:100]})
    return {"equal_tokens": sum(x["equal_tokens"] for x in rows), "of": sum(x["of"] for x in rows),
            "prompts": len(rows), "per_prompt": rows}


def phase_serve(kind, budget, tok, ref):
    name = "wuwei serve" if kind == "wuwei" else "mlx_lm.server"
    end = time.time() + budget
    res = R.setdefault("serve", {}).setdefault(kind, {"name": name})
    idle = gpu_used_mib()
    res["gpu_idle_mib"] = idle
    srv = Server(name, kind)
    log(f"{name}: budget {budget:.0f}s")
    try:
        with GpuPeak() as mem:
            srv.start()
            res["ready_s"] = srv.wait_ready(max(20, min(180, end - time.time() - 20)))
            log(f"  {name} ready in {res['ready_s']}s")
            # Warm-up, discarded: batched decode shapes and a long prefill.
            asyncio.run(level_run(srv, 8, 16, "warm"))
            completion(srv, filler_text(tok, A.long_tokens, f"{kind}-warm"), 1, A.step_timeout)
            save()
            pre = res.setdefault("prefill_long", [])
            for i in range(A.rounds):
                if time.time() > end - 10:
                    break
                s, r = completion(srv, filler_text(tok, A.long_tokens, f"{kind}-{i}"), 1, A.step_timeout)
                n = (r.get("usage") or {}).get("prompt_tokens") or A.long_tokens
                pre.append({"seconds": round(s, 4), "prompt_tokens": n, "prefill_tps": round(n / s, 1)})
                log(f"  {name} prefill {n} tokens: {s:.3f}s, {n / s:.0f} tok/s")
            save()
            if kind == "wuwei" and ref:
                try:
                    res["agree"] = agreement(srv, ref, tok)
                    log(f"  greedy agreement: {res['agree']['equal_tokens']}/{res['agree']['of']} tokens")
                except Exception as e:  # noqa: BLE001
                    err("agreement", e)
            levels = res.setdefault("levels", [])
            for n in A.levels:
                if time.time() > end - 10:
                    err(name, f"skipping {n} streams: time")
                    continue
                row = asyncio.run(level_run(srv, n, A.stream_tokens, f"{kind}-{n}"))
                levels.append(row)
                save()
                log(f"  {name} {n:3d} streams: {row['agg_tps']} tok/s aggregate, TTFT p50 {row['ttft_p50_s']}s, "
                    f"per-stream {row['per_stream_decode_tps']} tok/s, {row['failed']} failed")
            apps = smi("pid,used_memory", apps=True) or []
            res["gpu_app_mib"] = next((int(a[1]) for a in apps if a and a[0] == str(srv.proc.pid) and len(a) > 1
                                       and a[1].isdigit()), None)
            res["gpu_used_mib"] = gpu_used_mib()
            if kind == "wuwei":
                try:
                    st = http_json(f"{srv.url}/admin/api/status")
                    res["status"] = {k: st.get(k) for k in ("memory", "loaded", "device") if k in st}
                except Exception as e:  # noqa: BLE001
                    err("wuwei status", e)
        res["gpu_peak_over_idle_mib"] = over_idle(mem.peak_mib, idle)
    except Exception as e:  # noqa: BLE001
        err(f"serve {name}", f"{e}\n{traceback.format_exc()[-800:]}")
    finally:
        srv.stop()
        res["log_tail"] = srv.log_tail(3000)
        save()


def main():
    global A
    # `timeout` sends SIGTERM: leave through the finally blocks (servers stopped, JSON saved).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--wuwei", required=True)
    ap.add_argument("--q4", required=True, help="the 4-bit model folder")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--budget-s", type=float, default=330)
    ap.add_argument("--reserve-serve", type=float, default=150, help="seconds kept for the servers")
    ap.add_argument("--reserve-wuwei", type=float, default=60, help="seconds kept for `wuwei generate`")
    ap.add_argument("--ref-timeout", type=float, default=150)
    ap.add_argument("--step-timeout", type=float, default=90)
    ap.add_argument("--short-tokens", type=int, default=512)
    ap.add_argument("--long-tokens", type=int, default=8000)
    ap.add_argument("--decode-n", type=int, default=8)
    ap.add_argument("--k-short", type=int, default=256)
    ap.add_argument("--k-long", type=int, default=256)
    ap.add_argument("--agree-prompt-tokens", type=int, default=256)
    ap.add_argument("--agree-tokens", type=int, default=64)
    ap.add_argument("--agree-prompts", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--stream-tokens", type=int, default=128)
    ap.add_argument("--max-running", type=int, default=32)
    ap.add_argument("--wuwei-env", default="", help="extra environment for wuwei: K=V,K=V")
    ap.add_argument("--weights", choices=("auto", "native", "dequantized"),
                    help="Wuwei's weights mode for both `generate` and `serve` (default: Wuwei's own)")
    ap.add_argument("--chunks", default="512,1024,2048,4096",
                    help="prefill chunk sizes the chunks phase measures")
    ap.add_argument("--chunks-budget", type=float, default=45, help="seconds kept for the chunks phase")
    ap.add_argument("--chunks-rounds", type=int, default=1)
    ap.add_argument("--phases", default="ref,wuwei,serve,chunks")
    ap.add_argument("--manifest", help="the bundle's MANIFEST.json (what was built, from which commit)")
    ap.add_argument("--params", help="the model's size as make_model.py printed it")
    A = ap.parse_args()
    A.deadline = T0 + A.budget_s
    A.levels = [int(x) for x in A.levels.split(",")]
    A.chunks = [int(x) for x in A.chunks.split(",")]
    # Time kept for the chunk sizes when they are measured, last (taken from the servers').
    A.reserve_chunks = A.chunks_budget if "chunks" in A.phases.split(",") else 0
    R["args"] = {k: v for k, v in vars(A).items() if k != "deadline"}
    rows = smi("name,memory.total,driver_version")
    if rows and len(rows[0]) >= 3:
        R["device"] = {"name": rows[0][0], "memory_total_mib": rows[0][1], "driver": rows[0][2]}
    try:
        R["wuwei_version"] = subprocess.run([A.wuwei, "--version"], capture_output=True, text=True,
                                            timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        err("wuwei --version", e)
    if A.manifest and os.path.exists(A.manifest):
        R["bundle"] = json.load(open(A.manifest))
    cfg = json.load(open(os.path.join(A.q4, "config.json")))
    R["model"] = {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "intermediate_size", "vocab_size",
                                           "quantization")}
    if A.params:
        R["model"]["params"] = A.params
    save()
    tok, prompts, prompts_path = make_prompts(A.q4)
    log(f"prompts: {R['prompts']}")
    ref = {}
    phases = A.phases.split(",")
    if "ref" in phases:
        try:
            ref = phase_mlx_ref(prompts_path).get("agree") or []
        except Exception:  # noqa: BLE001
            err("mlx-lm phase", traceback.format_exc()[-1500:])
    if "wuwei" in phases:
        try:
            phase_wuwei_decode(prompts)
        except Exception:  # noqa: BLE001
            err("wuwei decode phase", traceback.format_exc()[-1500:])
    if "serve" in phases:
        # Half the time left to each server; mlx_lm.server last, so Wuwei's figures come first
        # when time is short.
        phase_serve("wuwei", max(30, (left() - A.reserve_chunks) / 2), tok, ref)
        phase_serve("mlx_lm", max(30, left() - A.reserve_chunks - 3), tok, ref)
    if "chunks" in phases:
        try:
            phase_chunks(prompts)
        except Exception:  # noqa: BLE001
            err("chunks phase", traceback.format_exc()[-1500:])
    save()
    log(f"bench done in {time.time() - T0:.0f}s, {len(R['errors'])} errors")


if __name__ == "__main__":
    main()
