//! Anthropic's stream: `message_start`, the content blocks' events, `message_delta`,
//! `message_stop`, with a `ping` whenever nothing else went out for a while.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::super::errors::ApiError;
use super::super::generation::StreamEncoder;
use super::super::sse::event_frame;
use super::errors::AnthropicError;
use super::response::{message_json, stop_reason, usage_json, BlockEncoder, Frame};
use crate::core::{CoreError, Event, FinishReason, Generation, Usage};

/// Clients give up on a silent stream; a `ping` goes out when nothing else has for this long.
const PING_AFTER: Duration = Duration::from_secs(5);

fn error_event(kind: &str, message: &str) -> Frame {
    (
        "error",
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// Logs how a request went.
fn log_finished(id: &str, model: &str, started: Instant, usage: &Usage, stop: &str) {
    tracing::info!(
        id,
        endpoint = "messages",
        model,
        prompt_tokens = usage.prompt_tokens,
        cached_tokens = usage.cached_tokens,
        completion_tokens = usage.completion_tokens,
        total_ms = started.elapsed().as_millis() as u64,
        stop_reason = stop,
        "request finished"
    );
}

/// A message's events: its content blocks plus the message's framing. Streams through
/// [`StreamEncoder`]; the whole (non-streaming) message is built from the same blocks.
pub struct MessageStream {
    id: String,
    model: String,
    started: Instant,
    prompt_tokens: usize,
    cached_tokens: usize,
    blocks: BlockEncoder,
    done: bool,
}

impl MessageStream {
    pub fn new(id: String, generation: &Generation, started: Instant) -> Self {
        Self {
            id,
            model: generation.model.clone(),
            started,
            prompt_tokens: generation.prompt_tokens,
            cached_tokens: generation.cached_tokens,
            blocks: BlockEncoder::new(),
            done: false,
        }
    }

    /// The whole message once the generation has finished (the non-streaming answer).
    pub async fn whole(
        mut self,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<Value, AnthropicError> {
        while let Some(event) = events.recv().await {
            match event {
                Event::Finished {
                    reason: FinishReason::Cancelled,
                    ..
                } => return Err(CoreError::Stopped.into()),
                Event::Finished { reason, usage } => {
                    let mut ignored = Vec::new();
                    self.blocks.close(&mut ignored);
                    let (stop, sequence) = stop_reason(&reason, self.blocks.saw_tool_use);
                    log_finished(&self.id, &self.model, self.started, &usage, stop);
                    return Ok(message_json(
                        &self.id,
                        &self.model,
                        std::mem::take(&mut self.blocks.blocks),
                        Some((stop, sequence)),
                        usage_json(
                            usage.prompt_tokens,
                            usage.cached_tokens,
                            usage.completion_tokens,
                        ),
                    ));
                }
                Event::Error(message) => {
                    tracing::warn!(id = %self.id, endpoint = "messages", error = %message, "request failed");
                    return Err(ApiError::internal(message).into());
                }
                other => {
                    MessageStream::on_event(&mut self, other);
                }
            }
        }
        Err(ApiError::internal("generation ended without finishing").into())
    }

    fn opening(&self) -> Vec<Frame> {
        vec![(
            "message_start",
            json!({"type": "message_start", "message": message_json(
                &self.id, &self.model, Vec::new(), None,
                usage_json(self.prompt_tokens, self.cached_tokens, 0),
            )}),
        )]
    }

    fn fail(&mut self, kind: &str, message: &str) -> Vec<Frame> {
        self.done = true;
        tracing::warn!(id = %self.id, endpoint = "messages", error = %message, "request failed");
        vec![error_event(kind, message)]
    }

    fn on_event(&mut self, event: Event) -> Vec<Frame> {
        match event {
            Event::KeepAlive => vec![ping()],
            Event::Logprobs(_) => Vec::new(),
            Event::Finished {
                reason: FinishReason::Cancelled,
                ..
            } => self.fail(
                "overloaded_error",
                "generation cancelled: the server is shutting down",
            ),
            Event::Finished { reason, usage } => {
                self.done = true;
                let mut out = Vec::new();
                self.blocks.close(&mut out);
                let (stop, sequence) = stop_reason(&reason, self.blocks.saw_tool_use);
                log_finished(&self.id, &self.model, self.started, &usage, stop);
                out.push((
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": sequence},
                        "usage": usage_json(usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens),
                    }),
                ));
                out.push(("message_stop", json!({"type": "message_stop"})));
                out
            }
            Event::Error(message) => self.fail("api_error", &message),
            content => self.blocks.on_content(content),
        }
    }
}

impl StreamEncoder for MessageStream {
    fn opening(&mut self) -> Vec<Bytes> {
        framed(MessageStream::opening(self))
    }

    fn on_event(&mut self, _choice: usize, event: Event) -> Vec<Bytes> {
        framed(MessageStream::on_event(self, event))
    }

    fn on_closed(&mut self) -> Vec<Bytes> {
        framed(self.fail("api_error", "generation ended without finishing"))
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn idle_after(&self) -> Option<Duration> {
        Some(PING_AFTER)
    }

    fn on_idle(&mut self) -> Vec<Bytes> {
        framed(vec![ping()])
    }
}

fn ping() -> Frame {
    ("ping", json!({"type": "ping"}))
}

fn framed(frames: Vec<Frame>) -> Vec<Bytes> {
    frames
        .into_iter()
        .map(|(name, data)| event_frame(name, &data))
        .collect()
}
