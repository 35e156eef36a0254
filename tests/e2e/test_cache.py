"""The KV prefix cache in RAM, seen from outside: a cache hit never changes greedy output, a
conversation computes only its new tokens, and the KV budget gates admission, pauses a growing
batch and clamps a lone sequence. (The SSD tier: test_cache_ssd.py.)

Expected outputs come from the same daemon with the cache switched off (WUWEI_KV_CACHE=0):
the cache must be invisible in the output."""
import concurrent.futures as cf
import re

import pytest
import requests

from cache_helpers import (  # noqa: F401  (reference: a fixture)
    BLOCK, _cached, _chat, _complete, _expected_hit, _metric, _text, reference,
)
from conftest import running_daemon


def test_ram_hit_output_equals_uncached(tmp_path, reference):
    # Weights as the CPU runs them (dequantized, float32 KV). Hits with the weights as stored
    # (quantized, bf16 KV: the GPU configuration) are checked in test_half_precision.py.
    mode = "dequantized"
    base = _text(f"ram-{mode}", 20)
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


def test_requests_sent_together_compute_their_shared_prompt_once(tmp_path, reference):
    """Requests sent at once whose prompts start alike (the n choices of one request, agents
    sharing a system prompt and tools) compute that part once: each waits while the first
    computes it, then takes its blocks from the cache. Outputs stay the cache-less daemon's."""
    mode = "dequantized"
    base = _text("sent together", 60)
    branch = base + " " + _text("a branch", 6)
    expected = reference(mode, [base, branch])
    env = {"WUWEI_KV_SSD_DIR": str(tmp_path / "kv"), "WUWEI_WEIGHTS": mode}
    with running_daemon(tmp_path, env) as url:
        prompts = [base, branch, base, base]
        with cf.ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: _complete(url, p), prompts))
        assert [tokens for tokens, _ in results] == [expected[0], expected[1], expected[0], expected[0]]
        computed = _metric(url, "wuwei_prompt_tokens_total") - _metric(
            url, "wuwei_cached_prompt_tokens_total")
        longest = results[1][1]["prompt_tokens"]
        assert longest > 800
        # Whichever ran first: the longest prompt once, and less than two blocks of each other
        # (its last partial block, and where it parts from the one it shared with). Computed
        # apart, the four would have taken ~3.3x the longest.
        assert computed <= longest + 3 * 2 * BLOCK, (computed, [u for _, u in results])
        assert sum(_cached(u) > 0 for _, u in results) == 3


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
