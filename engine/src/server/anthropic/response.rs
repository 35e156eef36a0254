//! Anthropic's message: content blocks built from a generation's events (the same blocks
//! whether streamed or whole), the stop reason and the usage.

use serde_json::{json, Value};

use super::super::generation::random_id;
use crate::core::{Event, FinishReason};

/// Anthropic's `stop_reason` (and `stop_sequence`).
pub fn stop_reason(reason: &FinishReason, saw_tool_use: bool) -> (&'static str, Option<String>) {
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
pub fn usage_json(prompt_tokens: usize, cached_tokens: usize, output_tokens: usize) -> Value {
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
pub struct BlockEncoder {
    open: Option<Open>,
    /// Index of the next block.
    next_index: usize,
    pub saw_tool_use: bool,
    /// Whole blocks, for the non-streaming response.
    pub blocks: Vec<Value>,
    /// Arguments of the open tool_use block (parsed when it closes, non-streaming).
    tool_args: String,
}

pub type Frame = (&'static str, Value);

impl BlockEncoder {
    pub fn new() -> Self {
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

    pub fn close(&mut self, out: &mut Vec<Frame>) {
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
    pub fn on_content(&mut self, event: Event) -> Vec<Frame> {
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
pub fn message_json(
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
