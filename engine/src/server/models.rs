//! `GET /v1/models` and `GET /v1/models/{id}`, in a shape both OpenAI's and Anthropic's SDKs
//! accept.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::AppState;
use crate::core::ModelInfo;

fn rfc3339(unix_secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// One model in a shape both OpenAI's and Anthropic's SDKs accept.
fn model_object(model: &ModelInfo) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "wuwei",
        "type": "model",
        "display_name": model.id,
        "created_at": rfc3339(model.created),
        "context_length": model.context_length,
        "loaded": model.loaded,
    })
}

pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let models = state.backend.list_models();
    let data: Vec<Value> = models.iter().map(model_object).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "first_id": models.first().map(|m| m.id.clone()),
        "last_id": models.last().map(|m| m.id.clone()),
    }))
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let models = state.backend.list_models();
    match models.iter().find(|m| m.id == id) {
        Some(model) => Ok(Json(model_object(model))),
        None => {
            let available: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
            Err(ApiError::not_found(format!(
                "model '{id}' does not exist; available: {}",
                available.join(", ")
            ))
            .with_code("model_not_found"))
        }
    }
}
