"""`POST /v1/embeddings` through the real daemon with the official openai SDK.

Two random-weight embedding models written by mlx-lm's own classes with SmolLM2's tokenizer
and laid out as Qwen3-Embedding is published (a transformers base-model checkpoint without
the `model.` prefix or a head, sentence-transformers' modules.json and pooling config): a
Qwen3 pooling the last token and normalizing (its context cut to 256 tokens so that an
over-long input is cheap to send), and a Llama pooling the mean, unnormalized. Their vectors
equal mlx-lm's (final norm's hidden states pooled, normalized), as floats and as base64, in a
batch or alone, from text or token ids; `dimensions` truncates and renormalizes the
Matryoshka-trained Qwen3 and is refused elsewhere; bad inputs get 400s in OpenAI's shape; a
chat stream on SmolLM2 goes on while embeddings run."""

import base64
import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from conftest import REPO_ROOT, running_daemon

QWEN = "rand-qwen3-embedding"
LLAMA = "rand-llama-mean"
CHAT = "SmolLM2-135M-Instruct"
CONTEXT = 256
SCRIPTS = REPO_ROOT / "tests/reference"
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, twice, and then goes home.",
    "x",
    "Embeddings of different lengths share one padded batch.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-models")
    sources = tmp_path_factory.mktemp("embedding-sources")
    smol = Path(os.environ["WUWEI_TEST_MODELS"]) / CHAT
    for name, arch, pooling, flags in [(QWEN, "qwen3", "lasttoken", ["--context", str(CONTEXT)]),
                                       (LLAMA, "llama", "mean", ["--no-normalize"])]:
        subprocess.run([sys.executable, str(SCRIPTS / "make_random_model.py"), arch,
                        str(sources / name), "--tokenizer", str(smol)], check=True)
        subprocess.run([sys.executable, str(SCRIPTS / "embedding_model.py"), "make",
                        str(sources / name), str(root / name), pooling, *flags], check=True)
    (root / CHAT).symlink_to(smol.resolve())
    return root, sources


@pytest.fixture(scope="module")
def url(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("embeddings"), models=models[0],
                        extra_args=("--default-model", CHAT)) as url:
        yield url


@pytest.fixture(scope="module")
def oai(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _tokens(models, name, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models[0] / name / "tokenizer.json"))
    return [tok.encode(t).ids for t in texts]


def _reference(models, name, pooling, normalize, tokens):
    out = subprocess.run([sys.executable, str(SCRIPTS / "embedding_model.py"), "embed",
                          str(models[1] / name), pooling, "1" if normalize else "0",
                          json.dumps(tokens)], check=True, capture_output=True, text=True)
    return np.array(json.loads(out.stdout), dtype=np.float32)


def _vectors(response):
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)],
                    dtype=np.float32)


def test_vectors_equal_mlx_lm_as_floats_and_base64(oai, models):
    tokens = _tokens(models, QWEN, TEXTS)
    want = _reference(models, QWEN, "lasttoken", True, tokens)
    floats = oai.embeddings.create(model=QWEN, input=TEXTS, encoding_format="float")
    got = _vectors(floats)
    assert got.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(got, want, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert floats.usage.prompt_tokens == sum(map(len, tokens))
    assert floats.model == QWEN and floats.object == "list"
    # The SDK's default asks for base64 and decodes it.
    np.testing.assert_array_equal(_vectors(oai.embeddings.create(model=QWEN, input=TEXTS)), got)
    # Asked explicitly, the SDK hands the base64 strings over: little-endian float32.
    raw = oai.embeddings.create(model=QWEN, input=TEXTS, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
                        for d in raw.data])
    np.testing.assert_array_equal(decoded, got)


def test_a_batch_gives_the_vectors_of_single_calls_and_token_ids_those_of_text(oai, models):
    batch = _vectors(oai.embeddings.create(model=QWEN, input=TEXTS, encoding_format="float"))
    singles = np.stack([_vectors(oai.embeddings.create(model=QWEN, input=t,
                                                       encoding_format="float"))[0]
                        for t in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    tokens = _tokens(models, QWEN, TEXTS)
    from_ids = _vectors(oai.embeddings.create(model=QWEN, input=tokens, encoding_format="float"))
    np.testing.assert_allclose(from_ids, batch, atol=1e-5)
    one = _vectors(oai.embeddings.create(model=QWEN, input=tokens[1], encoding_format="float"))
    np.testing.assert_allclose(one[0], batch[1], atol=1e-5)
    # Concurrent requests (the engine batches what is waiting) get their own vectors.
    with cf.ThreadPoolExecutor(len(TEXTS)) as pool:
        together = list(pool.map(lambda t: _vectors(oai.embeddings.create(
            model=QWEN, input=t, encoding_format="float"))[0], TEXTS))
    np.testing.assert_allclose(np.stack(together), singles, atol=1e-5)


def test_dimensions_truncate_and_renormalize(oai):
    full = _vectors(oai.embeddings.create(model=QWEN, input=TEXTS[:2], encoding_format="float"))
    short = _vectors(oai.embeddings.create(model=QWEN, input=TEXTS[:2], dimensions=16))
    assert short.shape == (2, 16)
    want = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, want, atol=1e-5)


def test_mean_pooling_without_normalization_equals_mlx_lm(oai, models):
    tokens = _tokens(models, LLAMA, TEXTS)
    want = _reference(models, LLAMA, "mean", False, tokens)
    got = _vectors(oai.embeddings.create(model=LLAMA, input=TEXTS, encoding_format="float"))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    assert abs(np.linalg.norm(got[0]) - 1.0) > 1e-3, "mean pooling here is not normalized"


def _bad(oai, param=None, **kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        oai.embeddings.create(**{"model": QWEN, "encoding_format": "float", **kwargs})
    error = e.value.body
    assert e.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["message"], error
    if param:
        assert error["param"] == param, error
    return error


def test_bad_requests_get_400s_in_openai_shape(oai, url):
    _bad(oai, "input", input="")
    _bad(oai, "input", input=[])
    _bad(oai, "input[1]", input=["a", ""])
    _bad(oai, "input[0]", input=[[]])
    _bad(oai, "input", input=[1, "a"])
    too_long = _bad(oai, "input", input=[[5] * (CONTEXT + 1)])
    assert str(CONTEXT) in too_long["message"]
    _bad(oai, "input", input=[[10**7]])
    _bad(oai, "dimensions", input="a", dimensions=0)
    _bad(oai, "dimensions", input="a", dimensions=129)
    _bad(oai, "dimensions", model=LLAMA, input="a", dimensions=8)
    _bad(oai, "encoding_format", input="a", encoding_format="int8")
    wrong = _bad(oai, "model", model=CHAT, input="a")
    assert "not an embedding model" in wrong["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=QWEN, max_tokens=4,
                                    messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model" and "embedding model" in e.value.body["message"]
    r = requests.post(f"{url}/v1/messages", json={"model": QWEN, "max_tokens": 4, "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 400 and r.json()["type"] == "error", r.text
    assert "embedding model" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/embeddings", json={"model": "nope", "input": "a"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_a_chat_stream_goes_on_while_embeddings_run(oai, url):
    def chat():
        stream = oai.chat.completions.create(
            model=CHAT, max_tokens=24, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Count from one to ten."}])
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with cf.ThreadPoolExecutor(4) as pool:
        answer = pool.submit(chat)
        embedded = [pool.submit(oai.embeddings.create, model=QWEN, input=TEXTS * 4)
                    for _ in range(3)]
        assert all(len(e.result().data) == len(TEXTS) * 4 for e in embedded)
        assert answer.result(timeout=120).strip()
    listed = {m.id for m in oai.models.list()}
    assert {QWEN, LLAMA, CHAT} <= listed
    admin = {m["id"]: m for m in requests.get(f"{url}/admin/api/models", timeout=30).json()["models"]}
    assert {m: admin[m]["kind"] for m in (QWEN, LLAMA, CHAT)} == {
        QWEN: "embedding", LLAMA: "embedding", CHAT: "chat"}
    assert admin[QWEN]["state"] == "loaded" and admin[QWEN]["estimated_memory_bytes"] > 0
