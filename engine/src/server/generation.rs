//! What the protocol adapters share: ids and clocks, submitting a request, the two ways of
//! answering a generation (a stream of SSE frames through a `StreamEncoder`, or one body
//! once it has finished), and the log line of a request.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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
    /// An event of choice `choice` (0 unless a request asked for several, OpenAI's `n`).
    fn on_event(&mut self, choice: usize, event: Event) -> Vec<Bytes>;
    /// Every choice's channel closed; not every one ended in a final event.
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

/// The frames of a generation's choices (one unless OpenAI's `n` asked for more). Owns the
/// receivers: when the client disconnects, the response body drops this stream, the
/// receivers with it, and the scheduler cancels every choice.
pub fn event_stream<E: StreamEncoder>(
    choices: Vec<mpsc::Receiver<Event>>,
    mut encoder: E,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let events = futures_util::stream::select_all(
        choices
            .into_iter()
            .enumerate()
            .map(|(i, rx)| ReceiverStream::new(rx).map(move |event| (i, event))),
    );
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
                    Some(after) => tokio::time::timeout(after, events.next()).await.ok(),
                    None => Some(events.next().await),
                };
                match next {
                    None => queue.extend(encoder.on_idle()),
                    Some(Some((choice, event))) => queue.extend(encoder.on_event(choice, event)),
                    Some(None) => {
                        closed = true;
                        queue.extend(encoder.on_closed());
                    }
                }
            }
        },
    )
}

/// Submits a request `n` times, as the choices of one response (OpenAI's `n`): choice `i`
/// samples with the request's seed plus `i`, so that seeded choices differ and repeat. The
/// engine computes their shared prompt once (the later ones take its blocks from the prefix
/// cache). If one is refused, those already submitted are dropped, which cancels them.
pub async fn submit_choices(
    state: &AppState,
    request: GenerateRequest,
    n: usize,
) -> Result<Vec<Generation>, ApiError> {
    if n <= 1 {
        return Ok(vec![submit(state, request).await?]);
    }
    let mut generations = Vec::with_capacity(n);
    for i in 0..n {
        let mut choice = request.clone();
        choice.id = format!("{}/{i}", request.id);
        choice.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(i as u64));
        generations.push(submit(state, choice).await?);
    }
    Ok(generations)
}

/// The usage of a response's choices: their prompt once (as the first choice read it),
/// their completions together.
pub fn combined_usage<'a>(usages: impl IntoIterator<Item = &'a Usage>) -> Usage {
    let mut usages = usages.into_iter();
    let mut total = usages.next().copied().unwrap_or_default();
    for u in usages {
        total.completion_tokens += u.completion_tokens;
    }
    total
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

    /// The first output came at `at` (measured elsewhere).
    pub fn saw_output_at(&mut self, at: Instant) {
        self.first_token.get_or_insert(at);
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

/// Collects every choice of a generation (concurrently); the first that fails fails the
/// response, and dropping the others cancels them.
pub async fn collect(
    generations: Vec<Generation>,
    log: &mut RequestLog,
) -> Result<Vec<Collected>, ApiError> {
    let outcomes =
        futures_util::future::try_join_all(generations.into_iter().map(|g| collect_one(g.events)))
            .await;
    match outcomes {
        Ok(choices) => {
            if let Some(first) = choices.iter().filter_map(|(_, t)| *t).min() {
                log.saw_output_at(first);
            }
            Ok(choices.into_iter().map(|(c, _)| c).collect())
        }
        Err((error, message)) => {
            log.failed(&message);
            Err(error)
        }
    }
}

/// One choice's events, until its final one; with when its first output came.
async fn collect_one(
    mut events: mpsc::Receiver<Event>,
) -> Result<(Collected, Option<Instant>), (ApiError, String)> {
    let mut c = Collected::default();
    let mut first_output = None;
    let mut saw_output = || {
        first_output.get_or_insert_with(Instant::now);
    };
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => {
                saw_output();
                c.text.push_str(&t);
            }
            Event::Reasoning(r) => {
                saw_output();
                c.reasoning.push_str(&r);
            }
            Event::ToolCallStart { index, id, name } => {
                saw_output();
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
                    return Err((ApiError::from(CoreError::Stopped), "cancelled".into()));
                }
                c.finish = Some((reason, usage));
                return Ok((c, first_output));
            }
            Event::Error(message) => return Err((ApiError::internal(message.clone()), message)),
        }
    }
    let message = "generation ended without finishing";
    Err((ApiError::internal(message), message.into()))
}
