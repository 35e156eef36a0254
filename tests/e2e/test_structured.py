"""Constrained decoding end to end: structured outputs (OpenAI `response_format`, the Responses
API's `text.format`, Anthropic's `output_config.format`) and enforced tool choice, with the
official SDKs against the real daemon and SmolLM2-135M-Instruct (see conftest).

Sampling at temperature 1 over several seeds: every output must parse and validate against
its schema, which the unconstrained model rarely manages. The schemas bound their strings,
numbers and arrays so that SmolLM2 finishes inside a short `max_tokens`."""

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

SEEDS = range(8)

PROFILE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "scores": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 9},
            "minItems": 1,
            "maxItems": 3,
        },
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog"]},
                "age": {"type": "integer", "minimum": 0, "maximum": 20},
            },
            "required": ["kind", "age"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "mood", "scores", "pet"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER},
    {"name": "get_time", "description": "Time in a zone", "input_schema": TIME},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "nonsense"}}}


def validate(value, schema, path="$"):
    """The JSON Schema keywords these tests use (the venv has no `jsonschema`)."""
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{path}: {value!r} is not an object"
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties), f"{path}: extra keys {set(value) - set(properties)}"
        for key, sub in properties.items():
            if key in value:
                validate(value[key], sub, f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{path}: {value!r} is not an array"
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)), path
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]")
    elif kind == "string":
        assert isinstance(value, str) and len(value) <= schema.get("maxLength", len(value)), path
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: {value!r}"
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), path


def parallel(fn, items):
    """Runs `fn` over `items` at once: the daemon batches them."""
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def chat(client, model_id, seed, **kwargs):
    kwargs.setdefault("max_tokens", 96)
    kwargs.setdefault("temperature", 1.0)
    return client.chat.completions.create(model=model_id, seed=seed, **kwargs).choices[0]


def test_json_schema_outputs_validate_over_seeds(client, model_id):
    fmt = {"type": "json_schema", "json_schema": {"name": "profile", "schema": PROFILE, "strict": True}}
    messages = [{"role": "user", "content": "Describe a person and their pet as JSON."}]
    choices = parallel(lambda s: chat(client, model_id, s, messages=messages, response_format=fmt), SEEDS)
    for seed, c in zip(SEEDS, choices):
        assert c.finish_reason == "stop", f"seed {seed}: {c.finish_reason} {c.message.content!r}"
        validate(json.loads(c.message.content), PROFILE)
    # Not one answer repeated: the seeds sample, the grammar only masks.
    assert len({c.message.content for c in choices}) > 1


def test_completions_take_a_json_schema(client, model_id):
    """The legacy completions endpoint takes `response_format` too (as vLLM does): the text
    continues the prompt within the schema."""
    fmt = {"type": "json_schema", "json_schema": {"name": "profile", "schema": PROFILE}}
    choices = parallel(
        lambda s: client.completions.create(
            model=model_id, prompt="A person and their pet as JSON:", seed=s, max_tokens=96,
            temperature=1.0, extra_body={"response_format": fmt}).choices[0],
        range(4),
    )
    for c in choices:
        assert c.finish_reason == "stop", f"{c.finish_reason} {c.text!r}"
        validate(json.loads(c.text), PROFILE)


def test_json_object(client, model_id):
    messages = [{"role": "user", "content": "Give a JSON object with a name and an age."}]
    choices = parallel(
        lambda s: chat(client, model_id, s, messages=messages, max_tokens=128,
                       response_format={"type": "json_object"}),
        range(4),
    )
    for c in choices:
        assert c.finish_reason == "stop", f"{c.finish_reason} {c.message.content!r}"
        assert isinstance(json.loads(c.message.content), dict)


def test_max_tokens_still_cuts_a_constrained_answer(client, model_id):
    fmt = {"type": "json_schema", "json_schema": {"name": "profile", "schema": PROFILE}}
    c = chat(client, model_id, 0, messages=[{"role": "user", "content": "A person."}], max_tokens=5,
             response_format=fmt)
    assert c.finish_reason == "length" and c.message.content.startswith('{"'), c


def _check_call(choice, names):
    assert choice.finish_reason == "tool_calls", f"{choice.finish_reason} {choice.message}"
    calls = choice.message.tool_calls
    assert len(calls) == 1, choice.message
    call = calls[0]
    assert call.function.name in names
    validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return call.function.name


def test_enforced_tool_choice_openai(client, model_id):
    messages = [{"role": "user", "content": "Hello! How are you today?"}]
    required = parallel(
        lambda s: chat(client, model_id, s, messages=messages, tools=OPENAI_TOOLS, tool_choice="required",
                       max_tokens=64),
        range(3),
    )
    for c in required:
        _check_call(c, set(SCHEMAS))
    named = parallel(
        lambda s: chat(client, model_id, s, messages=messages, tools=OPENAI_TOOLS,
                       tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=64),
        range(3),
    )
    for c in named:
        assert _check_call(c, {"get_time"}) == "get_time"


def test_responses_text_format(client, model_id):
    fmt = {"type": "json_schema", "name": "profile", "schema": PROFILE, "strict": True}
    rs = parallel(
        lambda s: client.responses.create(model=model_id, input="Describe a person and their pet.",
                                          temperature=1.0, max_output_tokens=96, text={"format": fmt}),
        range(2),
    )
    for r in rs:
        assert r.status == "completed", r
        validate(json.loads(r.output_text), PROFILE)


def test_anthropic_output_format_and_tool_choice(anthropic_client):
    # The Messages API has no seed: each request samples from the daemon's own entropy.
    def ask(_, **kwargs):
        return anthropic_client.messages.create(
            model="claude-sonnet-4-5", max_tokens=96 if "output_config" in kwargs["extra_body"] else 64,
            messages=[{"role": "user", "content": "Describe a person and their pet."}], **kwargs)

    formatted = parallel(
        lambda s: ask(s, extra_body={"temperature": 1.0, "output_config": {
            "format": {"type": "json_schema", "schema": PROFILE}}}),
        range(2),
    )
    for m in formatted:
        assert m.stop_reason == "end_turn", m
        validate(json.loads("".join(b.text for b in m.content if b.type == "text")), PROFILE)
    for choice, names in (({"type": "any"}, set(SCHEMAS)), ({"type": "tool", "name": "get_weather"}, {"get_weather"})):
        for m in parallel(lambda s: ask(s, tools=ANTHROPIC_TOOLS, tool_choice=choice,
                                        extra_body={"temperature": 1.0}), range(2)):
            assert m.stop_reason == "tool_use", m
            uses = [b for b in m.content if b.type == "tool_use"]
            assert len(uses) == 1 and uses[0].name in names, m
            validate(uses[0].input, SCHEMAS[uses[0].name])


def test_bad_schema_is_400_in_each_api_shape(base_url, model_id):
    r = requests.post(f"{base_url}/v1/chat/completions", timeout=60, json={
        "model": model_id, "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": BAD_SCHEMA}}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and "schema" in r.json()["error"]["message"]
    r = requests.post(f"{base_url}/v1/responses", timeout=60, json={
        "model": model_id, "input": "x", "text": {"format": {"type": "json_schema", "name": "b", "schema": BAD_SCHEMA}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = requests.post(f"{base_url}/v1/messages", timeout=60, json={
        "model": model_id, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": BAD_SCHEMA}}})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error", r.text
    # A tool whose schema cannot be compiled, when the call is enforced.
    r = requests.post(f"{base_url}/v1/chat/completions", timeout=60, json={
        "model": model_id, "messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": BAD_SCHEMA}}]})
    assert r.status_code == 400, r.text


def test_constrained_and_free_requests_share_a_batch(client, model_id):
    """A greedy unconstrained request gives the same text alone and batched with constrained
    ones; the constrained ones still validate."""
    free = dict(messages=[{"role": "user", "content": "Name three colors."}], max_tokens=40, temperature=0)
    alone = client.chat.completions.create(model=model_id, **free).choices[0].message.content
    fmt = {"type": "json_schema", "json_schema": {"name": "profile", "schema": PROFILE}}

    def run(i):
        if i % 2 == 0:
            return client.chat.completions.create(model=model_id, **free).choices[0].message.content
        return chat(client, model_id, i, messages=[{"role": "user", "content": "A person as JSON."}],
                    response_format=fmt)

    results = parallel(run, range(4))
    for i, r in enumerate(results):
        if i % 2 == 0:
            assert r == alone
        else:
            assert r.finish_reason == "stop", r
            validate(json.loads(r.message.content), PROFILE)
