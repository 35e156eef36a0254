//! A response as it runs: the generation's events through the [`Assembler`], kept in the
//! store when it finishes, and framed as the Responses API's SSE events
//! (`event: response.output_text.delta` / `data: {…}`).

use std::sync::Arc;

use axum::body::Bytes;
use serde_json::Value;

use super::super::generation::{RequestLog, StreamEncoder};
use super::super::sse::{event_frame, keep_alive_frame};
use super::response::{Assembler, Status};
use super::store::ResponseStore;
use crate::core::{ChatMessage, Event, FinishReason};

/// How a run ended.
pub enum Ended {
    Running,
    /// The finished response object.
    Finished(Value),
    /// A failure after the generation started (the message).
    Failed(String),
    /// The server stopped it.
    Cancelled,
}

/// One response being generated.
pub struct Run {
    pub assembler: Assembler,
    log: RequestLog,
    store: Arc<ResponseStore>,
    /// The conversation up to this response (earlier responses and this input; no
    /// instructions), kept with it for `previous_response_id`.
    conversation: Vec<ChatMessage>,
    pub ended: Ended,
}

impl Run {
    pub fn new(
        assembler: Assembler,
        log: RequestLog,
        store: Arc<ResponseStore>,
        conversation: Vec<ChatMessage>,
    ) -> Self {
        Self {
            assembler,
            log,
            store,
            conversation,
            ended: Ended::Running,
        }
    }

    fn failed(&mut self, message: &str) -> Vec<Value> {
        self.log.failed(message);
        self.ended = Ended::Failed(message.to_string());
        self.assembler.fail(message)
    }

    /// The stream events `event` makes.
    pub fn on_event(&mut self, event: Event) -> Vec<Value> {
        match event {
            Event::Text(t) => {
                self.log.saw_output();
                self.assembler.on_text(&t)
            }
            Event::Reasoning(r) => {
                self.log.saw_output();
                self.assembler.on_reasoning(&r)
            }
            Event::ToolCallStart { id, name, .. } => {
                self.log.saw_output();
                self.assembler.on_call_start(&id, &name)
            }
            Event::ToolCallArguments { fragment, .. } => {
                self.assembler.on_call_arguments(&fragment)
            }
            Event::Logprobs(_) | Event::KeepAlive => Vec::new(),
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => {
                let events = self.failed("generation cancelled: the server is shutting down");
                self.ended = Ended::Cancelled;
                events
            }
            Event::Finished { reason, usage } => {
                let (events, response, status) = self.assembler.finish(&reason, &usage);
                let finish = match status {
                    Status::Incomplete => "length",
                    Status::Completed if self.assembler.called_tools() => "tool_calls",
                    Status::Completed => "stop",
                };
                self.log.finished(&usage, finish);
                if self.assembler.head().echo.store {
                    let mut conversation = std::mem::take(&mut self.conversation);
                    conversation.push(self.assembler.assistant_message());
                    self.store
                        .keep(&self.assembler.head().id, response.clone(), conversation);
                }
                self.ended = Ended::Finished(response);
                events
            }
            Event::Error(message) => self.failed(&message),
        }
    }

    pub fn on_closed(&mut self) -> Vec<Value> {
        self.failed("generation ended without finishing")
    }
}

/// Frames a [`Run`]'s events.
pub struct ResponseStream {
    run: Run,
}

impl ResponseStream {
    pub fn new(run: Run) -> Self {
        Self { run }
    }
}

fn frames(events: Vec<Value>) -> Vec<Bytes> {
    events
        .iter()
        .map(|e| event_frame(e["type"].as_str().unwrap_or("error"), e))
        .collect()
}

impl StreamEncoder for ResponseStream {
    fn opening(&mut self) -> Vec<Bytes> {
        frames(self.run.assembler.opening())
    }

    fn on_event(&mut self, _choice: usize, event: Event) -> Vec<Bytes> {
        if matches!(event, Event::KeepAlive) {
            return vec![keep_alive_frame()];
        }
        frames(self.run.on_event(event))
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        frames(self.run.on_closed())
    }

    fn is_done(&self) -> bool {
        !matches!(self.run.ended, Ended::Running)
    }
}
