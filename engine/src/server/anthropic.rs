//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.
//!
//! Requests are flattened into the canonical [`GenerateRequest`]; the generation's events are
//! encoded as Anthropic's content blocks, streamed (`message_start` … `message_stop`) or whole.
//! Errors on these routes use Anthropic's shape,
//! `{"type": "error", "error": {"type", "message"}, "request_id"}`.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::errors::{ApiError, ApiJson};
use super::openai::random_id;
use super::sse::{event_frame, sse_response};
use super::AppState;
use crate::core::{
    ChatMessage, CoreError, Event, FinishReason, GenerateRequest, Generation, Prompt, Role,
    SamplingParams, ToolCall, ToolChoice, ToolSpec, Usage,
};

/// Clients give up on a silent stream; a `ping` goes out when nothing else has for this long.
const PING_AFTER: Duration = Duration::from_secs(5);
/// Most stop sequences accepted.
const MAX_STOP_SEQUENCES: usize = 16;
/// Claude Code (before 2.1.181) starts `system` with a block that changes on every request
/// (`x-anthropic-billing-header: cc_version=…; cch=…;`). It means nothing to a local model and
/// would defeat prefix reuse, so it is dropped.
const BILLING_HEADER_PREFIX: &str = "x-anthropic-billing-header";

/// Whether `path` belongs to this API (its errors take Anthropic's shape).
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Anthropic's `error.type` for an HTTP status, and the status to send (503s become 529,
/// Anthropic's "overloaded", which its SDKs retry).
fn anthropic_kind(status: StatusCode, openai_kind: &str) -> (StatusCode, &'static str) {
    match status.as_u16() {
        400 | 405 | 415 | 422 => (status, "invalid_request_error"),
        401 => (status, "authentication_error"),
        403 => (status, "permission_error"),
        404 => (status, "not_found_error"),
        413 => (status, "request_too_large"),
        429 => (status, "rate_limit_error"),
        503 | 529 => (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
        ),
        _ if openai_kind == "overloaded_error" => (status, "overloaded_error"),
        _ => (status, "api_error"),
    }
}

/// An error rendered in Anthropic's shape.
#[derive(Debug, Clone)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl From<CoreError> for AnthropicError {
    fn from(err: CoreError) -> Self {
        // The core's messages are final (clients match `prompt is too long: …` verbatim).
        Self(ApiError {
            param: None,
            ..ApiError::from(err)
        })
    }
}

/// `{"type": "error", "error": {"type", "message"}, "request_id"}` with Anthropic's status.
fn error_response(status: StatusCode, kind: &str, message: &str, retry: Option<u64>) -> Response {
    let request_id = random_id("req_");
    let (status, kind) = anthropic_kind(status, kind);
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", v);
    }
    if let Some(secs) = retry {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let e = self.0;
        // Anthropic has no `param`; name the field in the message instead.
        let message = match &e.param {
            Some(p) if !e.message.contains(p.as_str()) && p != "body" => {
                format!("{p}: {}", e.message)
            }
            _ => e.message.clone(),
        };
        error_response(e.status, e.kind, &message, e.retry_after_secs)
    }
}

/// Rewrites errors produced outside this module (authentication, body limit, unknown route,
/// wrong method: all rendered in OpenAI's shape) into Anthropic's shape on Anthropic paths.
pub async fn anthropic_error_shape(request: Request, next: Next) -> Response {
    if !is_anthropic_path(request.uri().path()) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let retry = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if value.get("type").and_then(Value::as_str) == Some("error") {
        // Already Anthropic's shape (from this module): unchanged.
        return Response::from_parts(parts, Body::from(bytes));
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string()
            } else {
                text
            }
        });
    let kind = value["error"]["type"].as_str().unwrap_or("");
    error_response(status, kind, &message, retry)
}

/// A JSON body whose failures render in Anthropic's shape.
pub struct AnthropicJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AnthropicJson<T> {
    type Rejection = AnthropicError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The body of `/v1/messages` (and, without `max_tokens`, of `count_tokens`). Unknown fields
/// (`context_management`, `output_config`, `service_tier`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<i64>,
    messages: Vec<InMessage>,
    system: Option<Value>,
    tools: Option<Vec<InTool>>,
    tool_choice: Option<Value>,
    thinking: Option<Value>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stream: Option<bool>,
    #[allow(dead_code)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct InTool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
}

/// A request translated: the canonical request and whether to stream.
struct Translated {
    request: GenerateRequest,
    stream: bool,
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

fn check_range(param: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) || !v.is_finite() => Err(invalid(
            param,
            format!("`{param}` must be between {lo} and {hi} (got {v})"),
        )),
        _ => Ok(()),
    }
}

/// The text of a `text`-only block list (system prompt, tool result), or of a string.
fn block_type(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

fn text_of(block: &Value, param: &str) -> Result<String, ApiError> {
    match block.get("text") {
        Some(Value::String(t)) => Ok(t.clone()),
        _ => Err(invalid(
            format!("{param}.text"),
            "a text block needs a string `text`",
        )),
    }
}

fn image_unsupported(param: &str) -> ApiError {
    ApiError::unsupported(
        format!("{param}.type"),
        "image content is not supported: the served model has no vision (text only)",
    )
}

/// A `document` block's text (plain-text sources only).
fn document_text(block: &Value, param: &str) -> Result<String, ApiError> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let text = match source.get("type").and_then(Value::as_str) {
        Some("text") => match source.get("data") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(invalid(
                    format!("{param}.source.data"),
                    "a text document needs a string `source.data`",
                ))
            }
        },
        Some("content") => match source.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(blocks)) => {
                let mut parts = Vec::new();
                for (k, b) in blocks.iter().enumerate() {
                    let p = format!("{param}.source.content[{k}]");
                    match block_type(b) {
                        "text" => parts.push(text_of(b, &p)?),
                        "image" => return Err(image_unsupported(&p)),
                        other => {
                            return Err(invalid(
                                format!("{p}.type"),
                                format!("unknown document content block type '{other}'"),
                            ))
                        }
                    }
                }
                parts.join("\n")
            }
            _ => {
                return Err(invalid(
                    format!("{param}.source.content"),
                    "`source.content` must be a string or a list of text blocks",
                ))
            }
        },
        Some(other) => {
            return Err(ApiError::unsupported(
                format!("{param}.source.type"),
                format!("document sources of type '{other}' are not supported (text only)"),
            ))
        }
        None => {
            return Err(invalid(
                format!("{param}.source"),
                "a document needs a `source` with a `type`",
            ))
        }
    };
    Ok(match block.get("title").and_then(Value::as_str) {
        Some(title) if !title.is_empty() => format!("{title}\n\n{text}"),
        _ => text,
    })
}

/// The system prompt from `system` (string or text blocks), billing header dropped.
fn system_texts(system: &Option<Value>, out: &mut Vec<String>) -> Result<(), ApiError> {
    match system {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.trim_start().starts_with(BILLING_HEADER_PREFIX) && !s.is_empty() {
                out.push(s.clone());
            }
        }
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let param = format!("system[{i}]");
                if block_type(block) != "text" {
                    return Err(invalid(
                        format!("{param}.type"),
                        "`system` blocks must be of type 'text'",
                    ));
                }
                let text = text_of(block, &param)?;
                if text.trim_start().starts_with(BILLING_HEADER_PREFIX) || text.is_empty() {
                    continue;
                }
                out.push(text);
            }
        }
        Some(_) => {
            return Err(invalid(
                "system",
                "`system` must be a string or a list of text blocks",
            ))
        }
    }
    Ok(())
}

/// A `tool_result`'s content as text (`is_error` results are marked so the model can tell).
fn tool_result_text(block: &Value, param: &str) -> Result<String, ApiError> {
    let text = match block.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (k, part) in parts.iter().enumerate() {
                let p = format!("{param}.content[{k}]");
                match block_type(part) {
                    "text" => texts.push(text_of(part, &p)?),
                    "document" => texts.push(document_text(part, &p)?),
                    "image" => return Err(image_unsupported(&p)),
                    "search_result" | "tool_reference" => {}
                    other => {
                        return Err(invalid(
                            format!("{p}.type"),
                            format!("unknown tool_result content block type '{other}'"),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        Some(_) => {
            return Err(invalid(
                format!("{param}.content"),
                "`content` of a tool_result must be a string or a list of blocks",
            ))
        }
    };
    Ok(
        if block.get("is_error").and_then(Value::as_bool) == Some(true) {
            format!("Error: {text}")
        } else {
            text
        },
    )
}

fn required_str<'a>(block: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    match block.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(invalid(
            format!("{param}.{field}"),
            format!("`{field}` must be a non-empty string"),
        )),
    }
}

/// Flattens Anthropic's messages into canonical ones. `role: "system"` messages join the
/// system prompt; `tool_result` blocks become `Role::Tool` messages (in place, so that a
/// template sees them right after the call they answer).
fn messages_from(
    system: &Option<Value>,
    messages: &[InMessage],
) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "`messages` must not be empty"));
    }
    let mut system_parts = Vec::new();
    system_texts(system, &mut system_parts)?;
    let mut out: Vec<ChatMessage> = Vec::new();
    // tool_use id → tool name, so that results can name their tool.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(invalid(
                    format!("{param}.role"),
                    format!("unknown role '{other}' (expected user or assistant)"),
                ))
            }
        };
        let blocks: Vec<Value> = match &m.content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(blocks) => blocks.clone(),
            _ => {
                return Err(invalid(
                    format!("{param}.content"),
                    "`content` must be a string or a list of content blocks",
                ))
            }
        };
        if role == Role::System {
            let value = Some(Value::Array(blocks));
            system_texts(&value, &mut system_parts).map_err(|e| ApiError {
                param: Some(format!("{param}.content")),
                ..e
            })?;
            continue;
        }
        let mut current = ChatMessage {
            role: Some(role),
            ..ChatMessage::default()
        };
        let mut texts: Vec<String> = Vec::new();
        let mut reasoning: Vec<String> = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let p = format!("{param}.content[{j}]");
            if !block.is_object() {
                return Err(invalid(p, "a content block must be an object"));
            }
            match (block_type(block), role) {
                ("text", _) => texts.push(text_of(block, &p)?),
                ("image", _) => return Err(image_unsupported(&p)),
                ("document", _) => texts.push(document_text(block, &p)?),
                ("thinking", Role::Assistant) => match block.get("thinking") {
                    Some(Value::String(t)) => reasoning.push(t.clone()),
                    _ => {
                        return Err(invalid(
                            format!("{p}.thinking"),
                            "a thinking block needs a string `thinking`",
                        ))
                    }
                },
                // Earlier thinking is not shown to the model again from a user turn; redacted
                // thinking is opaque.
                ("thinking" | "redacted_thinking", _) => {}
                ("tool_use", Role::Assistant) => {
                    let id = required_str(block, "id", &p)?;
                    let name = required_str(block, "name", &p)?;
                    let arguments = match block.get("input") {
                        None | Some(Value::Null) => "{}".to_string(),
                        Some(input @ Value::Object(_)) => input.to_string(),
                        Some(_) => {
                            return Err(invalid(
                                format!("{p}.input"),
                                "`input` of a tool_use must be an object",
                            ))
                        }
                    };
                    call_names.push((id.to_string(), name.to_string()));
                    current.tool_calls.push(ToolCall {
                        id: id.to_string(),
                        name: name.to_string(),
                        arguments,
                    });
                }
                ("tool_result", Role::User) => {
                    let id = required_str(block, "tool_use_id", &p)?;
                    let content = tool_result_text(block, &p)?;
                    // Text before a result stays before it.
                    if !texts.is_empty() {
                        current.content = std::mem::take(&mut texts).join("\n");
                        out.push(std::mem::replace(
                            &mut current,
                            ChatMessage {
                                role: Some(role),
                                ..ChatMessage::default()
                            },
                        ));
                    }
                    let name = call_names
                        .iter()
                        .rev()
                        .find(|(call, _)| call == id)
                        .map(|(_, name)| name.clone());
                    out.push(ChatMessage {
                        role: Some(Role::Tool),
                        content,
                        tool_call_id: Some(id.to_string()),
                        name,
                        ..ChatMessage::default()
                    });
                }
                ("tool_use" | "tool_result", _) => {
                    return Err(invalid(
                        format!("{p}.type"),
                        format!(
                            "`{}` blocks belong in {} messages",
                            block_type(block),
                            if block_type(block) == "tool_use" {
                                "assistant"
                            } else {
                                "user"
                            }
                        ),
                    ))
                }
                ("", _) => {
                    return Err(invalid(
                        format!("{p}.type"),
                        "a content block needs a `type`",
                    ))
                }
                (other, _) => {
                    return Err(invalid(
                        format!("{p}.type"),
                        format!("unknown content block type '{other}'"),
                    ))
                }
            }
        }
        current.content = texts.join("\n");
        if !reasoning.is_empty() {
            current.reasoning = Some(reasoning.join("\n"));
        }
        let empty = current.content.is_empty()
            && current.tool_calls.is_empty()
            && current.reasoning.is_none();
        // A user turn made only of tool results has nothing left to send.
        let only_results =
            empty && role == Role::User && blocks.iter().any(|b| block_type(b) == "tool_result");
        if !only_results {
            out.push(current);
        }
    }
    if !system_parts.is_empty() {
        out.insert(
            0,
            ChatMessage {
                role: Some(Role::System),
                content: system_parts.join("\n\n"),
                ..ChatMessage::default()
            },
        );
    }
    Ok(out)
}

fn tools_from(tools: &Option<Vec<InTool>>) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in tools.iter().flatten().enumerate() {
        let param = format!("tools[{i}]");
        if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
            return Err(ApiError::unsupported(
                format!("{param}.type"),
                format!("server tools ('{kind}') are not supported; define custom tools with `input_schema`"),
            ));
        }
        if tool.name.is_empty() {
            return Err(invalid(
                format!("{param}.name"),
                "tool name must not be empty",
            ));
        }
        let parameters = match &tool.input_schema {
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => {
                return Err(invalid(
                    format!("{param}.input_schema"),
                    "`input_schema` must be a JSON Schema object",
                ))
            }
            None => {
                return Err(invalid(
                    format!("{param}.input_schema"),
                    "a tool needs an `input_schema`",
                ))
            }
        };
        out.push(ToolSpec {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters,
        });
    }
    Ok(out)
}

fn tool_choice_from(value: &Option<Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let choice = match value {
        None | Some(Value::Null) => return Ok(ToolChoice::Auto),
        Some(v) => v,
    };
    let kind = choice.get("type").and_then(Value::as_str);
    let parsed = match kind {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => ToolChoice::Named(name.to_string()),
            _ => {
                return Err(invalid(
                    "tool_choice.name",
                    "`tool_choice` of type 'tool' needs a `name`",
                ))
            }
        },
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "`tool_choice.type` must be one of auto, any, tool, none",
            ))
        }
    };
    match &parsed {
        ToolChoice::Required if tools.is_empty() => Err(invalid(
            "tool_choice",
            "`tool_choice` is 'any' but no `tools` were given",
        )),
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => Err(invalid(
            "tool_choice.name",
            format!("`tool_choice` names '{name}', which is not among `tools`"),
        )),
        _ => Ok(parsed),
    }
}

/// `thinking` → (template switch, budget). Absent means off, as on Anthropic's API.
fn thinking_from(value: &Option<Value>) -> Result<(bool, Option<usize>), ApiError> {
    let Some(v) = value.as_ref().filter(|v| !v.is_null()) else {
        return Ok((false, None));
    };
    match v.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok((false, None)),
        Some("adaptive") => Ok((true, None)),
        Some("enabled") => match v.get("budget_tokens") {
            None | Some(Value::Null) => Ok((true, None)),
            Some(b) => match b.as_i64() {
                Some(n) if n >= 1 => Ok((true, Some(n as usize))),
                _ => Err(invalid(
                    "thinking.budget_tokens",
                    "`thinking.budget_tokens` must be a positive integer",
                )),
            },
        },
        _ => Err(invalid(
            "thinking.type",
            "`thinking.type` must be one of enabled, adaptive, disabled",
        )),
    }
}

/// The canonical prompt of a request (shared by messages and count_tokens).
fn prompt_from(req: &MessagesRequest) -> Result<(Prompt, Option<usize>), ApiError> {
    let messages = messages_from(&req.system, &req.messages)?;
    let tools = tools_from(&req.tools)?;
    let tool_choice = tool_choice_from(&req.tool_choice, &tools)?;
    let (thinking, budget) = thinking_from(&req.thinking)?;
    let mut template_kwargs = Map::new();
    template_kwargs.insert("enable_thinking".into(), Value::Bool(thinking));
    if let Some(b) = budget {
        template_kwargs.insert("reasoning_budget".into(), Value::from(b));
    }
    Ok((
        Prompt::Chat {
            messages,
            tools,
            tool_choice,
            template_kwargs,
        },
        budget,
    ))
}

fn model_from(req: &MessagesRequest) -> Option<String> {
    req.model.clone().filter(|m| !m.trim().is_empty())
}

fn translate(req: MessagesRequest, id: &str) -> Result<Translated, ApiError> {
    let max_tokens = match req.max_tokens {
        None => return Err(invalid("max_tokens", "`max_tokens` is required")),
        Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(n) => {
            return Err(invalid(
                "max_tokens",
                format!("`max_tokens` must be at least 1 (got {n})"),
            ))
        }
    };
    check_range("temperature", req.temperature, 0.0, 1.0)?;
    check_range("top_p", req.top_p, 0.0, 1.0)?;
    let top_k = match req.top_k {
        None => 0,
        Some(k) if k >= 0 => k as usize,
        Some(k) => {
            return Err(invalid(
                "top_k",
                format!("`top_k` must be 0 or positive (got {k})"),
            ))
        }
    };
    let stop: Vec<String> = req.stop_sequences.clone().unwrap_or_default();
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(
            "stop_sequences",
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are supported"),
        ));
    }
    if let Some(i) = stop.iter().position(|s| s.is_empty()) {
        return Err(invalid(
            format!("stop_sequences[{i}]"),
            "stop sequences must not be empty",
        ));
    }
    let (prompt, reasoning_budget) = prompt_from(&req)?;
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: req.temperature.map_or(defaults.temperature, |v| v as f32),
        top_p: req.top_p.map_or(defaults.top_p, |v| v as f32),
        top_k,
        ..defaults
    };
    Ok(Translated {
        request: GenerateRequest {
            id: id.to_string(),
            model: model_from(&req),
            prompt,
            sampling,
            max_tokens: Some(max_tokens),
            stop,
            logprobs: None,
            reasoning_budget,
        },
        stream: req.stream.unwrap_or(false),
    })
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Anthropic's `stop_reason` (and `stop_sequence`).
fn stop_reason(reason: &FinishReason, saw_tool_use: bool) -> (&'static str, Option<String>) {
    match reason {
        FinishReason::ToolCalls => ("tool_use", None),
        FinishReason::Eos | FinishReason::StopSequence(_) if saw_tool_use => ("tool_use", None),
        FinishReason::StopSequence(s) => ("stop_sequence", Some(s.clone())),
        FinishReason::Eos | FinishReason::Cancelled => ("end_turn", None),
        FinishReason::MaxTokens => ("max_tokens", None),
        FinishReason::ContextWindow => ("model_context_window_exceeded", None),
    }
}

/// Anthropic counts cache reads apart from `input_tokens`: the three add up to the prompt.
fn usage_json(prompt_tokens: usize, cached_tokens: usize, output_tokens: usize) -> Value {
    let cached = cached_tokens.min(prompt_tokens);
    json!({
        "input_tokens": prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
    })
}

/// An opaque signature for a thinking block (clients send it back; it is not checked).
fn thinking_signature() -> String {
    random_id("wuwei-local-")
}

/// One content block being built.
enum Open {
    Text,
    Thinking,
    ToolUse { call: usize },
}

/// Turns a generation's events into Anthropic's stream events (name, data) or, collected, the
/// content of a whole message. Both responses go through it so that they carry the same
/// blocks.
struct BlockEncoder {
    open: Option<Open>,
    /// Index of the next block.
    next_index: usize,
    saw_tool_use: bool,
    /// Whole blocks, for the non-streaming response.
    blocks: Vec<Value>,
    /// Arguments of the open tool_use block (parsed when it closes, non-streaming).
    tool_args: String,
}

type Frame = (&'static str, Value);

impl BlockEncoder {
    fn new() -> Self {
        Self {
            open: None,
            next_index: 0,
            saw_tool_use: false,
            blocks: Vec::new(),
            tool_args: String::new(),
        }
    }

    fn index(&self) -> usize {
        self.next_index - 1
    }

    fn close(&mut self, out: &mut Vec<Frame>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let index = self.index();
        match open {
            Open::Thinking => {
                let signature = thinking_signature();
                if let Some(block) = self.blocks.last_mut() {
                    block["signature"] = Value::String(signature.clone());
                }
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "signature_delta", "signature": signature}}),
                ));
            }
            Open::ToolUse { .. } => {
                let raw = std::mem::take(&mut self.tool_args);
                let input = match serde_json::from_str::<Value>(&raw) {
                    Ok(v @ Value::Object(_)) => v,
                    _ if raw.trim().is_empty() => json!({}),
                    _ => {
                        tracing::warn!(arguments = %raw, "tool call arguments are not a JSON object");
                        json!({})
                    }
                };
                if let Some(block) = self.blocks.last_mut() {
                    block["input"] = input;
                }
            }
            Open::Text => {}
        }
        out.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }

    fn start(&mut self, open: Open, block: Value, out: &mut Vec<Frame>) {
        self.close(out);
        self.open = Some(open);
        self.next_index += 1;
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.index(), "content_block": block}),
        ));
        self.blocks.push(block);
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<Frame>) {
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.index(), "delta": delta}),
        ));
    }

    /// Frames for one content event (`Text`, `Reasoning`, tool calls); others yield none.
    fn on_content(&mut self, event: Event) -> Vec<Frame> {
        let mut out = Vec::new();
        match event {
            Event::Text(t) if !t.is_empty() => {
                if !matches!(self.open, Some(Open::Text)) {
                    self.start(Open::Text, json!({"type": "text", "text": ""}), &mut out);
                }
                if let Some(b) = self.blocks.last_mut() {
                    let whole = format!("{}{t}", b["text"].as_str().unwrap_or(""));
                    b["text"] = Value::String(whole);
                }
                self.delta(json!({"type": "text_delta", "text": t}), &mut out);
            }
            Event::Reasoning(r) if !r.is_empty() => {
                if !matches!(self.open, Some(Open::Thinking)) {
                    self.start(
                        Open::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        &mut out,
                    );
                }
                if let Some(b) = self.blocks.last_mut() {
                    let whole = format!("{}{r}", b["thinking"].as_str().unwrap_or(""));
                    b["thinking"] = Value::String(whole);
                }
                self.delta(json!({"type": "thinking_delta", "thinking": r}), &mut out);
            }
            Event::ToolCallStart { index, id, name } => {
                self.saw_tool_use = true;
                self.start(
                    Open::ToolUse { call: index },
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    &mut out,
                );
            }
            Event::ToolCallArguments { index, fragment } => match self.open {
                Some(Open::ToolUse { call }) if call == index && !fragment.is_empty() => {
                    self.tool_args.push_str(&fragment);
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": fragment}),
                        &mut out,
                    );
                }
                _ => {
                    tracing::warn!(
                        call = index,
                        "tool call arguments for a call that is not open; dropped"
                    )
                }
            },
            _ => {}
        }
        out
    }
}

/// The `message` object of `message_start` and of the non-streaming response.
fn message_json(
    id: &str,
    model: &str,
    content: Vec<Value>,
    stop: Option<(&str, Option<String>)>,
    usage: Value,
) -> Value {
    let (reason, sequence) = match stop {
        Some((r, s)) => (Value::from(r), s.map_or(Value::Null, Value::from)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage,
    })
}

fn error_event(kind: &str, message: &str) -> Frame {
    (
        "error",
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// Logs how a request went.
fn log_finished(id: &str, model: &str, started: Instant, usage: &Usage, stop: &str) {
    tracing::info!(
        id,
        endpoint = "messages",
        model,
        prompt_tokens = usage.prompt_tokens,
        cached_tokens = usage.cached_tokens,
        completion_tokens = usage.completion_tokens,
        total_ms = started.elapsed().as_millis() as u64,
        stop_reason = stop,
        "request finished"
    );
}

/// The streaming side: the encoder plus the message's framing.
struct MessageStream {
    id: String,
    model: String,
    started: Instant,
    prompt_tokens: usize,
    cached_tokens: usize,
    blocks: BlockEncoder,
    done: bool,
}

impl MessageStream {
    fn opening(&self) -> Vec<Frame> {
        vec![(
            "message_start",
            json!({"type": "message_start", "message": message_json(
                &self.id, &self.model, Vec::new(), None,
                usage_json(self.prompt_tokens, self.cached_tokens, 0),
            )}),
        )]
    }

    fn fail(&mut self, kind: &str, message: &str) -> Vec<Frame> {
        self.done = true;
        tracing::warn!(id = %self.id, endpoint = "messages", error = %message, "request failed");
        vec![error_event(kind, message)]
    }

    fn on_event(&mut self, event: Event) -> Vec<Frame> {
        match event {
            Event::KeepAlive => vec![("ping", json!({"type": "ping"}))],
            Event::Logprobs(_) => Vec::new(),
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail(
                "overloaded_error",
                "generation cancelled: the server is shutting down",
            ),
            Event::Finished { reason, usage } => {
                self.done = true;
                let mut out = Vec::new();
                self.blocks.close(&mut out);
                let (stop, sequence) = stop_reason(&reason, self.blocks.saw_tool_use);
                log_finished(&self.id, &self.model, self.started, &usage, stop);
                out.push((
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": sequence},
                        "usage": usage_json(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens),
                    }),
                ));
                out.push(("message_stop", json!({"type": "message_stop"})));
                out
            }
            Event::Error(message) => self.fail("api_error", &message),
            content => self.blocks.on_content(content),
        }
    }
}

/// The SSE frames of a generation, with a `ping` whenever nothing was sent for
/// [`PING_AFTER`]. Owns the receiver: a client that disconnects cancels the generation.
fn frames(
    events: mpsc::Receiver<Event>,
    stream: MessageStream,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let queue: std::collections::VecDeque<Frame> = stream.opening().into();
    futures_util::stream::unfold(
        (events, stream, queue, false),
        |(mut events, mut stream, mut queue, mut closed)| async move {
            loop {
                if let Some((name, data)) = queue.pop_front() {
                    return Some((event_frame(name, &data), (events, stream, queue, closed)));
                }
                if closed || stream.done {
                    return None;
                }
                match tokio::time::timeout(PING_AFTER, events.recv()).await {
                    Err(_) => queue.push_back(("ping", json!({"type": "ping"}))),
                    Ok(Some(event)) => queue.extend(stream.on_event(event)),
                    Ok(None) => {
                        closed = true;
                        queue
                            .extend(stream.fail("api_error", "generation ended without finishing"));
                    }
                }
            }
        },
    )
}

async fn submit(state: &AppState, request: GenerateRequest) -> Result<Generation, AnthropicError> {
    let id = request.id.clone();
    state.backend.submit(request).await.map_err(|err| {
        tracing::info!(id = %id, error = %err, "request refused");
        AnthropicError::from(err)
    })
}

pub async fn messages(
    State(state): State<AppState>,
    AnthropicJson(body): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    let started = Instant::now();
    let id = random_id("msg_");
    let Translated { request, stream } = translate(body, &id)?;
    let mut generation = submit(&state, request).await?;
    let mut encoder = MessageStream {
        id: id.clone(),
        model: generation.model.clone(),
        started,
        prompt_tokens: generation.prompt_tokens,
        cached_tokens: generation.cached_tokens,
        blocks: BlockEncoder::new(),
        done: false,
    };
    if stream {
        let events = std::mem::replace(&mut generation.events, mpsc::channel(1).1);
        let mut response = sse_response(frames(events, encoder));
        if let Ok(v) = HeaderValue::from_str(&random_id("req_")) {
            response.headers_mut().insert("request-id", v);
        }
        return Ok(response);
    }
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => return Err(CoreError::Stopped.into()),
            Event::Finished { reason, usage } => {
                let mut ignored = Vec::new();
                encoder.blocks.close(&mut ignored);
                let (stop, sequence) = stop_reason(&reason, encoder.blocks.saw_tool_use);
                log_finished(&id, &generation.model, started, &usage, stop);
                let message = message_json(
                    &id,
                    &generation.model,
                    std::mem::take(&mut encoder.blocks.blocks),
                    Some((stop, sequence)),
                    usage_json(
                        usage.prompt_tokens,
                        usage.cached_tokens,
                        usage.completion_tokens,
                    ),
                );
                return Ok(Json(message).into_response());
            }
            Event::Error(message) => {
                tracing::warn!(id = %id, endpoint = "messages", error = %message, "request failed");
                return Err(ApiError::internal(message).into());
            }
            other => {
                encoder.on_event(other);
            }
        }
    }
    Err(ApiError::internal("generation ended without finishing").into())
}

/// The body of `count_tokens`: a messages request without `max_tokens`.
pub async fn count_tokens(
    State(state): State<AppState>,
    AnthropicJson(body): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    let (prompt, _) = prompt_from(&body)?;
    let model = model_from(&body);
    let tokens = state
        .backend
        .count_tokens(model.as_deref(), &prompt)
        .await?;
    Ok(Json(json!({"input_tokens": tokens})).into_response())
}
