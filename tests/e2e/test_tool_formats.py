"""Tool calls of each model family, end to end through both APIs with the official SDKs.

The models are written by tests/reference/make_scripted_model.py: tiny "bigram machines" that,
greedily, always answer with one transcript, here a tool call in their family's format, with
the family's real chat template (engine/tests/fixtures/templates). A random-weight model
would never write a call; these do, so the test checks what the daemon does with one: the
template renders the request's tools, the parser is chosen from the template (no setting),
special markup tokens survive detokenizing (gpt-oss's), and the transcript comes back as a
structured call with typed arguments, streamed and not, in the OpenAI and Anthropic APIs.
Every Anthropic event stream is checked by the strict validator (conftest).
"""

import json
import subprocess
import sys

import pytest
import requests

from conftest import REPO_ROOT, make_anthropic_client, running_daemon

TEMPLATES = REPO_ROOT / "engine/tests/fixtures/templates"
SMOLLM2 = REPO_ROOT / ".deps/test-models/SmolLM2-135M-Instruct"

# family: (template, [(chunk, special)], extra end-of-sequence chunks, reasoning written)
FAMILIES = {
    "qwen3-coder": ("qwen3_coder.jinja", [
        ("<tool_call>", False),
        ("\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n", False),
        ("<parameter=days>\n3\n</parameter>\n", False),
        ("</function>\n</tool_call>", False),
    ], [], None),
    # The template's generation prompt opens `<think>`.
    "minimax-m2": ("minimax_m2.jinja", [
        ("Paris it is.\n", False),
        ("</think>", False),
        ('\n\n<minimax:tool_call>\n<invoke name="get_weather">\n', False),
        ('<parameter name="city">Paris</parameter>\n<parameter name="days">3</parameter>\n', False),
        ("</invoke>\n</minimax:tool_call>", False),
    ], [], "Paris it is."),
    "glm-4.6": ("glm4.6.jinja", [
        ("<think>", False),
        ("Weather first.", False),
        ("</think>", False),
        ("\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n", False),
        ("<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>", False),
    ], [], "Weather first."),
    # Harmony's markup tokens are special in gpt-oss's tokenizer; `<|call|>` ends the turn.
    "gpt-oss": ("gpt_oss.jinja", [
        ("<|channel|>", True),
        ("commentary to=functions.get_weather ", False),
        ("<|constrain|>", True),
        ("json", False),
        ("<|message|>", True),
        ('{"city": "Paris", "days": 3}', False),
        ("<|call|>", True),
    ], ["<|call|>"], None),
}

WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
ARGUMENTS = {"city": "Paris", "days": 3}
QUESTION = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tool-format-models")
    for family, (template, chunks, eos, _) in FAMILIES.items():
        script = json.dumps({"chunks": chunks, "eos": eos})
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "tests/reference/make_scripted_model.py"),
             str(SMOLLM2), str(TEMPLATES / template), str(folder / family), script],
            check=True,
        )
    return folder


@pytest.fixture(scope="module")
def url(models, tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("tool-format-daemon"), models=models) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(url):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def anthropic_client(url, anthropic_recorder):
    return make_anthropic_client(url, anthropic_recorder)


def test_models_are_listed(openai_client):
    ids = {m.id for m in openai_client.models.list().data}
    assert set(FAMILIES) <= ids, ids


@pytest.mark.parametrize("family", FAMILIES)
def test_the_template_renders_the_tools(url, family):
    def count(**tools):
        r = requests.post(f"{url}/v1/messages/count_tokens", json={
            "model": family, "messages": QUESTION, **tools}, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()["input_tokens"]

    anthropic_tool = {"name": WEATHER["name"], "description": WEATHER["description"],
                      "input_schema": WEATHER["parameters"]}
    assert count(tools=[anthropic_tool]) > count() + 10


@pytest.mark.parametrize("family", FAMILIES)
def test_openai_tool_call(openai_client, family):
    response = openai_client.chat.completions.create(
        model=family, messages=QUESTION, temperature=0, max_tokens=64,
        tools=[{"type": "function", "function": WEATHER}],
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGUMENTS
    assert not choice.message.content
    reasoning = FAMILIES[family][3]
    if reasoning:
        assert choice.message.model_extra.get("reasoning_content") == reasoning

    stream = openai_client.chat.completions.create(
        model=family, messages=QUESTION, temperature=0, max_tokens=64, stream=True,
        tools=[{"type": "function", "function": WEATHER}],
    )
    calls, finish, content = {}, None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"name": "", "arguments": ""})
            if d.function and d.function.name:
                call["name"] += d.function.name
            if d.function and d.function.arguments:
                call["arguments"] += d.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and not content
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == ARGUMENTS


@pytest.mark.parametrize("family", FAMILIES)
def test_anthropic_tool_use(anthropic_client, family):
    request = dict(
        model=family, messages=QUESTION, max_tokens=64, extra_body={"temperature": 0},
        tools=[{"name": WEATHER["name"], "description": WEATHER["description"],
                "input_schema": WEATHER["parameters"]}],
    )
    message = anthropic_client.messages.create(**request)
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == ARGUMENTS
    assert not [b for b in message.content if b.type == "text"]

    with anthropic_client.messages.stream(**request) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == ARGUMENTS


# A second tool these models never call by themselves: their transcript calls get_weather.
TIME = {
    "name": "get_time",
    "description": "Current time in a zone",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"enum": ["utc", "cet"]},
                       "offset": {"type": "integer", "minimum": 0, "maximum": 12}},
        "required": ["zone", "offset"],
    },
}


@pytest.mark.parametrize("family", ["qwen3-coder", "minimax-m2", "glm-4.6", "gpt-oss"])
def test_an_enforced_tool_choice_is_written_in_the_familys_syntax(openai_client, anthropic_client,
                                                                  family):
    """`tool_choice` naming get_time makes a model whose every answer calls get_weather write
    get_time instead, in its own call syntax (the grammar's: XML, or harmony's special tokens),
    with arguments its schema allows — through both APIs."""
    def valid(name, args):
        assert name == "get_time", name
        assert set(args) == {"zone", "offset"}, args
        assert args["zone"] in ("utc", "cet") and 0 <= args["offset"] <= 12, args

    tools = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]
    response = openai_client.chat.completions.create(
        model=family, messages=QUESTION, temperature=0, max_tokens=96, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    valid(call.function.name, json.loads(call.function.arguments))

    message = anthropic_client.messages.create(
        model=family, messages=QUESTION, max_tokens=96, extra_body={"temperature": 0},
        tools=[{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
               for t in (WEATHER, TIME)],
        tool_choice={"type": "tool", "name": "get_time"})
    assert message.stop_reason == "tool_use", message
    [use] = [b for b in message.content if b.type == "tool_use"]
    valid(use.name, use.input)


def test_the_next_turn_reuses_a_tool_call_turn(models, tmp_path_factory, anthropic_recorder):
    """Qwen3-Coder's XML calls (Qwen3.5's and 3.6's format) round-trip: the next turn of an
    agent loop, its history sent back as Claude Code (Anthropic) or an OpenAI SDK client sends
    it, renders the model's reply token for token through the chat template, so the prefix
    cache serves the whole of it (block size 1: the counts are exact to the token). A
    conversion that rewrote the call (arguments reordered or re-serialized) would recompute
    every reply of every turn."""
    from openai import OpenAI

    family = "qwen3-coder"
    env = {"WUWEI_KV_BLOCK_SIZE": "1"}
    with running_daemon(tmp_path_factory.mktemp("tool-turn-reuse"), env, models=models) as url:
        anthropic = make_anthropic_client(url, anthropic_recorder)
        tools = [{"name": WEATHER["name"], "description": WEATHER["description"],
                  "input_schema": WEATHER["parameters"]}]
        first = anthropic.messages.create(model=family, messages=QUESTION, max_tokens=64,
                                          tools=tools, extra_body={"temperature": 0})
        [use] = [b for b in first.content if b.type == "tool_use"]
        history = QUESTION + [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "Sunny, 21 C"}]}]
        second = anthropic.messages.create(model=family, messages=history, max_tokens=64,
                                           tools=tools, extra_body={"temperature": 0})
        asked = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
        # All of the reply but its last token, which is sampled and never read into the KV.
        assert second.usage.cache_read_input_tokens >= asked + first.usage.output_tokens - 1, (
            first.usage, second.usage)

        openai = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        kwargs = dict(model=family, temperature=0, max_tokens=64,
                      tools=[{"type": "function", "function": WEATHER}])
        first = openai.chat.completions.create(messages=QUESTION, **kwargs)
        message = first.choices[0].message
        [call] = message.tool_calls
        history = QUESTION + [message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
        second = openai.chat.completions.create(messages=history, **kwargs)
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 1, (
            first.usage, second.usage)
