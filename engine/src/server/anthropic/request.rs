//! Anthropic's request body (`/v1/messages`, `/v1/messages/count_tokens`) translated into
//! the canonical [`GenerateRequest`]: content blocks flattened into messages, every bad field
//! a 400 naming it.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::errors::ApiError;
use super::super::output_format::constraint_from;
use super::content::{messages_from, Block, Content, InMessage};
use crate::core::{GenerateRequest, Prompt, Role, SamplingRequest, ToolChoice, ToolSpec};

/// Most stop sequences accepted.
const MAX_STOP_SEQUENCES: usize = 16;

/// The body of `/v1/messages` (and, without `max_tokens`, of `count_tokens`). Unknown fields
/// (`context_management`, `output_config`, `service_tier`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<i64>,
    messages: Vec<InMessage>,
    system: Option<Content<Block>>,
    tools: Option<Vec<InTool>>,
    tool_choice: Option<InToolChoice>,
    thinking: Option<InThinking>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    stream: Option<bool>,
    /// `{"format": {"type": "json_schema", "schema": …}}` (structured outputs).
    output_config: Option<Value>,
    /// The structured-outputs beta's earlier spelling of `output_config.format`.
    output_format: Option<Value>,
    #[allow(dead_code)]
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct InTool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InToolChoice {
    Auto {},
    Any {},
    None {},
    Tool { name: Option<String> },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InThinking {
    Enabled { budget_tokens: Option<i64> },
    Adaptive {},
    Disabled {},
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

fn tool_choice_from(
    value: &Option<InToolChoice>,
    tools: &[ToolSpec],
) -> Result<ToolChoice, ApiError> {
    let parsed = match value {
        None | Some(InToolChoice::Auto {}) => return Ok(ToolChoice::Auto),
        Some(InToolChoice::Any {}) => ToolChoice::Required,
        Some(InToolChoice::None {}) => ToolChoice::None,
        Some(InToolChoice::Tool { name }) => match name.as_deref() {
            Some(name) if !name.is_empty() => ToolChoice::Named(name.to_string()),
            _ => {
                return Err(invalid(
                    "tool_choice.name",
                    "`tool_choice` of type 'tool' needs a `name`",
                ))
            }
        },
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
fn thinking_from(value: &Option<InThinking>) -> Result<(bool, Option<usize>), ApiError> {
    match value {
        None | Some(InThinking::Disabled {}) => Ok((false, None)),
        Some(InThinking::Adaptive {})
        | Some(InThinking::Enabled {
            budget_tokens: None,
        }) => Ok((true, None)),
        Some(InThinking::Enabled {
            budget_tokens: Some(n),
        }) if *n >= 1 => Ok((true, Some(*n as usize))),
        Some(InThinking::Enabled { .. }) => Err(invalid(
            "thinking.budget_tokens",
            "`thinking.budget_tokens` must be a positive integer",
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
    // A final assistant turn is a prefill: the answer continues it.
    let continue_final = messages.last().is_some_and(|m| {
        m.role == Some(Role::Assistant) && m.tool_calls.is_empty() && !m.content.is_empty()
    });
    Ok((
        Prompt::Chat {
            messages,
            tools,
            tool_choice,
            template_kwargs,
            continue_final,
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
        None => None,
        Some(k) if k >= 0 => Some(k as usize),
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
    let constraint = match (
        req.output_config.as_ref().and_then(|c| c.get("format")),
        &req.output_format,
    ) {
        (Some(format), _) => constraint_from(format, "output_config.format", &["schema"])?,
        (None, Some(format)) => constraint_from(format, "output_format", &["schema"])?,
        (None, None) => None,
    };
    let sampling = SamplingRequest {
        temperature: req.temperature.map(|v| v as f32),
        top_p: req.top_p.map(|v| v as f32),
        top_k,
        ..SamplingRequest::default()
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
            constraint,
        },
        stream: req.stream.unwrap_or(false),
    })
}
