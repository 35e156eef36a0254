//! Errors on Anthropic's routes, in its shape:
//! `{"type": "error", "error": {"type", "message"}, "request_id"}`.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::super::errors::{ApiError, ApiJson};
use super::super::generation::random_id;
use super::is_anthropic_path;
use crate::core::CoreError;

/// Anthropic's `error.type` for an HTTP status, and the status to send (503s become 529,
/// Anthropic's "overloaded", which its SDKs retry).
fn anthropic_kind(status: StatusCode, openai_kind: &str) -> (StatusCode, &'static str) {
    match status.as_u16() {
        400 | 405 | 415 | 422 => (status, "invalid_request_error"),
        401 => (status, "authentication_error"),
        403 => (status, "permission_error"),
        404 => (status, "not_found_error"),
        413 => (status, "request_too_large"),
        429 => (status, "rate_limit_error"),
        503 | 529 => (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
        ),
        _ if openai_kind == "overloaded_error" => (status, "overloaded_error"),
        _ => (status, "api_error"),
    }
}

/// An error rendered in Anthropic's shape.
#[derive(Debug, Clone)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl From<CoreError> for AnthropicError {
    fn from(err: CoreError) -> Self {
        // The core's messages are final (clients match `prompt is too long: …` verbatim).
        Self(ApiError {
            param: None,
            ..ApiError::from(err)
        })
    }
}

/// `{"type": "error", "error": {"type", "message"}, "request_id"}` with Anthropic's status.
fn error_response(status: StatusCode, kind: &str, message: &str, retry: Option<u64>) -> Response {
    let request_id = random_id("req_");
    let (status, kind) = anthropic_kind(status, kind);
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("request-id", v);
    }
    if let Some(secs) = retry {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let e = self.0;
        // Anthropic has no `param`; name the field in the message instead.
        let message = match &e.param {
            Some(p) if !e.message.contains(p.as_str()) && p != "body" => {
                format!("{p}: {}", e.message)
            }
            _ => e.message.clone(),
        };
        let mut response = error_response(e.status, e.kind, &message, e.retry_after_secs);
        response.extensions_mut().insert(Rendered);
        response
    }
}

/// Marks a response already rendered in Anthropic's shape.
#[derive(Debug, Clone, Copy)]
struct Rendered;

/// Renders errors produced outside this API's handlers (authentication, body limit, unknown
/// route, wrong method: typed `ApiError`s rendered in the default shape) in Anthropic's shape
/// on Anthropic's paths, from the error the response carries.
pub async fn anthropic_error_shape(request: Request, next: Next) -> Response {
    if !is_anthropic_path(request.uri().path()) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if let Some(error) = response.extensions().get::<ApiError>() {
        return error_response(
            error.status,
            error.kind,
            &error.message,
            error.retry_after_secs,
        );
    }
    if response.extensions().get::<Rendered>().is_some() {
        // Already in Anthropic's shape (this API's own handlers).
        return response;
    }
    // Not ours (no layer here answers that way today): its status, and its text if any.
    let (parts, body) = response.into_parts();
    let retry = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    error_response(status, "", &message, retry)
}

/// A JSON body whose failures render in Anthropic's shape.
pub struct AnthropicJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AnthropicJson<T> {
    type Rejection = AnthropicError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}
