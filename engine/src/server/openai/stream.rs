//! OpenAI's streams: `chat.completion.chunk` and `text_completion` frames, ending in
//! `data: [DONE]`.

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use super::super::errors::ApiError;
use super::super::generation::{combined_usage, RequestLog, StreamEncoder};
use super::super::sse::{data_frame, done_frame, keep_alive_frame};
use super::request::ResponseOptions;
use super::response::{
    chat_logprobs_json, completion_logprobs_json, finish_reason_str, usage_json, Head,
};
use crate::core::{Event, FinishReason, TokenLogprob, Usage};

fn error_frame(message: &str) -> Bytes {
    data_frame(&ApiError::internal(message.to_string()).body())
}

/// Where one choice of a stream stands.
#[derive(Default)]
struct ChoiceState {
    /// With logprobs, deltas wait for the `Logprobs` event of their tokens.
    pending_text: String,
    pending_reasoning: String,
    saw_tool_calls: bool,
    /// Its usage, once it finished.
    finished: Option<(&'static str, Usage)>,
    /// Completions' logprobs: where its next text starts.
    text_offset: usize,
}

/// What both streams share: the response's head and options, each choice's state, and when
/// the stream is over.
struct Choices {
    id: String,
    created: u64,
    model: String,
    object: &'static str,
    options: ResponseOptions,
    log: RequestLog,
    states: Vec<ChoiceState>,
    done: bool,
}

impl Choices {
    fn new(head: Head, object: &'static str, options: ResponseOptions, log: RequestLog) -> Self {
        let Head { id, created, model } = head;
        Self {
            id,
            created,
            model,
            object,
            options,
            log,
            states: (0..options.n.max(1))
                .map(|_| ChoiceState::default())
                .collect(),
            done: false,
        }
    }

    /// A chunk of this response holding `choices` (and `usage`, when the client asked for it).
    fn chunk(&self, choices: Value, usage: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        });
        if self.options.include_usage {
            chunk["usage"] = usage;
        }
        chunk
    }

    /// A frame of this response holding `choices`.
    fn frame(&self, choices: Value) -> Bytes {
        data_frame(&self.chunk(choices, Value::Null))
    }

    fn state(&mut self, choice: usize) -> &mut ChoiceState {
        let last = self.states.len() - 1;
        &mut self.states[choice.min(last)]
    }

    /// Choice `choice` finished; once every choice has, the usage frame (if asked) and
    /// `[DONE]` end the stream.
    fn finish(&mut self, choice: usize, finish: &'static str, usage: Usage) -> Vec<Bytes> {
        self.state(choice).finished = Some((finish, usage));
        if self.states.iter().any(|c| c.finished.is_none()) {
            return Vec::new();
        }
        self.done = true;
        let total = combined_usage(
            self.states
                .iter()
                .filter_map(|c| c.finished.as_ref().map(|f| &f.1)),
        );
        let first = self.states[0].finished.map_or("stop", |f| f.0);
        self.log.finished(&total, first);
        let mut frames = Vec::new();
        if self.options.include_usage {
            frames.push(data_frame(&self.chunk(json!([]), usage_json(&total))));
        }
        frames.push(done_frame());
        frames
    }

    /// Ends the stream with an error (every choice: one failing fails the response).
    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        self.done = true;
        self.log.failed(message);
        vec![error_frame(message), done_frame()]
    }
}

pub struct ChatStream {
    c: Choices,
}

impl ChatStream {
    pub fn new(head: Head, options: ResponseOptions, log: RequestLog) -> Self {
        Self {
            c: Choices::new(head, "chat.completion.chunk", options, log),
        }
    }

    fn chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Bytes {
        self.c.frame(json!([{
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish,
        }]))
    }

    /// A chunk with choice `index`'s held-back text, if any.
    fn flush(&mut self, index: usize, logprobs: Value) -> Option<Bytes> {
        let state = self.c.state(index);
        if state.pending_text.is_empty() && state.pending_reasoning.is_empty() && logprobs.is_null()
        {
            return None;
        }
        let mut delta = Map::new();
        if !state.pending_reasoning.is_empty() {
            delta.insert(
                "reasoning_content".into(),
                std::mem::take(&mut state.pending_reasoning).into(),
            );
        }
        if !state.pending_text.is_empty() || delta.is_empty() {
            delta.insert(
                "content".into(),
                std::mem::take(&mut state.pending_text).into(),
            );
        }
        Some(self.chunk(index, Value::Object(delta), logprobs, None))
    }

    /// Every choice's held-back text, then the error.
    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        let mut frames: Vec<Bytes> = (0..self.c.states.len())
            .filter_map(|i| self.flush(i, Value::Null))
            .collect();
        frames.extend(self.c.fail(message));
        frames
    }
}

impl StreamEncoder for ChatStream {
    fn opening(&mut self) -> Vec<Bytes> {
        (0..self.c.states.len())
            .map(|i| {
                self.chunk(
                    i,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    None,
                )
            })
            .collect()
    }

    fn on_event(&mut self, i: usize, event: Event) -> Vec<Bytes> {
        let logprobs = self.c.options.logprobs;
        match event {
            Event::Text(t) => {
                self.c.log.saw_output();
                self.c.state(i).pending_text.push_str(&t);
                if logprobs {
                    return Vec::new();
                }
                self.flush(i, Value::Null).into_iter().collect()
            }
            Event::Reasoning(r) => {
                self.c.log.saw_output();
                self.c.state(i).pending_reasoning.push_str(&r);
                if logprobs {
                    return Vec::new();
                }
                self.flush(i, Value::Null).into_iter().collect()
            }
            Event::ToolCallStart { index, id, name } => {
                self.c.log.saw_output();
                self.c.state(i).saw_tool_calls = true;
                let mut frames: Vec<Bytes> = self.flush(i, Value::Null).into_iter().collect();
                frames.push(self.chunk(
                    i,
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
                let mut frames: Vec<Bytes> = self.flush(i, Value::Null).into_iter().collect();
                frames.push(self.chunk(
                    i,
                    json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                    Value::Null,
                    None,
                ));
                frames
            }
            Event::Logprobs(tokens) => {
                if !logprobs {
                    return Vec::new();
                }
                self.flush(i, chat_logprobs_json(&tokens))
                    .into_iter()
                    .collect()
            }
            Event::KeepAlive => vec![keep_alive_frame()],
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail("generation cancelled: the server is shutting down"),
            Event::Finished { reason, usage } => {
                let finish = finish_reason_str(&reason, self.c.state(i).saw_tool_calls);
                let mut frames: Vec<Bytes> = self.flush(i, Value::Null).into_iter().collect();
                frames.push(self.chunk(i, json!({}), Value::Null, Some(finish)));
                frames.extend(self.c.finish(i, finish, usage));
                frames
            }
            Event::Error(message) => self.fail(&message),
        }
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        if self.c.done {
            return Vec::new();
        }
        self.fail("generation ended without finishing")
    }

    fn is_done(&self) -> bool {
        self.c.done
    }
}

pub struct CompletionStream {
    c: Choices,
}

impl CompletionStream {
    pub fn new(head: Head, options: ResponseOptions, log: RequestLog) -> Self {
        Self {
            c: Choices::new(head, "text_completion", options, log),
        }
    }

    fn chunk(&self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Bytes {
        self.c.frame(
            json!([{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]),
        )
    }

    fn flush(&mut self, index: usize, tokens: Option<&[TokenLogprob]>) -> Option<Bytes> {
        let state = self.c.state(index);
        if state.pending_text.is_empty() && tokens.is_none() {
            return None;
        }
        let text = std::mem::take(&mut state.pending_text);
        let logprobs = tokens.map_or(Value::Null, |t| {
            completion_logprobs_json(t, state.text_offset)
        });
        state.text_offset += text.len();
        Some(self.chunk(index, &text, logprobs, None))
    }

    fn fail(&mut self, message: &str) -> Vec<Bytes> {
        let mut frames: Vec<Bytes> = (0..self.c.states.len())
            .filter_map(|i| self.flush(i, None))
            .collect();
        frames.extend(self.c.fail(message));
        frames
    }
}

impl StreamEncoder for CompletionStream {
    fn opening(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn on_event(&mut self, i: usize, event: Event) -> Vec<Bytes> {
        match event {
            Event::Text(t) | Event::Reasoning(t) => {
                self.c.log.saw_output();
                self.c.state(i).pending_text.push_str(&t);
                if self.c.options.logprobs {
                    return Vec::new();
                }
                self.flush(i, None).into_iter().collect()
            }
            Event::ToolCallStart { .. } | Event::ToolCallArguments { .. } => Vec::new(),
            Event::Logprobs(tokens) => {
                if !self.c.options.logprobs {
                    return Vec::new();
                }
                self.flush(i, Some(&tokens)).into_iter().collect()
            }
            Event::KeepAlive => vec![keep_alive_frame()],
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail("generation cancelled: the server is shutting down"),
            Event::Finished { reason, usage } => {
                let finish = finish_reason_str(&reason, false);
                let mut frames: Vec<Bytes> = self.flush(i, None).into_iter().collect();
                frames.push(self.chunk(i, "", Value::Null, Some(finish)));
                frames.extend(self.c.finish(i, finish, usage));
                frames
            }
            Event::Error(message) => self.fail(&message),
        }
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        if self.c.done {
            return Vec::new();
        }
        self.fail("generation ended without finishing")
    }

    fn is_done(&self) -> bool {
        self.c.done
    }
}
