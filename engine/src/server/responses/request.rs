//! The Responses API's request body (`POST /v1/responses`) translated into the canonical
//! [`GenerateRequest`]: `instructions`, `input` (a string or a list of items: messages,
//! function calls and their outputs, reasoning), flat function tools, every bad field a 400
//! naming it.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use super::super::output_format::constraint_from;
use crate::core::{
    ChatMessage, GenerateRequest, Prompt, Role, SamplingRequest, ToolCall, ToolChoice, ToolSpec,
};

/// The body of `POST /v1/responses`. Fields this server has no use for (`user`,
/// `truncation`, `include`, `prompt_cache_key`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    model: Option<String>,
    input: Option<Value>,
    instructions: Option<String>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    previous_response_id: Option<String>,
    store: Option<bool>,
    stream: Option<bool>,
    parallel_tool_calls: Option<bool>,
    reasoning: Option<Value>,
    text: Option<Value>,
    metadata: Option<Value>,
}

/// What the response echoes of its request, and how to answer.
#[derive(Debug, Clone)]
pub struct Echo {
    pub instructions: Option<String>,
    /// The tools as the request gave them.
    pub tools: Vec<Value>,
    /// Tool name → its `namespace`, for the tools offered from one.
    pub namespaces: Namespaces,
    pub tool_choice: Value,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_output_tokens: Option<i64>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub stream: bool,
    pub parallel_tool_calls: bool,
    pub reasoning: Value,
    pub text: Value,
    pub metadata: Value,
}

/// A request translated: the canonical request (its prompt still without the earlier
/// conversation), the conversation this request adds, and what the answer echoes.
pub struct Translated {
    pub request: GenerateRequest,
    /// This request's own input as messages (`instructions` not included: they do not carry
    /// over to a response that continues this one).
    pub input: Vec<ChatMessage>,
    pub echo: Echo,
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

fn str_field<'a>(item: &'a Value, field: &str, param: &str) -> Result<&'a str, ApiError> {
    match item.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(invalid(
            format!("{param}.{field}"),
            format!("`{field}` must be a non-empty string"),
        )),
    }
}

/// The text of a message's `content`: a string or a list of text parts.
fn content_text(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Err(invalid(param, format!("`{param}` is required"))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{param}[{j}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "input_text" | "output_text" | "text" | "refusal" => {
                        let field = if kind == "refusal" { "refusal" } else { "text" };
                        match part.get(field) {
                            Some(Value::String(t)) => texts.push(t.clone()),
                            _ => {
                                return Err(invalid(
                                    format!("{p}.{field}"),
                                    format!("a '{kind}' part needs a string `{field}`"),
                                ))
                            }
                        }
                    }
                    "input_image" | "input_file" | "input_audio" => {
                        return Err(ApiError::unsupported(
                            format!("{p}.type"),
                            format!("content parts of type '{kind}' are not supported by this server (text only)"),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            format!("{p}.type"),
                            format!("unknown content part type '{kind}'"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(
            param,
            format!("`{param}` must be a string or a list of content parts"),
        )),
    }
}

/// The assistant message that function calls and reasoning of `out`'s tail join (a new one
/// when the last message is not the assistant's).
fn assistant_tail(out: &mut Vec<ChatMessage>) -> &mut ChatMessage {
    if out.last().and_then(|m| m.role) != Some(Role::Assistant) {
        out.push(ChatMessage {
            role: Some(Role::Assistant),
            ..ChatMessage::default()
        });
    }
    out.last_mut().expect("just pushed")
}

/// `input` as canonical messages. Function calls join the assistant message before them;
/// outputs become `Role::Tool` messages naming their call.
pub fn input_messages(
    input: &Value,
    earlier: &[ChatMessage],
) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Value::String(s) => {
            return Ok(vec![ChatMessage {
                role: Some(Role::User),
                content: s.clone(),
                ..ChatMessage::default()
            }])
        }
        Value::Array(items) => items,
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or a list of input items",
            ))
        }
    };
    let mut out: Vec<ChatMessage> = Vec::with_capacity(items.len());
    // Reasoning items wait for the assistant turn they belong to.
    let mut pending_reasoning: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        if !item.is_object() {
            return Err(invalid(&param, "an input item must be an object"));
        }
        let kind = match item.get("type") {
            None => "message",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid(format!("{param}.type"), "`type` must be a string")),
        };
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("user") => Role::User,
                    Some("system" | "developer") => Role::System,
                    Some("assistant") => Role::Assistant,
                    other => {
                        return Err(invalid(
                            format!("{param}.role"),
                            format!(
                                "unknown role {} (expected user, system, developer or assistant)",
                                other.map_or("(none)".to_string(), |r| format!("'{r}'"))
                            ),
                        ))
                    }
                };
                let content = content_text(item.get("content"), &format!("{param}.content"))?;
                let reasoning = if role == Role::Assistant && !pending_reasoning.is_empty() {
                    Some(std::mem::take(&mut pending_reasoning).join("\n"))
                } else {
                    None
                };
                out.push(ChatMessage {
                    role: Some(role),
                    content,
                    reasoning,
                    ..ChatMessage::default()
                });
            }
            "function_call" => {
                let call_id = str_field(item, "call_id", &param)?;
                let name = str_field(item, "name", &param)?;
                let arguments = match item.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        return Err(invalid(
                            format!("{param}.arguments"),
                            "`arguments` must be a string (the call's arguments as JSON)",
                        ))
                    }
                };
                let reasoning = std::mem::take(&mut pending_reasoning);
                let message = assistant_tail(&mut out);
                if !reasoning.is_empty() && message.reasoning.is_none() {
                    message.reasoning = Some(reasoning.join("\n"));
                }
                message.tool_calls.push(ToolCall {
                    id: call_id.to_string(),
                    name: name.to_string(),
                    arguments,
                });
            }
            "function_call_output" => {
                let call_id = str_field(item, "call_id", &param)?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(parts @ Value::Array(_)) => {
                        content_text(Some(parts), &format!("{param}.output"))?
                    }
                    _ => {
                        return Err(invalid(
                            format!("{param}.output"),
                            "`output` must be a string or a list of content parts",
                        ))
                    }
                };
                let name = out
                    .iter()
                    .chain(earlier.iter())
                    .rev()
                    .flat_map(|m| m.tool_calls.iter())
                    .find(|c| c.id == call_id)
                    .map(|c| c.name.clone());
                out.push(ChatMessage {
                    role: Some(Role::Tool),
                    content: output,
                    tool_call_id: Some(call_id.to_string()),
                    name,
                    ..ChatMessage::default()
                });
            }
            "reasoning" => {
                // The reasoning text itself (`content`), else its summary.
                let mut texts = Vec::new();
                for field in ["content", "summary"] {
                    if let Some(Value::Array(parts)) = item.get(field) {
                        for part in parts {
                            if let Some(t) = part.get("text").and_then(Value::as_str) {
                                texts.push(t.to_string());
                            }
                        }
                    }
                    if !texts.is_empty() {
                        break;
                    }
                }
                if !texts.is_empty() {
                    pending_reasoning.push(texts.join("\n"));
                }
            }
            "item_reference" => {
                return Err(ApiError::unsupported(
                    format!("{param}.type"),
                    "`item_reference` items are not supported; send the items themselves or use `previous_response_id`",
                ))
            }
            other => {
                return Err(ApiError::unsupported(
                    format!("{param}.type"),
                    format!("input items of type '{other}' are not supported (message, function_call, function_call_output and reasoning are)"),
                ))
            }
        }
    }
    Ok(out)
}

/// Tool name → the namespace it was offered from.
type Namespaces = Vec<(String, String)>;

/// A function tool in the Responses API's flat shape (`{"type": "function", "name", …}`).
fn function_tool(tool: &Value, param: &str) -> Result<ToolSpec, ApiError> {
    let name = str_field(tool, "name", param)?;
    let description = match tool.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(
                format!("{param}.description"),
                "`description` must be a string",
            ))
        }
    };
    let parameters = match tool.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(invalid(
                format!("{param}.parameters"),
                "`parameters` must be a JSON Schema object",
            ))
        }
    };
    if let Some(t) = parameters.get("type") {
        if t != "object" {
            return Err(invalid(
                format!("{param}.parameters.type"),
                "a function's `parameters` must be a schema of `type` 'object'",
            ));
        }
    }
    Ok(ToolSpec {
        name: name.to_string(),
        description,
        parameters,
    })
}

/// The tools the model is offered: function tools, and those of a `namespace` (as Codex
/// groups some), with each namespaced tool's namespace (for its calls' `namespace`). Hosted
/// tools (`web_search`, `file_search`, …) are OpenAI's to run: accepted, not offered.
fn tools_from(tools: &[Value]) -> Result<(Vec<ToolSpec>, Namespaces), ApiError> {
    let mut out = Vec::with_capacity(tools.len());
    let mut namespaced = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let kind = match tool.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => {
                return Err(invalid(
                    format!("{param}.type"),
                    "a tool needs a string `type`",
                ))
            }
        };
        match kind {
            "function" => out.push(function_tool(tool, &param)?),
            "namespace" => {
                let namespace = str_field(tool, "name", &param)?;
                let Some(Value::Array(inner)) = tool.get("tools") else {
                    return Err(invalid(
                        format!("{param}.tools"),
                        "a namespace needs a list of `tools`",
                    ));
                };
                for (j, t) in inner.iter().enumerate() {
                    let p = format!("{param}.tools[{j}]");
                    if t.get("type").and_then(Value::as_str) != Some("function") {
                        continue;
                    }
                    let spec = function_tool(t, &p)?;
                    namespaced.push((spec.name.clone(), namespace.to_string()));
                    out.push(spec);
                }
            }
            other => tracing::debug!(tool = other, "hosted tool not offered to the model"),
        }
    }
    Ok((out, namespaced))
}

fn tool_choice_from(value: &Option<Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let bad = || {
        invalid(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": …}",
        )
    };
    let choice = match value {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(Value::Object(obj)) => match obj.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = obj.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                ToolChoice::Named(name.to_string())
            }
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => Err(invalid(
            "tool_choice",
            "`tool_choice` is \"required\" but no `tools` were given",
        )),
        ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => Err(invalid(
            "tool_choice",
            format!("`tool_choice` names '{name}', which is not among `tools`"),
        )),
        _ => Ok(choice),
    }
}

/// Translates the body. `earlier` is the conversation of `previous_response_id` (already
/// looked up), which comes between the instructions and this request's input.
pub fn translate(
    req: ResponsesRequest,
    id: &str,
    earlier: &[ChatMessage],
) -> Result<Translated, ApiError> {
    check_range("temperature", req.temperature, 0.0, 2.0)?;
    check_range("top_p", req.top_p, 0.0, 1.0)?;
    if req.top_p == Some(0.0) {
        return Err(invalid("top_p", "`top_p` must be greater than 0"));
    }
    let max_tokens = match req.max_output_tokens {
        None => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            return Err(invalid(
                "max_output_tokens",
                format!("`max_output_tokens` must be at least 1 (got {n})"),
            ))
        }
    };
    let constraint = match req.text.as_ref().and_then(|t| t.get("format")) {
        Some(format) => constraint_from(format, "text.format", &["schema"])?,
        None => None,
    };
    let input = match &req.input {
        None | Some(Value::Null) => return Err(invalid("input", "`input` is required")),
        Some(input) => input_messages(input, earlier)?,
    };
    if input.is_empty() && earlier.is_empty() {
        return Err(invalid("input", "`input` must not be empty"));
    }
    let given_tools = req.tools.clone().unwrap_or_default();
    let (tools, namespaces) = tools_from(&given_tools)?;
    let tool_choice = tool_choice_from(&req.tool_choice, &tools)?;
    let mut template_kwargs = Map::new();
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    if let Some(effort) = effort {
        template_kwargs.insert("reasoning_effort".into(), Value::String(effort.into()));
        if effort == "none" {
            template_kwargs.insert("enable_thinking".into(), Value::Bool(false));
        }
    }
    let mut messages = Vec::with_capacity(1 + earlier.len() + input.len());
    if let Some(instructions) = req.instructions.as_deref().filter(|s| !s.is_empty()) {
        messages.push(ChatMessage {
            role: Some(Role::System),
            content: instructions.to_string(),
            ..ChatMessage::default()
        });
    }
    messages.extend(earlier.iter().cloned());
    messages.extend(input.iter().cloned());
    let sampling = SamplingRequest {
        temperature: req.temperature.map(|v| v as f32),
        top_p: req.top_p.map(|v| v as f32),
        ..SamplingRequest::default()
    };
    let echo = Echo {
        instructions: req.instructions.clone(),
        tools: given_tools,
        namespaces,
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens,
        previous_response_id: req.previous_response_id.clone(),
        store: req.store.unwrap_or(true),
        stream: req.stream.unwrap_or(false),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        reasoning: req
            .reasoning
            .clone()
            .unwrap_or_else(|| json!({"effort": Value::Null, "summary": Value::Null})),
        text: req
            .text
            .clone()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        metadata: req.metadata.clone().unwrap_or_else(|| json!({})),
    };
    Ok(Translated {
        request: GenerateRequest {
            id: id.to_string(),
            model: req.model.clone().filter(|m| !m.trim().is_empty()),
            prompt: Prompt::Chat {
                messages,
                tools,
                tool_choice,
                template_kwargs,
                continue_final: false,
            },
            sampling,
            max_tokens,
            stop: Vec::new(),
            logprobs: None,
            reasoning_budget: None,
            constraint,
        },
        input,
        echo,
    })
}

impl ResponsesRequest {
    pub fn previous_response_id(&self) -> Option<&str> {
        self.previous_response_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn items_become_messages_with_calls_joined_to_the_assistant_turn() {
        let input = json!([
            {"role": "user", "content": "weather in Paris?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "use the tool"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is sunny."}]},
        ]);
        let m = input_messages(&input, &[]).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].role, Some(Role::Assistant));
        assert_eq!(m[1].reasoning.as_deref(), Some("use the tool"));
        assert_eq!(m[1].tool_calls[0].name, "get_weather");
        assert_eq!(m[2].role, Some(Role::Tool));
        assert_eq!(m[2].name.as_deref(), Some("get_weather"));
        assert_eq!(m[3].content, "It is sunny.");
    }

    #[test]
    fn bad_fields_are_named() {
        let err = |body: Value| translate(parse(body), "resp_x", &[]).err().unwrap();
        let e = err(
            json!({"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": "x"}]}),
        );
        assert_eq!(e.param.as_deref(), Some("tools[0].parameters"));
        let e = err(json!({"input": "hi", "tools": [{"type": "function"}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].name"));
        let e = err(json!({"input": [{"type": "function_call_output", "output": "x"}]}));
        assert_eq!(e.param.as_deref(), Some("input[0].call_id"));
        let e = err(json!({"input": "hi", "temperature": 3}));
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(json!({"input": "hi", "tools": [{"name": "f"}]}));
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
        let e = err(json!({}));
        assert_eq!(e.param.as_deref(), Some("input"));
        let e = err(json!({"input": "hi", "tool_choice": {"type": "function", "name": "g"}}));
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn instructions_come_first_and_are_not_part_of_the_kept_input() {
        let earlier = vec![ChatMessage {
            role: Some(Role::User),
            content: "before".into(),
            ..ChatMessage::default()
        }];
        let t = translate(
            parse(json!({"input": "now", "instructions": "be brief", "max_output_tokens": 5})),
            "resp_x",
            &earlier,
        )
        .unwrap();
        let Prompt::Chat { messages, .. } = &t.request.prompt else {
            panic!("a chat")
        };
        let texts: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["be brief", "before", "now"]);
        assert_eq!(t.input.len(), 1);
        assert_eq!(t.request.max_tokens, Some(5));
    }

    #[test]
    fn namespaced_tools_are_offered_and_hosted_ones_are_not() {
        let t = translate(
            parse(json!({"input": "hi", "tools": [
                {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
                {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn"}]},
                {"type": "web_search", "external_web_access": false},
            ]})),
            "resp_x",
            &[],
        )
        .unwrap();
        let Prompt::Chat { tools, .. } = &t.request.prompt else {
            panic!("a chat")
        };
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["exec_command", "spawn"]);
        assert_eq!(
            t.echo.namespaces,
            [("spawn".to_string(), "agents".to_string())]
        );
        assert_eq!(t.echo.tools.len(), 3);
    }
}
