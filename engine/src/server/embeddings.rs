//! `POST /v1/embeddings` (OpenAI's embeddings API): `input` as a string, a list of strings, a
//! list of token ids or a list of such lists; vectors as float lists or, with
//! `encoding_format: "base64"` (openai-python's default), as base64 of little-endian float32s.

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{ApiError, ApiJson};
use super::AppState;
use crate::core::{CoreError, EmbedInput, EmbedRequest};

/// Inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub input: Value,
    pub encoding_format: Option<String>,
    pub dimensions: Option<i64>,
    /// Accepted and ignored, as its only use is abuse monitoring.
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// `input` in any of its four shapes, each input non-empty.
fn parse_input(input: &Value) -> Result<EmbedInput, ApiError> {
    let bad = |message: &str| ApiError::invalid("input", message);
    let token = |v: &Value| {
        v.as_u64()
            .filter(|&t| t <= u32::MAX as u64)
            .map(|t| t as u32)
    };
    let items = match input {
        Value::String(s) if s.is_empty() => return Err(bad("input must not be empty")),
        Value::String(s) => return Ok(EmbedInput::Texts(vec![s.clone()])),
        Value::Array(items) if items.is_empty() => {
            return Err(bad("input must not be an empty list"))
        }
        Value::Array(items) if items.len() > MAX_INPUTS => {
            return Err(bad(&format!(
                "input has {} items; at most {MAX_INPUTS} per request",
                items.len()
            )))
        }
        Value::Array(items) => items,
        _ => {
            return Err(bad(
                "input must be a string, a list of strings, a list of token ids or a list of lists of token ids",
            ))
        }
    };
    if items.iter().all(Value::is_string) {
        let texts: Vec<String> = items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if let Some(i) = texts.iter().position(String::is_empty) {
            return Err(ApiError::invalid(
                format!("input[{i}]"),
                "input strings must not be empty",
            ));
        }
        return Ok(EmbedInput::Texts(texts));
    }
    if items.iter().all(Value::is_number) {
        let ids: Option<Vec<u32>> = items.iter().map(token).collect();
        return ids
            .map(|ids| EmbedInput::Tokens(vec![ids]))
            .ok_or_else(|| bad("token ids must be non-negative integers"));
    }
    if items.iter().all(Value::is_array) {
        let mut lists = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let list = item.as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() {
                return Err(ApiError::invalid(
                    format!("input[{i}]"),
                    "a list of token ids must not be empty",
                ));
            }
            let ids: Option<Vec<u32>> = list.iter().map(token).collect();
            lists.push(ids.ok_or_else(|| {
                ApiError::invalid(
                    format!("input[{i}]"),
                    "token ids must be non-negative integers",
                )
            })?);
        }
        return Ok(EmbedInput::Tokens(lists));
    }
    Err(bad(
        "input must be a string, a list of strings, a list of token ids or a list of lists of token ids (not a mix)",
    ))
}

/// Little-endian float32 bytes in base64, as OpenAI sends them.
fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", not \"{other}\""),
            ))
        }
    };
    let dimensions = match body.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(d as usize),
        Some(d) => {
            return Err(ApiError::invalid(
                "dimensions",
                format!("dimensions must be a positive integer, not {d}"),
            ))
        }
    };
    let input = parse_input(&body.input)?;
    let request = EmbedRequest {
        model: body.model,
        input,
        dimensions,
    };
    let embeddings = state.backend.embed(request).await.map_err(|e| {
        // The field at fault, for the errors the backend finds in the inputs' tokens and in
        // `dimensions` (which need the model).
        let at_fault = match &e {
            CoreError::PromptTooLong { .. } => Some("input"),
            CoreError::Invalid(m) if m.contains("token id") || m.starts_with("input") => {
                Some("input")
            }
            CoreError::Invalid(m) | CoreError::Unsupported(m) if m.contains("dimensions") => {
                Some("dimensions")
            }
            _ => None,
        };
        let mut err = ApiError::from(e);
        if let Some(param) = at_fault {
            err.param = Some(param.into());
        }
        err
    })?;
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                json!(base64_f32(v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embeddings.model,
        "usage": {
            "prompt_tokens": embeddings.prompt_tokens,
            "total_tokens": embeddings.prompt_tokens,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_shape_parses_and_bad_ones_are_refused() {
        assert_eq!(
            parse_input(&json!("hi")).unwrap(),
            EmbedInput::Texts(vec!["hi".into()])
        );
        assert_eq!(
            parse_input(&json!(["a", "b"])).unwrap(),
            EmbedInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_input(&json!([1, 2])).unwrap(),
            EmbedInput::Tokens(vec![vec![1, 2]])
        );
        assert_eq!(
            parse_input(&json!([[1], [2, 3]])).unwrap(),
            EmbedInput::Tokens(vec![vec![1], vec![2, 3]])
        );
        for bad in [
            json!(""),
            json!([]),
            json!([""]),
            json!([[]]),
            json!([1, "a"]),
            json!([-1]),
            json!(3),
            json!(null),
        ] {
            let err = parse_input(&bad).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn base64_is_little_endian_float32() {
        let encoded = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
