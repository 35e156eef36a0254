"""Quantized KV (`kv_bits`) through the real daemon: with `WUWEI_KV_BITS=8` the admin API says
the model's KV is stored 8-bit, three concurrent requests through the OpenAI SDK (decoding
together in the slot pool, which holds that format) stream the greedy text the float-KV
daemon streams for each alone, and a setting MLX cannot quantize with stops the daemon at
start with a message that names it; a model that cannot store quantized KV (gpt-oss's attention
sinks, a head dimension the group size does not divide) serves with float KV under a global
`kv_bits` instead of failing its requests; and a sliding-window model's prefix hits restore its
windows quantized, giving the cold run's tokens. (The numbers themselves are checked against
mlx-lm's `QuantizedKVCache` in engine/tests/arch_parity.rs and kv_quant.rs.)"""

import concurrent.futures as cf
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from conftest import REPO_ROOT, running_daemon

# Prompts whose greedy continuation 8-bit KV leaves unchanged for SmolLM2 (kv_quant.rs).
PROMPTS = ["def fibonacci(n):", "The capital of France is", "Once upon a time,"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def kv8(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("kv8"), {"WUWEI_KV_BITS": "8"}) as url:
        yield url


def _text(client, model, prompt):
    r = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS,
                                  temperature=0)
    return r.choices[0].text


def _loaded(url, model):
    status = requests.get(f"{url}/admin/api/status", timeout=10).json()
    [entry] = [m for m in status["loaded"] if m["id"] == model]
    return entry


def test_eight_bit_kv_serves_concurrent_requests_with_the_float_texts(kv8, base_url, client,
                                                                     model_id):
    want = [_text(client, model_id, p) for p in PROMPTS]
    assert all(want), want
    quantized = OpenAI(base_url=f"{kv8}/v1", api_key="unused", max_retries=0, timeout=300)
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda p: _text(quantized, model_id, p), PROMPTS))
    assert got == want
    assert _loaded(kv8, model_id)["kv_quantization"] == "affine-q8g64"
    assert _loaded(base_url, model_id)["kv_quantization"] is None


def _binary():
    return Path(os.environ.get("WUWEI_BIN", REPO_ROOT / "target" / "release" / "wuwei"))


def _generate(*args):
    model = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    return subprocess.run([str(_binary()), "generate", "--model", str(model), *args],
                          capture_output=True, text=True, timeout=120)


def test_generate_takes_kv_bits_and_prefill_chunk_as_serve_does(client, model_id):
    """`wuwei generate --kv-bits 8`, in small prefill chunks, prints the float-KV daemon's
    greedy text; a bit width MLX cannot quantize is refused by name."""
    prompt = PROMPTS[0]
    want = _text(client, model_id, prompt)
    r = _generate("--prompt", prompt, "--max-tokens", str(MAX_TOKENS), "--kv-bits", "8",
                  "--prefill-chunk", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    text, _, stats = r.stdout.rpartition("\nprompt: ")
    assert text == want
    assert f"generation: {MAX_TOKENS} tokens" in stats, stats
    bad = _generate("--prompt", prompt, "--kv-bits", "7")
    assert bad.returncode != 0 and "--kv-bits" in bad.stderr and "2, 3, 4, 5, 6 or 8" in bad.stderr


def test_a_bit_width_mlx_cannot_quantize_stops_the_daemon_at_start(tmp_path):
    binary = _binary()
    env = dict(os.environ, WUWEI_KV_BITS="7", WUWEI_KV_SSD_DIR=str(tmp_path / "kv"))
    env.pop("WUWEI_CONFIG", None)
    r = subprocess.run([str(binary), "serve", "--host", "127.0.0.1", "--port", "0",
                        "--models", os.environ["WUWEI_TEST_MODELS"]],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "kv_bits" in out and "2, 3, 4, 5, 6 or 8" in out, out


def test_models_that_cannot_quantize_their_kv_serve_with_float_kv_under_kv_bits(tmp_path_factory):
    """Under a global `kv_bits`, models whose KV MLX's quantized attention cannot take (as in
    mlx-lm) serve their requests with their KV as computed (the admin API says so), the
    greedy text of a daemon without `kv_bits`: gpt-oss (attention sinks), and a model whose
    head dimension (32 in these random configs) the group size (64) does not divide."""
    root = tmp_path_factory.mktemp("unfit-models")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    models = {"rand-gptoss-bf16-q4": "gpt_oss", "rand-gemma3-bf16-q4": "gemma3_text"}
    for name, arch in models.items():
        subprocess.run([sys.executable, str(REPO_ROOT / "tests/reference/make_random_model.py"),
                        arch, str(root / name), "--dtype", "bfloat16", "--bits", "4",
                        "--group-size", "32", "--tokenizer", str(tokenizer)], check=True)
    texts = {}
    for kv in ("8", None):
        env = {"WUWEI_ACTIVATIONS": "checkpoint", **({"WUWEI_KV_BITS": kv} if kv else {})}
        with running_daemon(tmp_path_factory.mktemp("unfit"), env, models=root,
                            extra_args=("--default-model", "rand-gptoss-bf16-q4")) as url:
            for model in models:
                body = {"model": model, "prompt": "def fibonacci(n):", "max_tokens": 8,
                        "temperature": 0}
                r = requests.post(f"{url}/v1/completions", json=body, timeout=300)
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 8
                texts[kv, model] = r.json()["choices"][0]["text"]
                assert _loaded(url, model)["kv_quantization"] is None
    for model in models:
        assert texts["8", model] == texts[None, model], model
    # `wuwei generate --kv-bits` falls back the same way (and prints the same greedy text).
    for model in models:
        r = subprocess.run([str(_binary()), "generate", "--model", str(root / model), "--prompt",
                            "def fibonacci(n):", "--max-tokens", "8", "--kv-bits", "8"],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, WUWEI_ACTIVATIONS="checkpoint"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.rpartition("\nprompt: ")[0] == texts[None, model], model


def test_a_windowed_model_reuses_prefixes_with_quantized_kv(tmp_path_factory):
    """Gemma 3 with 8-bit KV in groups of 32 (its random config's head dimension): the
    windowed layers' windows go into snapshots as packed words, scales and biases, and come
    back into the slot pool's quantized rows; a repeated prompt and one that shares only part of
    it reuse their prefixes and give the tokens a daemon without a prefix cache gives."""
    from cache_helpers import _cached, _expected_hit, _text as _long

    root = tmp_path_factory.mktemp("kv8-windowed")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    model = "rand-gemma3-bf16-q4"
    subprocess.run([sys.executable, str(REPO_ROOT / "tests/reference/make_random_model.py"),
                    "gemma3_text", str(root / model), "--dtype", "bfloat16", "--bits", "4",
                    "--group-size", "32", "--tokenizer", str(tokenizer)], check=True)
    shared = _long("kv8-windowed", 8)
    prompts = [shared + " " + _long("kv8-first", 3), shared + " The road stayed open."]
    env = {"WUWEI_ACTIVATIONS": "checkpoint", "WUWEI_KV_BITS": "8", "WUWEI_KV_GROUP_SIZE": "32",
           "WUWEI_KV_SNAPSHOT_INTERVAL": "64"}

    def complete(url, prompt):
        body = {"model": model, "prompt": prompt, "max_tokens": 10, "temperature": 0}
        r = requests.post(f"{url}/v1/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"], r.json()["usage"]

    with running_daemon(tmp_path_factory.mktemp("kv8-cold"), dict(env, WUWEI_KV_CACHE="0"),
                        models=root) as url:
        cold = [complete(url, p)[0] for p in prompts]
    with running_daemon(tmp_path_factory.mktemp("kv8-hot"), env, models=root) as url:
        assert complete(url, prompts[0])[0] == cold[0]
        assert _loaded(url, model)["kv_quantization"] == "affine-q8g32"
        text, usage = complete(url, prompts[0])
        assert _cached(usage) == _expected_hit(usage["prompt_tokens"]), usage
        assert text == cold[0], "a hit with quantized windows changed the output"
        text, usage = complete(url, prompts[1])
        # Past the first interval's snapshot, short of the first prompt's tail.
        assert 64 <= _cached(usage) < usage["prompt_tokens"] - 32, usage
        assert text == cold[1], "a partial hit with quantized windows changed the output"
