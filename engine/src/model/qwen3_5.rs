//! Qwen3.5 / Qwen3.6 (`qwen3_5`, and `qwen3_5_moe`): mlx-lm's `models/qwen3_5.py` and
//! `models/qwen3_5_moe.py`. Qwen3-Next's layers ([`super::qwen3_next`]) with the Gated
//! DeltaNet's projections apart (`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`), a
//! sparse MoE block (with its gated shared expert) on every layer when the config has experts,
//! RoPE settings under `rope_parameters` (`mrope` is plain RoPE for text), and the text model's
//! fields either at the top level or under `text_config`, its tensors under
//! `language_model.`.

use serde_json::{Map, Value};

use super::qwen3_next::{self, Model};
use super::{ModelArgs, ModelError, Tensors, WeightsMode};

/// qwen3_5.py's `TextModelArgs` defaults for what a config may leave out.
const TEXT_DEFAULTS: &[(&str, f64)] = &[
    ("hidden_size", 4096.0),
    ("intermediate_size", 14336.0),
    ("num_hidden_layers", 32.0),
    ("num_attention_heads", 32.0),
    ("rms_norm_eps", 1e-6),
    ("vocab_size", 151936.0),
    ("num_key_value_heads", 8.0),
    ("max_position_embeddings", 131072.0),
    ("linear_num_value_heads", 64.0),
    ("linear_num_key_heads", 16.0),
    ("linear_key_head_dim", 192.0),
    ("linear_value_head_dim", 128.0),
    ("linear_conv_kernel_dim", 4.0),
    ("full_attention_interval", 4.0),
];

/// The text model's config as qwen3_5.py's `TextModelArgs.__post_init__` reads it: defaults
/// filled in, `head_dim` from the hidden size, `rope_theta` and `partial_rotary_factor` taken
/// from `rope_parameters`, MoE routing renormalised unless the config says otherwise.
pub fn text_config(config: &Value) -> Value {
    let mut c: Map<String, Value> = config
        .get("text_config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(|| config.as_object().cloned().unwrap_or_default());
    for (key, value) in TEXT_DEFAULTS {
        if !c.contains_key(*key) {
            let v = if value.fract() == 0.0 {
                Value::from(*value as i64)
            } else {
                Value::from(*value)
            };
            c.insert((*key).into(), v);
        }
    }
    let int = |c: &Map<String, Value>, k: &str| c.get(k).and_then(Value::as_i64).unwrap_or(1);
    if !c.contains_key("head_dim") || c["head_dim"].is_null() {
        let head_dim = int(&c, "hidden_size") / int(&c, "num_attention_heads").max(1);
        c.insert("head_dim".into(), Value::from(head_dim));
    }
    let rope = c
        .get("rope_parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(|| {
            serde_json::json!({"type": "default", "rope_theta": 100000, "partial_rotary_factor": 0.25})
                .as_object()
                .cloned()
                .unwrap_or_default()
        });
    let factor = rope
        .get("partial_rotary_factor")
        .cloned()
        .unwrap_or(Value::from(0.25));
    let theta = rope
        .get("rope_theta")
        .cloned()
        .unwrap_or(Value::from(100000.0));
    c.insert("partial_rotary_factor".into(), factor);
    c.insert("rope_theta".into(), theta);
    c.insert("rope_parameters".into(), Value::Object(rope));
    c.remove("rope_scaling");
    c.entry("norm_topk_prob").or_insert(Value::Bool(true));
    // qwen3_5's MoE block is on every layer.
    c.remove("mlp_only_layers");
    c.insert("decoder_sparse_step".into(), Value::from(1));
    if let Some(model_type) = config.get("model_type") {
        c.insert("model_type".into(), model_type.clone());
    }
    if let Some(q) = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))
    {
        c.insert("quantization".into(), q.clone());
    }
    Value::Object(c)
}

pub fn load(
    config: &Value,
    args: &ModelArgs,
    mut t: Tensors,
    mode: WeightsMode,
) -> Result<Model, ModelError> {
    // The Hugging Face layout (`model.language_model.…`, a top-level `lm_head`), renamed as
    // qwen3_5.py's `Model.sanitize` renames it.
    if t.contains("model.language_model.embed_tokens.weight") {
        for name in t.names() {
            let renamed = if let Some(rest) = name.strip_prefix("model.language_model.") {
                format!("language_model.model.{rest}")
            } else if name.starts_with("language_model.") {
                continue;
            } else {
                format!("language_model.{name}")
            };
            let tensor = t.take(&name)?;
            t.insert(renamed, tensor);
        }
    }
    // mlx-lm saves the model under `language_model.`; a text-only export may not.
    let root = if t.contains("language_model.model.embed_tokens.weight") {
        "language_model."
    } else {
        ""
    };
    qwen3_next::load_under(config, args, t, mode, root)
}
