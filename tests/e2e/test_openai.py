"""OpenAI API end to end, against the real daemon and SmolLM2-135M-Instruct (see conftest).

Generations stay short (max_tokens <= 16): the CPU model runs at about 13 tokens/s.
"""

import json

import pytest
import requests

SHORT = 8


def chat(client, model_id, content="Say hello.", **kwargs):
    kwargs.setdefault("max_tokens", SHORT)
    return client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_health(base_url):
    r = requests.get(f"{base_url}/health", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_models_list_shape(base_url, client, model_id):
    body = requests.get(f"{base_url}/v1/models", timeout=10).json()
    assert body["object"] == "list"
    assert body["has_more"] is False
    assert body["first_id"] == body["data"][0]["id"]
    entry = body["data"][0]
    for field in ("id", "object", "created", "owned_by", "type", "display_name", "created_at"):
        assert field in entry, field
    assert client.models.retrieve(model_id).id == model_id


def test_chat_non_stream(client, model_id):
    r = chat(client, model_id, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= SHORT
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_matches_non_stream(client, model_id):
    whole = chat(client, model_id, temperature=0).choices[0].message.content
    stream = chat(client, model_id, temperature=0, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == whole
    assert finish in ("stop", "length")


def test_stream_include_usage(client, model_id):
    chunks = list(
        chat(client, model_id, stream=True, stream_options={"include_usage": True}, temperature=0)
    )
    *body, last = chunks
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in body)


def test_stream_raw_sse_ends_with_done(base_url, model_id):
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with requests.post(f"{base_url}/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines(decode_unicode=True) if line and not line.startswith(":")]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        json.loads(line[len("data: "):])


def test_max_tokens_is_respected_and_reported(client, model_id):
    r = chat(client, model_id, "Count from one to one hundred.", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3
    if r.usage.completion_tokens == 3:
        assert r.choices[0].finish_reason == "length"


def test_huge_max_tokens_is_clamped_not_rejected(client, model_id):
    # The context is far smaller than 128000: the server clamps instead of failing. A stop
    # string keeps the run short.
    r = chat(client, model_id, "Say hi.", max_tokens=128000, temperature=0, stop=["."])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_max_completion_tokens(client, model_id):
    r = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_completion_tokens=2,
        temperature=0,
    )
    assert r.usage.completion_tokens <= 2


def test_stop_string_cuts_the_text(client, model_id):
    free = chat(client, model_id, "List three colors.", temperature=0, max_tokens=16)
    text = free.choices[0].message.content
    # Stop at the first character the model actually produced after its first one.
    assert len(text) >= 2, text
    stop = text[1]
    r = chat(client, model_id, "List three colors.", temperature=0, max_tokens=16, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].message.content
    assert text.startswith(r.choices[0].message.content)


def test_seed_reproducibility(client, model_id):
    args = dict(temperature=0.8, seed=1234, max_tokens=12)
    a = chat(client, model_id, "Write a word.", **args).choices[0].message.content
    b = chat(client, model_id, "Write a word.", **args).choices[0].message.content
    assert a == b


def test_logprobs(client, model_id):
    r = chat(client, model_id, logprobs=True, top_logprobs=3, temperature=0, max_tokens=4)
    content = r.choices[0].logprobs.content
    # The end-of-sequence token, when it ends the answer, is counted but has no text.
    assert r.usage.completion_tokens - 1 <= len(content) <= r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-4)
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
    assert "".join(i.token for i in content) == r.choices[0].message.content


def _tokenizer():
    import os
    from pathlib import Path

    from tokenizers import Tokenizer

    folder = Path(os.environ["WUWEI_TEST_MODELS"]) / "SmolLM2-135M-Instruct"
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_logit_bias_bans_and_forces_tokens(client, model_id):
    import sys

    from conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "tests/reference"))
    from token_pieces import ids_of_pieces

    tok = _tokenizer()
    plain = chat(client, model_id, "Name a fruit.", temperature=0, max_tokens=6, logprobs=True)
    pieces = [t.token for t in plain.choices[0].logprobs.content]
    [first] = ids_of_pieces(tok, pieces[:1])
    assert first is not None, pieces
    # -100 bans the greedy first token: the reply starts otherwise.
    banned = chat(client, model_id, "Name a fruit.", temperature=0, max_tokens=6, logprobs=True,
                  logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.content[0].token != pieces[0]
    # +100 forces one token at every step, sampled or not, streamed or not, in both endpoints.
    [forced] = tok.encode(" banana", add_special_tokens=False).ids
    for temperature in (0, 1.0):
        r = chat(client, model_id, "Name a fruit.", temperature=temperature, max_tokens=4,
                 logit_bias={forced: 100})
        assert r.choices[0].message.content == " banana" * 4
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in chat(client, model_id, "Name a fruit.", temperature=0.7, max_tokens=3,
                      logit_bias={str(forced): 100}, stream=True)
        if c.choices
    )
    assert streamed == " banana" * 3
    r = client.completions.create(model=model_id, prompt="My favourite fruit is", max_tokens=3,
                                  temperature=0, logit_bias={str(forced): 100})
    assert r.choices[0].text == " banana" * 3
    # Unbiased, the same request answers as before: nothing stays behind in the engine.
    again = chat(client, model_id, "Name a fruit.", temperature=0, max_tokens=6)
    assert again.choices[0].message.content == plain.choices[0].message.content


def _prompt_tokens_computed(base_url):
    import re

    text = requests.get(f"{base_url}/metrics", timeout=10).text
    total = {}
    for name in ("wuwei_prompt_tokens_total", "wuwei_cached_prompt_tokens_total"):
        total[name] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
    return total["wuwei_prompt_tokens_total"] - total["wuwei_cached_prompt_tokens_total"]


def test_n_choices(client, base_url, model_id):
    question = "Write one sentence about the sea. " * 40
    args = dict(temperature=1.0, seed=99, max_tokens=10)
    before = _prompt_tokens_computed(base_url)
    r = chat(client, model_id, question, n=4, **args)
    computed = _prompt_tokens_computed(base_url) - before
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) >= 2, texts
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    # The prompt once in the usage, every choice's tokens; and computed once (the later choices
    # take its blocks from the prefix cache).
    alone = chat(client, model_id, question, **args)
    assert r.usage.prompt_tokens == alone.usage.prompt_tokens > 300
    assert r.usage.completion_tokens >= 4 and r.usage.completion_tokens <= 40
    assert computed <= r.usage.prompt_tokens + 4 * 32, computed
    # Seeded: choice 0 samples as the request alone does, and the whole response repeats.
    assert texts[0] == alone.choices[0].message.content
    again = chat(client, model_id, question, n=4, **args)
    assert [c.message.content for c in again.choices] == texts
    # Streamed: every choice's deltas under its index, a finish for each, one usage frame.
    streamed, finishes, usage = {}, {}, None
    for chunk in chat(client, model_id, question, n=4, stream=True,
                      stream_options={"include_usage": True}, **args):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert [streamed[i] for i in range(4)] == texts
    assert sorted(finishes) == [0, 1, 2, 3]
    assert usage.completion_tokens == r.usage.completion_tokens
    # Greedy choices are all the greedy answer; completions take n too.
    greedy = chat(client, model_id, "Say hello.", n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    done = client.completions.create(model=model_id, prompt="Once upon a time", n=3, **args)
    assert [c.index for c in done.choices] == [0, 1, 2]
    parts = {}
    for chunk in client.completions.create(model=model_id, prompt="Once upon a time", n=3,
                                           stream=True, **args):
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
    assert [parts[i] for i in range(3)] == [c.text for c in done.choices]


def test_tool_round_trip_messages_are_accepted(client, model_id):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C, sunny"},
    ]
    r = client.chat.completions.create(
        model=model_id, messages=messages, tools=tools, max_tokens=SHORT, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function"
        json.loads(call.function.arguments)
    else:
        assert isinstance(choice.message.content, str)


def test_completions_endpoint(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 4
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model_id, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_unknown_model_is_404(client):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    assert err.value.body["param"] == "model" or "no-such-model" in str(err.value)


def _chat_body(model_id, **extra):
    body = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    body.update(extra)
    return json.dumps(body).encode()


# (what, path, raw body, expected status, expected param) — the same table as the Rust
# router tests, now over real HTTP against the real daemon.
def _bad_inputs(model_id):
    c = "/v1/chat/completions"
    p = "/v1/completions"
    msgs = lambda m: _chat_body(model_id, messages=m)  # noqa: E731
    return [
        ("malformed json", c, b'{"model": "x", ', 400, "body"),
        ("not an object", c, b"[1, 2]", 400, "body"),
        ("empty body", c, b"", 400, "body"),
        ("invalid utf-8", c, b'{"\xff\xfe"}', 400, "body"),
        ("missing messages", c, json.dumps({"model": model_id}).encode(), 400, "messages"),
        ("messages not a list", c, _chat_body(model_id, messages="hi"), 400, "messages"),
        ("empty messages", c, msgs([]), 400, "messages"),
        ("unknown role", c, msgs([{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
        ("user without content", c, msgs([{"role": "user"}]), 400, "messages[0].content"),
        (
            "image part",
            c,
            msgs([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]),
            400,
            "messages[0].content[0].type",
        ),
        ("temperature string", c, _chat_body(model_id, temperature="hot"), 400, "temperature"),
        ("temperature negative", c, _chat_body(model_id, temperature=-0.1), 400, "temperature"),
        ("temperature too high", c, _chat_body(model_id, temperature=2.5), 400, "temperature"),
        ("top_p zero", c, _chat_body(model_id, top_p=0), 400, "top_p"),
        ("top_p above one", c, _chat_body(model_id, top_p=1.5), 400, "top_p"),
        ("max_tokens zero", c, _chat_body(model_id, max_tokens=0), 400, "max_tokens"),
        ("max_tokens negative", c, _chat_body(model_id, max_tokens=-5), 400, "max_tokens"),
        ("max_tokens fractional", c, _chat_body(model_id, max_tokens=1.5), 400, "max_tokens"),
        ("top_logprobs too many", c, _chat_body(model_id, logprobs=True, top_logprobs=21), 400, "top_logprobs"),
        ("n zero", c, _chat_body(model_id, n=0), 400, "n"),
        ("n above 16", c, _chat_body(model_id, n=17), 400, "n"),
        ("best_of not n", p, json.dumps({"prompt": "a", "n": 2, "best_of": 3}).encode(), 400, "best_of"),
        ("unknown response_format", c, _chat_body(model_id, response_format={"type": "yaml"}), 400, "response_format.type"),
        ("json_schema without schema", c, _chat_body(model_id, response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400, "response_format.json_schema.schema"),
        ("stop a number", c, _chat_body(model_id, stop=5), 400, "stop"),
        ("presence_penalty out of range", c, _chat_body(model_id, presence_penalty=3), 400, "presence_penalty"),
        ("top_k negative", c, _chat_body(model_id, top_k=-2), 400, "top_k"),
        ("tool of another type", c, _chat_body(model_id, tools=[{"type": "retrieval"}]), 400, "tools[0].type"),
        ("tool_choice required without tools", c, _chat_body(model_id, tool_choice="required"), 400, "tool_choice"),
        ("stream not a bool", c, _chat_body(model_id, stream="yes"), 400, "stream"),
        ("unknown model", c, _chat_body("no-such-model"), 404, "model"),
        ("completions prompt missing", p, json.dumps({"model": model_id}).encode(), 400, "prompt"),
        ("completions several prompts", p, json.dumps({"prompt": ["a", "b"]}).encode(), 400, "prompt"),
        ("completions negative token", p, json.dumps({"prompt": [1, -2]}).encode(), 400, "prompt"),
        ("completions echo", p, json.dumps({"prompt": "a", "echo": True}).encode(), 400, "echo"),
        ("logit_bias not an object", c, _chat_body(model_id, logit_bias=[1]), 400, "logit_bias"),
        ("logit_bias key not a token id", c, _chat_body(model_id, logit_bias={"abc": 1}), 400, "logit_bias.abc"),
        ("logit_bias above 100", c, _chat_body(model_id, logit_bias={"5": 101}), 400, "logit_bias.5"),
        ("logit_bias not a number", p, json.dumps({"prompt": "a", "logit_bias": {"5": "x"}}).encode(), 400, "logit_bias.5"),
        ("logit_bias past the vocabulary", c, _chat_body(model_id, logit_bias={"99999999": 1}), 400, None),
    ]


def test_bad_inputs_over_http(base_url, model_id):
    cases = _bad_inputs(model_id)
    assert len(cases) >= 30
    headers = {"content-type": "application/json"}
    for what, path, body, status, param in cases:
        r = requests.post(f"{base_url}{path}", data=body, headers=headers, timeout=60)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        error = r.json()["error"]
        assert error["message"] and error["type"], what
        assert error["param"] == param, f"{what}: {r.text}"
        # The daemon keeps serving after every bad request.
        ok = requests.post(f"{base_url}/v1/chat/completions", data=_chat_body(model_id), headers=headers, timeout=120)
        assert ok.status_code == 200, f"after {what}: {ok.text}"


def test_oversized_body_is_413(base_url, model_id):
    big = _chat_body(model_id, messages=[{"role": "user", "content": "x" * (33 * 1024 * 1024)}])
    r = requests.post(
        f"{base_url}/v1/chat/completions", data=big, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_metrics_exposed(base_url):
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    assert "wuwei_http_requests_total" in text
