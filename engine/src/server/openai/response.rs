//! OpenAI's response objects: whole completions, and the pieces the stream shares with them
//! (finish reasons, usage, logprobs).

use serde_json::{json, Map, Value};

use super::super::generation::{combined_usage, Collected, RequestLog};
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

/// The `chat.completion` object of a finished generation, a choice per collected one.
pub fn chat_completion(
    head: &Head,
    options: ResponseOptions,
    collected: Vec<Collected>,
    log: &RequestLog,
) -> Value {
    let (choices, usage) = choices_and_usage(collected, log, |index, c, finish| {
        let saw_tools = !c.tool_calls.is_empty();
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
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
        })
    });
    json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": Value::Null,
        "choices": choices,
        "usage": usage_json(&usage),
    })
}

/// The `text_completion` object of a finished generation, a choice per collected one.
pub fn text_completion(
    head: &Head,
    options: ResponseOptions,
    collected: Vec<Collected>,
    log: &RequestLog,
) -> Value {
    let (choices, usage) = choices_and_usage(collected, log, |index, c, finish| {
        // A raw prompt has no reasoning markup of its own; whatever came out is the text.
        let text = format!("{}{}", c.reasoning, c.text);
        let logprobs = if options.logprobs {
            completion_logprobs_json(&c.logprobs, 0)
        } else {
            Value::Null
        };
        json!({"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish})
    });
    json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": Value::Null,
        "choices": choices,
        "usage": usage_json(&usage),
    })
}

/// Each collected choice as `choice(index, collected, finish reason)` builds it, and the
/// response's usage; logs the request as finished (with the first choice's finish reason).
fn choices_and_usage(
    collected: Vec<Collected>,
    log: &RequestLog,
    choice: impl Fn(usize, Collected, &'static str) -> Value,
) -> (Vec<Value>, Usage) {
    let ended: Vec<(FinishReason, Usage)> = collected
        .iter()
        .map(|c| {
            c.finish
                .clone()
                .unwrap_or((FinishReason::Eos, Usage::default()))
        })
        .collect();
    let usage = combined_usage(ended.iter().map(|(_, u)| u));
    let finishes: Vec<&'static str> = collected
        .iter()
        .zip(&ended)
        .map(|(c, (reason, _))| finish_reason_str(reason, !c.tool_calls.is_empty()))
        .collect();
    log.finished(&usage, finishes.first().copied().unwrap_or("stop"));
    let choices = collected
        .into_iter()
        .zip(finishes)
        .enumerate()
        .map(|(i, (c, finish))| choice(i, c, finish))
        .collect();
    (choices, usage)
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
