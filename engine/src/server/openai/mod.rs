//! OpenAI's API: `/v1/chat/completions` and `/v1/completions` (`/v1/models`, which both APIs
//! answer alike, is in `server::models`). `request` translates a body into the canonical
//! request, `response` builds whole response objects, `stream` the SSE chunks.

mod request;
mod response;
mod stream;

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::errors::{ApiError, ApiJson};
use super::generation::{
    collect, event_stream, random_id, submit_choices, unix_now, Collected, RequestLog,
    StreamEncoder,
};
use super::sse::sse_response;
use super::AppState;
use crate::core::GenerateRequest;
use request::ResponseOptions;
pub use request::{ChatCompletionRequest, CompletionRequest};
use response::Head;
use stream::{ChatStream, CompletionStream};

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = random_id("chatcmpl-");
    let (request, options) = request::chat_request(body, &id)?;
    let endpoint = Endpoint {
        name: "chat",
        stream: ChatStream::new,
        whole: response::chat_completion,
    };
    generate(&state, request, options, started, endpoint).await
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = random_id("cmpl-");
    let (request, options) = request::completion_request(body, &id)?;
    let endpoint = Endpoint {
        name: "completions",
        stream: CompletionStream::new,
        whole: response::text_completion,
    };
    generate(&state, request, options, started, endpoint).await
}

/// How one endpoint answers: its name in logs, its stream encoder, and its whole response
/// object (which also logs how the request finished).
struct Endpoint<E> {
    name: &'static str,
    stream: fn(Head, ResponseOptions, RequestLog) -> E,
    whole: fn(&Head, ResponseOptions, Vec<Collected>, &RequestLog) -> Value,
}

/// What both endpoints do with a translated request: submit it (once per choice), then
/// stream its events or collect them into one response object.
async fn generate<E: StreamEncoder>(
    state: &AppState,
    request: GenerateRequest,
    options: ResponseOptions,
    started: Instant,
    endpoint: Endpoint<E>,
) -> Result<Response, ApiError> {
    let id = request.id.clone();
    let generations = submit_choices(state, request, options.n).await?;
    let head = Head {
        id,
        created: unix_now(),
        model: generations[0].model.clone(),
    };
    let mut log = RequestLog::new(&head.id, &head.model, endpoint.name, started);
    if options.stream {
        let encoder = (endpoint.stream)(head, options, log);
        let events = generations.into_iter().map(|g| g.events).collect();
        return Ok(sse_response(event_stream(events, encoder)));
    }
    let collected = collect(generations, &mut log).await?;
    Ok(Json((endpoint.whole)(&head, options, collected, &log)).into_response())
}
