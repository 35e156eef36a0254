//! config.json (HF / mlx-lm style) from `{arch}.*` metadata.

use serde_json::{json, Value};

use super::header::{GgufHeader, MetaValue};
use super::GgufError;

pub struct ModelShape {
    pub arch: String,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub context_length: Option<u64>,
}

fn required_u64(header: &GgufHeader, key: &str) -> Result<u64, GgufError> {
    let value = header.get(key).ok_or_else(|| GgufError::MissingMetadata {
        path: header.path.clone(),
        key: key.to_string(),
    })?;
    value.as_u64().ok_or_else(|| GgufError::WrongMetadataType {
        path: header.path.clone(),
        key: key.to_string(),
        expected: "unsigned integer",
        found: value.type_name().to_string(),
    })
}

fn optional_u64(header: &GgufHeader, key: &str) -> Result<Option<u64>, GgufError> {
    match header.get(key) {
        None => Ok(None),
        Some(_) => required_u64(header, key).map(Some),
    }
}

fn optional_f64(header: &GgufHeader, key: &str) -> Result<Option<f64>, GgufError> {
    match header.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongMetadataType {
                path: header.path.clone(),
                key: key.to_string(),
                expected: "number",
                found: v.type_name().to_string(),
            }),
    }
}

/// The architecture name, checked against what we can convert.
pub fn architecture(header: &GgufHeader) -> Result<(String, &'static str), GgufError> {
    let arch = header
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| GgufError::MissingMetadata {
            path: header.path.clone(),
            key: "general.architecture".into(),
        })?;
    crate::model::architectures::find_gguf(arch)
        .map(|a| (arch.to_string(), a.model_type))
        .ok_or_else(|| GgufError::UnsupportedArchitecture {
            path: header.path.clone(),
            arch: arch.to_string(),
        })
}

/// Builds config.json without the quantization section (added once weights are known).
pub fn build_config(
    header: &GgufHeader,
    vocab_size: u64,
    tie_word_embeddings: bool,
) -> Result<(Value, ModelShape), GgufError> {
    let (arch, model_type) = architecture(header)?;
    let key = |suffix: &str| format!("{arch}.{suffix}");

    let hidden = required_u64(header, &key("embedding_length"))?;
    let n_layers = required_u64(header, &key("block_count"))?;
    let ffn = required_u64(header, &key("feed_forward_length"))?;
    let n_heads = required_u64(header, &key("attention.head_count"))?;
    if n_heads == 0 {
        return Err(GgufError::Malformed {
            path: header.path.clone(),
            what: format!("{} is 0", key("attention.head_count")),
        });
    }
    let n_kv_heads = optional_u64(header, &key("attention.head_count_kv"))?.unwrap_or(n_heads);
    let head_dim = optional_u64(header, &key("attention.key_length"))?.unwrap_or(hidden / n_heads);
    let eps = optional_f64(header, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
    let rope_theta = optional_f64(header, &key("rope.freq_base"))?.unwrap_or(10_000.0);
    let context_length = optional_u64(header, &key("context_length"))?;

    let mut config = json!({
        "model_type": model_type,
        "architectures": [crate::model::architectures::find(model_type)
            .map_or("LlamaForCausalLM", |a| a.hf_class)],
        "hidden_size": hidden,
        "num_hidden_layers": n_layers,
        "intermediate_size": ffn,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": eps,
        "vocab_size": vocab_size,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tie_word_embeddings,
        "hidden_act": "silu",
    });
    if let Some(ctx) = context_length {
        config["max_position_embeddings"] = json!(ctx);
    }
    if let Some(scaling) = rope_scaling(header, &arch)? {
        config["rope_scaling"] = scaling;
    }
    let id = |k: &str| header.get(k).and_then(MetaValue::as_u64);
    if let Some(bos) = id("tokenizer.ggml.bos_token_id") {
        config["bos_token_id"] = json!(bos);
    }
    if let Some(eos) = super::tokenizer::header_eos_ids(header) {
        config["eos_token_id"] = eos;
    }

    Ok((
        config,
        ModelShape {
            arch,
            n_heads,
            n_kv_heads,
            context_length,
        },
    ))
}

fn rope_scaling(header: &GgufHeader, arch: &str) -> Result<Option<Value>, GgufError> {
    let kind = header
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(MetaValue::as_str)
        .unwrap_or("none");
    let factor = optional_f64(header, &format!("{arch}.rope.scaling.factor"))?;
    let original = optional_u64(
        header,
        &format!("{arch}.rope.scaling.original_context_length"),
    )?;
    match (kind, factor) {
        ("none", _) => Ok(None),
        ("linear", Some(factor)) => Ok(Some(
            json!({"type": "linear", "rope_type": "linear", "factor": factor}),
        )),
        ("yarn", Some(factor)) => {
            let mut v = json!({"type": "yarn", "rope_type": "yarn", "factor": factor});
            if let Some(original) = original {
                v["original_max_position_embeddings"] = json!(original);
            }
            Ok(Some(v))
        }
        (other, _) => Err(GgufError::Unsupported {
            path: header.path.clone(),
            what: format!("rope scaling {other:?} (factor {factor:?})"),
        }),
    }
}
