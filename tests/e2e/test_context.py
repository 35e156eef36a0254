"""A model's context extended by a RoPE scaling set in the config (`[models."id"]
rope_scaling = { type = "yarn", factor = 4.0 }`), as Qwen documents for running Qwen3 past
32k: the model serves prompts longer than its own context, its context as reported grows by
the factor, and its greedy tokens equal mlx-lm's for the same config amended the same way.
The same weights without the setting keep their own context and refuse the long prompt.

The model is a small random-weight llama written by mlx-lm's own classes with SmolLM2's
tokenizer, its own context cut to 256 positions so that a prompt past it stays quick; bf16
with 4-bit weights in the checkpoint's dtype (the GPU configuration), where Wuwei and mlx-lm
run the same kernels, so exact tokens are the bar."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REPO_ROOT, running_daemon
from test_half_precision import _complete, _mlx_lm

PLAIN = "ctx-plain"
YARN = "ctx-yarn"
OWN_CONTEXT = 256
FACTOR = 4.0
ENV = {"WUWEI_ACTIVATIONS": "checkpoint"}
# What mlx-lm's config.json would hold for the same scaling.
MLX_LM_CONFIG = {"rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": FACTOR,
                                  "original_max_position_embeddings": OWN_CONTEXT}}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx-models")
    tokenizer = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    script = REPO_ROOT / "tests/reference/make_random_model.py"
    subprocess.run([sys.executable, str(script), "llama", str(root / PLAIN), "--dtype", "bfloat16",
                    "--bits", "4", "--group-size", "32", "--tokenizer", str(tokenizer)], check=True)
    config_path = root / PLAIN / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = OWN_CONTEXT
    config_path.write_text(json.dumps(config))
    shutil.copytree(root / PLAIN, root / YARN)
    return root


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("ctx")
    config = log_dir / "wuwei.toml"
    config.write_text(f'[models."{YARN}"]\nrope_scaling = {{ type = "yarn", factor = {FACTOR} }}\n')
    with running_daemon(log_dir, ENV, models=models,
                        extra_args=("--config", str(config), "--default-model", PLAIN)) as url:
        yield url


def _long_prompt():
    """About twice the model's own context in tokens."""
    words = (REPO_ROOT / "README.md").read_text().split()
    return " ".join(words[:360])


def test_the_reported_context_grows_by_the_factor(daemon):
    models = {m["id"]: m for m in requests.get(f"{daemon}/v1/models", timeout=30).json()["data"]}
    assert models[PLAIN]["context_length"] == OWN_CONTEXT
    assert models[YARN]["context_length"] == int(OWN_CONTEXT * FACTOR)


def test_a_prompt_past_the_own_context_runs_with_mlx_lms_tokens(daemon, models):
    from tokenizers import Tokenizer

    prompt = _long_prompt()
    tok = Tokenizer.from_file(str(models / YARN / "tokenizer.json"))
    n = len(tok.encode(prompt).ids)
    assert OWN_CONTEXT < n < OWN_CONTEXT * FACTOR - 16, n

    # Without the setting, the same weights refuse it in OpenAI's error shape.
    r = requests.post(f"{daemon}/v1/completions", timeout=300,
                      json={"model": PLAIN, "prompt": prompt, "max_tokens": 8})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"

    [want_long, want_short] = _mlx_lm(models / YARN, [prompt, "def fibonacci(n):"], 10,
                                      MLX_LM_CONFIG)
    for text, want in [(prompt, want_long), ("def fibonacci(n):", want_short)]:
        _, usage, out = _complete(daemon, YARN, text, max_tokens=10)
        assert out == tok.decode(want, skip_special_tokens=False), text[:40]


def test_a_bad_rope_scaling_stops_the_daemon_with_a_clear_message(models, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(f'[models."{YARN}"]\nrope_scaling = {{ type = "dynamic", factor = 2.0 }}\n')
    binary = os.environ.get("WUWEI_BIN", str(REPO_ROOT / "target/release/wuwei"))
    r = subprocess.run([binary, "serve", "--config", str(config), "--models", str(models),
                        "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "rope_scaling" in r.stderr and "dynamic" in r.stderr, r.stderr
