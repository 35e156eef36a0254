//! The HTTP layer against a scripted backend: request validation, response shapes, SSE
//! framing, errors, auth, limits and cancellation. (The real model runs in tests/e2e.)

use std::sync::atomic::{AtomicBool, Ordering};
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
    Backend, BoxFuture, CoreError, Event, FinishReason, GenerateRequest, Generation, Health,
    ModelInfo, Prompt, TokenLogprob, Usage,
};

/// A backend whose generation depends on the requested model name.
#[derive(Default)]
struct Scripted {
    last: Mutex<Option<GenerateRequest>>,
    cancelled: Arc<AtomicBool>,
    loading: AtomicBool,
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 7,
        completion_tokens: 3,
        cached_tokens: 2,
        ..Default::default()
    }
}

fn logprob(token: &str) -> TokenLogprob {
    TokenLogprob {
        token: token.into(),
        bytes: token.as_bytes().to_vec(),
        logprob: -0.5,
        top: vec![
            (token.into(), token.as_bytes().to_vec(), -0.5),
            ("x".into(), b"x".to_vec(), -2.0),
        ],
    }
}

fn script(model: &str) -> Vec<Event> {
    let done = |reason| Event::Finished {
        reason,
        usage: usage(),
    };
    match model {
        "tools" => vec![
            Event::ToolCallStart {
                index: 0,
                id: "call_abc".into(),
                name: "get_weather".into(),
            },
            Event::ToolCallArguments {
                index: 0,
                fragment: "{\"city\": ".into(),
            },
            Event::ToolCallArguments {
                index: 0,
                fragment: "\"Paris\"}".into(),
            },
            done(FinishReason::ToolCalls),
        ],
        "think" => vec![
            Event::Reasoning("Let me see.".into()),
            Event::Text("4".into()),
            done(FinishReason::Eos),
        ],
        "fails" => vec![
            Event::Text("Hel".into()),
            Event::Error("GPU on fire".into()),
        ],
        "long" => vec![Event::Text("aaaa".into()), done(FinishReason::MaxTokens)],
        "logprobs" => vec![
            Event::Text("Hi".into()),
            Event::Logprobs(vec![logprob("Hi")]),
            Event::Text("!".into()),
            Event::Logprobs(vec![logprob("!")]),
            done(FinishReason::Eos),
        ],
        _ => vec![
            Event::Text("Hello".into()),
            Event::KeepAlive,
            Event::Text(" world".into()),
            done(FinishReason::Eos),
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
        _model: Option<&'a str>,
        _prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<usize, CoreError>> {
        Box::pin(async { Ok(7) })
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
                "oom" => return Err(CoreError::InsufficientMemory("needs 80 GB".into())),
                "toolong" => {
                    return Err(CoreError::PromptTooLong {
                        tokens: 9000,
                        max: 2048,
                    })
                }
                _ => {}
            }
            let (tx, rx) = mpsc::channel(16);
            if model == "slow" {
                let cancelled = self.cancelled.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Event::Text("tick".into())).await;
                    // Runs until the HTTP layer drops the receiver.
                    tx.closed().await;
                    cancelled.store(true, Ordering::SeqCst);
                });
            } else {
                let events = script(&model);
                tokio::spawn(async move {
                    for event in events {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Ok(Generation {
                model,
                prompt_tokens: 7,
                cached_tokens: 2,
                events: rx,
            })
        })
    }

    fn health(&self) -> Health {
        if self.loading.load(Ordering::SeqCst) {
            Health::Loading
        } else {
            Health::Ok
        }
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
        .body(body.into())
        .unwrap()
}

async fn post_json(app: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = send(app, post(path, body.to_string())).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// The `data:` payloads of an SSE body, checking the framing on the way.
fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "frames end with a blank line: {body:?}"
    );
    let mut out = Vec::new();
    for frame in body.split("\n\n").filter(|f| !f.is_empty()) {
        if frame.starts_with(':') {
            continue; // comment (keep-alive)
        }
        let data = frame
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("frame without data: {frame:?}"));
        assert!(!data.contains('\n'), "one line per frame: {frame:?}");
        out.push(data.to_string());
    }
    out
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn assert_error_shape(value: &Value) {
    let error = &value["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{value}"
    );
    assert!(error["type"].is_string(), "{value}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{value}"
    );
}

#[tokio::test]
async fn non_stream_chat() {
    let (app, backend) = app();
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        chat_body(
            json!({"temperature": 0.5, "top_p": 0.9, "seed": -3, "stop": "\n",
            "max_completion_tokens": 5, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
            "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "ignored", "whatever": 1}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "smol");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 10);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    let request = backend.last.lock().unwrap().clone().unwrap();
    assert_eq!(request.max_tokens, Some(5));
    assert_eq!(request.stop, vec!["\n".to_string()]);
    assert_eq!(request.sampling.temperature, Some(0.5));
    assert_eq!(request.sampling.top_k, Some(40));
    assert_eq!(request.sampling.seed, Some((-3i64) as u64));
    assert_eq!(request.logprobs, None);
}

#[tokio::test]
async fn messages_are_translated() {
    let (app, backend) = app();
    let body = json!({
        "model": "smol",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    });
    let (status, v) = post_json(&app, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let request = backend.last.lock().unwrap().clone().unwrap();
    let Prompt::Chat {
        messages,
        tools,
        tool_choice,
        ..
    } = request.prompt
    else {
        panic!("chat prompt expected")
    };
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0].role, Some(wuwei::core::Role::System));
    assert_eq!(messages[0].content, "Be brief.");
    assert_eq!(messages[2].tool_calls[0].arguments, "{\"city\":\"Paris\"}");
    assert_eq!(messages[3].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(tools[0].name, "get_weather");
    assert_eq!(
        tool_choice,
        wuwei::core::ToolChoice::Named("get_weather".into())
    );
}

#[tokio::test]
async fn streaming_chat_framing_and_usage() {
    let (app, _) = app();
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, headers, text) = send(&app, post("/v1/chat/completions", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(text.contains(": keep-alive\n\n"));
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world");
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "{chunk}"
        );
    }
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 10);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 2);

    // Without include_usage there is no usage at all.
    let (_, _, text) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"stream": true})).to_string(),
        ),
    )
    .await;
    let data = sse_data(&text);
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn tool_calls_stream_and_non_stream() {
    let (app, _) = app();
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        chat_body(json!({"model": "tools"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let message = &v["choices"][0]["message"];
    assert!(message["content"].is_null());
    assert_eq!(message["tool_calls"][0]["id"], "call_abc");
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        "{\"city\": \"Paris\"}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let (_, _, text) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "tools", "stream": true})).to_string(),
        ),
    )
    .await;
    let data = sse_data(&text);
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(
        deltas[0],
        &json!([{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": ""}}])
    );
    let arguments: String = deltas[1..]
        .iter()
        .map(|d| {
            assert!(d[0].get("id").is_none());
            d[0]["function"]["arguments"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(arguments, "{\"city\": \"Paris\"}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn reasoning_content() {
    let (app, _) = app();
    let (_, v) = post_json(
        &app,
        "/v1/chat/completions",
        chat_body(json!({"model": "think"})),
    )
    .await;
    assert_eq!(
        v["choices"][0]["message"]["reasoning_content"],
        "Let me see."
    );
    assert_eq!(v["choices"][0]["message"]["content"], "4");
    let (_, _, text) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "think", "stream": true})).to_string(),
        ),
    )
    .await;
    let data = sse_data(&text);
    let reasoning: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["reasoning_content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(reasoning, "Let me see.");
}

#[tokio::test]
async fn logprobs_chat_and_completions() {
    let (app, backend) = app();
    let (_, v) = post_json(
        &app,
        "/v1/chat/completions",
        chat_body(json!({"model": "logprobs", "logprobs": true, "top_logprobs": 2})),
    )
    .await;
    assert_eq!(
        backend.last.lock().unwrap().as_ref().unwrap().logprobs,
        Some(2)
    );
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["token"], "Hi");
    assert_eq!(content[0]["bytes"], json!([72, 105]));
    assert_eq!(content[0]["top_logprobs"][1]["token"], "x");

    // Streaming: each text delta carries its own tokens' logprobs.
    let (_, _, text) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "logprobs", "logprobs": true, "stream": true})).to_string(),
        ),
    )
    .await;
    let data = sse_data(&text);
    let with_lp: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|c| !c["choices"][0]["logprobs"].is_null())
        .collect();
    assert_eq!(with_lp.len(), 2);
    assert_eq!(with_lp[0]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(
        with_lp[0]["choices"][0]["logprobs"]["content"][0]["token"],
        "Hi"
    );

    let (_, v) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "logprobs", "prompt": "x", "logprobs": 1}),
    )
    .await;
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["Hi", "!"]));
    assert_eq!(lp["text_offset"], json!([0, 2]));
    assert_eq!(lp["top_logprobs"][0]["x"], -2.0);
}

#[tokio::test]
async fn completions_endpoint() {
    let (app, backend) = app();
    let (status, v) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "smol", "prompt": "Once"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        backend.last.lock().unwrap().as_ref().unwrap().prompt,
        Prompt::Text("Once".into())
    );

    let (status, _) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "long", "prompt": [1, 2, 3], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        backend.last.lock().unwrap().as_ref().unwrap().prompt,
        Prompt::Tokens(vec![1, 2, 3])
    );
    let (_, v) = post_json(
        &app,
        "/v1/completions",
        json!({"model": "long", "prompt": [[4, 5]]}),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let body = json!({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
    let (_, _, text) = send(&app, post("/v1/completions", body.to_string())).await;
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(joined, "Hello world");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn models_list_fits_both_sdks() {
    let (app, _) = app();
    let (status, _, text) = send(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], "smol");
    assert_eq!(v["last_id"], "smol");
    let m = &v["data"][0];
    assert_eq!(m["id"], "smol");
    assert_eq!(m["object"], "model");
    assert_eq!(m["created"], 1_700_000_000);
    assert_eq!(m["owned_by"], "wuwei");
    assert_eq!(m["type"], "model");
    assert_eq!(m["display_name"], "smol");
    assert_eq!(m["created_at"], "2023-11-14T22:13:20Z");
    let (status, _, _) = send(
        &app,
        Request::get("/v1/models/smol").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, text) = send(
        &app,
        Request::get("/v1/models/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("smol"));
}

#[tokio::test]
async fn health_and_metrics() {
    let (app, backend) = app();
    let (status, _, text) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"status": "ok"})
    );
    backend.loading.store(true, Ordering::SeqCst);
    let (status, _, _) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    wuwei::metrics::record_time_to_first_token("smol", Duration::from_millis(30));
    wuwei::metrics::add_generation_tokens("smol", 5);
    let _ = post_json(&app, "/v1/chat/completions", chat_body(json!({}))).await;
    let (status, headers, text) =
        send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        text.contains("wuwei_time_to_first_token_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("wuwei_generation_tokens_total"), "{text}");
    assert!(
        text.contains("wuwei_http_requests_total{path=\"/v1/chat/completions\""),
        "{text}"
    );
}

#[tokio::test]
async fn backend_errors_map_to_statuses() {
    let (app, _) = app();
    let cases = [
        ("missing", StatusCode::NOT_FOUND, Some("model")),
        ("busy", StatusCode::SERVICE_UNAVAILABLE, None),
        ("oom", StatusCode::INSUFFICIENT_STORAGE, None),
        ("toolong", StatusCode::BAD_REQUEST, Some("messages")),
    ];
    for (model, status, param) in cases {
        let (_, headers, text) = send(
            &app,
            post(
                "/v1/chat/completions",
                chat_body(json!({"model": model})).to_string(),
            ),
        )
        .await;
        let response = app
            .clone()
            .oneshot(post(
                "/v1/chat/completions",
                chat_body(json!({"model": model})).to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{model}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_error_shape(&v);
        if let Some(param) = param {
            assert_eq!(v["error"]["param"], param);
        }
        if model == "missing" {
            assert!(v["error"]["message"].as_str().unwrap().contains("smol"));
        }
        if model == "busy" {
            assert_eq!(headers["retry-after"], "3");
        }
    }
}

#[tokio::test]
async fn error_after_stream_started() {
    let (app, _) = app();
    let (status, _, text) = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "fails", "stream": true})).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_error_shape(&error);
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GPU on fire"));
    // Non-streaming: a 500 with the same shape.
    let (status, v) = post_json(
        &app,
        "/v1/chat/completions",
        chat_body(json!({"model": "fails"})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error_shape(&v);
}

#[tokio::test]
async fn client_disconnect_drops_the_receiver() {
    let (app, backend) = app();
    let response = app
        .clone()
        .oneshot(post(
            "/v1/chat/completions",
            chat_body(json!({"model": "slow", "stream": true})).to_string(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).starts_with("data: "));
    assert!(!backend.cancelled.load(Ordering::SeqCst));
    drop(body);
    for _ in 0..100 {
        if backend.cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("dropping the response body did not drop the generation's receiver");
}

#[tokio::test]
async fn api_key_is_required_when_set() {
    let cfg = Config {
        api_key: Some("sekret".into()),
        ..Config::default()
    };
    let (app, _) = app_with(cfg);
    let body = chat_body(json!({})).to_string();
    let (status, _, text) = send(&app, post("/v1/chat/completions", body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error_shape(&serde_json::from_str(&text).unwrap());
    let wrong = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer nope")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let bearer = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sekret")
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    assert_eq!(send(&app, bearer).await.0, StatusCode::OK);
    let x_api_key = Request::get("/v1/models")
        .header("x-api-key", "sekret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, x_api_key).await.0, StatusCode::OK);
    // Health stays open for supervisors.
    assert_eq!(
        send(&app, Request::get("/health").body(Body::empty()).unwrap())
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let cfg = Config {
        max_body_bytes: 1024,
        ..Config::default()
    };
    let (app, _) = app_with(cfg);
    let big =
        chat_body(json!({"messages": [{"role": "user", "content": "x".repeat(4096)}]})).to_string();
    // With Content-Length (rejected up front) …
    let (status, _, text) = send(&app, post("/v1/chat/completions", big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&serde_json::from_str(&text).unwrap());
    // … and streamed without one (rejected while reading).
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(axum::body::Bytes::copy_from_slice(c)))
        .collect();
    let stream_body = Body::from_stream(futures_util::stream::iter(chunks));
    let (status, _, text) = send(&app, post("/v1/chat/completions", stream_body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error_shape(&serde_json::from_str(&text).unwrap());
    let (status, _) = post_json(&app, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
}

/// A bad input: (what, path, raw body, expected status, expected `param`).
type BadInput = (
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

fn bad_inputs() -> Vec<BadInput> {
    let chat = |extra: Value| chat_body(extra).to_string().into_bytes();
    let raw = |s: &str| s.as_bytes().to_vec();
    let c = "/v1/chat/completions";
    let p = "/v1/completions";
    vec![
        (
            "malformed json",
            c,
            raw("{\"model\": \"smol\", "),
            400,
            Some("body"),
        ),
        ("not an object", c, raw("[1, 2]"), 400, Some("body")),
        ("empty body", c, raw(""), 400, Some("body")),
        (
            "invalid utf-8",
            c,
            vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
            400,
            Some("body"),
        ),
        (
            "trailing garbage",
            c,
            raw("{\"messages\": []} xyz"),
            400,
            None,
        ),
        (
            "missing messages",
            c,
            raw("{\"model\": \"smol\"}"),
            400,
            Some("messages"),
        ),
        (
            "messages not a list",
            c,
            chat(json!({"messages": "hi"})),
            400,
            Some("messages"),
        ),
        (
            "empty messages",
            c,
            chat(json!({"messages": []})),
            400,
            Some("messages"),
        ),
        (
            "unknown role",
            c,
            chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        (
            "missing role",
            c,
            chat(json!({"messages": [{"content": "x"}]})),
            400,
            Some("messages[0].role"),
        ),
        (
            "user without content",
            c,
            chat(json!({"messages": [{"role": "user"}]})),
            400,
            Some("messages[0].content"),
        ),
        (
            "content a number",
            c,
            chat(json!({"messages": [{"role": "user", "content": 5}]})),
            400,
            Some("messages[0].content"),
        ),
        (
            "image part",
            c,
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]}),
            ),
            400,
            Some("messages[0].content[0].type"),
        ),
        (
            "text part without text",
            c,
            chat(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})),
            400,
            Some("messages[0].content[0].text"),
        ),
        (
            "temperature string",
            c,
            chat(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        (
            "temperature negative",
            c,
            chat(json!({"temperature": -0.1})),
            400,
            Some("temperature"),
        ),
        (
            "temperature too high",
            c,
            chat(json!({"temperature": 2.5})),
            400,
            Some("temperature"),
        ),
        (
            "top_p zero",
            c,
            chat(json!({"top_p": 0})),
            400,
            Some("top_p"),
        ),
        (
            "top_p above one",
            c,
            chat(json!({"top_p": 1.5})),
            400,
            Some("top_p"),
        ),
        (
            "max_tokens zero",
            c,
            chat(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens negative",
            c,
            chat(json!({"max_tokens": -5})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens fractional",
            c,
            chat(json!({"max_tokens": 1.5})),
            400,
            Some("max_tokens"),
        ),
        (
            "max_tokens absurd",
            c,
            raw("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1e400}"),
            400,
            None,
        ),
        (
            "max_completion_tokens zero",
            c,
            chat(json!({"max_completion_tokens": 0})),
            400,
            Some("max_completion_tokens"),
        ),
        (
            "top_logprobs too many",
            c,
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            Some("top_logprobs"),
        ),
        (
            "top_logprobs without logprobs",
            c,
            chat(json!({"top_logprobs": 2})),
            400,
            Some("top_logprobs"),
        ),
        ("n above 16", c, chat(json!({"n": 17})), 400, Some("n")),
        ("n zero", c, chat(json!({"n": 0})), 400, Some("n")),
        (
            "unknown response_format",
            c,
            chat(json!({"response_format": {"type": "yaml"}})),
            400,
            Some("response_format.type"),
        ),
        (
            "stop a number",
            c,
            chat(json!({"stop": 5})),
            400,
            Some("stop"),
        ),
        (
            "stop list with number",
            c,
            chat(json!({"stop": ["a", 1]})),
            400,
            Some("stop[1]"),
        ),
        (
            "presence_penalty out of range",
            c,
            chat(json!({"presence_penalty": 3})),
            400,
            Some("presence_penalty"),
        ),
        (
            "frequency_penalty out of range",
            c,
            chat(json!({"frequency_penalty": -2.5})),
            400,
            Some("frequency_penalty"),
        ),
        (
            "top_k negative",
            c,
            chat(json!({"top_k": -2})),
            400,
            Some("top_k"),
        ),
        (
            "min_p above one",
            c,
            chat(json!({"min_p": 1.5})),
            400,
            Some("min_p"),
        ),
        (
            "repetition_penalty zero",
            c,
            chat(json!({"repetition_penalty": 0})),
            400,
            Some("repetition_penalty"),
        ),
        (
            "tool of another type",
            c,
            chat(json!({"tools": [{"type": "retrieval"}]})),
            400,
            Some("tools[0].type"),
        ),
        (
            "tool without name",
            c,
            chat(json!({"tools": [{"type": "function", "function": {"description": "x"}}]})),
            400,
            Some("tools[0].function.name"),
        ),
        (
            "tool_choice unknown tool",
            c,
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "a"}}], "tool_choice": {"type": "function", "function": {"name": "b"}}}),
            ),
            400,
            Some("tool_choice"),
        ),
        (
            "tool_choice required without tools",
            c,
            chat(json!({"tool_choice": "required"})),
            400,
            Some("tool_choice"),
        ),
        (
            "tool_choice nonsense",
            c,
            chat(json!({"tool_choice": "sometimes"})),
            400,
            Some("tool_choice"),
        ),
        (
            "stream not a bool",
            c,
            chat(json!({"stream": "yes"})),
            400,
            Some("stream"),
        ),
        (
            "seed a string",
            c,
            chat(json!({"seed": "abc"})),
            400,
            Some("seed"),
        ),
        (
            "unknown model",
            c,
            chat(json!({"model": "missing"})),
            404,
            Some("model"),
        ),
        ("wrong content type", c, vec![], 400, Some("content-type")),
        (
            "completions prompt missing",
            p,
            raw("{\"model\": \"smol\"}"),
            400,
            Some("prompt"),
        ),
        (
            "completions prompt an object",
            p,
            raw("{\"prompt\": {}}"),
            400,
            Some("prompt"),
        ),
        (
            "completions several prompts",
            p,
            raw("{\"prompt\": [\"a\", \"b\"]}"),
            400,
            Some("prompt"),
        ),
        (
            "completions negative token",
            p,
            raw("{\"prompt\": [1, -2]}"),
            400,
            Some("prompt"),
        ),
        (
            "completions empty tokens",
            p,
            raw("{\"prompt\": []}"),
            400,
            Some("prompt"),
        ),
        (
            "completions echo",
            p,
            raw("{\"prompt\": \"a\", \"echo\": true}"),
            400,
            Some("echo"),
        ),
        (
            "completions best_of",
            p,
            raw("{\"prompt\": \"a\", \"best_of\": 3}"),
            400,
            Some("best_of"),
        ),
        (
            "completions logprobs too many",
            p,
            raw("{\"prompt\": \"a\", \"logprobs\": 50}"),
            400,
            Some("logprobs"),
        ),
        (
            "completions max_tokens zero",
            p,
            raw("{\"prompt\": \"a\", \"max_tokens\": 0}"),
            400,
            Some("max_tokens"),
        ),
    ]
}

#[tokio::test]
async fn bad_inputs_are_4xx_json_and_the_server_keeps_working() {
    let (app, _) = app();
    let cases = bad_inputs();
    assert!(cases.len() >= 30);
    for (what, path, body, status, param) in cases {
        let request = if what == "wrong content type" {
            Request::post(path)
                .header("content-type", "text/plain")
                .body(Body::from(chat_body(json!({})).to_string()))
                .unwrap()
        } else {
            post(path, body)
        };
        let (got, _, text) = send(&app, request).await;
        assert_eq!(got.as_u16(), status, "{what}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_error_shape(&v);
        if let Some(param) = param {
            assert_eq!(v["error"]["param"], param, "{what}: {text}");
        }
        let (ok, v) = post_json(&app, "/v1/chat/completions", chat_body(json!({}))).await;
        assert_eq!(ok, StatusCode::OK, "after {what}: {v}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let (app, _) = app();
    let (status, _, text) = send(
        &app,
        Request::get("/v1/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&serde_json::from_str(&text).unwrap());
    let (status, _, text) = send(
        &app,
        Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&serde_json::from_str(&text).unwrap());
}

#[tokio::test]
async fn graceful_shutdown_returns_ok() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = Config {
        shutdown_grace_secs: 1,
        ..Config::default()
    };
    let server = tokio::spawn(wuwei::server::serve_on(
        listener,
        cfg,
        Arc::new(Scripted::default()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // A raw HTTP request over TCP proves it serves.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // A stream that never ends must not keep the server up past the grace period.
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = chat_body(json!({"model": "slow", "stream": true})).to_string();
    slow.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let _ = slow.read(&mut buf).await.unwrap();
    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
}

#[tokio::test]
async fn web_pages_of_other_origins_and_rebound_host_names_are_refused() {
    let (app, backend) = app();
    let with = |method: &str, path: &str, headers: &[(&str, &str)], body: Value| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Body::from(body.to_string())).unwrap()
    };
    // A page elsewhere (cross-site request forgery) and a rebound name (DNS rebinding).
    for headers in [
        vec![
            ("host", "127.0.0.1:8686"),
            ("origin", "https://evil.example"),
        ],
        vec![("host", "127.0.0.1:8686"), ("origin", "null")],
        vec![("host", "evil.example:8686")],
    ] {
        let (status, _, text) = send(
            &app,
            with(
                "POST",
                "/v1/chat/completions",
                &headers,
                chat_body(json!({})),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {text}");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_error_shape(&value);
        assert_eq!(value["error"]["type"], "permission_error");
        let (status, _, text) = send(&app, with("POST", "/v1/messages", &headers, json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["type"], "error",
            "Anthropic's shape on /v1/messages: {value}"
        );
        assert_eq!(value["error"]["type"], "permission_error");
    }
    assert!(
        backend.last.lock().unwrap().is_none(),
        "nothing reached the backend"
    );

    // The dashboard (own origin) and a local web UI on another port may; the latter gets CORS.
    let own = [
        ("host", "127.0.0.1:8686"),
        ("origin", "http://127.0.0.1:8686"),
    ];
    let (status, _, text) = send(
        &app,
        with("POST", "/v1/chat/completions", &own, chat_body(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let local_ui = [
        ("host", "localhost:8686"),
        ("origin", "http://localhost:3000"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type,authorization",
        ),
    ];
    let (status, headers, _) = send(
        &app,
        with("OPTIONS", "/v1/chat/completions", &local_ui, json!({})),
    )
    .await;
    assert!(status.is_success(), "preflight: {status}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let (status, headers, _) = send(
        &app,
        with(
            "POST",
            "/v1/chat/completions",
            &local_ui[..2],
            chat_body(json!({})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );

    // Configured origins are allowed too.
    let (app, _) = app_with(Config {
        allowed_origins: vec!["https://chat.example.com".into()],
        ..Config::default()
    });
    let page = [
        ("host", "127.0.0.1:8686"),
        ("origin", "https://chat.example.com"),
    ];
    let (status, _, text) = send(
        &app,
        with("POST", "/v1/chat/completions", &page, chat_body(json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}
