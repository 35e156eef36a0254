"""A strict validator of Anthropic Messages streams, and an httpx transport that records every
event stream a client receives so that tests can validate all of them.

The rules (each one a bug seen in some server):
- every frame has one `event:` line and one `data:` line; the event name equals `data.type`;
- `message_start` comes first (empty content, no stop_reason, integer usage.input_tokens);
  `ping` may come anywhere after it;
- content blocks open one at a time with sequential indexes from 0; each delta targets the
  open block and its type matches the block's (text_delta/text, thinking_delta and
  signature_delta/thinking, input_json_delta/tool_use); a signature_delta closes every
  thinking block; a tool_use block starts with `input: {}` and its fragments join into a
  JSON object;
- `message_delta` (stop_reason from Anthropic's list, usage.output_tokens) then
  `message_stop` end the stream; or a single `error` event ends it.
"""

import json

import httpx2

STOP_REASONS = {
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "model_context_window_exceeded",
}
DELTAS = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


class StreamError(AssertionError):
    pass


def parse_sse(text):
    """[(event, data)] of an SSE body, strictly framed."""
    if not text.endswith("\n\n"):
        raise StreamError(f"stream does not end with a blank line: {text[-200:]!r}")
    events = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        lines = frame.split("\n")
        if len(lines) != 2 or not lines[0].startswith("event: ") or not lines[1].startswith("data: "):
            raise StreamError(f"frame is not `event:` + `data:`: {frame!r}")
        name = lines[0][len("event: "):]
        data = json.loads(lines[1][len("data: "):])
        if data.get("type") != name:
            raise StreamError(f"event name {name!r} != data.type {data.get('type')!r}")
        events.append((name, data))
    return events


def validate(text):
    """Checks a whole stream; returns the reassembled message (content blocks, stop_reason,
    usage) or, for a stream that ended in an `error` event, {"error": …}."""
    events = parse_sse(text)
    if not events:
        raise StreamError("empty stream")
    name, first = events[0]
    if name == "error":
        if len(events) != 1:
            raise StreamError("an error event before message_start must be the only one")
        return {"error": first["error"]}
    if name != "message_start":
        raise StreamError(f"first event is {name}, not message_start")
    message = first["message"]
    if message.get("content") != [] or message.get("stop_reason") is not None:
        raise StreamError(f"message_start must have empty content and no stop_reason: {message}")
    if not isinstance(message.get("usage", {}).get("input_tokens"), int):
        raise StreamError(f"message_start lacks usage.input_tokens: {message}")
    for field in ("id", "model", "role", "type"):
        if field not in message:
            raise StreamError(f"message_start lacks {field}")
    blocks, open_index, signed, args = [], None, False, ""
    final_delta, stopped = None, False
    for name, data in events[1:]:
        if stopped:
            raise StreamError(f"{name} after message_stop")
        if name == "ping":
            continue
        if name == "error":
            if data is not events[-1][1]:
                raise StreamError("error must be the last event")
            return {"error": data["error"], "content": blocks}
        if name == "content_block_start":
            if open_index is not None:
                raise StreamError(f"block {data['index']} opened while {open_index} is open")
            if final_delta is not None:
                raise StreamError("block after message_delta")
            if data["index"] != len(blocks):
                raise StreamError(f"block index {data['index']}, expected {len(blocks)}")
            block = dict(data["content_block"])
            kind = block.get("type")
            if kind not in DELTAS:
                raise StreamError(f"unknown block type {kind}")
            if kind == "tool_use" and block.get("input") != {}:
                raise StreamError(f"tool_use starts with input {{}}: {block}")
            if kind == "text" and block.get("text") != "":
                raise StreamError(f"text block starts empty: {block}")
            blocks.append(block)
            open_index, signed, args = data["index"], False, ""
        elif name == "content_block_delta":
            if data["index"] != open_index:
                raise StreamError(f"delta for block {data['index']}, open is {open_index}")
            block, delta = blocks[open_index], data["delta"]
            if delta["type"] not in DELTAS[block["type"]]:
                raise StreamError(f"{delta['type']} in a {block['type']} block")
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                if signed:
                    raise StreamError("thinking after the signature")
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                if not delta.get("signature"):
                    raise StreamError("empty signature")
                block["signature"], signed = delta["signature"], True
            else:
                args += delta["partial_json"]
        elif name == "content_block_stop":
            if data["index"] != open_index:
                raise StreamError(f"stop for block {data['index']}, open is {open_index}")
            block = blocks[open_index]
            if block["type"] == "thinking" and not signed:
                raise StreamError("thinking block closed without signature_delta")
            if block["type"] == "tool_use":
                block["input"] = json.loads(args) if args else {}
                if not isinstance(block["input"], dict):
                    raise StreamError(f"tool input is not an object: {args!r}")
            open_index = None
        elif name == "message_delta":
            if open_index is not None:
                raise StreamError("message_delta while a block is open")
            if final_delta is not None:
                raise StreamError("two message_delta events")
            if data["delta"].get("stop_reason") not in STOP_REASONS:
                raise StreamError(f"bad stop_reason {data['delta'].get('stop_reason')}")
            if not isinstance(data.get("usage", {}).get("output_tokens"), int):
                raise StreamError(f"message_delta lacks usage.output_tokens: {data}")
            final_delta = data
        elif name == "message_stop":
            if final_delta is None:
                raise StreamError("message_stop without message_delta")
            stopped = True
        else:
            raise StreamError(f"unknown event {name}")
    if not stopped:
        raise StreamError("stream ended without message_stop")
    return {
        "message": message,
        "content": blocks,
        "stop_reason": final_delta["delta"]["stop_reason"],
        "stop_sequence": final_delta["delta"].get("stop_sequence"),
        "usage": final_delta["usage"],
    }


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner, sink):
        self.inner, self.sink = inner, sink

    def __iter__(self):
        for chunk in self.inner:
            self.sink.append(chunk)
            yield chunk

    def close(self):
        self.inner.close()


class RecordingTransport(httpx2.BaseTransport):
    """Passes requests through and keeps the raw bytes of every `text/event-stream` response
    (`streams`: list of (path, list of chunks))."""

    def __init__(self):
        self.inner = httpx2.HTTPTransport()
        self.streams = []

    def handle_request(self, request):
        response = self.inner.handle_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            sink = []
            self.streams.append((request.url.path, sink))
            return httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=_Tee(response.stream, sink),
                extensions=response.extensions,
                request=request,
            )
        return response

    def take(self):
        """The recorded streams as text, forgetting them."""
        out = [(path, b"".join(chunks).decode()) for path, chunks in self.streams]
        self.streams.clear()
        return out

    def close(self):
        self.inner.close()
