//! The output formats the three APIs ask for, read into the canonical [`OutputConstraint`]:
//! OpenAI chat's `response_format`, the Responses API's `text.format` and Anthropic's
//! `output_config.format`. Their shapes differ only in where the schema sits.

use serde_json::Value;

use super::errors::ApiError;
use crate::core::OutputConstraint;

/// Reads `format` (at `param`). `{"type": "text"}` is no constraint; `json_object` any JSON
/// object; `json_schema` the schema found at `schema_at` inside `format` (a path of keys: OpenAI
/// chat nests it in `json_schema`, the others put it on the format itself).
pub fn constraint_from(
    format: &Value,
    param: &str,
    schema_at: &[&str],
) -> Result<Option<OutputConstraint>, ApiError> {
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputConstraint::JsonObject)),
        Some("json_schema") => {
            let mut at = format;
            let mut path = param.to_string();
            for key in schema_at {
                path = format!("{path}.{key}");
                at = at.get(*key).ok_or_else(|| {
                    ApiError::invalid(path.clone(), format!("`{path}` is required"))
                })?;
            }
            match at {
                Value::Object(_) | Value::Bool(_) => {
                    Ok(Some(OutputConstraint::JsonSchema(at.clone())))
                }
                _ => Err(ApiError::invalid(
                    path.clone(),
                    format!("`{path}` must be a JSON Schema object"),
                )),
            }
        }
        _ => Err(ApiError::invalid(
            format!("{param}.type"),
            format!("`{param}.type` must be \"text\", \"json_object\" or \"json_schema\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_shape_finds_its_schema() {
        let schema = json!({"type": "object"});
        let chat = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        assert_eq!(
            constraint_from(&chat, "response_format", &["json_schema", "schema"]).unwrap(),
            Some(OutputConstraint::JsonSchema(schema.clone()))
        );
        let flat = json!({"type": "json_schema", "name": "x", "schema": schema});
        assert_eq!(
            constraint_from(&flat, "text.format", &["schema"]).unwrap(),
            Some(OutputConstraint::JsonSchema(schema))
        );
        assert_eq!(
            constraint_from(&json!({"type": "text"}), "f", &["schema"]).unwrap(),
            None
        );
        assert_eq!(
            constraint_from(&json!({"type": "json_object"}), "f", &["schema"]).unwrap(),
            Some(OutputConstraint::JsonObject)
        );
        let e = constraint_from(&json!({"type": "json_schema"}), "f", &["schema"]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("f.schema"));
        let e = constraint_from(&json!({"type": "yaml"}), "f", &["schema"]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("f.type"));
        let e = constraint_from(
            &json!({"type": "json_schema", "schema": 3}),
            "f",
            &["schema"],
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("f.schema"));
    }
}
