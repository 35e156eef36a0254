"""The KV prefix cache seen from outside: a cache hit (RAM or SSD) never changes greedy output,
a conversation computes only its new tokens, the SSD tier survives restarts and `kill -9`, and a
full or read-only cache folder costs nothing but the cache.

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
    base = _text(f"ram-{mode}", 40)
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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _killable_daemon(log_path, env_extra):
    port = _free_port()
    env = dict(os.environ, **env_extra)
    for var in ("WUWEI_API_KEY", "WUWEI_CONFIG", "WUWEI_HOST", "WUWEI_PORT", "WUWEI_MODELS"):
        env.pop(var, None)
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [os.environ["WUWEI_BIN"], "serve", "--port", str(port), "--models", os.environ["WUWEI_TEST_MODELS"]],
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
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()


def test_kill_9_during_writes_never_serves_a_bad_block(tmp_path, reference):
    kv = tmp_path / "kv"
    env = {"WUWEI_KV_SSD_DIR": str(kv), "WUWEI_WEIGHTS": "native", "WUWEI_LOG": "info"}
    checks = [_text(f"kill-check-{i}", 14) for i in range(2)]
    expected = reference("native", checks, 4)
    # The check prompts' blocks go to disk first (these files get damaged below).
    with _killable_daemon(tmp_path / "daemon.log", env) as (url, proc):
        started = time.monotonic()
        for p in checks:
            _complete(url, p, 4)
        # Kill times scale with this machine's speed: from before the first block is written
        # to after the prompts are done.
        one_prompt = (time.monotonic() - started) / len(checks)
        _wait_writes(url, 2 * (_expected_hit(_complete(url, checks[0], 1)[1]["prompt_tokens"]) // BLOCK))
        time.sleep(0.5)
    check_files = sorted(kv.rglob("*.kv"))
    rng = random.Random(9)
    for i in range(20):
        with _killable_daemon(tmp_path / "daemon.log", env) as (url, proc):
            # Heavy writing: new prompts at once, every block goes to disk; kill at random.
            prompts = [_text(f"kill-{i}-{j}", 14) for j in range(2)] + checks
            pool = cf.ThreadPoolExecutor(len(prompts))
            for p in prompts:
                pool.submit(lambda p=p: requests.post(
                    f"{url}/v1/completions",
                    json={"prompt": p, "max_tokens": 4, "temperature": 0},
                    timeout=60,
                ))
            time.sleep(rng.uniform(0.1, 3 * one_prompt))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            pool.shutdown(wait=True, cancel_futures=True)
    assert len(list(kv.rglob("*.kv"))) > len(check_files), "nothing new reached the disk in 20 runs"
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

    with _killable_daemon(tmp_path / "daemon.log", env) as (url, proc):
        time.sleep(1)  # let the index scan finish
        assert not list(kv.rglob("*.tmp")), "the startup scan removes stray temp files"
        for p, exp in zip(checks, expected):
            tokens, usage = _complete(url, p, 4)
            assert tokens == exp, "output changed after crashes and damage"
        # Each damaged file that was read was rejected, deleted and counted; none was served.
        # (The recomputed block is written again under the same name, intact.)
        _wait_writes(url, 1)
        time.sleep(1)
        bad = _metric(url, "wuwei_kv_ssd_checksum_failures_total")
        assert bad >= 1
        replaced = [f for f in damaged if not f.exists() or f.read_bytes() != damaged_bytes[f]]
        assert bad == len(replaced)
        # The cache keeps working: the same prompts now hit in full.
        for p, exp in zip(checks, expected):
            tokens, usage = _complete(url, p, 4)
            assert tokens == exp
            assert _cached(usage) == _expected_hit(usage["prompt_tokens"])


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


@pytest.mark.parametrize("case", ["disk_full", "read_only"])
def test_unusable_cache_folder_costs_only_the_cache(tmp_path, reference, monkeypatch, case):
    # disk_full: the filesystem runs out of inodes after a couple of files (ENOSPC);
    # read_only: every write fails (EROFS).
    options = "size=64m,nr_inodes=6" if case == "disk_full" else "ro,size=64m"
    wrapper, cache = _unshare_wrapper(tmp_path, options)
    prompts = [_text(f"{case}-{i}", 40) for i in range(3)]
    expected = reference("native", prompts)
    monkeypatch.setenv("WUWEI_BIN", str(wrapper))
    env = {"WUWEI_KV_SSD_DIR": str(cache), "WUWEI_WEIGHTS": "native", "WUWEI_KV_SSD_MAX_BYTES": str(1 << 30)}
    with running_daemon(tmp_path, env) as url:
        for p, exp in zip(prompts, expected):
            assert _complete(url, p)[0] == exp
        # The RAM tier still works.
        tokens, usage = _complete(url, prompts[0])
        assert tokens == expected[0] and _cached(usage) > 0
        deadline = time.monotonic() + 30
        while _metric(url, "wuwei_kv_ssd_write_errors_total") < 2:
            assert time.monotonic() < deadline, "write errors were not counted"
            time.sleep(0.2)
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("cannot write the SSD KV cache") == 1, "errors are logged once, not per block"
