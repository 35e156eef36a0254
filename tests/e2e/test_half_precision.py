"""The GPU configuration through the real daemon, on the CPU: `WUWEI_ACTIVATIONS=checkpoint`
serving half-precision checkpoints with quantized weights kept as stored — what a Mac runs.
The official SDKs get answers, greedy tokens equal mlx-lm's in the same dtype, a sequence's
tokens do not depend on its batch, and prefix-cache hits from RAM and from the SSD tier after
a restart (KV blocks stored in bf16) give exactly the tokens of a cold run.

The models are small random-weight checkpoints written by mlx-lm's own classes with SmolLM2's
tokenizer (make_random_model.py): MLX's CPU kernels are slow in half precision, SmolLM2 in
bf16 is covered by engine/tests/half_precision.rs."""

import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT, make_anthropic_client, running_daemon
from cache_helpers import _cached, _expected_hit, _metric, _text, _wait_writes

BF16_Q4 = "rand-llama-bf16-q4"
F16 = "rand-qwen3-f16"
ENV = {"WUWEI_ACTIVATIONS": "checkpoint"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("half-models")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    script = REPO_ROOT / "tests/reference/make_random_model.py"
    for name, args in [
        (BF16_Q4, ["llama", "--dtype", "bfloat16", "--bits", "4", "--group-size", "32"]),
        (F16, ["qwen3", "--dtype", "float16"]),
    ]:
        subprocess.run([sys.executable, str(script), args[0], str(root / name), *args[1:],
                        "--tokenizer", str(tokenizer)], check=True)
    return root


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("half")
    with running_daemon(log_dir, ENV, models=models,
                        extra_args=("--default-model", BF16_Q4)) as url:
        yield url


def _mlx_lm(model_dir, prompts, max_tokens, model_config=None):
    """mlx-lm's greedy tokens (EOS excluded), computed in the checkpoint's dtype;
    `model_config` amends its config.json (mlx_lm.load's model_config)."""
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests/reference/mlx_lm_greedy.py"), str(model_dir),
         str(max_tokens), json.dumps([{"text": p, "chat": False} for p in prompts]),
         *([json.dumps(model_config)] if model_config else [])],
        check=True, capture_output=True, text=True).stdout
    return [r["tokens"] for r in json.loads(out)]


def _complete(url, model, prompt, max_tokens=12, **extra):
    r = requests.post(f"{url}/v1/completions", timeout=300, json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "logprobs": 0, **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["logprobs"]["tokens"], body["usage"], body["choices"][0]["text"]


def test_status_reports_the_gpu_configuration(daemon):
    requests.post(f"{daemon}/v1/completions", timeout=300,
                  json={"model": BF16_Q4, "prompt": "hi", "max_tokens": 1})
    status = requests.get(f"{daemon}/admin/api/status", timeout=10).json()
    assert status["device"]["backend"] == "cpu"
    assert status["device"]["activations"] == "checkpoint"
    [loaded] = [m for m in status["loaded"] if m["id"] == BF16_Q4]
    # `auto` never expands quantized weights when activations are in the checkpoint's dtype.
    assert loaded["weights_mode"] == "native"


@pytest.mark.parametrize("model", [BF16_Q4, F16])
def test_greedy_tokens_equal_mlx_lm_in_the_same_dtype(daemon, models, model):
    from tokenizers import Tokenizer

    prompts = ["def fibonacci(n):", "The river stone was"]
    expected = _mlx_lm(models / model, prompts, 12)
    tok = Tokenizer.from_file(str(models / model / "tokenizer.json"))
    for prompt, want in zip(prompts, expected):
        _, usage, text = _complete(daemon, model, prompt)
        assert text == tok.decode(want, skip_special_tokens=False), prompt
        assert usage["completion_tokens"] == len(want) + (len(want) < 12)


def test_official_sdks(daemon):
    from openai import OpenAI

    client = OpenAI(base_url=f"{daemon}/v1", api_key="unused", max_retries=0, timeout=120)
    chat = client.chat.completions.create(
        model=BF16_Q4, messages=[{"role": "user", "content": "Say something."}],
        max_tokens=8, temperature=0)
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=BF16_Q4, messages=[{"role": "user", "content": "Say something."}],
            max_tokens=8, temperature=0, stream=True)
        if c.choices)
    assert streamed == chat.choices[0].message.content

    from sse_validator import RecordingTransport, validate

    recorder = RecordingTransport()
    anthropic = make_anthropic_client(daemon, recorder)
    msg = anthropic.messages.create(model=BF16_Q4, max_tokens=8, extra_body={"temperature": 0},
                                    messages=[{"role": "user", "content": "Say something."}])
    assert msg.content[0].text == chat.choices[0].message.content
    with anthropic.messages.stream(model=BF16_Q4, max_tokens=8, extra_body={"temperature": 0},
                                   messages=[{"role": "user", "content": "Say something."}]) as s:
        assert "".join(s.text_stream) == msg.content[0].text
    for _, text in recorder.take():
        validate(text)


def test_seeded_sampling_and_logprobs(daemon):
    args = {"temperature": 0.9, "top_p": 0.95, "seed": 77, "logprobs": 3}
    a = _complete(daemon, BF16_Q4, "Once upon a time", 10, **args)
    b = _complete(daemon, BF16_Q4, "Once upon a time", 10, **args)
    assert a[0] == b[0], "the same seed gives the same tokens"
    r = requests.post(f"{daemon}/v1/completions", timeout=300, json={
        "model": BF16_Q4, "prompt": "Once upon a time", "max_tokens": 4, "logprobs": 3,
        "temperature": 0})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["top_logprobs"]) == 4 and all(len(t) == 3 for t in lp["top_logprobs"])
    assert all(v <= 0 for v in lp["token_logprobs"])


def test_a_sequence_decodes_the_same_alone_and_batched(daemon):
    prompts = [_text(f"batch-{i}", 2 + 3 * i) for i in range(4)]
    alone = [_complete(daemon, BF16_Q4, p, 16)[0] for p in prompts]
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: _complete(daemon, BF16_Q4, p, 16)[0], prompts))
    assert together == alone


def test_prefix_cache_hits_in_ram_and_after_restart_on_ssd(models, tmp_path):
    prompt = _text("half-cache", 12)
    env = {**ENV, "WUWEI_KV_SSD_DIR": str(tmp_path / "kv")}
    args = ("--default-model", BF16_Q4)
    with running_daemon(tmp_path, {**env, "WUWEI_KV_CACHE": "0"}, models=models,
                        extra_args=args) as url:
        cold = _complete(url, BF16_Q4, prompt)[0]
    with running_daemon(tmp_path, env, models=models, extra_args=args) as url:
        first, usage = _complete(url, BF16_Q4, prompt)[:2]
        assert first == cold and _cached(usage) == 0
        hot, usage = _complete(url, BF16_Q4, prompt)[:2]
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]) > 0
        assert hot == cold, "a RAM hit changed the greedy output"
        _wait_writes(url, _expected_hit(usage["prompt_tokens"]) // 32)
    with running_daemon(tmp_path, env, models=models, extra_args=args) as url:
        tokens, usage = _complete(url, BF16_Q4, prompt)[:2]
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]) > 0
        assert tokens == cold, "an SSD hit changed the greedy output"
        assert _metric(url, "wuwei_prefix_cache_hit_tokens_total", tier="ssd") == _cached(usage)
