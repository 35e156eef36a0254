"""The scheduler seen from outside: batching does not change greedy output, a client that
leaves is cancelled and its memory freed, context limits, and overload."""

import concurrent.futures as cf
import re
import time

import pytest
import requests

from conftest import running_daemon

PROMPTS = [
    "What is the capital of France?",
    "Name a primary color.",
    "Write the word 'banana' backwards.",
    "What is 2 + 2?",
    "Give me a synonym for happy.",
    "Which planet is closest to the sun?",
    "Translate 'hello' into Spanish.",
    "What do bees make?",
]


def _greedy(client, model_id, prompt, max_tokens=16):
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        logprobs=True,
    )
    choice = r.choices[0]
    return [t.token for t in choice.logprobs.content], choice.message.content


def test_batching_does_not_change_greedy_output(client, model_id):
    alone = [_greedy(client, model_id, p) for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: _greedy(client, model_id, p), PROMPTS))
    for prompt, a, b in zip(PROMPTS, alone, together):
        assert a == b, f"{prompt!r}: alone {a[1]!r} vs batched {b[1]!r}"


def _metric(base_url, name):
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


@pytest.mark.parametrize("n", [1, 3])
def test_closed_stream_is_cancelled_and_freed(base_url, client, model_id, n):
    """A client that closes a stream cancels its generation, every choice of it (`n`)."""
    before = _metric(base_url, "wuwei_cancellations_total")
    stream = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=2000,
        temperature=0.8,
        n=n,
        stream=True,
    )
    for i, _chunk in enumerate(stream):
        if i >= 3 * n:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cancelled = _metric(base_url, "wuwei_cancellations_total") >= before + n
        idle = _metric(base_url, "wuwei_requests_running") == 0
        freed = _metric(base_url, "wuwei_kv_cache_bytes") == 0
        if cancelled and idle and freed:
            return
        time.sleep(0.2)
    raise AssertionError(
        "stream was not cancelled server-side: "
        + requests.get(f"{base_url}/metrics", timeout=10).text
    )


def _first_token_at(base_url, model_id, prompt):
    """When (monotonic) the first token of a streamed greedy answer to `prompt` arrived."""
    body = {"model": model_id, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 4, "temperature": 0, "stream": True}
    with requests.post(f"{base_url}/v1/chat/completions", json=body, stream=True,
                       timeout=600) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            # The first token: content, or the finish of an answer that ended at once.
            if line.startswith(b"data: {") and (
                    (b'"content":"' in line and b'"content":""' not in line)
                    or b'"finish_reason":"' in line):
                return time.monotonic()
    raise AssertionError("no token")


def test_a_short_request_is_not_held_behind_a_long_prompt(base_url, model_id):
    """A step's prefill budget goes first to prompts it finishes: a short request sent while a
    long prompt is being read answers steps before it, instead of after it."""
    import random

    rng = random.Random()
    long_prompt = " ".join(f"{rng.choice(PROMPTS)} {rng.randrange(10**6)}" for _ in range(260))
    before = _metric(base_url, "wuwei_prompt_tokens_total")
    with cf.ThreadPoolExecutor(2) as pool:
        long = pool.submit(_first_token_at, base_url, model_id, long_prompt)
        # Once its first chunk is read (and so more than one step is left of it).
        deadline = time.monotonic() + 120
        while _metric(base_url, "wuwei_prompt_tokens_total") < before + 512:
            assert time.monotonic() < deadline and not long.done()
            time.sleep(0.05)
        short = pool.submit(_first_token_at, base_url, model_id, "Say hi.")
        long_at, short_at = long.result(), short.result()
    assert _metric(base_url, "wuwei_prompt_tokens_total") - before > 3 * 512, "a long prompt"
    # Before, the short one's first token came in the long one's last step.
    assert short_at + 2.0 < long_at, (long_at - short_at)


def test_prompt_longer_than_context_is_400_with_both_numbers(base_url, model_id):
    body = {"model": model_id, "messages": [{"role": "user", "content": "word " * 9000}], "max_tokens": 4}
    r = requests.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    m = re.search(r"prompt is too long: (\d+) tokens > (\d+) maximum", r.json()["error"]["message"])
    assert m and int(m.group(1)) > int(m.group(2)), r.text


def test_overload_gives_503_with_retry_after(tmp_path, model_id):
    env = {"WUWEI_MAX_RUNNING": "1", "WUWEI_MAX_QUEUE": "1"}
    with running_daemon(tmp_path, env) as url:
        body = {"model": model_id, "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 48, "temperature": 0}

        def post(_):
            return requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)

        with cf.ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(post, range(5)))
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes, codes
        refused = [r for r in responses if r.status_code == 503]
        assert refused, codes
        for r in refused:
            assert int(r.headers["retry-after"]) > 0
            assert r.json()["error"]["type"]
