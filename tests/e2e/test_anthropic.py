"""Anthropic Messages API end to end with the official `anthropic` SDK against the real daemon:
SmolLM2-135M-Instruct (see conftest) and, for thinking, a random-weight Qwen3-style model
written by tests/reference/make_thinking_model.py. Every event stream received is checked by
the strict validator in sse_validator.py (conftest's autouse fixture).
"""

import json
import subprocess
import sys

import anthropic
import pytest
import requests

from conftest import REPO_ROOT, make_anthropic_client, running_daemon
from sse_validator import parse_sse, validate

SHORT = 8
# This SDK version has no sampling parameters; the API still takes them.
GREEDY = {"temperature": 0}
PY = sys.executable


def ask(client, model="claude-sonnet-4-5", content="Say hello.", **kwargs):
    kwargs.setdefault("max_tokens", SHORT)
    return client.messages.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def test_models_list(anthropic_client, model_id):
    page = anthropic_client.models.list()
    ids = [m.id for m in page.data]
    assert model_id in ids
    m = page.data[0]
    assert m.type == "model" and m.display_name and m.created_at
    assert page.has_more is False
    assert page.first_id == ids[0] and page.last_id == ids[-1]


def test_non_stream(anthropic_client):
    r = ask(anthropic_client, extra_body=GREEDY)
    assert r.type == "message" and r.role == "assistant"
    assert r.id.startswith("msg_")
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.content and r.content[0].type == "text" and r.content[0].text
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens > 0
    assert 0 < r.usage.output_tokens <= SHORT
    assert r.usage.cache_creation_input_tokens == 0


def test_stream_events_and_helper_match_non_stream(anthropic_client):
    whole = text_of(ask(anthropic_client, extra_body=GREEDY))
    # Raw events through the SDK.
    pieces, kinds = [], []
    for event in ask(anthropic_client, extra_body=GREEDY, stream=True):
        kinds.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            pieces.append(event.delta.text)
    assert "".join(pieces) == whole
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    # The helper accumulates the same final message.
    with anthropic_client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=SHORT,
        extra_body=GREEDY,
        messages=[{"role": "user", "content": "Say hello."}],
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == whole
    assert text_of(final) == whole
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 0


def test_stop_sequence(anthropic_client):
    whole = text_of(ask(anthropic_client, extra_body=GREEDY, max_tokens=12))
    words = [w for w in whole.split() if len(w) > 2]
    assert words, whole
    stop = words[min(1, len(words) - 1)]
    for stream in (False, True):
        if stream:
            with anthropic_client.messages.stream(
                model="claude-sonnet-4-5", max_tokens=12, extra_body=GREEDY, stop_sequences=[stop],
                messages=[{"role": "user", "content": "Say hello."}],
            ) as s:
                r = s.get_final_message()
        else:
            r = ask(anthropic_client, extra_body=GREEDY, max_tokens=12, stop_sequences=[stop])
        assert r.stop_reason == "stop_sequence", (stream, r)
        assert r.stop_sequence == stop
        assert stop not in text_of(r)


TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather of a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def test_count_tokens_equals_prompt_tokens(anthropic_client):
    request = dict(
        model="claude-sonnet-4-5",
        system=[{"type": "text", "text": "You are terse."}],
        tools=TOOLS,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    counted = anthropic_client.messages.count_tokens(**request).input_tokens
    r = anthropic_client.messages.create(max_tokens=1, extra_body=GREEDY, **request)
    used = r.usage.input_tokens + r.usage.cache_read_input_tokens + r.usage.cache_creation_input_tokens
    assert counted == used > 0
    with anthropic_client.messages.stream(max_tokens=1, extra_body=GREEDY, **request) as s:
        final = s.get_final_message()
    u = final.usage
    assert u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens == counted


def test_tool_use_round_trip(anthropic_client):
    """tool_use → tool_result → answer. The model is asked to call the tool; whatever it does,
    the blocks must be well formed, and the conversation goes on with the result."""
    system = (
        "You are a function-calling assistant. To call a function, reply with only "
        'JSON like {"name": "get_weather", "arguments": {"city": "..."}}.'
    )
    first = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=24, extra_body=GREEDY, system=system, tools=TOOLS,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    calls = [b for b in first.content if b.type == "tool_use"]
    if calls:
        assert first.stop_reason == "tool_use"
        assert calls[0].name == "get_weather" and isinstance(calls[0].input, dict)
        call_id, call_input = calls[0].id, calls[0].input
    else:
        # The model answered in text: continue from a call as Claude Code would have made it.
        call_id, call_input = "toolu_e2e_1", {"city": "Paris"}
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": call_id, "name": "get_weather", "input": call_input}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call_id,
             "content": [{"type": "text", "text": "Sunny, 24 C"}]}]},
    ]
    with anthropic_client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=SHORT, extra_body=GREEDY, system=system, tools=TOOLS,
        messages=history,
    ) as s:
        answer = s.get_final_message()
    assert answer.content, answer
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    # An error result is accepted too.
    history[2]["content"][0].update(is_error=True, content="city not found")
    r = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=4, extra_body=GREEDY, tools=TOOLS, messages=history
    )
    assert r.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_final_assistant_message_is_continued_as_prefill(anthropic_client):
    """A last assistant message is the start of the answer: the prompt ends with its text (no
    end of turn, no new turn), and the answer is only what follows."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    whole = text_of(ask(anthropic_client, content=question[0]["content"], max_tokens=12, extra_body=GREEDY))
    words = whole.split(" ")
    assert len(words) >= 3, whole
    prefill = " ".join(words[:2])
    r = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=12, extra_body=GREEDY,
        messages=[*question, {"role": "assistant", "content": prefill}],
    )
    # Greedy: the continuation is the rest of the answer given without the prefill.
    assert prefill + text_of(r) == whole, (prefill, text_of(r), whole)
    # The prompt is the question's plus the prefill's few tokens, not a new assistant turn.
    asked = anthropic_client.messages.count_tokens(model="claude-sonnet-4-5", messages=question)
    prefilled = anthropic_client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[*question, {"role": "assistant", "content": prefill}]
    )
    assert 0 < prefilled.input_tokens - asked.input_tokens <= 4
    # Streamed alike.
    with anthropic_client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=12, extra_body=GREEDY,
        messages=[*question, {"role": "assistant", "content": [{"type": "text", "text": prefill}]}],
    ) as s:
        assert text_of(s.get_final_message()) == text_of(r)


def test_claude_code_shaped_request(anthropic_client):
    """What Claude Code sends (see docs/CLAUDE_CODE.md): system blocks with the billing
    header, a role-system message, cache_control, adaptive thinking, betas, unknown fields."""
    r = anthropic_client.beta.messages.create(
        model="claude-opus-4-5",
        max_tokens=SHORT,
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
        system=[
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0.abc; cch=00000;"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
        ],
        thinking={"type": "adaptive"},
        tools=TOOLS,
        metadata={"user_id": "user_abc"},
        extra_body={"output_config": {"effort": "high"}, "context_management": {"edits": []},
                    "temperature": 0},
    )
    assert r.content is not None
    raw = requests.post(
        f"{str(anthropic_client.base_url).rstrip('/')}/v1/messages?beta=true",
        json={
            "model": "claude-sonnet-4-5", "max_tokens": 4, "stream": True,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "thinking": {"type": "adaptive", "display": "omitted"},
        },
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "made-up-beta-2099-01-01"},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    assert validate(raw.text)["stop_reason"] in ("end_turn", "max_tokens")


def test_prompt_too_long(anthropic_client):
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(anthropic_client, content="hello " * 9000, max_tokens=4)
    err = info.value
    assert err.status_code == 400
    assert err.body["type"] == "error"
    assert err.body["error"]["type"] == "invalid_request_error"
    message = err.body["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(" maximum"), message
    # Streaming requests are refused the same way, before any event.
    with pytest.raises(anthropic.BadRequestError):
        ask(anthropic_client, content="hello " * 9000, max_tokens=4, stream=True)
    assert ask(anthropic_client, max_tokens=1).content is not None


BAD = [
    ("not json", "{nope"),
    ("empty", ""),
    ("array", "[]"),
    ("no max_tokens", {"messages": [{"role": "user", "content": "x"}]}),
    ("no messages", {"max_tokens": 4}),
    ("max_tokens 0", {"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
    ("max_tokens string", {"max_tokens": "4", "messages": [{"role": "user", "content": "x"}]}),
    ("empty messages", {"max_tokens": 4, "messages": []}),
    ("bad role", {"max_tokens": 4, "messages": [{"role": "bot", "content": "x"}]}),
    ("content number", {"max_tokens": 4, "messages": [{"role": "user", "content": 1}]}),
    ("block no type", {"max_tokens": 4, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
    ("unknown block", {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}),
    ("text block no text", {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    ("image", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}),
    ("pdf", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}]}),
    ("tool_result no id", {"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
    ("tool_use in user", {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
    ("tool_use without input", {"max_tokens": 4, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}]}),
    ("system number", {"max_tokens": 4, "system": 1, "messages": [{"role": "user", "content": "x"}]}),
    ("temperature 3", {"max_tokens": 4, "temperature": 3, "messages": [{"role": "user", "content": "x"}]}),
    ("top_p -1", {"max_tokens": 4, "top_p": -1, "messages": [{"role": "user", "content": "x"}]}),
    ("top_k -2", {"max_tokens": 4, "top_k": -2, "messages": [{"role": "user", "content": "x"}]}),
    ("stop string", {"max_tokens": 4, "stop_sequences": "x", "messages": [{"role": "user", "content": "x"}]}),
    ("tool no schema", {"max_tokens": 4, "tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}]}),
    ("server tool", {"max_tokens": 4, "tools": [{"type": "bash_20250124", "name": "bash"}], "messages": [{"role": "user", "content": "x"}]}),
    ("tool_choice unknown tool", {"max_tokens": 4, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                  "tool_choice": {"type": "tool", "name": "g"}, "messages": [{"role": "user", "content": "x"}]}),
    ("tool_choice any no tools", {"max_tokens": 4, "tool_choice": {"type": "any"}, "messages": [{"role": "user", "content": "x"}]}),
    ("thinking bad", {"max_tokens": 4, "thinking": {"type": "sometimes"}, "messages": [{"role": "user", "content": "x"}]}),
    ("thinking budget 0", {"max_tokens": 4, "thinking": {"type": "enabled", "budget_tokens": 0},
                           "messages": [{"role": "user", "content": "x"}]}),
    ("stream string", {"max_tokens": 4, "stream": "yes", "messages": [{"role": "user", "content": "x"}]}),
]


@pytest.mark.parametrize("name,body", BAD, ids=[n for n, _ in BAD])
def test_bad_input(base_url, name, body):
    data = body if isinstance(body, str) else json.dumps({"model": "claude-sonnet-4-5", **body})
    r = requests.post(
        f"{base_url}/v1/messages", data=data,
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"}, timeout=30,
    )
    assert r.status_code == 400, (name, r.status_code, r.text)
    v = r.json()
    assert v["type"] == "error" and v["error"]["type"] == "invalid_request_error", v
    assert v["error"]["message"] and v["request_id"].startswith("req_"), v
    ok = requests.post(
        f"{base_url}/v1/messages",
        json={"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert ok.status_code == 200, ok.text


def test_unknown_model_and_route(base_url):
    # Unknown non-claude names are a 404 in Anthropic's shape.
    r = requests.post(f"{base_url}/v1/messages", json={
        "model": "no-such-model", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", r.text
    r = requests.post(f"{base_url}/v1/messages/batches", json={}, timeout=30)
    assert r.status_code == 404 and r.json()["type"] == "error", r.text


def test_auth(tmp_path, anthropic_recorder):
    with running_daemon(tmp_path, extra_env={"WUWEI_API_KEY": "sekrit"}) as url:
        bad = make_anthropic_client(url, anthropic_recorder, api_key="wrong")
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}])
        assert info.value.body["error"]["type"] == "authentication_error"
        good = make_anthropic_client(url, anthropic_recorder, api_key="sekrit")
        assert good.models.list().data
        r = requests.post(f"{url}/v1/messages/count_tokens", json={
            "model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": "Bearer sekrit"}, timeout=60)
        assert r.status_code == 200 and r.json()["input_tokens"] > 0, r.text


# ---------------------------------------------------------------------------------------------
# Thinking, on a random-weight model whose template opens `<think>` in the prompt.


@pytest.fixture(scope="module")
def thinking_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking-models")
    subprocess.run(
        [PY, str(REPO_ROOT / "tests/reference/make_thinking_model.py"),
         str(REPO_ROOT / ".deps/test-models/SmolLM2-135M-Instruct"),
         str(REPO_ROOT / "engine/tests/fixtures/templates/qwen3.jinja"),
         str(folder / "thinker")],
        check=True,
    )
    return folder


@pytest.fixture(scope="module")
def thinking_client(thinking_models, tmp_path_factory, anthropic_recorder):
    with running_daemon(tmp_path_factory.mktemp("thinking-daemon"), models=thinking_models) as url:
        yield make_anthropic_client(url, anthropic_recorder)


def test_thinking_blocks(thinking_client):
    """Sampled output of the rigged model: reasoning, usually `</think>`, then text. A few
    tries make a thinking block certain; every stream is validated."""
    saw_thinking = saw_text_after = False
    for _ in range(6):
        with thinking_client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=60,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "What is 2+2?"}],
        ) as s:
            final = s.get_final_message()
        kinds = [b.type for b in final.content]
        assert set(kinds) <= {"thinking", "text"}, kinds
        if "thinking" in kinds:
            saw_thinking = True
            assert kinds[0] == "thinking" and kinds.count("thinking") == 1, kinds
            block = final.content[0]
            assert block.thinking and block.signature
            saw_text_after |= "text" in kinds
        if saw_thinking and saw_text_after:
            break
    assert saw_thinking and saw_text_after
    r = thinking_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=40, thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert all(b.type in ("thinking", "text") for b in r.content)
    assert all(b.signature for b in r.content if b.type == "thinking")


def test_thinking_disabled_has_no_thinking_blocks(thinking_client):
    for thinking in ({"type": "disabled"}, None):
        kwargs = {"thinking": thinking} if thinking else {}
        r = thinking_client.messages.create(
            model="claude-sonnet-4-5", max_tokens=30,
            messages=[{"role": "user", "content": "Hi"}], **kwargs,
        )
        assert all(b.type == "text" for b in r.content), r.content


def test_thinking_history_round_trip(thinking_client):
    """Earlier thinking (with its signature) is sent back, as clients do."""
    r = thinking_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=20, thinking={"type": "enabled", "budget_tokens": 512},
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Greet back.", "signature": "sig-from-before"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Hello!"}]},
            {"role": "user", "content": "Again"},
        ],
    )
    assert r.stop_reason in ("end_turn", "max_tokens")
    counted = thinking_client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "Hi"}],
        thinking={"type": "enabled", "budget_tokens": 512},
    ).input_tokens
    r = thinking_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=1, thinking={"type": "enabled", "budget_tokens": 512},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == counted


def test_validator_rejects_broken_streams():
    """The validator itself catches the classic mistakes."""
    good = (
        'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
        '"model":"x","content":[],"stop_reason":null,"usage":{"input_tokens":1}}}\n\n'
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert validate(good)["content"] == [{"type": "text", "text": "hi"}]
    broken = [
        good.replace('"index":0,"delta"', '"index":1,"delta"'),
        good.replace("text_delta", "thinking_delta"),
        good.replace("event: message_stop", "event: message_end"),
        good.replace('"usage":{"output_tokens":1}', '"usage":{}'),
        good.replace('"stop_reason":"end_turn"', '"stop_reason":"stop"'),
        good.rsplit("event: message_stop", 1)[0],
        good.replace('"index":0,"content_block"', '"index":1,"content_block"'),
    ]
    for text in broken:
        with pytest.raises((AssertionError, KeyError)):
            validate(text)
    assert parse_sse(good)[0][0] == "message_start"
