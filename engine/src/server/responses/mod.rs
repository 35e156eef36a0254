//! OpenAI's Responses API: `POST /v1/responses`, and `GET` / `DELETE /v1/responses/{id}`
//! for the responses kept in memory (`store`). `request` translates a body into the canonical
//! request, `response` assembles the `response` object and its output items (messages,
//! reasoning, function calls) from the events, `stream` runs it and frames the stream
//! (`response.created` … `response.completed`), `store` keeps the last responses for
//! `previous_response_id`. Errors are in OpenAI's shape.

mod request;
mod response;
mod store;
mod stream;

use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::errors::{ApiError, ApiJson};
use super::generation::{event_stream, random_id, submit, unix_now, RequestLog};
use super::sse::sse_response;
use super::AppState;
use crate::core::CoreError;
pub use request::ResponsesRequest;
use request::{translate, Translated};
use response::{Assembler, Head};
pub use store::{ResponseStore, KEPT_RESPONSES};
use stream::{Ended, ResponseStream, Run};

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = random_id("resp_");
    let earlier = match body.previous_response_id() {
        None => Vec::new(),
        Some(previous) => match state.responses.get(previous) {
            Some(stored) => stored.conversation.clone(),
            None => {
                return Err(ApiError::invalid(
                    "previous_response_id",
                    format!("Previous response with id '{previous}' not found."),
                )
                .with_code("previous_response_not_found"))
            }
        },
    };
    let Translated {
        request,
        input,
        echo,
    } = translate(body, &id, &earlier)?;
    let mut generation = submit(&state, request).await?;
    let head = Head {
        id: id.clone(),
        created_at: unix_now(),
        model: generation.model.clone(),
        echo,
    };
    let stream = head.echo.stream;
    let log = RequestLog::new(&id, &head.model, "responses", started);
    let mut conversation = earlier;
    conversation.extend(input);
    let mut run = Run::new(
        Assembler::new(head),
        log,
        state.responses.clone(),
        conversation,
    );
    if stream {
        return Ok(sse_response(event_stream(
            vec![generation.events],
            ResponseStream::new(run),
        )));
    }
    while let Some(event) = generation.events.recv().await {
        run.on_event(event);
        if !matches!(run.ended, Ended::Running) {
            break;
        }
    }
    if matches!(run.ended, Ended::Running) {
        run.on_closed();
    }
    match run.ended {
        Ended::Finished(response) => Ok(Json(response).into_response()),
        Ended::Failed(message) => Err(ApiError::internal(message)),
        Ended::Cancelled => Err(ApiError::from(CoreError::Stopped)),
        Ended::Running => Err(ApiError::internal("generation ended without finishing")),
    }
}

fn not_kept(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Response with id '{id}' not found (responses are kept in memory, the last {KEPT_RESPONSES}, and only with `store`)."
    ))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.responses.get(&id) {
        Some(stored) => Ok(Json(stored.response.clone()).into_response()),
        None => Err(not_kept(&id)),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.responses.remove(&id) {
        Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
    } else {
        Err(not_kept(&id))
    }
}
