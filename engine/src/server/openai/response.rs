//! OpenAI's response objects: whole completions, and the pieces the stream shares with them
//! (finish reasons, usage, logprobs).

use serde_json::{json, Map, Value};

use super::super::generation::{Collected, RequestLog};
use super::request::ResponseOptions;
use crate::core::{FinishReason, TokenLogprob, Usage};

/// What every object of one response repeats.
pub struct Head {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that serves it (aliases resolved).
    pub model: String,
}

/// The `chat.completion` object of a finished generation.
pub fn chat_completion(
    head: &Head,
    options: ResponseOptions,
    c: Collected,
    log: &RequestLog,
) -> Value {
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
    json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
        }],
        "usage": usage_json(&usage),
    })
}

/// The `text_completion` object of a finished generation.
pub fn text_completion(
    head: &Head,
    options: ResponseOptions,
    c: Collected,
    log: &RequestLog,
) -> Value {
    let (reason, usage) = c
        .finish
        .clone()
        .unwrap_or((FinishReason::Eos, Usage::default()));
    let finish = finish_reason_str(&reason, false);
    log.finished(&usage, finish);
    // A raw prompt has no reasoning markup of its own; whatever came out is the text.
    let text = format!("{}{}", c.reasoning, c.text);
    json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": Value::Null,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": if options.logprobs { completion_logprobs_json(&c.logprobs, 0) } else { Value::Null },
            "finish_reason": finish,
        }],
        "usage": usage_json(&usage),
    })
}

pub fn finish_reason_str(reason: &FinishReason, saw_tool_calls: bool) -> &'static str {
    match reason {
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Eos | FinishReason::StopSequence(_) if saw_tool_calls => "tool_calls",
        FinishReason::Eos | FinishReason::StopSequence(_) | FinishReason::Cancelled => "stop",
        FinishReason::MaxTokens | FinishReason::ContextWindow => "length",
    }
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

pub fn chat_logprobs_json(tokens: &[TokenLogprob]) -> Value {
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

pub fn completion_logprobs_json(tokens: &[TokenLogprob], text_offset_start: usize) -> Value {
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
