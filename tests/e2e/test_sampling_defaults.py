"""A model's own sampling defaults: what its generation_config.json recommends applies to the
settings a request leaves out (absent, not equal to the API default); what a request sets
wins; the defaults are shown in /admin/api/models. Against the real daemon, with
SmolLM2-135M-Instruct in a folder whose generation_config.json asks for temperature 0."""

import json
import os
from pathlib import Path

import requests

from conftest import running_daemon

MODEL = "SmolLM2-135M-Instruct"
PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def greedy_model_folder(root: Path) -> Path:
    """The test model's files (linked, not copied) with a generation_config.json that sets
    temperature 0."""
    source = Path(os.environ["WUWEI_TEST_MODELS"]) / MODEL
    folder = root / "models" / MODEL
    folder.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "generation_config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((source / "generation_config.json").read_text())
    config.update(temperature=0.0, top_p=0.9)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder.parent


def chat(url, **kwargs):
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 12, **kwargs}
    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_generation_config_sampling_applies_when_the_request_is_silent(tmp_path):
    with running_daemon(tmp_path, models=greedy_model_folder(tmp_path)) as url:
        shown = requests.get(f"{url}/admin/api/models", timeout=30).json()["models"]
        assert shown[0]["sampling_defaults"] == {"temperature": 0.0, "top_p": 0.9}, shown
        greedy = chat(url, temperature=0)
        # Silent about temperature: the model's 0, whatever the seed.
        assert all(chat(url, seed=seed) == greedy for seed in (1, 2, 3))
        # The Responses and Messages APIs leave it to the model alike.
        r = requests.post(f"{url}/v1/responses", json={
            "model": MODEL, "input": PROMPT[0]["content"], "max_output_tokens": 12, "temperature": 0,
        }, timeout=300).json()
        silent = requests.post(f"{url}/v1/responses", json={
            "model": MODEL, "input": PROMPT[0]["content"], "max_output_tokens": 12,
        }, timeout=300).json()
        assert silent["output"][0]["content"][0]["text"] == r["output"][0]["content"][0]["text"]
        # A temperature the request sets wins: sampled, the seeds give different answers.
        hot = {chat(url, temperature=1.5, seed=seed) for seed in (1, 2, 3)}
        assert len(hot) > 1 or greedy not in hot, hot
