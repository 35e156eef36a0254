//! OpenAI's request bodies (`/v1/chat/completions`, `/v1/completions`) translated into the
//! canonical [`GenerateRequest`], every bad field a 400 naming it.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use super::super::generation::random_id;
use super::super::output_format::constraint_from;
use crate::core::{
    ChatMessage, GenerateRequest, Prompt, Role, SamplingRequest, ToolCall, ToolChoice, ToolSpec,
};

/// Most stop strings accepted (OpenAI allows 4; local clients send a few more).
const MAX_STOP_STRINGS: usize = 16;
/// Most choices per request (`n`; each is a sequence of the running batch).
const MAX_CHOICES: usize = 16;
/// Most biased tokens per request (OpenAI documents no limit; this is generous).
const MAX_LOGIT_BIAS: usize = 1024;
/// Most alternatives per token (OpenAI's limit).
const MAX_TOP_LOGPROBS: i64 = 20;

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
    logit_bias: Option<Value>,
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
            logit_bias: Option<Value>,
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
                    logit_bias: self.logit_bias.take(),
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
        // As chat's (`json_object`, or `json_schema` with its schema): the completion is
        // constrained to it (an extension of OpenAI's API that vLLM also accepts).
        response_format: Option<Value>,
    }
}

/// What the response needs to know about the request besides the generation itself.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOptions {
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// Choices to generate (`n`).
    pub n: usize,
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

fn sampling_from(common: &CommonFields) -> Result<SamplingRequest, ApiError> {
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
        None => None,
        Some(-1) | Some(0) => Some(0),
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1, 0 (disabled) or positive (got {k})"),
            ))
        }
    };
    let narrow = |v: Option<f64>| v.map(|v| v as f32);
    Ok(SamplingRequest {
        temperature: narrow(common.temperature),
        top_p: narrow(common.top_p),
        top_k,
        min_p: narrow(common.min_p),
        repetition_penalty: narrow(common.repetition_penalty),
        presence_penalty: narrow(common.presence_penalty),
        frequency_penalty: narrow(common.frequency_penalty),
        // Negative seeds are valid in OpenAI's API; any 64 bits do.
        seed: common.seed.map(|s| s as u64),
        logit_bias: logit_bias_from(&common.logit_bias)?,
    })
}

/// OpenAI's `logit_bias`: `{"<token id>": bias}`, each bias in [-100, 100]. Ids past the
/// model's vocabulary are refused when the model is known (admission).
fn logit_bias_from(value: &Option<Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` must be an object mapping token ids to biases",
            ))
        }
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("at most {MAX_LOGIT_BIAS} tokens may be biased"),
        ));
    }
    let mut biases = Vec::with_capacity(map.len());
    for (key, bias) in map {
        let param = format!("logit_bias.{key}");
        let token: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid(
                &param,
                format!("`logit_bias` keys must be token ids (got '{key}')"),
            )
        })?;
        let bias = bias.as_f64().filter(|b| (-100.0..=100.0).contains(b));
        let Some(bias) = bias else {
            return Err(ApiError::invalid(
                &param,
                "a `logit_bias` value must be a number from -100 to 100",
            ));
        };
        biases.push((token, bias as f32));
    }
    biases.sort_by_key(|&(t, _)| t);
    if let Some(w) = biases.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("token id {} is biased twice", w[0].0),
        ));
    }
    Ok(biases)
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

fn check_n(n: Option<i64>) -> Result<usize, ApiError> {
    match n {
        None => Ok(1),
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES} (got {n})"),
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

pub fn chat_request(
    mut req: ChatCompletionRequest,
    id: &str,
) -> Result<(GenerateRequest, ResponseOptions), ApiError> {
    let common = req.take_common();
    let n = check_n(common.n)?;
    let constraint = match &req.response_format {
        Some(format) => constraint_from(format, "response_format", &["json_schema", "schema"])?,
        None => None,
    };
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
        n,
    };
    let request = GenerateRequest {
        id: id.to_string(),
        model: model_from(&common),
        prompt: Prompt::Chat {
            messages,
            tools,
            tool_choice,
            template_kwargs,
            continue_final: false,
        },
        sampling,
        max_tokens,
        stop,
        logprobs,
        reasoning_budget: None,
        constraint,
    };
    Ok((request, options))
}

pub fn completion_request(
    mut req: CompletionRequest,
    id: &str,
) -> Result<(GenerateRequest, ResponseOptions), ApiError> {
    let common = req.take_common();
    let n = check_n(common.n)?;
    // `best_of` choices ranked server-side, `n` of them returned: only the plain case.
    if req.best_of.is_some_and(|b| b != n as i64) {
        return Err(ApiError::unsupported(
            "best_of",
            "only best_of equal to n is supported",
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
    let constraint = match &req.response_format {
        Some(format) => constraint_from(format, "response_format", &["json_schema", "schema"])?,
        None => None,
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
        n,
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
            constraint,
        },
        options,
    ))
}
