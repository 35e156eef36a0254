"""Prefix reuse on a hybrid model (Qwen3-Next: Gated DeltaNet layers with a recurrent state)
across both tiers: the recurrent-state snapshots taken every SNAPSHOT positions go to the SSD
tier beside their KV blocks (`<key>.snap` files: versioned, checksummed, written by temp file
+ fsync + rename, carrying the shape of every state array), so that after a restart a hit
restores the blocks and the nearest snapshot at or before the match from disk.

Every output is compared with the same prompt's tokens from a daemon without a prefix cache
(a cold run; tests/e2e/test_hybrid.py shows those equal mlx-lm's): a RAM hit, an SSD hit
after a restart and a partial match ending between snapshots give them exactly; `kill -9`
while snapshots are written never leaves a damaged file nor serves a bad state; and a
snapshot shaped for another layer layout (another model's, made to pass every other check)
is rejected, never restored.

A sliding-window model (Gemma 3) goes the same way: its blocks hold only the full-attention
layers' KV (the files' payloads say so), and the windowed layers' KV before each snapshot
boundary is in the snapshot, so RAM hits, SSD hits after a restart and a partial match give the
cold tokens there too."""

import concurrent.futures as cf
import os
import random
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from conftest import REPO_ROOT, running_daemon
from cache_helpers import (
    BLOCK, _cache, _intact, _kill_9, _killable_daemon, _metric, _send_all, _text, _wait_scan,
    _wait_until, _writing,
)
from test_half_precision import _complete
from test_hybrid import SNAPSHOT

sys.path.insert(0, str(REPO_ROOT / "tests/reference"))
from token_pieces import ids_of_pieces  # noqa: E402

NEXT = "rand-qwen3next-bf16-q4"  # linear layers 0 and 2
NEXT_WIDE = "rand-qwen3next-deep-linear"  # linear layers 0, 1 and 2: another layout
# Layers 0 and 2 windowed (16 positions: snapshots every 4 windows, SNAPSHOT), 1 and 3 full.
GEMMA = "rand-gemma3-bf16-q4"
# A block file's payload for GEMMA: the two full layers' K and V, 2 heads x BLOCK x 32 in bf16.
GEMMA_BLOCK_BYTES = 2 * 2 * 2 * BLOCK * 32 * 2
ENV = {"WUWEI_ACTIVATIONS": "checkpoint", "WUWEI_KV_SNAPSHOT_INTERVAL": str(SNAPSHOT)}

SHARED = _text("hybrid-partial", 8)  # ends between two snapshots (checked below)
LONG = SHARED + " " + _text("hybrid-ssd-long", 6)
OTHER = SHARED + " A different ending: the harbor road stayed open all winter."
CHECK = _text("hybrid-kill-check", 14)
LAYOUT = _text("hybrid-layout", 12)
# A conversation's first prompt (its tail, 96, and its reply's end, 160, between snapshots),
# its reply's length, and what the next turn adds after the reply. The turns go as token ids:
# a random model's reply is no canonical tokenization of its text.
TURN = _text("hybrid-turn", 9)
REPLY_TOKENS = 48
NEXT_TURN = " Then the next question: " + _text("hybrid-turn-next", 2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid-cache-models")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    script = REPO_ROOT / "tests/reference/make_random_model.py"
    made = [("qwen3_next", NEXT, []),
            ("qwen3_next", NEXT_WIDE, ["--set", "full_attention_interval=4"]),
            ("gemma3_text", GEMMA, [])]
    for arch, name, extra in made:
        subprocess.run([sys.executable, str(script), arch, str(root / name), "--dtype",
                        "bfloat16", "--bits", "4", "--group-size", "32",
                        "--tokenizer", str(tokenizer), *extra], check=True)
    return root


@pytest.fixture(scope="module")
def cold(models, tmp_path_factory):
    """Greedy tokens of every checked (model, prompt) from a daemon without a prefix cache."""
    wanted = [(NEXT, p) for p in (LONG, OTHER, CHECK, LAYOUT)] + [(NEXT_WIDE, LAYOUT)]
    wanted += [(GEMMA, p) for p in (LONG, OTHER)]
    env = dict(ENV, WUWEI_KV_CACHE="0")
    with running_daemon(tmp_path_factory.mktemp("hybrid-cold"), env, models=models) as url:
        out = {(m, p): _complete(url, m, p)[0] for m, p in wanted}
        # A two-turn conversation: the first turn's reply, and the second turn's tokens.
        first, rest = _ids(models, TURN), _ids(models, NEXT_TURN)
        for m in (NEXT, GEMMA):
            reply = _ids_of_pieces(models, _complete(url, m, first, REPLY_TOKENS)[0])
            out[(m, "reply")] = reply
            out[(m, "second")] = _complete(url, m, first + reply + rest)[0]
        return out


def _fresh(path):
    """A new folder for one daemon's log."""
    path.mkdir()
    return path


def _tokenizer(models):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(models / NEXT / "tokenizer.json"))


def _ids(models, text):
    return _tokenizer(models).encode(text, add_special_tokens=False).ids


def _tokens(models, text):
    return len(_ids(models, text))


def _ids_of_pieces(models, pieces):
    """The token ids behind generated tokens' texts (the logprobs' `tokens`)."""
    ids = ids_of_pieces(_tokenizer(models), pieces)
    assert None not in ids, f"a generated token is not a whole token's text: {pieces}"
    return ids


def _full_hit(prompt_tokens):
    """A repeated prompt's hit: its full blocks (one token left to compute), where the first
    run left a snapshot (its tail snapshot, at the prompt's last block boundary)."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


def _settled(url, kv, at_least=1, timeout=60):
    """Until the SSD tier wrote `at_least` files and its writer has been idle for a second."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        writes = _cache(url)["writes"]
        if writes != last or list(kv.rglob("*.tmp")):
            last, since = writes, time.monotonic()
        elif writes >= at_least and time.monotonic() - since > 1.0:
            return writes
        assert time.monotonic() < deadline, f"SSD writes did not settle ({writes})"
        time.sleep(0.1)


# A snapshot file (kv/ssd/format.rs): magic, version, identity, key, array count, per array
# (layer, dtype + 3 pad, axes, dims), payload length, payload, CRC32 of everything before it.
_SNAP_HEADER = 8 + 4 + 32 + 16 + 4


def _snap_parts(data):
    """(header, shapes and payload) of a snapshot file."""
    return data[:_SNAP_HEADER], data[_SNAP_HEADER:-4]


def _snap_intact(path):
    data = path.read_bytes()
    if len(data) < _SNAP_HEADER + 12 or data[:8] != b"WUWEISN\0":
        return False
    return zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")


@pytest.mark.parametrize("model", [NEXT, GEMMA])
def test_ram_and_ssd_hits_and_a_partial_match_give_the_cold_tokens(models, cold, tmp_path, model):
    shared = _tokens(models, SHARED)
    # The shared prefix ends between snapshots, past the first one.
    assert SNAPSHOT < shared and shared % SNAPSHOT >= 32, shared
    kv = tmp_path / "kv"
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(kv))
    with running_daemon(_fresh(tmp_path / "one"), env, models=models) as url:
        tokens, usage, _ = _complete(url, model, LONG)
        assert _cached_of(usage) == 0 and tokens == cold[(model, LONG)]
        n = usage["prompt_tokens"]
        assert _full_hit(n) >= 2 * SNAPSHOT, n
        tokens, usage, _ = _complete(url, model, LONG)
        assert _cached_of(usage) == _full_hit(n), usage
        assert tokens == cold[(model, LONG)], "a RAM hit changed the output"
        _settled(url, kv)
    snaps = sorted(kv.rglob("*.snap"))
    # One snapshot per interval the sequence crossed, and the prompt's tail.
    assert len(snaps) >= _full_hit(n) // SNAPSHOT + 1, snaps
    assert all(_snap_intact(p) for p in snaps)
    if model == GEMMA:
        # The windowed layers' KV is in the snapshots only.
        payloads = {int.from_bytes(p.read_bytes()[80:88], "little") for p in kv.rglob("*.kv")}
        assert payloads == {GEMMA_BLOCK_BYTES}, payloads

    with running_daemon(_fresh(tmp_path / "two"), env, models=models) as url:
        _wait_scan(url)
        tokens, usage, _ = _complete(url, model, LONG)
        assert _cached_of(usage) == _full_hit(n), usage
        assert tokens == cold[(model, LONG)], "an SSD hit after a restart changed the output"
        assert _metric(url, "wuwei_prefix_cache_hit_tokens_total", tier="ssd") == _full_hit(n)
        # Blocks match past the first snapshot, the match ends between snapshots (and before
        # LONG's tail): the blocks up to that snapshot (in RAM now) and the snapshot (still
        # only on disk) are reused.
        tokens, usage, _ = _complete(url, model, OTHER)
        assert _cached_of(usage) == shared // SNAPSHOT * SNAPSHOT, (usage, shared)
        assert tokens == cold[(model, OTHER)], "a partial match changed the output"
        assert _cache(url)["corrupt_dropped"] == 0


@pytest.mark.parametrize("model", [NEXT, GEMMA])
def test_requests_sent_together_share_their_prompt(models, cold, tmp_path, model):
    """Sent at once, a prompt, its repeat and one sharing its start compute the shared part
    once: the later ones wait for the first's snapshots and restore there."""
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(tmp_path / "kv"))
    with running_daemon(_fresh(tmp_path / "one"), env, models=models) as url:
        prompts = [LONG, OTHER, LONG]
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: _complete(url, model, p), prompts))
        assert [r[0] for r in results] == [cold[(model, p)] for p in prompts]
        n_long, n_other = (results[i][1]["prompt_tokens"] for i in (0, 1))
        restorable = _tokens(models, SHARED) // SNAPSHOT * SNAPSHOT
        computed = _metric(url, "wuwei_prompt_tokens_total") - _metric(
            url, "wuwei_cached_prompt_tokens_total")
        # Either of the two computes all of its prompt, the other from the last snapshot
        # they share, the repeat less than a block. Apart: 2 x LONG + OTHER.
        assert computed <= n_long + n_other - restorable + BLOCK, (
            computed, [r[1] for r in results])


def _cached_of(usage):
    return usage["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize("model", [NEXT, GEMMA])
def test_the_next_turn_restores_after_the_reply(models, cold, tmp_path, model):
    """A sequence ends in a snapshot at the last block boundary its reply crossed (recurrent
    states; a Gemma's windows, kept by a block of slack), so the conversation's next turn,
    whose prompt holds the reply, restores after it rather than at the previous prompt's tail,
    from RAM and from the SSD tier after a restart, and gives the cold tokens. Once that turn's
    own tail snapshot is stored, the first turn's tail and end snapshots leave the disk, after
    a restart too."""
    kv, kv_copy = tmp_path / "kv", tmp_path / "kv-copy"
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(kv))
    first, reply = _ids(models, TURN), cold[(model, "reply")]
    second = first + reply + _ids(models, NEXT_TURN)
    with running_daemon(_fresh(tmp_path / "one"), env, models=models) as url:
        pieces, usage, _ = _complete(url, model, first, REPLY_TOKENS)
        assert _ids_of_pieces(models, pieces) == reply
        assert usage["completion_tokens"] == REPLY_TOKENS, "the reply must not end early"
        tail = _full_hit(usage["prompt_tokens"])
        # Positions computed: the prompt and every reply token but the last.
        end = (usage["prompt_tokens"] + REPLY_TOKENS - 1) // BLOCK * BLOCK
        assert end > tail and end % SNAPSHOT and tail % SNAPSHOT, (tail, end)
        _settled(url, kv)
        first_turn = set(kv.rglob("*.snap"))
        # The interval's snapshots, the prompt's tail and the reply's end.
        assert len(first_turn) == end // SNAPSHOT + 2, (sorted(first_turn), end)
        shutil.copytree(kv, kv_copy)

        tokens, usage, _ = _complete(url, model, second)
        assert _cached_of(usage) == end, (usage, tail, end)
        assert tokens == cold[(model, "second")], "restoring after the reply changed the output"
        _settled(url, kv)
        gone = first_turn - set(kv.rglob("*.snap"))
        assert len(gone) == 2, "the first turn's tail and end snapshots are superseded"

    # The first turn's files only, after a restart.
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(kv_copy))
    with running_daemon(_fresh(tmp_path / "two"), env, models=models) as url:
        _wait_scan(url)
        before = set(kv_copy.rglob("*.snap"))
        tokens, usage, _ = _complete(url, model, second)
        assert _cached_of(usage) == end, (usage, tail, end)
        assert tokens == cold[(model, "second")], "an SSD restore after the reply changed the output"
        # The pairing of the first turn's tail and end snapshots was not kept over the
        # restart; both lie on the second turn's chain before its own tail: both go.
        _settled(url, kv_copy)
        assert len(before - set(kv_copy.rglob("*.snap"))) == 2


# Lives killed -9 below while new prompts' blocks and snapshots are being written.
LIVES = 4


def test_kill_9_while_snapshots_are_written_never_serves_a_bad_state(models, cold, tmp_path):
    kv = tmp_path / "kv"
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(kv))
    log = tmp_path / "daemon.log"
    # The check prompt's blocks and snapshots go to disk first (some get damaged below).
    with running_daemon(_fresh(tmp_path / "first"), env, models=models) as url:
        tokens, usage, _ = _complete(url, NEXT, CHECK)
        assert tokens == cold[(NEXT, CHECK)]
        _settled(url, kv)
    check_snaps = sorted(kv.rglob("*.snap"))
    assert len(check_snaps) >= 2, check_snaps

    # Each life sends new prompts at once (the writer stays busy with their blocks and
    # snapshots) plus the check prompt (read back), and is killed -9: the first at a random
    # moment, then alternately while the daemon has a temp file open and a few ms after a new
    # snapshot file appears.
    rng = random.Random(16)
    interrupted = 0  # lives killed while a file was half written (a temp file remained)
    lives = 0
    # LIVES lives, and more (up to twice as many) until a kill lands mid-write: whether one
    # does is timing (about one life in four does on two loaded cores).
    while lives < LIVES or (interrupted == 0 and lives < 2 * LIVES):
        i, lives = lives, lives + 1
        before = set(kv.rglob("*.snap"))
        with _killable_daemon(log, env, models) as (url, proc):
            prompts = [_text(f"hybrid-kill-{i}-{j}", 20) for j in range(3)] + [CHECK]
            pool, futures = _send_all(url, prompts, 120, model=NEXT)
            deadline = time.monotonic() + 180
            if i == 0:
                time.sleep(rng.uniform(0.0, 0.5))
            elif i % 2:
                # While the daemon has a temp file open: a file half written.
                writing = lambda: _writing(proc.pid)  # noqa: E731
                _wait_until(writing, deadline, "nothing was written", 0.0005, futures)
            else:
                new_snap = lambda: set(kv.rglob("*.snap")) - before  # noqa: E731
                _wait_until(new_snap, deadline, "no snapshot was written", 0.001, futures)
                time.sleep(rng.uniform(0.0, 0.01))
            interrupted += _kill_9(proc, kv, pool)
    snaps = sorted(kv.rglob("*.snap"))
    assert len(snaps) > len(check_snaps), f"no new snapshot reached the disk in {lives} lives"
    # Temp + fsync + rename: a kill never leaves a damaged file under a block's or snapshot's name.
    broken = [f for f in snaps if not _snap_intact(f)] + [f for f in kv.rglob("*.kv") if not _intact(f)]
    assert not broken, f"{len(broken)} files are damaged after kill -9"
    print(f"\n{len(snaps) - len(check_snaps)} new snapshot files; {interrupted}/{lives} kills interrupted a write")
    assert interrupted >= 1, "no kill landed while a file was being written"

    # Damage the check prompt's snapshots the way a dying disk would: a flipped bit in the
    # state, a truncated file.
    for n, f in enumerate(check_snaps):
        data = bytearray(f.read_bytes())
        if n % 2:
            f.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[len(data) - 100] ^= 0x10
            f.write_bytes(bytes(data))

    with running_daemon(_fresh(tmp_path / "final"), env, models=models) as url:
        _wait_scan(url)
        assert not list(kv.rglob("*.tmp")), "the startup scan removes stray temp files"
        # The nearest snapshot is damaged: rejected (deleted, counted), never restored; the
        # output is the cold run's whatever is reused.
        for _ in range(2):
            tokens, usage, _ = _complete(url, NEXT, CHECK)
            assert tokens == cold[(NEXT, CHECK)], "output changed after crashes and damage"
        bad = _cache(url)["corrupt_dropped"]
        assert bad >= 1
        assert _metric(url, "wuwei_kv_ssd_checksum_failures_total") == bad
        # The second time the prompt was in RAM, snapshots and all: a full hit.
        assert _cached_of(usage) == _full_hit(usage["prompt_tokens"]), usage


def test_a_snapshot_is_never_restored_into_another_layout(models, cold, tmp_path):
    """Two hybrid models with different layer layouts (linear layers 0, 2 and 0, 1, 2), one
    tokenizer, one prompt. Each has its own snapshots; and a snapshot file of the first model
    given the second's identity and key, so that only the state shapes inside tell them apart
    (checksum recomputed), is rejected by the second."""
    kv = tmp_path / "kv"
    env = dict(ENV, WUWEI_KV_SSD_DIR=str(kv))
    with running_daemon(_fresh(tmp_path / "one"), env, models=models) as url:
        for model in (NEXT, NEXT_WIDE):
            tokens, usage, _ = _complete(url, model, LAYOUT)
            assert _cached_of(usage) == 0, (model, usage)
            assert tokens == cold[(model, LAYOUT)]
        _settled(url, kv)
    dirs = {p.parent.parent for p in kv.rglob("*.snap")}
    assert len(dirs) == 2, "each model keeps its own snapshots"
    # The model with fewer linear layers has the smaller snapshots.
    narrow, wide = sorted((sorted(d.rglob("*.snap")) for d in dirs),
                          key=lambda snaps: snaps[0].stat().st_size)
    donor = _snap_parts(narrow[0].read_bytes())[1]
    for target in wide:
        header, _ = _snap_parts(target.read_bytes())
        body = header + donor
        target.write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))
        assert _snap_intact(target)

    with running_daemon(_fresh(tmp_path / "two"), env, models=models) as url:
        _wait_scan(url)
        tokens, usage, _ = _complete(url, NEXT_WIDE, LAYOUT)
        assert _cached_of(usage) == 0, "a snapshot of another layout was restored"
        assert tokens == cold[(NEXT_WIDE, LAYOUT)]
        assert _cache(url)["corrupt_dropped"] >= 1
        # The first model's own snapshots still serve it.
        tokens, usage, _ = _complete(url, NEXT, LAYOUT)
        assert _cached_of(usage) == _full_hit(usage["prompt_tokens"]) > 0, usage
        assert tokens == cold[(NEXT, LAYOUT)]
