//! The one list of supported architectures: config.json's `model_type`, the GGUF architecture
//! that converts to it (if any), and how to build it. Loading, error messages and GGUF import
//! all read this table.

use serde_json::Value;

use super::{
    gemma3_text, gemma4_text, glm4_moe, gpt_oss, llama, minimax, qwen2, qwen3, qwen3_5, qwen3_moe,
    qwen3_next, LanguageModel, ModelArgs, ModelError, Tensors, WeightsMode,
};

/// Builds the model from config.json, its common fields and the tensors.
pub type Load =
    fn(&Value, &ModelArgs, Tensors, WeightsMode) -> Result<Box<dyn LanguageModel>, ModelError>;

pub struct Architecture {
    /// config.json's `model_type`, as mlx-lm names its model file.
    pub model_type: &'static str,
    /// GGUF `general.architecture` that `wuwei convert` turns into this model type.
    pub gguf: Option<&'static str>,
    /// The transformers class (config.json's `architectures`) a converted model names.
    pub hf_class: &'static str,
    /// Rewrites config.json into the fields the loader reads (mlx-lm's defaults filled in, a
    /// wrapped text model's `text_config` lifted); `None`: read as is.
    pub config: Option<fn(&Value) -> Value>,
    pub load: Load,
}

pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        model_type: "llama",
        gguf: Some("llama"),
        hf_class: "LlamaForCausalLM",
        config: None,
        load: |_, args, t, mode| {
            Ok(Box::new(llama::Model::load(
                args,
                t,
                mode,
                llama::TIE_DEFAULT,
            )?))
        },
    },
    Architecture {
        model_type: "mistral",
        gguf: None,
        hf_class: "MistralForCausalLM",
        config: None,
        load: |_, args, t, mode| {
            Ok(Box::new(llama::Model::load(
                args,
                t,
                mode,
                llama::TIE_DEFAULT,
            )?))
        },
    },
    Architecture {
        model_type: "qwen2",
        gguf: Some("qwen2"),
        hf_class: "Qwen2ForCausalLM",
        config: None,
        load: |_, args, t, mode| {
            Ok(Box::new(qwen2::Model::load(
                args,
                t,
                mode,
                qwen2::TIE_DEFAULT,
            )?))
        },
    },
    Architecture {
        model_type: "qwen3",
        gguf: Some("qwen3"),
        hf_class: "Qwen3ForCausalLM",
        config: None,
        load: |_, args, t, mode| {
            Ok(Box::new(qwen3::Model::load(
                args,
                t,
                mode,
                qwen3::TIE_DEFAULT,
            )?))
        },
    },
    Architecture {
        model_type: "qwen3_moe",
        gguf: None,
        hf_class: "Qwen3MoeForCausalLM",
        config: None,
        load: |config, args, t, mode| Ok(Box::new(qwen3_moe::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "minimax",
        gguf: None,
        hf_class: "MiniMaxM2ForCausalLM",
        config: None,
        load: |config, args, t, mode| Ok(Box::new(minimax::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "glm4_moe",
        gguf: None,
        hf_class: "Glm4MoeForCausalLM",
        config: None,
        load: |config, args, t, mode| Ok(Box::new(glm4_moe::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "gpt_oss",
        gguf: None,
        hf_class: "GptOssForCausalLM",
        config: None,
        load: |config, args, t, mode| Ok(Box::new(gpt_oss::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "gemma3_text",
        gguf: None,
        hf_class: "Gemma3ForCausalLM",
        config: Some(gemma3_text::text_config),
        load: |config, args, t, mode| Ok(Box::new(gemma3_text::load(config, args, t, mode, "")?)),
    },
    Architecture {
        model_type: "gemma3",
        gguf: None,
        hf_class: "Gemma3ForConditionalGeneration",
        config: Some(gemma3_text::wrapped_config),
        load: |config, args, t, mode| {
            Ok(Box::new(gemma3_text::load(
                config,
                args,
                t,
                mode,
                "language_model.",
            )?))
        },
    },
    Architecture {
        model_type: "gemma4_text",
        gguf: None,
        hf_class: "Gemma4ForCausalLM",
        config: Some(gemma4_text::text_config),
        load: |config, args, t, mode| Ok(Box::new(gemma4_text::load(config, args, t, mode, "")?)),
    },
    Architecture {
        model_type: "gemma4",
        gguf: None,
        hf_class: "Gemma4ForConditionalGeneration",
        config: Some(gemma4_text::wrapped_config),
        load: |config, args, t, mode| {
            Ok(Box::new(gemma4_text::load(
                config,
                args,
                t,
                mode,
                "language_model.",
            )?))
        },
    },
    Architecture {
        model_type: "qwen3_next",
        gguf: None,
        hf_class: "Qwen3NextForCausalLM",
        config: None,
        load: |config, args, t, mode| Ok(Box::new(qwen3_next::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "qwen3_5",
        gguf: None,
        hf_class: "Qwen3_5ForConditionalGeneration",
        config: Some(qwen3_5::text_config),
        load: |config, args, t, mode| Ok(Box::new(qwen3_5::load(config, args, t, mode)?)),
    },
    Architecture {
        model_type: "qwen3_5_moe",
        gguf: None,
        hf_class: "Qwen3_5MoeForConditionalGeneration",
        config: Some(qwen3_5::text_config),
        load: |config, args, t, mode| Ok(Box::new(qwen3_5::load(config, args, t, mode)?)),
    },
];

/// The architecture of config.json's `model_type`.
pub fn find(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.model_type == model_type)
}

/// The architecture a GGUF `general.architecture` converts to.
pub fn find_gguf(arch: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.gguf == Some(arch))
}

/// "llama, mistral, …" for error messages.
pub fn model_types() -> String {
    let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.model_type).collect();
    names.join(", ")
}

/// The GGUF architectures `wuwei convert` takes, for error messages.
pub fn gguf_architectures() -> String {
    let names: Vec<&str> = ARCHITECTURES.iter().filter_map(|a| a.gguf).collect();
    names.join(", ")
}

/// Parses an architecture's own fields of config.json (beyond [`ModelArgs`]).
pub fn parse_args<T: serde::de::DeserializeOwned>(
    config: &Value,
    t: &Tensors,
) -> Result<T, ModelError> {
    serde_json::from_value(config.clone()).map_err(|e| ModelError::Invalid {
        path: t.source().join("config.json"),
        reason: format!("bad config: {e}"),
    })
}
