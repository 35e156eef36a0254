//! OpenAI's streams: `chat.completion.chunk` and `text_completion` frames, ending in
//! `data: [DONE]`.

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use super::super::generation::{RequestLog, StreamEncoder};
use super::super::sse::{data_frame, done_frame, keep_alive_frame};
use super::request::ResponseOptions;
use super::response::{
    chat_logprobs_json, completion_logprobs_json, finish_reason_str, usage_json, Head,
};
use crate::core::{Event, FinishReason, TokenLogprob};

fn error_frame(message: &str) -> Bytes {
    data_frame(&ApiError::internal(message.to_string()).body())
}

pub struct ChatStream {
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
    pub fn new(head: Head, options: ResponseOptions, log: RequestLog) -> Self {
        let Head { id, created, model } = head;
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

pub struct CompletionStream {
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
    pub fn new(head: Head, options: ResponseOptions, log: RequestLog) -> Self {
        let Head { id, created, model } = head;
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
