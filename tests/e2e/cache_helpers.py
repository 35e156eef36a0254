"""What the prefix-cache tests share (test_cache.py, test_cache_ssd.py, and the hybrid and
half-precision tests that check the cache): prompts, requests, the cache's status and metrics,
block-file integrity, a daemon that can be killed -9, and reference outputs with the cache off."""
import concurrent.futures as cf
import contextlib
import os
import random
import re
import signal
import socket
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


def _send_all(url, prompts, timeout, **body):
    """`prompts` sent at once to /v1/completions (4 greedy tokens each, `body` added): the
    thread pool and the requests' futures (a life of the kill -9 tests)."""
    pool = cf.ThreadPoolExecutor(len(prompts))
    futures = [
        pool.submit(lambda p=p: requests.post(
            f"{url}/v1/completions",
            json={"prompt": p, "max_tokens": 4, "temperature": 0, **body},
            timeout=timeout,
        ))
        for p in prompts
    ]
    return pool, futures


def _wait_until(ready, deadline, what, poll, futures=None):
    """Polls `ready()` every `poll` seconds until it holds (or, given `futures`, until every
    request is done); fails with `what` past `deadline`."""
    while not ready() and not (futures is not None and all(f.done() for f in futures)):
        assert time.monotonic() < deadline, what
        time.sleep(poll)


def _writing(pid):
    """Whether the daemon has a temp file open (a block or snapshot file being written and
    fsynced, not yet renamed): its open files, read from /proc, which a kill -9 then
    interrupts. (Listing the cache folder for temp files is slower than a small file's write.)"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".tmp"):
                return True
        except OSError:
            pass
    return False


def _kill_9(proc, kv, pool):
    """Kills the daemon with -9 and stops its requests; whether it died with a file half
    written (a temp file left in `kv`)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = bool(list(kv.rglob("*.tmp")))
    pool.shutdown(wait=True, cancel_futures=True)
    return interrupted
