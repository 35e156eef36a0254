//! OpenAI's API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::errors::{ApiError, ApiJson};
use super::sse::{data_frame, done_frame, keep_alive_frame, sse_response};
use super::AppState;
use crate::core::{
    ChatMessage, Event, FinishReason, GenerateRequest, Generation, ModelInfo, Prompt, Role,
    SamplingParams, TokenLogprob, ToolCall, ToolChoice, ToolSpec, Usage,
};

/// Most stop strings accepted (OpenAI allows 4; local clients send a few more).
const MAX_STOP_STRINGS: usize = 16;
/// Most alternatives per token (OpenAI's limit).
const MAX_TOP_LOGPROBS: i64 = 20;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` followed by 24 random alphanumerics.
pub fn random_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

// ---------------------------------------------------------------------------------------------
// Models

fn rfc3339(unix_secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// One model in a shape both OpenAI's and Anthropic's SDKs accept.
fn model_object(model: &ModelInfo) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "wuwei",
        "type": "model",
        "display_name": model.id,
        "created_at": rfc3339(model.created),
        "context_length": model.context_length,
        "loaded": model.loaded,
    })
}

pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let models = state.backend.list_models();
    let data: Vec<Value> = models.iter().map(model_object).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "first_id": models.first().map(|m| m.id.clone()),
        "last_id": models.last().map(|m| m.id.clone()),
    }))
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let models = state.backend.list_models();
    match models.iter().find(|m| m.id == id) {
        Some(model) => Ok(Json(model_object(model))),
        None => {
            let available: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
            Err(ApiError::not_found(format!(
                "model '{id}' does not exist; available: {}",
                available.join(", ")
            ))
            .with_code("model_not_found"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Sampling and limit fields shared by both endpoints. Numbers are read wide so that
/// out-of-range values get a message about their range, not about their type.
#[derive(Debug, Default)]
struct CommonFields {
    model: Option<String>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

/// Declares a request struct with the [`CommonFields`] inline (not `#[serde(flatten)]`, which
/// would hide the path of a bad field from the error message).
macro_rules! request_with_common_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($field: $ty,)*
            model: Option<String>,
            max_tokens: Option<i64>,
            temperature: Option<f64>,
            top_p: Option<f64>,
            top_k: Option<i64>,
            min_p: Option<f64>,
            repetition_penalty: Option<f64>,
            presence_penalty: Option<f64>,
            frequency_penalty: Option<f64>,
            seed: Option<i64>,
            stop: Option<Value>,
            n: Option<i64>,
            stream: Option<bool>,
            stream_options: Option<StreamOptions>,
        }

        impl $name {
            fn take_common(&mut self) -> CommonFields {
                CommonFields {
                    model: self.model.take(),
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    seed: self.seed,
                    stop: self.stop.take(),
                    n: self.n,
                    stream: self.stream,
                    stream_options: self.stream_options.take(),
                }
            }
        }
    };
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

request_with_common_fields! {
    #[derive(Debug, Deserialize)]
    pub struct ChatCompletionRequest {
        messages: Vec<InMessage>,
        max_completion_tokens: Option<i64>,
        logprobs: Option<bool>,
        top_logprobs: Option<i64>,
        tools: Option<Vec<InTool>>,
        tool_choice: Option<Value>,
        response_format: Option<Value>,
        reasoning_effort: Option<String>,
        chat_template_kwargs: Option<Map<String, Value>>,
    }
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Value>,
    name: Option<String>,
    tool_calls: Option<Vec<InToolCall>>,
    tool_call_id: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InToolCall {
    id: Option<String>,
    function: InFunctionCall,
}

#[derive(Debug, Deserialize)]
struct InFunctionCall {
    name: String,
    arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct InTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<InFunction>,
}

#[derive(Debug, Deserialize)]
struct InFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

request_with_common_fields! {
    #[derive(Debug, Deserialize)]
    pub struct CompletionRequest {
        prompt: Value,
        logprobs: Option<i64>,
        echo: Option<bool>,
        suffix: Option<String>,
        best_of: Option<i64>,
    }
}

/// What the response needs to know about the request besides the generation itself.
#[derive(Debug, Clone, Copy)]
struct ResponseOptions {
    stream: bool,
    include_usage: bool,
    logprobs: bool,
}

fn check_range(
    param: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<(), ApiError> {
    if let Some(v) = value {
        let below = if lo_open { v <= lo } else { v < lo };
        if below || v > hi || !v.is_finite() {
            let lower = if lo_open { "greater than" } else { "at least" };
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be {lower} {lo} and at most {hi} (got {v})"),
            ));
        }
    }
    Ok(())
}

fn sampling_from(common: &CommonFields) -> Result<SamplingParams, ApiError> {
    check_range("temperature", common.temperature, 0.0, 2.0, false)?;
    check_range("top_p", common.top_p, 0.0, 1.0, true)?;
    check_range("min_p", common.min_p, 0.0, 1.0, false)?;
    check_range(
        "repetition_penalty",
        common.repetition_penalty,
        0.0,
        10.0,
        true,
    )?;
    check_range(
        "presence_penalty",
        common.presence_penalty,
        -2.0,
        2.0,
        false,
    )?;
    check_range(
        "frequency_penalty",
        common.frequency_penalty,
        -2.0,
        2.0,
        false,
    )?;
    let top_k = match common.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1, 0 (disabled) or positive (got {k})"),
            ))
        }
    };
    let defaults = SamplingParams::default();
    Ok(SamplingParams {
        temperature: common
            .temperature
            .map_or(defaults.temperature, |v| v as f32),
        top_p: common.top_p.map_or(defaults.top_p, |v| v as f32),
        top_k,
        min_p: common.min_p.map_or(defaults.min_p, |v| v as f32),
        repetition_penalty: common
            .repetition_penalty
            .map_or(defaults.repetition_penalty, |v| v as f32),
        presence_penalty: common.presence_penalty.map_or(0.0, |v| v as f32),
        frequency_penalty: common.frequency_penalty.map_or(0.0, |v| v as f32),
        // Negative seeds are valid in OpenAI's API; any 64 bits do.
        seed: common.seed.map(|s| s as u64),
    })
}

fn max_tokens_from(param: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be at least 1 (got {n})"),
        )),
    }
}

fn stop_from(value: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let stops = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::invalid(
                    format!("stop[{i}]"),
                    "`stop` must be a string or a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings",
            ))
        }
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings are supported"),
        ));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

fn check_n(n: Option<i64>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::unsupported(
            "n",
            format!("only n=1 is supported (got {n})"),
        )),
    }
}

fn model_from(common: &CommonFields) -> Option<String> {
    common.model.clone().filter(|m| !m.trim().is_empty())
}

/// Text of a message's `content`: a string, or a list of text parts.
fn content_text(value: &Option<Value>, param: &str, required: bool) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) if required => {
            Err(ApiError::invalid(param, format!("`{param}` is required")))
        }
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" | "input_text" => match part.get("text") {
                        Some(Value::String(t)) => texts.push(t.as_str()),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("{param}[{j}].text"),
                                "a text part needs a string `text`",
                            ))
                        }
                    },
                    "image_url" | "input_image" | "image" | "input_audio" | "file" => {
                        return Err(ApiError::unsupported(
                            format!("{param}[{j}].type"),
                            format!("content parts of type '{kind}' are not supported by this server (text only)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}].type"),
                            format!("unknown content part type '{kind}'"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be a string or a list of content parts"),
        )),
    }
}

fn messages_from(messages: &[InMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(ApiError::invalid(
                    format!("{param}.role"),
                    format!(
                    "unknown role '{other}' (expected system, developer, user, assistant or tool)"
                ),
                ))
            }
        };
        let has_tool_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        let content = content_text(
            &m.content,
            &format!("{param}.content"),
            role != Role::Assistant,
        )?;
        let mut tool_calls = Vec::new();
        if has_tool_calls {
            for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                let arguments = match &call.function.arguments {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                if call.function.name.is_empty() {
                    return Err(ApiError::invalid(
                        format!("{param}.tool_calls[{j}].function.name"),
                        "tool call name must not be empty",
                    ));
                }
                tool_calls.push(ToolCall {
                    id: call.id.clone().unwrap_or_else(|| random_id("call_")),
                    name: call.function.name.clone(),
                    arguments,
                });
            }
        }
        out.push(ChatMessage {
            role: Some(role),
            content,
            reasoning: m.reasoning_content.clone().or_else(|| m.reasoning.clone()),
            tool_calls,
            tool_call_id: m.tool_call_id.clone(),
            name: m.name.clone(),
        });
    }
    Ok(out)
}

fn tools_from(tools: &Option<Vec<InTool>>) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in tools.iter().flatten().enumerate() {
        if tool.kind != "function" {
            return Err(ApiError::unsupported(
                format!("tools[{i}].type"),
                format!(
                    "only tools of type 'function' are supported (got '{}')",
                    tool.kind
                ),
            ));
        }
        let Some(function) = &tool.function else {
            return Err(ApiError::invalid(
                format!("tools[{i}].function"),
                "a function tool needs `function`",
            ));
        };
        if function.name.is_empty() {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                "tool name must not be empty",
            ));
        }
        let parameters = match &function.parameters {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "`parameters` must be a JSON Schema object",
                ))
            }
        };
        out.push(ToolSpec {
            name: function.name.clone(),
            description: function.description.clone(),
            parameters,
        });
    }
    Ok(out)
}

fn tool_choice_from(value: &Option<Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
        )
    };
    let choice = match value {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" | "any" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(Value::Object(obj)) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| obj.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            ToolChoice::Named(name.to_string())
        }
        Some(_) => return Err(bad()),
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` is \"required\" but no `tools` were given",
        )),
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => {
            Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` names '{name}', which is not among `tools`"),
            ))
        }
        _ => Ok(choice),
    }
}

fn chat_request(
    mut req: ChatCompletionRequest,
    id: &str,
) -> Result<(GenerateRequest, ResponseOptions), ApiError> {
    let common = req.take_common();
    check_n(common.n)?;
    if let Some(format) = &req.response_format {
        let kind = format.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "only `response_format` {\"type\": \"text\"} is supported",
            ));
        }
    }
    let sampling = sampling_from(&common)?;
    let max_tokens = match req.max_completion_tokens {
        Some(_) => max_tokens_from("max_completion_tokens", req.max_completion_tokens)?,
        None => max_tokens_from("max_tokens", common.max_tokens)?,
    };
    let stop = stop_from(&common.stop)?;
    let want_logprobs = req.logprobs.unwrap_or(false);
    let logprobs = match req.top_logprobs {
        Some(k) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS} (got {k})"),
            ))
        }
        Some(_) if !want_logprobs => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ))
        }
        k => want_logprobs.then(|| k.unwrap_or(0) as usize),
    };
    let messages = messages_from(&req.messages)?;
    let tools = tools_from(&req.tools)?;
    let tool_choice = tool_choice_from(&req.tool_choice, &tools)?;
    let mut template_kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(effort) = &req.reasoning_effort {
        template_kwargs
            .entry("reasoning_effort")
            .or_insert_with(|| Value::String(effort.clone()));
        if effort == "none" {
            template_kwargs
                .entry("enable_thinking")
                .or_insert(Value::Bool(false));
        }
    }
    let stream = common.stream.unwrap_or(false);
    let options = ResponseOptions {
        stream,
        include_usage: stream
            && common
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        logprobs: logprobs.is_some(),
    };
    let request = GenerateRequest {
        id: id.to_string(),
        model: model_from(&common),
        prompt: Prompt::Chat {
            messages,
            tools,
            tool_choice,
            template_kwargs,
        },
        sampling,
        max_tokens,
        stop,
        logprobs,
        reasoning_budget: None,
    };
    Ok((request, options))
}

fn completion_request(
    mut req: CompletionRequest,
    id: &str,
) -> Result<(GenerateRequest, ResponseOptions), ApiError> {
    let common = req.take_common();
    check_n(common.n)?;
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::unsupported(
            "best_of",
            "only best_of=1 is supported",
        ));
    }
    if req.echo == Some(true) {
        return Err(ApiError::unsupported("echo", "`echo` is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "`suffix` is not supported"));
    }
    let bad_prompt = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string, a list of token ids, or a list with one of those",
        )
    };
    let token_ids = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        if items.is_empty() {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad_prompt)
            })
            .collect()
    };
    let prompt = match &req.prompt {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(items) => match items.first() {
            Some(Value::Number(_)) => Prompt::Tokens(token_ids(items)?),
            Some(_) if items.len() > 1 => {
                return Err(ApiError::unsupported(
                    "prompt",
                    "only one prompt per request is supported",
                ))
            }
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(ids)) => Prompt::Tokens(token_ids(ids)?),
            _ => return Err(bad_prompt()),
        },
        _ => return Err(bad_prompt()),
    };
    let sampling = sampling_from(&common)?;
    // OpenAI's legacy default.
    let max_tokens = max_tokens_from("max_tokens", common.max_tokens)?.or(Some(16));
    let stop = stop_from(&common.stop)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS} (got {k})"),
            ))
        }
    };
    let stream = common.stream.unwrap_or(false);
    let options = ResponseOptions {
        stream,
        include_usage: stream
            && common
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        logprobs: logprobs.is_some(),
    };
    Ok((
        GenerateRequest {
            id: id.to_string(),
            model: model_from(&common),
            prompt,
            sampling,
            max_tokens,
            stop,
            logprobs,
            reasoning_budget: None,
        },
        options,
    ))
}

// ---------------------------------------------------------------------------------------------
// Responses

pub fn finish_reason_str(reason: &FinishReason, saw_tool_calls: bool) -> &'static str {
    match reason {
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Eos | FinishReason::StopSequence(_) if saw_tool_calls => "tool_calls",
        FinishReason::Eos | FinishReason::StopSequence(_) | FinishReason::Cancelled => "stop",
        FinishReason::MaxTokens | FinishReason::ContextWindow => "length",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

fn chat_logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": t.top.iter().map(|(token, bytes, logprob)| json!({
                    "token": token, "logprob": logprob, "bytes": bytes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content })
}

fn completion_logprobs_json(tokens: &[TokenLogprob], text_offset_start: usize) -> Value {
    let mut offset = text_offset_start;
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top.iter().map(|(tok, _, lp)| (tok.clone(), json!(lp))).collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// Times one request for its log line.
struct RequestLog {
    id: String,
    model: String,
    endpoint: &'static str,
    started: Instant,
    first_token: Option<Instant>,
}

impl RequestLog {
    fn new(id: &str, model: &str, endpoint: &'static str, started: Instant) -> Self {
        Self {
            id: id.to_string(),
            model: model.to_string(),
            endpoint,
            started,
            first_token: None,
        }
    }

    fn saw_output(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    fn finished(&self, usage: &Usage, finish: &str) {
        let now = Instant::now();
        let ttft = self.first_token.map(|t| t - self.started);
        let decode = self.first_token.map(|t| now - t).unwrap_or_default();
        let tok_per_s = if usage.completion_tokens > 1 && !decode.is_zero() {
            (usage.completion_tokens - 1) as f64 / decode.as_secs_f64()
        } else {
            0.0
        };
        tracing::info!(
            id = %self.id,
            endpoint = self.endpoint,
            model = %self.model,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = ttft.map(|d| d.as_millis() as u64),
            tok_per_s = format!("{tok_per_s:.1}"),
            total_ms = (now - self.started).as_millis() as u64,
            finish,
            "request finished"
        );
    }

    fn failed(&self, message: &str) {
        tracing::warn!(id = %self.id, endpoint = self.endpoint, model = %self.model, error = %message, "request failed");
    }
}

/// Everything a non-streaming response needs, collected from the events.
#[derive(Default)]
struct Collected {
    text: String,
    reasoning: String,
    /// (id, name, arguments)
    tool_calls: Vec<(String, String, String)>,
    logprobs: Vec<TokenLogprob>,
    finish: Option<(FinishReason, Usage)>,
}

async fn collect(generation: &mut Generation, log: &mut RequestLog) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Text(t) => {
                log.saw_output();
                c.text.push_str(&t);
            }
            Event::Reasoning(r) => {
                log.saw_output();
                c.reasoning.push_str(&r);
            }
            Event::ToolCallStart { index, id, name } => {
                log.saw_output();
                if c.tool_calls.len() <= index {
                    c.tool_calls.resize(index + 1, Default::default());
                }
                c.tool_calls[index].0 = id;
                c.tool_calls[index].1 = name;
            }
            Event::ToolCallArguments { index, fragment } => {
                if let Some(call) = c.tool_calls.get_mut(index) {
                    call.2.push_str(&fragment);
                }
            }
            Event::Logprobs(l) => c.logprobs.extend(l),
            Event::KeepAlive => {}
            Event::Finished { reason, usage } => {
                if reason == FinishReason::Cancelled {
                    log.failed("cancelled");
                    return Err(ApiError::from(crate::core::CoreError::Stopped));
                }
                c.finish = Some((reason, usage));
                return Ok(c);
            }
            Event::Error(message) => {
                log.failed(&message);
                return Err(ApiError::internal(message));
            }
        }
    }
    log.failed("generation ended without finishing");
    Err(ApiError::internal("generation ended without finishing"))
}

async fn submit(state: &AppState, request: GenerateRequest) -> Result<Generation, ApiError> {
    let id = request.id.clone();
    state.backend.submit(request).await.map_err(|err| {
        tracing::info!(id = %id, error = %err, "request refused");
        ApiError::from(err)
    })
}

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = random_id("chatcmpl-");
    let (request, options) = chat_request(body, &id)?;
    let mut generation = submit(&state, request).await?;
    let created = unix_now();
    let mut log = RequestLog::new(&id, &generation.model, "chat", started);
    if options.stream {
        let encoder = ChatStream::new(id, created, generation.model.clone(), options, log);
        return Ok(sse_response(event_stream(generation.events, encoder)));
    }
    let c = collect(&mut generation, &mut log).await?;
    let (reason, usage) = c
        .finish
        .clone()
        .unwrap_or((FinishReason::Eos, Usage::default()));
    let saw_tools = !c.tool_calls.is_empty();
    let finish = finish_reason_str(&reason, saw_tools);
    log.finished(&usage, finish);
    let mut message = json!({
        "role": "assistant",
        "content": if c.text.is_empty() && saw_tools { Value::Null } else { Value::String(c.text) },
    });
    if !c.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(c.reasoning);
    }
    if saw_tools {
        message["tool_calls"] = c
            .tool_calls
            .iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
            })
            .collect();
    }
    let logprobs = if options.logprobs {
        chat_logprobs_json(&c.logprobs)
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": generation.model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
        }],
        "usage": usage_json(&usage),
    }))
    .into_response())
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = random_id("cmpl-");
    let (request, options) = completion_request(body, &id)?;
    let mut generation = submit(&state, request).await?;
    let created = unix_now();
    let mut log = RequestLog::new(&id, &generation.model, "completions", started);
    if options.stream {
        let encoder = CompletionStream::new(id, created, generation.model.clone(), options, log);
        return Ok(sse_response(event_stream(generation.events, encoder)));
    }
    let c = collect(&mut generation, &mut log).await?;
    let (reason, usage) = c
        .finish
        .clone()
        .unwrap_or((FinishReason::Eos, Usage::default()));
    let finish = finish_reason_str(&reason, false);
    log.finished(&usage, finish);
    // A raw prompt has no reasoning markup of its own; whatever came out is the text.
    let text = format!("{}{}", c.reasoning, c.text);
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": generation.model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": if options.logprobs { completion_logprobs_json(&c.logprobs, 0) } else { Value::Null },
            "finish_reason": finish,
        }],
        "usage": usage_json(&usage),
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Turns a generation's events into SSE frames.
pub trait StreamEncoder: Send + 'static {
    /// Frames sent before the first event.
    fn opening(&mut self) -> Vec<Bytes>;
    fn on_event(&mut self, event: Event) -> Vec<Bytes>;
    /// The channel closed without a final event.
    fn on_closed(&mut self) -> Vec<Bytes>;
    /// A final event was handled; nothing more will be sent.
    fn is_done(&self) -> bool;
}

/// The frames of a generation. Owns the receiver: when the client disconnects, the response
/// body drops this stream, the receiver with it, and the scheduler cancels the generation.
pub fn event_stream<E: StreamEncoder>(
    events: mpsc::Receiver<Event>,
    mut encoder: E,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let queue: VecDeque<Bytes> = encoder.opening().into();
    futures_util::stream::unfold(
        (events, encoder, queue, false),
        |(mut events, mut encoder, mut queue, mut closed)| async move {
            loop {
                if let Some(frame) = queue.pop_front() {
                    return Some((frame, (events, encoder, queue, closed)));
                }
                if closed || encoder.is_done() {
                    return None;
                }
                match events.recv().await {
                    Some(event) => queue.extend(encoder.on_event(event)),
                    None => {
                        closed = true;
                        queue.extend(encoder.on_closed());
                    }
                }
            }
        },
    )
}

fn error_frame(message: &str) -> Bytes {
    data_frame(&ApiError::internal(message.to_string()).body())
}

struct ChatStream {
    id: String,
    created: u64,
    model: String,
    options: ResponseOptions,
    log: RequestLog,
    /// With logprobs, deltas wait for the `Logprobs` event of their tokens.
    pending_text: String,
    pending_reasoning: String,
    saw_tool_calls: bool,
    done: bool,
}

impl ChatStream {
    fn new(
        id: String,
        created: u64,
        model: String,
        options: ResponseOptions,
        log: RequestLog,
    ) -> Self {
        Self {
            id,
            created,
            model,
            options,
            log,
            pending_text: String::new(),
            pending_reasoning: String::new(),
            saw_tool_calls: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": finish,
            }],
        });
        if self.options.include_usage {
            chunk["usage"] = Value::Null;
        }
        data_frame(&chunk)
    }

    /// A chunk with the held-back text, if any.
    fn flush(&mut self, logprobs: Value) -> Option<Bytes> {
        if self.pending_text.is_empty() && self.pending_reasoning.is_empty() && logprobs.is_null() {
            return None;
        }
        let mut delta = Map::new();
        if !self.pending_reasoning.is_empty() {
            delta.insert(
                "reasoning_content".into(),
                std::mem::take(&mut self.pending_reasoning).into(),
            );
        }
        if !self.pending_text.is_empty() || delta.is_empty() {
            delta.insert(
                "content".into(),
                std::mem::take(&mut self.pending_text).into(),
            );
        }
        Some(self.chunk(Value::Object(delta), logprobs, None))
    }

    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        self.done = true;
        self.log.failed(message);
        let mut frames: Vec<Bytes> = self.flush(Value::Null).into_iter().collect();
        frames.push(error_frame(message));
        frames.push(done_frame());
        frames
    }
}

impl StreamEncoder for ChatStream {
    fn opening(&mut self) -> Vec<Bytes> {
        vec![self.chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            None,
        )]
    }

    fn on_event(&mut self, event: Event) -> Vec<Bytes> {
        match event {
            Event::Text(t) => {
                self.log.saw_output();
                self.pending_text.push_str(&t);
                if self.options.logprobs {
                    return Vec::new();
                }
                self.flush(Value::Null).into_iter().collect()
            }
            Event::Reasoning(r) => {
                self.log.saw_output();
                self.pending_reasoning.push_str(&r);
                if self.options.logprobs {
                    return Vec::new();
                }
                self.flush(Value::Null).into_iter().collect()
            }
            Event::ToolCallStart { index, id, name } => {
                self.log.saw_output();
                self.saw_tool_calls = true;
                let mut frames: Vec<Bytes> = self.flush(Value::Null).into_iter().collect();
                frames.push(self.chunk(
                    json!({"tool_calls": [{
                        "index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    Value::Null,
                    None,
                ));
                frames
            }
            Event::ToolCallArguments { index, fragment } => {
                let mut frames: Vec<Bytes> = self.flush(Value::Null).into_iter().collect();
                frames.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                    Value::Null,
                    None,
                ));
                frames
            }
            Event::Logprobs(tokens) => {
                if !self.options.logprobs {
                    return Vec::new();
                }
                self.flush(chat_logprobs_json(&tokens))
                    .into_iter()
                    .collect()
            }
            Event::KeepAlive => vec![keep_alive_frame()],
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail("generation cancelled: the server is shutting down"),
            Event::Finished { reason, usage } => {
                self.done = true;
                let finish = finish_reason_str(&reason, self.saw_tool_calls);
                self.log.finished(&usage, finish);
                let mut frames: Vec<Bytes> = self.flush(Value::Null).into_iter().collect();
                frames.push(self.chunk(json!({}), Value::Null, Some(finish)));
                if self.options.include_usage {
                    frames.push(data_frame(&json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": Value::Null,
                        "choices": [],
                        "usage": usage_json(&usage),
                    })));
                }
                frames.push(done_frame());
                frames
            }
            Event::Error(message) => self.fail(&message),
        }
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        self.fail("generation ended without finishing")
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

struct CompletionStream {
    id: String,
    created: u64,
    model: String,
    options: ResponseOptions,
    log: RequestLog,
    pending: String,
    text_offset: usize,
    done: bool,
}

impl CompletionStream {
    fn new(
        id: String,
        created: u64,
        model: String,
        options: ResponseOptions,
        log: RequestLog,
    ) -> Self {
        Self {
            id,
            created,
            model,
            options,
            log,
            pending: String::new(),
            text_offset: 0,
            done: false,
        }
    }

    fn chunk(&self, text: &str, logprobs: Value, finish: Option<&str>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
        });
        if self.options.include_usage {
            chunk["usage"] = Value::Null;
        }
        data_frame(&chunk)
    }

    fn flush(&mut self, tokens: Option<&[TokenLogprob]>) -> Option<Bytes> {
        if self.pending.is_empty() && tokens.is_none() {
            return None;
        }
        let text = std::mem::take(&mut self.pending);
        let logprobs = tokens.map_or(Value::Null, |t| {
            completion_logprobs_json(t, self.text_offset)
        });
        self.text_offset += text.len();
        Some(self.chunk(&text, logprobs, None))
    }

    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        self.done = true;
        self.log.failed(message);
        let mut frames: Vec<Bytes> = self.flush(None).into_iter().collect();
        frames.push(error_frame(message));
        frames.push(done_frame());
        frames
    }
}

impl StreamEncoder for CompletionStream {
    fn opening(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn on_event(&mut self, event: Event) -> Vec<Bytes> {
        match event {
            Event::Text(t) | Event::Reasoning(t) => {
                self.log.saw_output();
                self.pending.push_str(&t);
                if self.options.logprobs {
                    return Vec::new();
                }
                self.flush(None).into_iter().collect()
            }
            Event::ToolCallStart { .. } | Event::ToolCallArguments { .. } => Vec::new(),
            Event::Logprobs(tokens) => {
                if !self.options.logprobs {
                    return Vec::new();
                }
                self.flush(Some(&tokens)).into_iter().collect()
            }
            Event::KeepAlive => vec![keep_alive_frame()],
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail("generation cancelled: the server is shutting down"),
            Event::Finished { reason, usage } => {
                self.done = true;
                let finish = finish_reason_str(&reason, false);
                self.log.finished(&usage, finish);
                let mut frames: Vec<Bytes> = self.flush(None).into_iter().collect();
                frames.push(self.chunk("", Value::Null, Some(finish)));
                if self.options.include_usage {
                    frames.push(data_frame(&json!({
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": Value::Null,
                        "choices": [],
                        "usage": usage_json(&usage),
                    })));
                }
                frames.push(done_frame());
                frames
            }
            Event::Error(message) => self.fail(&message),
        }
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        self.fail("generation ended without finishing")
    }

    fn is_done(&self) -> bool {
        self.done
    }
}
