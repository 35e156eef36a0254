//! Anthropic's Messages API against a scripted backend: request translation, the exact event
//! sequence of streams, the whole-message response, errors in Anthropic's shape, auth, and
//! keep-alive pings. (The real model runs in tests/e2e/test_anthropic.py.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower::ServiceExt;

use wuwei::config::Config;
use wuwei::core::{
    Backend, BoxFuture, ChatMessage, CoreError, Event, FinishReason, GenerateRequest, Generation,
    Health, ModelInfo, Prompt, Role, ToolChoice, Usage,
};

#[derive(Default)]
struct Scripted {
    last: Mutex<Option<GenerateRequest>>,
    counted: Mutex<Option<Prompt>>,
}

const PROMPT_TOKENS: usize = 11;
const CACHED_TOKENS: usize = 4;

fn usage(completion_tokens: usize) -> Usage {
    Usage {
        prompt_tokens: PROMPT_TOKENS,
        completion_tokens,
        cached_tokens: CACHED_TOKENS,
        ..Default::default()
    }
}

fn done(reason: FinishReason, n: usize) -> Event {
    Event::Finished {
        reason,
        usage: usage(n),
    }
}

fn script(model: &str) -> Vec<Event> {
    let call = |index: usize, id: &str, name: &str| Event::ToolCallStart {
        index,
        id: id.into(),
        name: name.into(),
    };
    let args = |index: usize, fragment: &str| Event::ToolCallArguments {
        index,
        fragment: fragment.into(),
    };
    match model {
        "think" => vec![
            Event::KeepAlive,
            Event::Reasoning("Two plus".into()),
            Event::Reasoning(" two.".into()),
            Event::Text("4".into()),
            done(FinishReason::Eos, 5),
        ],
        "tools" => vec![
            Event::Text("Checking.".into()),
            call(0, "toolu_1", "get_weather"),
            args(0, "{\"city\": "),
            args(0, "\"Paris\"}"),
            call(1, "toolu_2", "get_time"),
            args(1, "{}"),
            done(FinishReason::ToolCalls, 9),
        ],
        "fails" => vec![
            Event::Text("Hel".into()),
            Event::Error("GPU on fire".into()),
        ],
        "long" => vec![Event::Text("aaaa".into()), done(FinishReason::MaxTokens, 4)],
        "ctx" => vec![
            Event::Text("aa".into()),
            done(FinishReason::ContextWindow, 2),
        ],
        "stopseq" => vec![
            Event::Text("one two".into()),
            done(FinishReason::StopSequence("END".into()), 3),
        ],
        "empty" => vec![done(FinishReason::Eos, 1)],
        "cancel" => vec![Event::Text("a".into()), done(FinishReason::Cancelled, 1)],
        "truncated" => vec![Event::Text("a".into())],
        _ => vec![
            Event::Text("Hello".into()),
            Event::Logprobs(Vec::new()),
            Event::Text(" world".into()),
            done(FinishReason::Eos, 2),
        ],
    }
}

impl Backend for Scripted {
    fn list_models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: "smol".into(),
            created: 1_700_000_000,
            loaded: true,
            context_length: 2048,
        }]
    }

    fn count_tokens<'a>(
        &'a self,
        model: Option<&'a str>,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<usize, CoreError>> {
        Box::pin(async move {
            if model == Some("missing") {
                return Err(CoreError::UnknownModel {
                    requested: "missing".into(),
                    available: vec!["smol".into()],
                });
            }
            *self.counted.lock().unwrap() = Some(prompt.clone());
            Ok(PROMPT_TOKENS)
        })
    }

    fn submit(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, CoreError>> {
        Box::pin(async move {
            let model = request.model.clone().unwrap_or_else(|| "smol".into());
            *self.last.lock().unwrap() = Some(request);
            match model.as_str() {
                "missing" => {
                    return Err(CoreError::UnknownModel {
                        requested: model,
                        available: vec!["smol".into()],
                    })
                }
                "busy" => {
                    return Err(CoreError::Overloaded {
                        retry_after_secs: 3,
                    })
                }
                "toolong" => {
                    return Err(CoreError::PromptTooLong {
                        tokens: 12000,
                        max: 8191,
                    })
                }
                "broken" => return Err(CoreError::Internal("engine stopped".into())),
                _ => {}
            }
            let (tx, rx) = mpsc::channel(16);
            let events = script(&model);
            let silent = model == "silent";
            tokio::spawn(async move {
                if silent {
                    // Longer than the ping interval without any event.
                    tokio::time::sleep(Duration::from_millis(6500)).await;
                    let _ = tx.send(Event::Text("late".into())).await;
                    let _ = tx.send(done(FinishReason::Eos, 1)).await;
                    return;
                }
                for event in events {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Generation {
                model,
                prompt_tokens: PROMPT_TOKENS,
                cached_tokens: CACHED_TOKENS,
                events: rx,
            })
        })
    }

    fn health(&self) -> Health {
        Health::Ok
    }
}

fn app_with(cfg: Config) -> (Router, Arc<Scripted>) {
    let backend = Arc::new(Scripted::default());
    (wuwei::server::router(backend.clone(), &cfg), backend)
}

fn app() -> (Router, Arc<Scripted>) {
    app_with(Config::default())
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "interleaved-thinking-2025-05-14,unknown-beta-2099",
        )
        .body(body.into())
        .unwrap()
}

async fn post_json(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = send(app, post(path, body.to_string())).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

fn body(model: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// `{"type":"error","error":{"type","message"},"request_id"}`, nothing else.
fn assert_anthropic_error(value: &Value, kind: &str) {
    assert_eq!(value["type"], "error", "{value}");
    assert_eq!(value["error"]["type"], kind, "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{value}"
    );
    assert!(
        value["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "{value}"
    );
    assert!(value.get("param").is_none() && value["error"].get("code").is_none());
}

/// Parses an SSE body into (event, data) pairs, strictly: every frame has exactly one
/// `event:` and one `data:` line, and the event name equals `data.type`.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    assert!(
        body.ends_with("\n\n"),
        "frames end with a blank line: {body:?}"
    );
    let mut out = Vec::new();
    for frame in body.split("\n\n").filter(|f| !f.is_empty()) {
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines.len(), 2, "event + data per frame: {frame:?}");
        let name = lines[0]
            .strip_prefix("event: ")
            .unwrap_or_else(|| panic!("no event line: {frame:?}"));
        let data: Value = serde_json::from_str(
            lines[1]
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("no data line: {frame:?}")),
        )
        .unwrap();
        assert_eq!(data["type"], name, "event name == data.type: {frame:?}");
        out.push((name.to_string(), data));
    }
    out
}

/// The stream's grammar: message_start, blocks with sequential indexes and matching deltas
/// (thinking closed by a signature), message_delta with usage, message_stop; pings anywhere
/// after message_start. Returns the reassembled content blocks.
fn validate_stream(events: &[(String, Value)]) -> (Vec<Value>, Value) {
    assert_eq!(events[0].0, "message_start", "{events:?}");
    let start = &events[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert!(start["usage"]["input_tokens"].is_u64());
    let mut blocks: Vec<Value> = Vec::new();
    let mut open: Option<usize> = None;
    let mut signed = false;
    let mut json_args = String::new();
    let mut message_delta = None;
    let mut stopped = false;
    for (name, data) in &events[1..] {
        assert!(!stopped, "nothing after message_stop");
        match name.as_str() {
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "a block opens only after the last closed");
                assert!(message_delta.is_none());
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(index, blocks.len(), "indexes are sequential");
                let block = data["content_block"].clone();
                match block["type"].as_str().unwrap() {
                    "text" => assert_eq!(block["text"], ""),
                    "thinking" => assert_eq!(block["thinking"], ""),
                    "tool_use" => {
                        assert_eq!(block["input"], json!({}));
                        assert!(block["id"].is_string() && block["name"].is_string());
                    }
                    other => panic!("unexpected block type {other}"),
                }
                blocks.push(block);
                open = Some(index);
                signed = false;
                json_args.clear();
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open, "delta for the open block");
                let block = &mut blocks[index];
                let delta = &data["delta"];
                match (
                    block["type"].as_str().unwrap(),
                    delta["type"].as_str().unwrap(),
                ) {
                    ("text", "text_delta") => {
                        let t = format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            delta["text"].as_str().unwrap()
                        );
                        block["text"] = t.into();
                    }
                    ("thinking", "thinking_delta") => {
                        assert!(!signed, "no thinking after the signature");
                        let t = format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            delta["thinking"].as_str().unwrap()
                        );
                        block["thinking"] = t.into();
                    }
                    ("thinking", "signature_delta") => {
                        assert!(delta["signature"].as_str().is_some_and(|s| !s.is_empty()));
                        block["signature"] = delta["signature"].clone();
                        signed = true;
                    }
                    ("tool_use", "input_json_delta") => {
                        json_args.push_str(delta["partial_json"].as_str().unwrap())
                    }
                    (b, d) => panic!("delta {d} in a {b} block"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(Some(index), open);
                let block = &mut blocks[index];
                if block["type"] == "thinking" {
                    assert!(signed, "a signature_delta closes every thinking block");
                }
                if block["type"] == "tool_use" && !json_args.is_empty() {
                    block["input"] = serde_json::from_str(&json_args).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none(), "blocks are closed before message_delta");
                assert!([
                    "end_turn",
                    "max_tokens",
                    "stop_sequence",
                    "tool_use",
                    "model_context_window_exceeded"
                ]
                .contains(&data["delta"]["stop_reason"].as_str().unwrap()));
                assert!(data["usage"]["output_tokens"].is_u64());
                message_delta = Some(data.clone());
            }
            "message_stop" => {
                assert!(message_delta.is_some());
                stopped = true;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(stopped, "the stream ends with message_stop");
    (blocks, message_delta.unwrap())
}

async fn stream(app: &Router, model: &str, extra: Value) -> Vec<(String, Value)> {
    let mut b = body(model, extra);
    b["stream"] = json!(true);
    let (status, headers, text) = send(app, post("/v1/messages?beta=true", b.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "text/event-stream");
    sse_events(&text)
}

#[tokio::test]
async fn non_stream_text() {
    let (app, backend) = app();
    let (status, v) = post_json(
        &app,
        "/v1/messages",
        body(
            "smol",
            json!({"temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop_sequences": ["\n\n"],
                "metadata": {"user_id": "u1"}, "context_management": {"edits": []},
                "output_config": {"effort": "high"}, "service_tier": "auto"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "smol");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello world"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(
        v["usage"],
        json!({"input_tokens": PROMPT_TOKENS - CACHED_TOKENS, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHED_TOKENS, "output_tokens": 2})
    );
    let req = backend.last.lock().unwrap().clone().unwrap();
    assert_eq!(req.max_tokens, Some(64));
    assert_eq!(req.sampling.temperature, 0.5);
    assert_eq!(req.sampling.top_p, 0.9);
    assert_eq!(req.sampling.top_k, 40);
    assert_eq!(req.stop, vec!["\n\n".to_string()]);
}

#[tokio::test]
async fn stream_text_exact_events() {
    let (app, _) = app();
    let events = stream(&app, "smol", json!({})).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let (blocks, delta) = validate_stream(&events);
    assert_eq!(blocks, vec![json!({"type": "text", "text": "Hello world"})]);
    assert_eq!(
        events[0].1["message"]["usage"],
        json!({"input_tokens": PROMPT_TOKENS - CACHED_TOKENS, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHED_TOKENS, "output_tokens": 0})
    );
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(delta["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn stream_thinking_then_text() {
    let (app, backend) = app();
    let events = stream(
        &app,
        "think",
        json!({"thinking": {"type": "enabled", "budget_tokens": 1024}}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let (blocks, _) = validate_stream(&events);
    assert_eq!(blocks[0]["thinking"], "Two plus two.");
    assert_eq!(events[5].1["delta"]["type"], "signature_delta");
    assert_eq!(blocks[1], json!({"type": "text", "text": "4"}));
    let req = backend.last.lock().unwrap().clone().unwrap();
    assert_eq!(req.reasoning_budget, Some(1024));
    let Prompt::Chat {
        template_kwargs, ..
    } = req.prompt
    else {
        panic!("chat prompt")
    };
    assert_eq!(template_kwargs["enable_thinking"], true);

    // Non-streaming: the same blocks, the signature included.
    let (status, v) = post_json(&app, "/v1/messages", body("think", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["content"][0]["thinking"], "Two plus two.");
    assert!(v["content"][0]["signature"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(v["content"][1], json!({"type": "text", "text": "4"}));
}

#[tokio::test]
async fn thinking_modes_map_to_template_switch() {
    let (app, backend) = app();
    for (thinking, on, budget) in [
        (json!(null), false, None),
        (json!({"type": "disabled"}), false, None),
        (json!({"type": "adaptive"}), true, None),
        (
            json!({"type": "adaptive", "display": "omitted"}),
            true,
            None,
        ),
        (
            json!({"type": "enabled", "budget_tokens": 2048}),
            true,
            Some(2048),
        ),
    ] {
        let (status, v) = post_json(
            &app,
            "/v1/messages",
            body("smol", json!({"thinking": thinking})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let req = backend.last.lock().unwrap().clone().unwrap();
        let Prompt::Chat {
            template_kwargs, ..
        } = req.prompt
        else {
            panic!()
        };
        assert_eq!(template_kwargs["enable_thinking"], on, "{thinking}");
        assert_eq!(req.reasoning_budget, budget, "{thinking}");
    }
}

#[tokio::test]
async fn stream_tool_use_blocks() {
    let (app, _) = app();
    let tools = json!({"tools": [
        {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}, "strict": true}]});
    let events = stream(&app, "tools", tools.clone()).await;
    let (blocks, delta) = validate_stream(&events);
    assert_eq!(
        blocks,
        vec![
            json!({"type": "text", "text": "Checking."}),
            json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}),
            json!({"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}),
        ]
    );
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    let fragments: Vec<&str> = events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(fragments, ["{\"city\": ", "\"Paris\"}", "{}"]);

    let (status, v) = post_json(&app, "/v1/messages", body("tools", tools)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        v["content"].as_array().unwrap().as_slice(),
        blocks.as_slice()
    );
    assert_eq!(v["stop_reason"], "tool_use");
}

#[tokio::test]
async fn stop_reasons() {
    let (app, _) = app();
    for (model, reason, sequence) in [
        ("long", "max_tokens", Value::Null),
        ("ctx", "model_context_window_exceeded", Value::Null),
        ("stopseq", "stop_sequence", json!("END")),
        ("empty", "end_turn", Value::Null),
    ] {
        let (status, v) = post_json(&app, "/v1/messages", body(model, json!({}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["stop_reason"], reason);
        assert_eq!(v["stop_sequence"], sequence);
        let events = stream(&app, model, json!({})).await;
        let (_, delta) = validate_stream(&events);
        assert_eq!(delta["delta"]["stop_reason"], reason);
        assert_eq!(delta["delta"]["stop_sequence"], sequence);
    }
    let events = stream(&app, "empty", json!({})).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
}

#[tokio::test]
async fn error_after_200_is_an_error_event() {
    let (app, _) = app();
    for (model, kind) in [
        ("fails", "api_error"),
        ("cancel", "overloaded_error"),
        ("truncated", "api_error"),
    ] {
        let events = stream(&app, model, json!({})).await;
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{model}: {events:?}");
        assert_eq!(data["error"]["type"], kind);
        assert!(data["error"]["message"].is_string());
        assert_eq!(events[0].0, "message_start");
        let (status, v) = post_json(&app, "/v1/messages", body(model, json!({}))).await;
        assert!(status.is_server_error(), "{model}: {status}");
        assert_eq!(v["type"], "error");
    }
}

#[tokio::test]
async fn pings_while_silent() {
    let (app, _) = app();
    let events = stream(&app, "silent", json!({})).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["message_start", "ping"], "{names:?}");
    validate_stream(&events);
}

#[tokio::test]
async fn request_translation() {
    let (app, backend) = app();
    let request = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 128000, "stream": false,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.0; cch=abc123;"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Read a.txt", "cache_control": {"type": "ephemeral"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc body"}, "title": "Notes"},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use Read.", "signature": "abc"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_9", "name": "Read", "input": {"path": "a.txt"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": [{"type": "text", "text": "hello"}]},
                {"type": "text", "text": "And?"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_10", "name": "Read", "input": {"path": "b.txt"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_10", "content": "no such file", "is_error": true}]},
        ],
    });
    let (status, v) = post_json(&app, "/v1/messages", request).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let req = backend.last.lock().unwrap().clone().unwrap();
    assert_eq!(req.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(req.max_tokens, Some(128000));
    let Prompt::Chat {
        messages,
        tools,
        tool_choice,
        ..
    } = req.prompt
    else {
        panic!()
    };
    assert_eq!(tool_choice, ToolChoice::Auto);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "Read");
    assert_eq!(tools[0].parameters["properties"]["path"]["type"], "string");
    let msg = |role, content: &str| ChatMessage {
        role: Some(role),
        content: content.into(),
        ..ChatMessage::default()
    };
    let expected = vec![
        msg(Role::System, "You are Claude Code.\n\nBe brief."),
        msg(Role::User, "Read a.txt\nNotes\n\ndoc body"),
        ChatMessage {
            reasoning: Some("Use Read.".into()),
            tool_calls: vec![wuwei::core::ToolCall {
                id: "toolu_9".into(),
                name: "Read".into(),
                arguments: "{\"path\":\"a.txt\"}".into(),
            }],
            ..msg(Role::Assistant, "Reading.")
        },
        ChatMessage {
            tool_call_id: Some("toolu_9".into()),
            name: Some("Read".into()),
            ..msg(Role::Tool, "hello")
        },
        msg(Role::User, "And?"),
        ChatMessage {
            tool_calls: vec![wuwei::core::ToolCall {
                id: "toolu_10".into(),
                name: "Read".into(),
                arguments: "{\"path\":\"b.txt\"}".into(),
            }],
            ..msg(Role::Assistant, "")
        },
        ChatMessage {
            tool_call_id: Some("toolu_10".into()),
            name: Some("Read".into()),
            ..msg(Role::Tool, "Error: no such file")
        },
    ];
    assert_eq!(messages, expected);
}

#[tokio::test]
async fn billing_header_does_not_change_the_prompt() {
    let (app, backend) = app();
    let mut prompts = Vec::new();
    for cch in ["aaaa1", "bbbb2"] {
        let system = json!([
            {"type": "text", "text": format!("x-anthropic-billing-header: cc_version=2.0.14.abc; cc_entrypoint=cli; cch={cch};")},
            {"type": "text", "text": "Stable instructions."}]);
        let (status, _) = post_json(
            &app,
            "/v1/messages",
            body("smol", json!({"system": system})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        prompts.push(backend.last.lock().unwrap().clone().unwrap().prompt);
    }
    assert_eq!(prompts[0], prompts[1]);
}

#[tokio::test]
async fn tool_choice_mapping() {
    let (app, backend) = app();
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    for (choice, expected) in [
        (json!({"type": "auto"}), ToolChoice::Auto),
        (json!({"type": "any"}), ToolChoice::Required),
        (json!({"type": "none"}), ToolChoice::None),
        (
            json!({"type": "tool", "name": "f"}),
            ToolChoice::Named("f".into()),
        ),
    ] {
        let (status, v) = post_json(
            &app,
            "/v1/messages",
            body("smol", json!({"tools": tools, "tool_choice": choice})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let Prompt::Chat { tool_choice, .. } = backend.last.lock().unwrap().clone().unwrap().prompt
        else {
            panic!()
        };
        assert_eq!(tool_choice, expected);
    }
}

#[tokio::test]
async fn count_tokens_endpoint() {
    let (app, backend) = app();
    let (status, v) = post_json(
        &app,
        "/v1/messages/count_tokens?beta=true",
        json!({"model": "claude-haiku-4-5", "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"input_tokens": PROMPT_TOKENS}));
    let Some(Prompt::Chat {
        messages, tools, ..
    }) = backend.counted.lock().unwrap().clone()
    else {
        panic!()
    };
    assert_eq!(messages.len(), 2);
    assert_eq!(tools.len(), 1);
    let (status, v) = post_json(
        &app,
        "/v1/messages/count_tokens",
        json!({"model": "missing", "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_anthropic_error(&v, "not_found_error");
}

#[tokio::test]
async fn backend_refusals_in_anthropic_shape() {
    let (app, _) = app();
    let (status, v) = post_json(&app, "/v1/messages", body("toolong", json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_anthropic_error(&v, "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "prompt is too long: 12000 tokens > 8191 maximum"
    );
    let (status, headers, text) = send(
        &app,
        post("/v1/messages", body("busy", json!({})).to_string()),
    )
    .await;
    assert_eq!(status.as_u16(), 529);
    assert_eq!(headers["retry-after"], "3");
    assert!(headers.contains_key("request-id"));
    assert_anthropic_error(&serde_json::from_str(&text).unwrap(), "overloaded_error");
    let (status, v) = post_json(&app, "/v1/messages", body("missing", json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_anthropic_error(&v, "not_found_error");
    let (status, v) = post_json(&app, "/v1/messages", body("broken", json!({}))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_anthropic_error(&v, "api_error");
}

#[tokio::test]
async fn auth_in_anthropic_shape() {
    let cfg = Config {
        api_key: Some("sekrit".into()),
        ..Config::default()
    };
    let (app, _) = app_with(cfg);
    let (status, v) = post_json(&app, "/v1/messages", body("smol", json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_anthropic_error(&v, "authentication_error");
    for (name, value) in [("x-api-key", "sekrit"), ("authorization", "Bearer sekrit")] {
        let request = Request::post("/v1/messages")
            .header("content-type", "application/json")
            .header(name, value)
            .body(Body::from(body("smol", json!({})).to_string()))
            .unwrap();
        let (status, _, text) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{name}: {text}");
    }
    let request = Request::post("/v1/messages/count_tokens")
        .header("x-api-key", "wrong")
        .body(Body::from("{}"))
        .unwrap();
    let (status, _, text) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_anthropic_error(
        &serde_json::from_str(&text).unwrap(),
        "authentication_error",
    );
    // OpenAI routes keep OpenAI's shape.
    let (status, v) = post_json(&app, "/v1/chat/completions", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["code"].is_string());
}

#[tokio::test]
async fn routing_and_limits_in_anthropic_shape() {
    let cfg = Config {
        max_body_bytes: 2048,
        ..Config::default()
    };
    let (app, _) = app_with(cfg);
    let big = body("smol", json!({"system": "x".repeat(4096)}));
    let (status, v) = post_json(&app, "/v1/messages", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_anthropic_error(&v, "request_too_large");
    let (status, v) = post_json(&app, "/v1/messages/batches", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_anthropic_error(&v, "not_found_error");
    let (status, _, text) = send(
        &app,
        Request::get("/v1/messages").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_anthropic_error(
        &serde_json::from_str(&text).unwrap(),
        "invalid_request_error",
    );
}

#[tokio::test]
async fn models_list_has_anthropic_fields() {
    let (app, _) = app();
    let (status, _, text) = send(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], "smol");
    assert_eq!(v["last_id"], "smol");
    assert_eq!(v["data"][0]["type"], "model");
    assert!(v["data"][0]["display_name"].is_string());
    assert!(v["data"][0]["created_at"].as_str().unwrap().ends_with('Z'));
}

/// Each bad request gets a 400 in Anthropic's shape, and the next valid request still works.
#[tokio::test]
async fn bad_inputs() {
    let (app, _) = app();
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let base = || body("smol", json!({}));
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = base();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let raw_cases: Vec<(&str, String)> = vec![
        ("not JSON", "{not json".into()),
        ("empty body", "".into()),
        ("array body", "[1, 2]".into()),
        ("trailing garbage", format!("{} x", base())),
    ];
    let cases: Vec<(&str, Value)> = vec![
        ("no max_tokens", without("max_tokens")),
        ("no messages", without("messages")),
        ("max_tokens 0", with("max_tokens", json!(0))),
        ("max_tokens negative", with("max_tokens", json!(-5))),
        ("max_tokens string", with("max_tokens", json!("10"))),
        ("empty messages", with("messages", json!([]))),
        ("messages not a list", with("messages", json!("hi"))),
        (
            "bad role",
            with("messages", json!([{"role": "robot", "content": "hi"}])),
        ),
        ("no role", with("messages", json!([{"content": "hi"}]))),
        ("content number", with("messages", user(json!(5)))),
        (
            "block without type",
            with("messages", user(json!([{"text": "hi"}]))),
        ),
        (
            "unknown block type",
            with("messages", user(json!([{"type": "video", "url": "x"}]))),
        ),
        (
            "text block without text",
            with("messages", user(json!([{"type": "text"}]))),
        ),
        ("block not an object", with("messages", user(json!(["hi"])))),
        (
            "image block",
            with(
                "messages",
                user(
                    json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]),
                ),
            ),
        ),
        (
            "pdf document",
            with(
                "messages",
                user(
                    json!([{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "AAAA"}}]),
                ),
            ),
        ),
        (
            "tool_use in user turn",
            with(
                "messages",
                user(json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}])),
            ),
        ),
        (
            "tool_result without id",
            with(
                "messages",
                user(json!([{"type": "tool_result", "content": "x"}])),
            ),
        ),
        (
            "tool_use input not object",
            with(
                "messages",
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]),
            ),
        ),
        ("system number", with("system", json!(5))),
        (
            "system image block",
            with("system", json!([{"type": "image"}])),
        ),
        ("temperature 1.5", with("temperature", json!(1.5))),
        ("temperature negative", with("temperature", json!(-0.1))),
        ("top_p 2", with("top_p", json!(2))),
        ("top_k negative", with("top_k", json!(-1))),
        (
            "stop_sequences string",
            with("stop_sequences", json!("END")),
        ),
        (
            "stop_sequences empty string",
            with("stop_sequences", json!([""])),
        ),
        ("tool without schema", with("tools", json!([{"name": "f"}]))),
        (
            "tool schema not object",
            with("tools", json!([{"name": "f", "input_schema": "x"}])),
        ),
        (
            "tool empty name",
            with(
                "tools",
                json!([{"name": "", "input_schema": {"type": "object"}}]),
            ),
        ),
        (
            "server tool",
            with(
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
            ),
        ),
        (
            "tool_choice bad type",
            with("tool_choice", json!({"type": "sometimes"})),
        ),
        (
            "tool_choice names unknown tool",
            with("tool_choice", json!({"type": "tool", "name": "nope"})),
        ),
        (
            "tool_choice any without tools",
            with("tool_choice", json!({"type": "any"})),
        ),
        (
            "thinking bad type",
            with("thinking", json!({"type": "maybe"})),
        ),
        (
            "thinking budget 0",
            with("thinking", json!({"type": "enabled", "budget_tokens": 0})),
        ),
        ("stream not bool", with("stream", json!("yes"))),
        ("model number", with("model", json!(3))),
    ];
    let all: Vec<(&str, String)> = raw_cases
        .into_iter()
        .chain(cases.into_iter().map(|(n, v)| (n, v.to_string())))
        .collect();
    assert!(all.len() >= 25);
    for (name, raw) in all {
        let (status, headers, text) = send(&app, post("/v1/messages", raw)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_anthropic_error(&v, "invalid_request_error");
        assert!(headers.contains_key("request-id"), "{name}");
        let (status, v) = post_json(&app, "/v1/messages", base()).await;
        assert_eq!(status, StatusCode::OK, "after {name}: {v}");
    }
}
