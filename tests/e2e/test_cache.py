"""The KV prefix cache seen from outside: a cache hit (RAM or SSD) never changes greedy output,
a conversation computes only its new tokens, the SSD tier survives restarts and `kill -9`, is
switched off and on at runtime through the admin API, and a full, read-only or hanging cache
folder costs nothing but the cache.

Expected outputs come from the same daemon with the cache switched off (WUWEI_KV_CACHE=0):
the cache must be invisible in the output."""

import concurrent.futures as cf
import contextlib
import os
import random
import re
import signal
import socket
import stat
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import requests

from conftest import running_daemon

BLOCK = 32  # the default block size (kv::DEFAULT_BLOCK_SIZE)


def _text(seed: str, sentences: int) -> str:
    """A long, varied prompt (different seeds share no prefix)."""
    rng = random.Random(seed)
    words = "river stone light garden winter market letter harbor forest engine window road".split()
    out = [f"Notes on {seed}."]
    for i in range(sentences):
        out.append(f"Item {i}: the {rng.choice(words)} near the {rng.choice(words)} was {rng.choice(words)}.")
    return " ".join(out)


def _complete(url, prompt, max_tokens=8):
    r = requests.post(
        f"{url}/v1/completions",
        json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    tokens = body["choices"][0]["logprobs"]["tokens"]
    return tokens, body["usage"]


def _chat(url, messages, max_tokens=12):
    r = requests.post(
        f"{url}/v1/chat/completions",
        json={"messages": messages, "max_tokens": max_tokens, "temperature": 0},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]


def _metric(url, name, **labels):
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _cached(usage):
    return usage["prompt_tokens_details"]["cached_tokens"]


def _expected_hit(prompt_tokens):
    """Full blocks of the prompt, leaving at least one token to compute."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


def _wait_writes(url, at_least, timeout=60):
    deadline = time.monotonic() + timeout
    while _metric(url, "wuwei_kv_ssd_writes_total") < at_least:
        assert time.monotonic() < deadline, "SSD writes did not happen"
        time.sleep(0.2)


def _cache(url):
    """The admin API's view of the SSD tier (GET /admin/api/cache)."""
    r = requests.get(f"{url}/admin/api/cache", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _switch(url, enabled):
    r = requests.post(f"{url}/admin/api/cache", json={"enabled": enabled}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["ssd_cache"]["enabled"] is enabled
    return r.json()


def _wait_cache(url, predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        c = _cache(url)
        if predicate(c):
            return c
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {c}"
        time.sleep(0.1)


def _wait_scan(url):
    """Until the startup index scan is done (before it, blocks on disk are misses)."""
    return _wait_cache(url, lambda c: not c["scanning"], "the SSD index scan")


# The block file format (kv/ssd.rs): magic, version, identity, hash, dtype+pad, layout,
# payload length, payload, CRC32 (IEEE, the same as zlib's) of everything before it.
_HEADER = 8 + 4 + 32 + 16 + 4 + 16 + 8


def _intact(path):
    data = path.read_bytes()
    if len(data) < _HEADER + 4 or data[:8] != b"WUWEIKV\0":
        return False
    body, crc = data[:-4], data[-4:]
    payload = int.from_bytes(data[80:88], "little")
    return zlib.crc32(body) == int.from_bytes(crc, "little") and len(body) == _HEADER + payload


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Outputs without any cache, computed once per (weights mode, prompt)."""
    outputs = {}

    def get(mode, prompts, max_tokens=8):
        missing = [p for p in prompts if (mode, p, max_tokens) not in outputs]
        if missing:
            env = {"WUWEI_KV_CACHE": "0", "WUWEI_WEIGHTS": mode}
            with running_daemon(tmp_path_factory.mktemp("nocache"), env) as url:
                for p in missing:
                    outputs[(mode, p, max_tokens)] = _complete(url, p, max_tokens)[0]
        return [outputs[(mode, p, max_tokens)] for p in prompts]

    return get


@pytest.mark.parametrize("mode", ["native", "dequantized"])
def test_ram_hit_output_equals_uncached(tmp_path, reference, mode):
    # Native weights prefill ~20x slower on the CPU: a shorter prompt (still 4 blocks).
    base = _text(f"ram-{mode}", 8 if mode == "native" else 20)
    longer = base + " " + _text("continuation", 8)
    expected = reference(mode, [base, longer])
    env = {"WUWEI_KV_SSD_DIR": str(tmp_path / "kv"), "WUWEI_WEIGHTS": mode}
    with running_daemon(tmp_path, env) as url:
        cold, usage = _complete(url, base)
        assert _cached(usage) == 0
        assert cold == expected[0]
        hot, usage = _complete(url, base)
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]) > 0
        assert hot == expected[0], "RAM hit changed the greedy output"
        # A prompt that extends the cached one reuses its blocks and computes the rest.
        ext, usage = _complete(url, longer)
        assert _cached(usage) >= _expected_hit(len(cold)) and _cached(usage) > 0
        assert ext == expected[1], "partial hit changed the greedy output"
        # Concurrent requests with one prefix are served right (and share blocks).
        with cf.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda p: _complete(url, p)[0], [base, longer, base]))
        assert results == [expected[0], expected[1], expected[0]]
        assert _metric(url, "wuwei_prefix_cache_hits_total") >= 4
        assert _metric(url, "wuwei_prefix_cache_hit_tokens_total", tier="ram") > 0
        assert _metric(url, "wuwei_kv_blocks_used") > 0


def test_multi_turn_computes_only_new_tokens(tmp_path):
    env = {"WUWEI_KV_SSD_DIR": str(tmp_path / "kv")}
    questions = [
        "Tell me about rivers in one sentence.",
        "And about mountains?",
        "Which is older?",
        "Summarize our talk.",
    ]
    system = {"role": "system", "content": _text("agent system prompt", 25)}
    with running_daemon(tmp_path, env) as url:
        messages = [system]
        previous_prompt = 0
        for turn, q in enumerate(questions):
            messages.append({"role": "user", "content": q})
            answer, usage = _chat(url, messages)
            prompt = usage["prompt_tokens"]
            computed = prompt - _cached(usage)
            if turn == 0:
                assert _cached(usage) == 0
            else:
                # Only what is new since the last turn (plus the partial last block) is computed.
                assert _cached(usage) > 0
                assert computed <= (prompt - previous_prompt) + BLOCK, (turn, usage)
            previous_prompt = prompt
            messages.append({"role": "assistant", "content": answer})


def test_restart_hits_the_ssd_tier(tmp_path, reference):
    prompt = _text("restart", 40)
    [expected] = reference("auto", [prompt])
    env = {"WUWEI_KV_SSD_DIR": str(tmp_path / "kv"), "WUWEI_WEIGHTS": "auto"}
    with running_daemon(tmp_path, env) as url:
        tokens, usage = _complete(url, prompt)
        assert tokens == expected
        _wait_writes(url, _expected_hit(usage["prompt_tokens"]) // BLOCK)
    with running_daemon(tmp_path, env) as url:
        tokens, usage = _complete(url, prompt)
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]) > 0
        assert tokens == expected, "SSD hit changed the greedy output"
        assert _metric(url, "wuwei_prefix_cache_hit_tokens_total", tier="ssd") == _cached(usage)
        assert _metric(url, "wuwei_kv_ssd_checksum_failures_total") == 0



def test_ssd_switch_stops_and_resumes_reads_and_writes(tmp_path, reference):
    """POST /admin/api/cache: off stops writes and reads at once, on resumes them without a
    restart, and the switch is not persisted (the config decides at start)."""
    a, b, c = (_text(f"switch-{n}", 14) for n in "abc")
    expected = dict(zip("abc", reference("auto", [a, b, c], 4)))
    kv = tmp_path / "kv"
    env = {"WUWEI_KV_SSD_DIR": str(kv), "WUWEI_WEIGHTS": "auto"}
    blocks = lambda usage: _expected_hit(usage["prompt_tokens"]) // BLOCK  # noqa: E731
    with running_daemon(tmp_path, env) as url:
        _wait_scan(url)
        written = 0
        for p in (a, c):
            tokens, usage = _complete(url, p, 4)
            written += blocks(usage)
        _wait_cache(url, lambda s: s["writes"] >= written, "the first prompts' blocks on disk")
        on_disk = sorted(kv.rglob("*.kv"))
        assert len(on_disk) == written

        _switch(url, False)
        tokens, usage = _complete(url, b, 4)
        assert tokens == expected["b"] and _cached(usage) == 0
        time.sleep(1.5)  # room for a write that should not happen
        off = _cache(url)
        assert off["enabled"] is False and off["writes"] == written, off
        assert sorted(kv.rglob("*.kv")) == on_disk, "a block was written while the tier was off"

    # A restart: the switch was not persisted, the tier is on again.
    with running_daemon(tmp_path, env) as url:
        s = _wait_scan(url)
        assert s["enabled"] is True and s["blocks"] == written, s
        _switch(url, False)
        # Off: `a` is on disk but not read (computed in full); nothing is looked up or written.
        tokens, usage = _complete(url, a, 4)
        assert tokens == expected["a"] and _cached(usage) == 0
        s = _cache(url)
        assert (s["hits"], s["misses"]) == (0, 0), s
        time.sleep(1.5)
        assert _cache(url)["writes"] == 0

        # On again, no restart: `c` comes back from disk, `b` (computed while off) is written.
        on = _switch(url, True)["ssd_cache"]
        assert on["enabled"] is True
        tokens, c_usage = _complete(url, c, 4)
        assert tokens == expected["c"]
        assert _cached(c_usage) == _expected_hit(c_usage["prompt_tokens"]) > 0
        s = _cache(url)
        assert s["hits"] == blocks(c_usage) and s["hit_rate"] == 1.0, s
        assert _metric(url, "wuwei_prefix_cache_hit_tokens_total", tier="ssd") == _cached(c_usage)
        tokens, usage = _complete(url, b, 4)
        assert tokens == expected["b"] and _cached(usage) == 0
        _wait_cache(url, lambda s: s["writes"] >= blocks(usage), "writes to resume")
        assert len(list(kv.rglob("*.kv"))) == written + blocks(usage)
        # The RAM tier's numbers per model.
        ram = _cache(url)["ram"]
        assert ram["blocks_used"] > 0 and ram["hit_tokens"] == _cached(c_usage), ram


def test_a_hanging_disk_read_falls_back_to_recomputation(tmp_path, reference):
    """Block files that block on open (FIFOs, like a stalled disk) cost one read timeout: the
    prompt is computed instead and served exactly; later lookups do not wait again."""
    prompt, other = _text("hang", 14), _text("hang-other", 14)
    expected = reference("auto", [prompt, other], 4)
    kv = tmp_path / "kv"
    env = {"WUWEI_KV_SSD_DIR": str(kv), "WUWEI_WEIGHTS": "auto", "WUWEI_KV_SSD_READ_TIMEOUT_MS": "500"}
    with running_daemon(tmp_path, env) as url:
        total = 0
        for p in (prompt, other):
            total += _expected_hit(_complete(url, p, 4)[1]["prompt_tokens"]) // BLOCK
        _wait_cache(url, lambda s: s["writes"] >= total, "writes")
    for f in kv.rglob("*.kv"):
        f.unlink()
        os.mkfifo(f)
    with running_daemon(tmp_path, env) as url:
        _wait_scan(url)

        def complete_within_60s(p):
            # Without the read timeout this would hang on the FIFO forever.
            r = requests.post(f"{url}/v1/completions", timeout=60,
                              json={"prompt": p, "max_tokens": 4, "temperature": 0, "logprobs": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["logprobs"]["tokens"], r.json()["usage"]

        tokens, usage = complete_within_60s(prompt)
        assert tokens == expected[0] and _cached(usage) == 0
        s = _cache(url)
        assert s["read_timeouts"] == 1 and s["hits"] == 0, s
        # The reader is still stuck on the first FIFO: the next lookup skips the tier.
        tokens, usage = complete_within_60s(other)
        assert tokens == expected[1] and _cached(usage) == 0
        s = _cache(url)
        assert s["read_timeouts"] == 2 and s["hits"] == 0, s
        # The RAM tier is unaffected.
        tokens, usage = complete_within_60s(prompt)
        assert tokens == expected[0] and _cached(usage) == _expected_hit(usage["prompt_tokens"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _killable_daemon(log_path, env_extra, models=None):
    """The daemon, without the clean-exit check of running_daemon: it is killed with -9.
    `models`: the models folder (default: $WUWEI_TEST_MODELS)."""
    port = _free_port()
    env = dict(os.environ, WUWEI_LOG="info", **env_extra)
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS"):
        env.pop(var, None)
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [os.environ["WUWEI_BIN"], "serve", "--port", str(port), "--models",
         str(models or os.environ["WUWEI_TEST_MODELS"])],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, Path(log_path).read_text()[-3000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


# Daemon lives killed -9 in the test below: the first three at random, then alternately
# within a few ms of a half-written block and while the writer is busy.
LIVES = 14


def test_kill_9_during_writes_never_serves_a_bad_block(tmp_path, reference):
    kv = tmp_path / "kv"
    env = {"WUWEI_KV_SSD_DIR": str(kv), "WUWEI_WEIGHTS": "auto"}
    checks = [_text(f"kill-check-{i}", 14) for i in range(2)]
    fresh = _text("kill-fresh", 14)
    expected = reference("auto", checks + [fresh], 4)
    log = tmp_path / "daemon.log"
    # The check prompts' blocks go to disk first (some of these files get damaged below).
    with _killable_daemon(log, env) as (url, proc):
        total = 0
        for p in checks:
            total += _expected_hit(_complete(url, p, 4)[1]["prompt_tokens"]) // BLOCK
        _wait_cache(url, lambda s: s["writes"] >= total, "the check prompts' blocks on disk")
    check_files = sorted(kv.rglob("*.kv"))
    assert len(check_files) == total

    # Heavy writing, killed at random: every life sends new prompts (every block of them goes
    # to disk) plus the check prompts (read back), and is killed -9 at a random moment: in the
    # first lives while the prompts are being read; then alternately within a few ms of a
    # temp file showing up (a block half written: the crash window that matters), and from
    # just after the first new block file appears (the writer busy from then on) until well
    # after.
    rng = random.Random(9)
    interrupted = 0  # lives killed while a block file was half written (a temp file remained)
    for i in range(LIVES):
        before = set(kv.rglob("*.kv"))
        with _killable_daemon(log, env) as (url, proc):
            prompts = [_text(f"kill-{i}-{j}", 20) for j in range(3)] + checks
            pool = cf.ThreadPoolExecutor(len(prompts))
            futures = [
                pool.submit(lambda p=p: requests.post(
                    f"{url}/v1/completions",
                    json={"prompt": p, "max_tokens": 4, "temperature": 0},
                    timeout=60,
                ))
                for p in prompts
            ]
            # Generous: on a loaded machine the first block of a life can take a minute.
            deadline = time.monotonic() + 180
            if i < 3:
                time.sleep(rng.uniform(0.0, 0.5))
            elif i % 2:
                # Until a temp file appears (or every request is done: then kill anyway).
                while not list(kv.rglob("*.tmp")) and not all(f.done() for f in futures):
                    assert time.monotonic() < deadline, "no block was written"
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.005))
            else:
                while not set(kv.rglob("*.kv")) - before:
                    assert time.monotonic() < deadline, "no block was written"
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            interrupted += bool(list(kv.rglob("*.tmp")))
            pool.shutdown(wait=True, cancel_futures=True)
    files = sorted(kv.rglob("*.kv"))
    assert len(files) > len(check_files), f"nothing new reached the disk in {LIVES} runs"
    # Temp + fsync + rename: a kill never leaves a damaged file under a block's name.
    broken = [f for f in files if not _intact(f)]
    assert not broken, f"{len(broken)} of {len(files)} block files are damaged after kill -9"
    print(f"\n{len(files) - len(check_files)} new block files; {interrupted}/{LIVES} kills interrupted a write")
    assert interrupted >= 1, "no kill landed while a block was being written"

    # Damage the check prompts' files the way a dying disk would: flipped bits, truncation.
    damaged = check_files[::2]
    damaged_bytes = {}
    for n, f in enumerate(damaged):
        data = bytearray(f.read_bytes())
        if n % 2:
            f.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[len(data) // 2] ^= 0x5A
            f.write_bytes(bytes(data))
        damaged_bytes[f] = f.read_bytes()

    (tmp_path / "final").mkdir()
    with running_daemon(tmp_path / "final", env) as url:
        _wait_scan(url)
        assert not list(kv.rglob("*.tmp")), "the startup scan removes stray temp files"
        for p, exp in zip(checks, expected):
            tokens, usage = _complete(url, p, 4)
            assert tokens == exp, "output changed after crashes and damage"
        # Each damaged file that was read was rejected, deleted and counted; none was served.
        # (The recomputed block is written again under the same name, intact.)
        s = _wait_cache(url, lambda s: s["writes"] >= 1, "the recomputed blocks on disk")
        bad = s["corrupt_dropped"]
        assert bad >= 1, s
        assert _metric(url, "wuwei_kv_ssd_checksum_failures_total") == bad
        replaced = [f for f in damaged if not f.exists() or f.read_bytes() != damaged_bytes[f]]
        assert bad == len(replaced)
        # The cache keeps working: the same prompts now hit in full, and a new prompt goes to
        # disk.
        for p, exp in zip(checks, expected):
            tokens, usage = _complete(url, p, 4)
            assert tokens == exp
            assert _cached(usage) == _expected_hit(usage["prompt_tokens"])
        tokens, usage = _complete(url, fresh, 4)
        assert tokens == expected[2]
        _wait_cache(url, lambda c: c["writes"] >= bad + _expected_hit(usage["prompt_tokens"]) // BLOCK,
                    "the new prompt's blocks on disk")
    # ... and is read back after a restart.
    with running_daemon(tmp_path / "final", env) as url:
        _wait_scan(url)
        tokens, usage = _complete(url, fresh, 4)
        assert tokens == expected[2]
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]) > 0
        assert _cache(url)["hits"] == _cached(usage) // BLOCK


def _unshare_wrapper(tmp_path, mount_options):
    """A WUWEI_BIN stand-in that runs the daemon in its own mount namespace with a small
    tmpfs as its cache folder (works as root and, with user namespaces, without)."""
    cache = tmp_path / "kvmount"
    cache.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o {mount_options} tmpfs {cache}"],
        capture_output=True,
    )
    assert probe.returncode == 0, f"cannot mount a tmpfs in a namespace: {probe.stderr.decode()}"
    wrapper = tmp_path / "wuwei-in-namespace"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare -rm sh -c 'mount -t tmpfs -o {mount_options} tmpfs {cache} && "
        f"exec {os.environ['WUWEI_BIN']} \"$@\"' wuwei \"$@\"\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper, cache


# Both cases read the same prompts (each daemon has its own empty cache): one reference run.
_UNUSABLE_PROMPTS = [_text(f"unusable-{i}", 20) for i in range(3)]


@pytest.mark.parametrize("case", ["disk_full", "read_only"])
def test_unusable_cache_folder_costs_only_the_cache(tmp_path, reference, monkeypatch, case):
    # disk_full: a tiny filesystem that runs out of inodes after a file or two (ENOSPC). A
    # filesystem out of bytes is met earlier by the size cap (≤ 90% of the free space: blocks
    # are then dropped or evict older ones), so inodes are what makes writes fail here.
    # read_only: every write fails (EROFS).
    options = "size=64m,nr_inodes=6" if case == "disk_full" else "ro,size=64m"
    wrapper, cache = _unshare_wrapper(tmp_path, options)
    prompts = _UNUSABLE_PROMPTS
    expected = reference("auto", prompts, 4)
    monkeypatch.setenv("WUWEI_BIN", str(wrapper))
    env = {"WUWEI_KV_SSD_DIR": str(cache), "WUWEI_WEIGHTS": "auto", "WUWEI_KV_SSD_MAX_BYTES": str(1 << 30)}
    with running_daemon(tmp_path, env) as url:
        for p, exp in zip(prompts, expected):
            assert _complete(url, p, 4)[0] == exp
        # The RAM tier still works.
        tokens, usage = _complete(url, prompts[0], 4)
        assert tokens == expected[0] and _cached(usage) > 0
        s = _wait_cache(url, lambda c: c["write_errors"] >= 2, "write errors to be counted")
        assert s["enabled"] is True and s["errors"] == s["write_errors"], s
        why = "No space left on device" if case == "disk_full" else "Read-only file system"
        assert why in s["last_error"], s
        assert _metric(url, "wuwei_kv_ssd_write_errors_total") == s["write_errors"]
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("cannot write the SSD KV cache") == 1, "errors are logged once, not per block"


def _histogram_buckets(url, name):
    """{le: count} of a histogram, summed over labels."""
    out = {}
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        m = re.match(rf'^{name}_bucket\{{.*le="([^"]+)".*\}} ([0-9.e+-]+)$', line)
        if m:
            le = float(m.group(1))  # "+Inf" parses as inf
            out[le] = out.get(le, 0) + float(m.group(2))
    return out


def test_kv_budget_gates_admission(tmp_path, reference):
    """Running sequences share the model's KV budget (kv_reserve_tokens): a prompt that does
    not fit next to them waits in the queue (outputs still exact), and one that could never
    fit is refused with 507 while the daemon keeps serving."""
    prompts = [_text(f"budget-{i}", 14) for i in range(4)]
    expected = reference("auto", prompts, 8)
    # 450 positions: two prompts of ~175 tokens fit together, a third does not.
    env = {"WUWEI_WEIGHTS": "auto", "WUWEI_KV_RESERVE_TOKENS": "450"}
    with running_daemon(tmp_path, env) as url:
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: _complete(url, p, 8)[0], prompts))
        assert results == expected
        buckets = _histogram_buckets(url, "wuwei_batch_size")
        inf = float("inf")
        assert buckets[inf] > 0
        assert buckets[2.0] == buckets[inf], f"a step ran more sequences than the KV budget holds: {buckets}"
        r = requests.post(f"{url}/v1/completions", timeout=60,
                          json={"prompt": _text("budget-huge", 60), "max_tokens": 1})
        assert r.status_code == 507, r.text
        err = r.json()["error"]
        assert err["code"] == "insufficient_memory" and "kv_reserve_tokens" in err["message"], err
        assert _complete(url, prompts[0], 8)[0] == expected[0]


def _complete_full(url, prompt, max_tokens):
    r = requests.post(
        f"{url}/v1/completions",
        json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("prefix_cache", ["1", "0"])
def test_kv_budget_preempts_growing_batch(tmp_path, reference, prefix_cache):
    """Admission does not reserve room for output, so a batch that fits at the start can
    outgrow the KV budget while decoding. Then the newest sequence is paused (its KV freed)
    and resumed when there is room, its KV rebuilt from the prefix cache or recomputed:
    every output is still exactly what the request gives alone, and nothing goes over."""
    prompts = [_text(f"grow-{i}", 14) for i in range(2)]
    expected = reference("auto", prompts, 48)
    # Two prompts of ~175 tokens fit in 400 positions; with 48 new tokens each they do not.
    env = {"WUWEI_WEIGHTS": "auto", "WUWEI_KV_RESERVE_TOKENS": "400", "WUWEI_KV_CACHE": prefix_cache}
    with running_daemon(tmp_path, env) as url:
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: _complete(url, p, 48)[0], prompts))
        assert results == expected
        assert _metric(url, "wuwei_preemptions_total") >= 1
        buckets = _histogram_buckets(url, "wuwei_batch_size")
        assert buckets[2.0] > 0, f"the two sequences never ran together: {buckets}"
    log = (tmp_path / "daemon.log").read_text()
    assert "outgrew the KV budget" in log


def test_lone_sequence_output_is_clamped_to_kv_budget(tmp_path):
    """A sequence running alone may fill the KV budget but not go past it: max_tokens beyond
    it is clamped (finish_reason length), like max_tokens beyond the context."""
    prompt = _text("lone", 14)
    env = {"WUWEI_WEIGHTS": "auto", "WUWEI_KV_RESERVE_TOKENS": "200"}
    with running_daemon(tmp_path, env) as url:
        body = _complete_full(url, prompt, 500)
        usage = body["usage"]
        assert usage["prompt_tokens"] < 200, usage
        assert body["choices"][0]["finish_reason"] == "length", body
        assert usage["prompt_tokens"] + usage["completion_tokens"] == 201, usage
