//! Anthropic's request body (`/v1/messages`, `/v1/messages/count_tokens`) translated into
//! the canonical [`GenerateRequest`]: content blocks flattened into messages, every bad field
//! a 400 naming it.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use crate::core::{
    ChatMessage, GenerateRequest, Prompt, Role, SamplingParams, ToolCall, ToolChoice, ToolSpec,
};

/// Most stop sequences accepted.
const MAX_STOP_SEQUENCES: usize = 16;
/// Claude Code (before 2.1.181) starts `system` with a block that changes on every request
/// (`x-anthropic-billing-header: cc_version=…; cch=…;`). It means nothing to a local model and
/// would defeat prefix reuse, so it is dropped.
const BILLING_HEADER_PREFIX: &str = "x-anthropic-billing-header";

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
pub struct Translated {
    pub request: GenerateRequest,
    pub stream: bool,
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
pub fn prompt_from(req: &MessagesRequest) -> Result<(Prompt, Option<usize>), ApiError> {
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

pub fn model_from(req: &MessagesRequest) -> Option<String> {
    req.model.clone().filter(|m| !m.trim().is_empty())
}

pub fn translate(req: MessagesRequest, id: &str) -> Result<Translated, ApiError> {
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
