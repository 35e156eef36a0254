"""Issue 16's architectures through the real daemon, in the GPU configuration on the CPU
(activations in the checkpoint's dtype, quantized weights as stored): a Gemma 3 model with
sliding-window layers, a Gemma 4 MoE (sliding and full layers of different head shapes) and
a Qwen3-Next hybrid (Gated DeltaNet + gated attention + MoE), small random-weight bf16 4-bit
checkpoints written by mlx-lm's own classes with SmolLM2's tokenizer.

Greedy tokens equal mlx-lm's over prompts longer than the window; a sequence's tokens do not
depend on its batch; a prefix-cache hit on the windowed models gives the tokens of a cold run,
also for a prompt long enough to run in its own cache (whose windowed layers forget what
their window no longer sees) and across Gemma 4's two head shapes; the hybrid model's prefix
cache snapshots its linear layers' recurrent state every SNAPSHOT positions (small here, so
that short prompts cross several), and a hit restores the KV blocks up to the nearest
snapshot at or before the match (or at a previous prompt's last block boundary) plus that
snapshot: a repeated prompt and a partial match ending between snapshots give mlx-lm's
(cold) tokens."""

import concurrent.futures as cf
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, running_daemon
from cache_helpers import _cached, _expected_hit, _text
from test_half_precision import _complete, _mlx_lm

GEMMA = "rand-gemma3-bf16-q4"
GEMMA4 = "rand-gemma4moe-bf16-q4"
NEXT = "rand-qwen3next-bf16-q4"
SNAPSHOT = 64  # two blocks of 32
ENV = {"WUWEI_ACTIVATIONS": "checkpoint", "WUWEI_KV_SNAPSHOT_INTERVAL": str(SNAPSHOT)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid-models")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    script = REPO_ROOT / "tests/reference/make_random_model.py"
    for name, arch in [(GEMMA, "gemma3_text"), (GEMMA4, "gemma4_text_moe"), (NEXT, "qwen3_next")]:
        subprocess.run([sys.executable, str(script), arch, str(root / name), "--dtype",
                        "bfloat16", "--bits", "4", "--group-size", "32",
                        "--tokenizer", str(tokenizer)], check=True)
    return root


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("hybrid")
    with running_daemon(log_dir, ENV, models=models,
                        extra_args=("--default-model", GEMMA)) as url:
        yield url


@pytest.mark.parametrize("model", [GEMMA, NEXT])
def test_greedy_tokens_equal_mlx_lm(daemon, models, model):
    from tokenizers import Tokenizer

    # The random configs' sliding window is 16 positions: these prompts are longer.
    prompts = [_text("window", 4), "def fibonacci(n):"]
    expected = _mlx_lm(models / model, prompts, 12)
    tok = Tokenizer.from_file(str(models / model / "tokenizer.json"))
    for prompt, want in zip(prompts, expected):
        _, usage, text = _complete(daemon, model, prompt)
        assert text == tok.decode(want, skip_special_tokens=False), prompt


@pytest.mark.parametrize("model", [GEMMA, NEXT])
def test_a_sequence_decodes_the_same_alone_and_batched(daemon, model):
    prompts = [_text(f"hybrid-batch-{i}", 2 + 3 * i) for i in range(3)]
    alone = [_complete(daemon, model, p, 12)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: _complete(daemon, model, p, 12)[0], prompts))
    assert together == alone


def test_repeated_prompts_give_the_cold_tokens(daemon):
    prompt = _text("hybrid-repeat", 12)
    cold, usage = _complete(daemon, GEMMA, prompt)[:2]
    hot, usage = _complete(daemon, GEMMA, prompt)[:2]
    assert _cached(usage) > 0, "the windowed model reuses the prefix"
    assert hot == cold, "a prefix hit on a sliding-window model changed the output"
    cold, usage = _complete(daemon, NEXT, prompt)[:2]
    assert _cached(usage) == 0
    again, usage = _complete(daemon, NEXT, prompt)[:2]
    # The whole usable prefix (full blocks, one token left to compute): the first run left a
    # snapshot at the prompt's last block boundary (its tail), not only at multiples of
    # SNAPSHOT.
    assert usage["prompt_tokens"] > 2 * SNAPSHOT
    assert _cached(usage) == (usage["prompt_tokens"] - 1) // 32 * 32, usage
    assert again == cold, "a prefix hit on the hybrid model changed the output"


def test_hybrid_partial_match_between_snapshots_gives_the_cold_tokens(daemon, models):
    from tokenizers import Tokenizer

    shared = _text("hybrid-partial", 8)
    # Long enough that its tail snapshot (at its last block boundary) lies past the shared part.
    first = shared + " The end of the first letter, and a postscript: " + _text("postscript", 2)
    second = shared + " A different ending: the harbor road stayed open all winter."
    want = _mlx_lm(models / NEXT, [first, second], 12)
    tok = Tokenizer.from_file(str(models / NEXT / "tokenizer.json"))
    shared_tokens = len(tok.encode(shared, add_special_tokens=False).ids)
    # The shared prefix ends between snapshots, past the first one, and before the first
    # prompt's tail snapshot.
    assert SNAPSHOT < shared_tokens and shared_tokens % SNAPSHOT >= 32, shared_tokens
    first_tokens = len(tok.encode(first, add_special_tokens=False).ids)
    assert (first_tokens - 1) // 32 * 32 > shared_tokens // 32 * 32, first_tokens
    _, usage, text = _complete(daemon, NEXT, first)
    assert text == tok.decode(want[0], skip_special_tokens=False)
    _, usage, text = _complete(daemon, NEXT, second)
    cached = _cached(usage)
    # Blocks match past the snapshot; only the snapshot's prefix is reused.
    assert cached == shared_tokens // SNAPSHOT * SNAPSHOT, (cached, shared_tokens)
    assert text == tok.decode(want[1], skip_special_tokens=False)


def test_a_long_prompt_keeps_only_the_window_and_reuses_every_block(daemon, models):
    """A prompt past the slot pool's limit (2,048 tokens) runs in a cache of its own, whose
    sliding-window layers keep only their window and what the prefix cache has yet to copy
    out (Gemma's memory at long context; that this changes no logit is arch_parity's check):
    every block of the prompt is still published, and a repeat reuses them all and gives the
    cold run's tokens."""
    from tokenizers import Tokenizer

    prompt = _text("long-window", 160)
    tok = Tokenizer.from_file(str(models / GEMMA / "tokenizer.json"))
    assert len(tok.encode(prompt, add_special_tokens=False).ids) > 2048
    cold, usage, _ = _complete(daemon, GEMMA, prompt)
    hot, usage, _ = _complete(daemon, GEMMA, prompt)
    assert _cached(usage) == _expected_hit(usage["prompt_tokens"]), usage
    assert hot == cold


def test_gemma4_reuses_prefixes_across_its_two_head_shapes(daemon):
    """Gemma 4's full-attention layers have fewer, wider heads than its sliding ones (here 1 of
    64 against 2 of 32): prefix blocks hold both shapes, and a repeated prompt reuses every
    block and gives the cold run's tokens."""
    prompt = _text("gemma4-repeat", 12)
    cold, usage, _ = _complete(daemon, GEMMA4, prompt)
    assert _cached(usage) == 0
    hot, usage, _ = _complete(daemon, GEMMA4, prompt)
    assert _cached(usage) == _expected_hit(usage["prompt_tokens"]), usage
    assert hot == cold
