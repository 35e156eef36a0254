//! What the protocol adapters share: ids and clocks, submitting a request, the two ways of
//! answering a generation (a stream of SSE frames through a `StreamEncoder`, or one body
//! once it has finished), and the log line of a request.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use futures_util::Stream;
use rand::Rng;
use tokio::sync::mpsc;

use super::errors::ApiError;
use super::AppState;
use crate::core::{
    CoreError, Event, FinishReason, GenerateRequest, Generation, TokenLogprob, Usage,
};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` followed by 24 random alphanumerics.
pub fn random_id(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// Turns a generation's events into SSE frames.
pub trait StreamEncoder: Send + 'static {
    /// Frames sent before the first event.
    fn opening(&mut self) -> Vec<Bytes>;
    fn on_event(&mut self, event: Event) -> Vec<Bytes>;
    /// The channel closed without a final event.
    fn on_closed(&mut self) -> Vec<Bytes>;
    /// A final event was handled; nothing more will be sent.
    fn is_done(&self) -> bool;
    /// How long the generation may go without an event before `on_idle` is asked for frames
    /// (Anthropic's `ping`); `None`: no limit.
    fn idle_after(&self) -> Option<Duration> {
        None
    }
    fn on_idle(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

/// The frames of a generation. Owns the receiver: when the client disconnects, the response
/// body drops this stream, the receiver with it, and the scheduler cancels the generation.
pub fn event_stream<E: StreamEncoder>(
    events: mpsc::Receiver<Event>,
    mut encoder: E,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let queue: VecDeque<Bytes> = encoder.opening().into();
    futures_util::stream::unfold(
        (events, encoder, queue, false),
        |(mut events, mut encoder, mut queue, mut closed)| async move {
            loop {
                if let Some(frame) = queue.pop_front() {
                    return Some((frame, (events, encoder, queue, closed)));
                }
                if closed || encoder.is_done() {
                    return None;
                }
                let next = match encoder.idle_after() {
                    Some(after) => tokio::time::timeout(after, events.recv()).await.ok(),
                    None => Some(events.recv().await),
                };
                match next {
                    None => queue.extend(encoder.on_idle()),
                    Some(Some(event)) => queue.extend(encoder.on_event(event)),
                    Some(None) => {
                        closed = true;
                        queue.extend(encoder.on_closed());
                    }
                }
            }
        },
    )
}

pub async fn submit(state: &AppState, request: GenerateRequest) -> Result<Generation, ApiError> {
    let id = request.id.clone();
    state.backend.submit(request).await.map_err(|err| {
        tracing::info!(id = %id, error = %err, "request refused");
        ApiError::from(err)
    })
}

/// Times one request for its log line.
pub struct RequestLog {
    id: String,
    model: String,
    endpoint: &'static str,
    started: Instant,
    first_token: Option<Instant>,
}

impl RequestLog {
    pub fn new(id: &str, model: &str, endpoint: &'static str, started: Instant) -> Self {
        Self {
            id: id.to_string(),
            model: model.to_string(),
            endpoint,
            started,
            first_token: None,
        }
    }

    pub fn saw_output(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    pub fn finished(&self, usage: &Usage, finish: &str) {
        let now = Instant::now();
        let ttft = self.first_token.map(|t| t - self.started);
        let decode = self.first_token.map(|t| now - t).unwrap_or_default();
        let tok_per_s = if usage.completion_tokens > 1 && !decode.is_zero() {
            (usage.completion_tokens - 1) as f64 / decode.as_secs_f64()
        } else {
            0.0
        };
        tracing::info!(
            id = %self.id,
            endpoint = self.endpoint,
            model = %self.model,
            prompt_tokens = usage.prompt_tokens,
            cached_tokens = usage.cached_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = ttft.map(|d| d.as_millis() as u64),
            tok_per_s = format!("{tok_per_s:.1}"),
            total_ms = (now - self.started).as_millis() as u64,
            finish,
            "request finished"
        );
    }

    pub fn failed(&self, message: &str) {
        tracing::warn!(id = %self.id, endpoint = self.endpoint, model = %self.model, error = %message, "request failed");
    }
}

/// Everything a non-streaming response needs, collected from the events.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    pub reasoning: String,
    /// (id, name, arguments)
    pub tool_calls: Vec<(String, String, String)>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<(FinishReason, Usage)>,
}

pub async fn collect(
    generation: &mut Generation,
    log: &mut RequestLog,
) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Text(t) => {
                log.saw_output();
                c.text.push_str(&t);
            }
            Event::Reasoning(r) => {
                log.saw_output();
                c.reasoning.push_str(&r);
            }
            Event::ToolCallStart { index, id, name } => {
                log.saw_output();
                if c.tool_calls.len() <= index {
                    c.tool_calls.resize(index + 1, Default::default());
                }
                c.tool_calls[index].0 = id;
                c.tool_calls[index].1 = name;
            }
            Event::ToolCallArguments { index, fragment } => {
                if let Some(call) = c.tool_calls.get_mut(index) {
                    call.2.push_str(&fragment);
                }
            }
            Event::Logprobs(l) => c.logprobs.extend(l),
            Event::KeepAlive => {}
            Event::Finished { reason, usage } => {
                if reason == FinishReason::Cancelled {
                    log.failed("cancelled");
                    return Err(ApiError::from(CoreError::Stopped));
                }
                c.finish = Some((reason, usage));
                return Ok(c);
            }
            Event::Error(message) => {
                log.failed(&message);
                return Err(ApiError::internal(message));
            }
        }
    }
    log.failed("generation ended without finishing");
    Err(ApiError::internal("generation ended without finishing"))
}
