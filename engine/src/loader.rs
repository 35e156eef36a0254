//! Turns a model on disk (an MLX-format folder or a GGUF file) into a runnable model and its
//! tokenizer.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::gguf::load_gguf;
use crate::model::{
    build_model, compute_dtype, load_model_config, materialize, read_config, weights::cast_floats,
    LanguageModel, ModelError, Quantization, Tensors, WeightsMode,
};
use crate::text::tokenizer::Tokenizer;

/// A model ready to serve.
pub struct Loaded {
    pub model: Box<dyn LanguageModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub config: Value,
    /// Tokens the model attends to as its own config says (prompt + generation); a
    /// [`RopeScaling`] override extends it in the registry, not here.
    pub context_length: usize,
}

/// A RoPE scaling that stretches a model's positions past the context it was trained for, set
/// per model in the config (`rope_scaling = { type = "yarn", factor = 4.0 }`) as its
/// config.json's `rope_scaling` would be — e.g. Qwen3's documented 32k → 128k with YaRN
/// factor 4. It replaces the checkpoint's own `rope_scaling`; the model's context becomes
/// `factor` × `original_max_position_embeddings` (default: the model's own context), and the
/// KV cache identity includes it (keys rotated differently are different keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    #[serde(rename = "type", alias = "rope_type")]
    pub kind: RopeScalingKind,
    pub factor: f64,
    /// The context the model was trained for (default: its `max_position_embeddings`).
    pub original_max_position_embeddings: Option<usize>,
    /// YaRN's ramp between interpolated and extrapolated frequencies (mlx-lm's defaults 32, 1).
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
}

/// The scalings that extend a context (mlx-lm's `initialize_rope` computes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeScalingKind {
    Yarn,
    Linear,
}

impl RopeScaling {
    /// Checked when the config is read.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor >= 1.0 && self.factor <= 64.0) {
            return Err(format!(
                "factor must be between 1 and 64, not {}",
                self.factor
            ));
        }
        if self.original_max_position_embeddings == Some(0) {
            return Err("original_max_position_embeddings must be positive".into());
        }
        Ok(())
    }

    /// The context with this scaling, for a model whose own context is `native`.
    pub fn context(&self, native: usize) -> usize {
        let original = self.original_max_position_embeddings.unwrap_or(native);
        (original as f64 * self.factor) as usize
    }

    /// Writes the scaling into a model's config (and its text model's, for wrapped configs),
    /// as config.json would hold it.
    fn apply(&self, config: &mut Value) {
        let native = context_length(config);
        let kind = match self.kind {
            RopeScalingKind::Yarn => "yarn",
            RopeScalingKind::Linear => "linear",
        };
        let mut scaling = json!({
            "type": kind,
            "rope_type": kind,
            "factor": self.factor,
            "original_max_position_embeddings":
                self.original_max_position_embeddings.unwrap_or(native),
        });
        for (key, v) in [("beta_fast", self.beta_fast), ("beta_slow", self.beta_slow)] {
            if let Some(v) = v {
                scaling[key] = json!(v);
            }
        }
        if let Some(text) = config.get_mut("text_config").filter(|t| t.is_object()) {
            text["rope_scaling"] = scaling.clone();
        }
        config["rope_scaling"] = scaling;
    }

    /// What the prefix cache's model identity adds for it.
    pub fn identity(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("{path}: {source}")]
    Tokenizer {
        path: String,
        #[source]
        source: crate::text::tokenizer::TokenizerError,
    },
}

/// Fallback context length when config.json names none.
const DEFAULT_CONTEXT: usize = 4096;

pub fn context_length(config: &Value) -> usize {
    config
        .get("max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_CONTEXT)
}

/// Loads only the tokenizer (cheap), e.g. to count tokens without loading weights.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let err = |source| LoadError::Tokenizer {
        path: path.display().to_string(),
        source,
    };
    if is_gguf(path) {
        let g = load_gguf(path)?;
        return Tokenizer::from_parts(
            g.tokenizer_json.as_bytes(),
            &g.tokenizer_config,
            &eos_ids(&g.generation_config),
        )
        .map_err(err);
    }
    Tokenizer::from_dir(path).map_err(err)
}

pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn eos_ids(generation_config: &Value) -> Vec<u32> {
    match generation_config.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Loads a model folder or GGUF file.
pub fn load(path: &Path, mode: WeightsMode) -> Result<Loaded, LoadError> {
    load_with(path, mode, None)
}

/// [`load`] with the model's RoPE scaling replaced by `rope`.
pub fn load_with(
    path: &Path,
    mode: WeightsMode,
    rope: Option<&RopeScaling>,
) -> Result<Loaded, LoadError> {
    let err = |source| LoadError::Tokenizer {
        path: path.display().to_string(),
        source,
    };
    if is_gguf(path) {
        let g = load_gguf(path)?;
        let tokenizer = Tokenizer::from_parts(
            g.tokenizer_json.as_bytes(),
            &g.tokenizer_config,
            &eos_ids(&g.generation_config),
        )
        .map_err(err)?;
        let mut weights = g.weights;
        if let Some(dtype) = compute_dtype() {
            cast_floats(&mut weights, dtype)?;
        }
        materialize(&weights)?;
        let tensors = Tensors::new(weights, Quantization::from_config(&g.config), path.into());
        let own_context = context_length(&g.config);
        let mut config = g.config;
        if let Some(rope) = rope {
            rope.apply(&mut config);
        }
        let model = build_model(&config, tensors, mode)?;
        return Ok(Loaded {
            model,
            tokenizer: Arc::new(tokenizer),
            context_length: own_context,
            config,
        });
    }
    // Tokenizer first: it is cheap, and a missing tokenizer should fail before the weights load.
    let tokenizer = Tokenizer::from_dir(path).map_err(err)?;
    let mut config = read_config(path)?;
    let own_context = context_length(&config);
    if let Some(rope) = rope {
        rope.apply(&mut config);
    }
    let (config, model) = load_model_config(path, config, mode)?;
    Ok(Loaded {
        model,
        tokenizer: Arc::new(tokenizer),
        context_length: own_context,
        config,
    })
}
