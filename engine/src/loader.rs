//! Turns a model on disk (an MLX-format folder or a GGUF file) into a runnable model and its
//! tokenizer.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::gguf::load_gguf;
use crate::model::{
    build_model, compute_dtype, load_model_dir, materialize, weights::cast_floats, LanguageModel,
    ModelError, Quantization, Tensors, WeightsMode,
};
use crate::text::tokenizer::Tokenizer;

/// A model ready to serve.
pub struct Loaded {
    pub model: Box<dyn LanguageModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub config: Value,
    /// Tokens the model can attend to (prompt + generation).
    pub context_length: usize,
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
        let model = build_model(&g.config, tensors, mode)?;
        return Ok(Loaded {
            model,
            tokenizer: Arc::new(tokenizer),
            context_length: context_length(&g.config),
            config: g.config,
        });
    }
    // Tokenizer first: it is cheap, and a missing tokenizer should fail before the weights load.
    let tokenizer = Tokenizer::from_dir(path).map_err(err)?;
    let (config, model) = load_model_dir(path, mode)?;
    Ok(Loaded {
        model,
        tokenizer: Arc::new(tokenizer),
        context_length: context_length(&config),
        config,
    })
}
