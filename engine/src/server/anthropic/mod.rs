//! Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.
//!
//! Requests are flattened into the canonical [`GenerateRequest`] (`request`, its typed
//! content blocks in `content`); the
//! generation's events are encoded as Anthropic's content blocks (`response`), streamed
//! (`message_start` … `message_stop`, `stream`) or whole. Errors on these routes use
//! Anthropic's shape (`errors`).

mod content;
mod errors;
mod request;
mod response;
mod stream;

use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::generation::{event_stream, random_id};
use super::sse::sse_response;
use super::AppState;
use crate::core::{GenerateRequest, Generation};
pub use errors::{anthropic_error_shape, AnthropicError, AnthropicJson};
pub use request::MessagesRequest;
use request::{model_from, prompt_from, translate, Translated};
use stream::MessageStream;

/// Whether `path` belongs to this API (its errors take Anthropic's shape).
pub fn is_anthropic_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

async fn submit(state: &AppState, request: GenerateRequest) -> Result<Generation, AnthropicError> {
    let id = request.id.clone();
    state.backend.submit(request).await.map_err(|err| {
        tracing::info!(id = %id, error = %err, "request refused");
        AnthropicError::from(err)
    })
}

pub async fn messages(
    State(state): State<AppState>,
    AnthropicJson(body): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    let started = Instant::now();
    let id = random_id("msg_");
    let Translated { request, stream } = translate(body, &id)?;
    let mut generation = submit(&state, request).await?;
    let encoder = MessageStream::new(id, &generation, started);
    if stream {
        let mut response = sse_response(event_stream(vec![generation.events], encoder));
        if let Ok(v) = HeaderValue::from_str(&random_id("req_")) {
            response.headers_mut().insert("request-id", v);
        }
        return Ok(response);
    }
    let message = encoder.whole(&mut generation.events).await?;
    Ok(Json(message).into_response())
}

/// The body of `count_tokens`: a messages request without `max_tokens`.
pub async fn count_tokens(
    State(state): State<AppState>,
    AnthropicJson(body): AnthropicJson<MessagesRequest>,
) -> Result<Response, AnthropicError> {
    let (prompt, _) = prompt_from(&body)?;
    let model = model_from(&body);
    let tokens = state
        .backend
        .count_tokens(model.as_deref(), &prompt)
        .await?;
    Ok(Json(json!({"input_tokens": tokens})).into_response())
}
