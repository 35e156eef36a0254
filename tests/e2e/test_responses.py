"""The Responses API (`POST /v1/responses`) end to end with the official `openai` SDK's
`client.responses`, against the real daemon and SmolLM2-135M-Instruct (see conftest).

Generations stay short (max_output_tokens <= 16)."""

import json

import openai
import pytest
import requests

SHORT = 8

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def create(client, model_id, **kwargs):
    kwargs.setdefault("max_output_tokens", SHORT)
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("input", "Say hello.")
    return client.responses.create(model=model_id, **kwargs)


def test_plain_response(client, model_id):
    r = create(client, model_id)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    assert r.model == model_id
    message = r.output[-1]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert r.output_text and r.output_text == message.content[0].text
    u = r.usage
    assert u.input_tokens > 0 and 0 < u.output_tokens <= SHORT
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens >= 0
    # A longer prompt sent again is read from the prefix cache, and usage says so.
    long = "You are a helpful assistant who answers briefly. " * 12
    first = create(client, model_id, instructions=long, max_output_tokens=2)
    again = create(client, model_id, instructions=long, max_output_tokens=2)
    assert again.output_text == first.output_text
    assert again.usage.input_tokens == first.usage.input_tokens
    assert again.usage.input_tokens_details.cached_tokens > 0
    # Kept (store defaults to true): retrievable, then deletable.
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_instructions_and_input_items(client, model_id):
    plain = create(client, model_id, input="What is 2+2?")
    instructions = "You are a terse assistant. Answer every question in French, in one word."
    with_instructions = create(client, model_id, input="What is 2+2?", instructions=instructions)
    assert with_instructions.instructions == instructions
    # The instructions reach the model (in place of the template's default system prompt).
    assert with_instructions.usage.input_tokens != plain.usage.input_tokens
    # The same as a list of items, with a developer message in place of instructions.
    items = create(
        client,
        model_id,
        input=[
            {"role": "developer", "content": instructions},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
        ],
    )
    assert items.output_text == with_instructions.output_text


# A request SmolLM2 answers in a few tokens ("Yes."), so that the response completes.
BRIEF = {"instructions": "Answer in one word.", "input": "Reply with the single word yes.",
         "max_output_tokens": 16}


def test_stream_event_sequence_matches_whole(client, model_id):
    whole = create(client, model_id, **BRIEF)
    assert whole.status == "completed" and whole.incomplete_details is None
    events = list(create(client, model_id, stream=True, **BRIEF))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.id == events[-1].response.id
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text
    item = events[2].item
    assert item.type == "message" and item.status == "in_progress"
    done = events[-4]
    assert done.text == text and done.item_id == item.id and done.output_index == 0
    assert events[-2].item.status == "completed" and events[-2].item.content[0].text == text
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == text and final.usage.output_tokens == whole.usage.output_tokens
    # The SDK's stream helper assembles the same response.
    with client.responses.stream(model=model_id, temperature=0, **BRIEF) as stream:
        assert stream.get_final_response().output_text == text
    # Cut short by max_output_tokens: `response.incomplete`, and why.
    events = list(create(client, model_id, stream=True, input="Tell me a long story.", max_output_tokens=3))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_function_call_round_trip(client, model_id):
    """The model is offered a tool; whatever it answers is well formed, and the conversation
    goes on from a function call and its output."""
    instructions = (
        "You are a function-calling assistant. To call a function, reply with only "
        '<tool_call>{"name": "get_weather", "arguments": {"city": "..."}}</tool_call>.'
    )
    first = create(
        client, model_id, input="What is the weather in Paris?", instructions=instructions,
        tools=TOOLS, max_output_tokens=24,
    )
    assert first.tools[0].name == "get_weather"
    calls = [item for item in first.output if item.type == "function_call"]
    for call in calls:
        assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
        json.loads(call.arguments)
    call_id = calls[0].call_id if calls else "call_e2e_1"
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call_id, "name": "get_weather",
         "arguments": json.dumps({"city": "Paris"})},
        {"type": "function_call_output", "call_id": call_id, "output": "Sunny, 24 C"},
    ]
    answer = create(client, model_id, input=history, tools=TOOLS, instructions=instructions)
    assert answer.output and answer.status in ("completed", "incomplete")
    # Streamed: a function call, if any, comes as arguments deltas then done.
    events = list(create(client, model_id, input="What is the weather in Paris?",
                         instructions=instructions, tools=TOOLS, max_output_tokens=24, stream=True))
    kinds = [e.type for e in events]
    if "response.function_call_arguments.done" in kinds:
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert done.arguments == deltas
    # tool_choice "none" offers no tools: plain text.
    none = create(client, model_id, input="What is the weather in Paris?", tools=TOOLS,
                  tool_choice="none", instructions=instructions)
    assert all(item.type == "message" for item in none.output)


def test_codex_shaped_tools_are_accepted(client, model_id):
    """Codex sends tools grouped in a `namespace` and hosted ones (`web_search`): the first
    are offered to the model (a call names its namespace), the others are OpenAI's to run and
    are left out."""
    tools = [
        *TOOLS,
        {"type": "namespace", "name": "agents", "description": "Sub-agents.",
         "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}}]},
        {"type": "web_search", "external_web_access": False},
    ]
    r = create(client, model_id, input="What is the weather in Paris?", tools=tools, store=False,
               reasoning={"summary": "auto"}, include=["reasoning.encrypted_content"])
    assert r.status in ("completed", "incomplete") and len(r.tools) == 3
    for item in r.output:
        if item.type == "function_call" and item.name == "spawn_agent":
            assert item.namespace == "agents"


def test_previous_response_id_continues_the_conversation(client, model_id):
    first = create(client, model_id, input="My name is Ada. Say hi.")
    second = create(client, model_id, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # The earlier turn is in the prompt: as many tokens as sending the history by hand.
    by_hand = create(
        client,
        model_id,
        input=[
            {"role": "user", "content": "My name is Ada. Say hi."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert second.usage.input_tokens == by_hand.usage.input_tokens
    assert second.output_text == by_hand.output_text
    # A chain of three, streamed.
    events = list(create(client, model_id, input="And again?", previous_response_id=second.id, stream=True))
    assert events[-1].response.usage.input_tokens > second.usage.input_tokens
    # Not stored: not continuable.
    unstored = create(client, model_id, store=False)
    with pytest.raises(openai.BadRequestError) as info:
        create(client, model_id, previous_response_id=unstored.id)
    assert info.value.body["code"] == "previous_response_not_found"


def _bad_cases(model_id):
    text = {"model": model_id, "input": "hi", "max_output_tokens": 2}
    return [
        ("unknown previous_response_id", {**text, "previous_response_id": "resp_nope"}, "previous_response_id"),
        ("no input", {"model": model_id}, "input"),
        ("input number", {**text, "input": 3}, "input"),
        ("bad role", {**text, "input": [{"role": "bot", "content": "x"}]}, "input[0].role"),
        ("unknown item", {**text, "input": [{"type": "hologram"}]}, "input[0].type"),
        ("image part", {**text, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ("output without call_id", {**text, "input": [{"type": "function_call_output", "output": "x"}]},
         "input[0].call_id"),
        ("call arguments object", {**text, "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
        ("tool parameters string", {**text, "tools": [{"type": "function", "name": "f", "parameters": "x"}]},
         "tools[0].parameters"),
        ("tool parameters not an object schema", {**text, "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "string"}}]}, "tools[0].parameters.type"),
        ("tool without name", {**text, "tools": [{"type": "function"}]}, "tools[0].name"),
        ("tool without type", {**text, "tools": [{"name": "f"}]}, "tools[0].type"),
        ("tool_choice unknown", {**text, "tools": TOOLS, "tool_choice": {"type": "function", "name": "g"}},
         "tool_choice"),
        ("tool_choice required without tools", {**text, "tool_choice": "required"}, "tool_choice"),
        ("temperature 3", {**text, "temperature": 3}, "temperature"),
        ("max_output_tokens 0", {**text, "max_output_tokens": 0}, "max_output_tokens"),
        ("unknown format", {**text, "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ("json_schema without schema", {**text, "text": {"format": {"type": "json_schema", "name": "x"}}},
         "text.format.schema"),
        ("stream string", {**text, "stream": "yes"}, "stream"),
    ]


def test_bad_inputs_are_4xx_in_openai_shape(base_url, client, model_id):
    for what, body, param in _bad_cases(model_id):
        r = requests.post(f"{base_url}/v1/responses", json=body, timeout=60)
        assert r.status_code == 400, f"{what}: {r.status_code} {r.text}"
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error", what
        assert error["param"] == param, f"{what}: {r.text}"
    r = requests.post(f"{base_url}/v1/responses", json={"model": "no-such-model", "input": "x"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
    r = requests.get(f"{base_url}/v1/responses/resp_nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"], r.text
    # The SDK raises its typed error; the daemon keeps serving.
    with pytest.raises(openai.BadRequestError):
        create(client, model_id, previous_response_id="resp_nope")
    assert create(client, model_id, max_output_tokens=1).output_text is not None
