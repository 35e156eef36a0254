"""The SSD tier of the KV prefix cache, seen from outside: it survives restarts and `kill -9`,
is switched off and on at runtime through the admin API, and a full, read-only or hanging cache
folder costs nothing but the cache. (The RAM tier: test_cache.py; the two files run side by
side under pytest-xdist.)

Expected outputs come from the same daemon with the cache switched off (WUWEI_KV_CACHE=0):
the cache must be invisible in the output."""
import os
import random
import stat
import subprocess
import time

import pytest
import requests

from cache_helpers import (  # noqa: F401  (reference: a fixture)
    BLOCK, _cache, _cached, _complete, _expected_hit, _intact, _kill_9, _killable_daemon,
    _metric, _send_all, _switch, _text, _wait_cache, _wait_scan, _wait_until, _wait_writes,
    _writing, reference,
)
from conftest import running_daemon


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


# Daemon lives killed -9 in the test below: the first three at random, then alternately
# while the daemon has a block file open (half written) and while the writer is busy; more
# (up to twice as many) until one kill lands mid-write.
LIVES = 8


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
    # first lives while the prompts are being read; then alternately while the daemon has a
    # temp file open (a block half written: the crash window that matters), and from
    # just after the first new block file appears (the writer busy from then on) until well
    # after.
    rng = random.Random(9)
    interrupted = 0  # lives killed while a block file was half written (a temp file remained)
    lives = 0
    while lives < LIVES or (interrupted == 0 and lives < 2 * LIVES):
        i, lives = lives, lives + 1
        before = set(kv.rglob("*.kv"))
        with _killable_daemon(log, env) as (url, proc):
            prompts = [_text(f"kill-{i}-{j}", 20) for j in range(3)] + checks
            pool, futures = _send_all(url, prompts, 60)
            # Generous: on a loaded machine the first block of a life can take a minute.
            deadline = time.monotonic() + 180
            if i < 3:
                time.sleep(rng.uniform(0.0, 0.5))
            elif i % 2:
                # While the daemon has a temp file open (or once every request is done: then
                # kill anyway).
                writing = lambda: _writing(proc.pid)  # noqa: E731
                _wait_until(writing, deadline, "no block was written", 0.0005, futures)
            else:
                new_block = lambda: set(kv.rglob("*.kv")) - before  # noqa: E731
                _wait_until(new_block, deadline, "no block was written", 0.01)
                time.sleep(rng.uniform(0.0, 0.6))
            interrupted += _kill_9(proc, kv, pool)
    files = sorted(kv.rglob("*.kv"))
    assert len(files) > len(check_files), f"nothing new reached the disk in {lives} runs"
    # Temp + fsync + rename: a kill never leaves a damaged file under a block's name.
    broken = [f for f in files if not _intact(f)]
    assert not broken, f"{len(broken)} of {len(files)} block files are damaged after kill -9"
    print(f"\n{len(files) - len(check_files)} new block files; {interrupted}/{lives} kills interrupted a write")
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
