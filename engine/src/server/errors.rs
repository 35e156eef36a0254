//! Errors as one typed value, [`ApiError`], rendered per API: in OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`, by default (here), in Anthropic's on its
//! routes (`anthropic::errors`); and the JSON extractor that turns every malformed body into
//! one (never axum's plain-text rejections).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::core::CoreError;

/// An HTTP error with everything both APIs need to render it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, e.g. `messages[0].content`.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent as `Retry-After` (503).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    /// 400 for a bad value of `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message.into(),
            )
        }
    }

    /// 400 for a feature this server does not offer.
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, message)
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: Some("not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than the {limit} byte limit"),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The `{"error": {…}}` body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        let message = err.to_string();
        match err {
            CoreError::UnknownModel { .. } => Self {
                param: Some("model".into()),
                code: Some("model_not_found"),
                ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
            },
            CoreError::PromptTooLong { .. } => Self {
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            CoreError::Invalid(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            }
            CoreError::WrongModelKind(_) => Self {
                param: Some("model".into()),
                code: Some("model_not_supported"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            CoreError::Unsupported(_) => Self {
                code: Some("unsupported"),
                ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            },
            CoreError::Overloaded { retry_after_secs } => Self {
                code: Some("overloaded"),
                retry_after_secs: Some(retry_after_secs.max(1)),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", message)
            },
            CoreError::Stopped => Self {
                code: Some("unavailable"),
                retry_after_secs: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            },
            CoreError::InsufficientMemory(_) => Self {
                code: Some("insufficient_memory"),
                ..Self::new(StatusCode::INSUFFICIENT_STORAGE, "server_error", message)
            },
            CoreError::Internal(_) => Self::internal(message),
        }
    }
}

/// Rendered in OpenAI's shape, the server's default (the admin API's too). The response
/// also carries the error itself (an extension), so that a route of another API renders it
/// in that API's shape without reading the body back (`anthropic::anthropic_error_shape`).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// A JSON body whose every failure (not JSON, not UTF-8, wrong shape, too large) is an
/// [`ApiError`] naming the field at fault.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json") || essence.ends_with("+json")
            })
            // Many clients (curl -d) omit or mislabel it; only reject an explicit non-JSON type.
            .unwrap_or(true);
        if !is_json {
            return Err(ApiError::invalid(
                "content-type",
                "request body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    message: "request body is too large".into(),
                    ..ApiError::body_too_large(0)
                }
            } else {
                ApiError::invalid("body", format!("cannot read request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a request body, naming the failing field in `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!(
                "request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid("body", "request body is empty"));
    }
    // Every request body is an object; serde would otherwise read a struct from an array.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::invalid(
            "body",
            "request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde reports a missing field at the parent's path; name the field itself.
        let missing = inner
            .to_string()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let syntax = inner.is_syntax() || inner.is_eof();
        let param = match (missing, path.as_str()) {
            _ if syntax => "body".to_string(),
            (Some(field), ".") => field,
            (Some(field), parent) => format!("{parent}.{field}"),
            (None, ".") => "body".to_string(),
            (None, _) => path.clone(),
        };
        let message = if syntax {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request: {inner}")
        } else {
            format!("invalid value for `{path}`: {inner}")
        };
        ApiError::invalid(param, message)
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}
