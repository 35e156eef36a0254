//! The model's tokenizer: Hugging Face `tokenizer.json` through the `tokenizers` crate, plus
//! what `tokenizer_config.json` adds (special tokens, chat template, decode clean-up) and the
//! end-of-sequence ids spread over generation_config.json and config.json.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::chat_template::ChatTemplates;
use crate::detokenizer::IncrementalDetokenizer;

/// Named special tokens `transformers` hands to chat templates (`SPECIAL_TOKENS_ATTRIBUTES`).
const SPECIAL_TOKEN_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot load tokenizer.json: {0}")]
    Load(String),
    #[error("tokenizer_config.json field `{field}`: {reason}")]
    Config { field: String, reason: String },
    #[error("{file} field `{field}`: {reason}")]
    EosConfig {
        file: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("encoding failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("the model has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)")]
    NoChatTemplate,
    #[error("chat template `{name}`: {message}")]
    ChatTemplate { name: String, message: String },
}

/// A loaded tokenizer. Cheap to clone (the heavy parts are shared); `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    eos_token_ids: Vec<u32>,
    /// `bos_token`, `eos_token`, ... as strings, for chat templates.
    special_tokens: Map<String, Json>,
    chat_templates: Option<Arc<ChatTemplates>>,
    clean_up_tokenization_spaces: bool,
    /// Ids of the tokens marked special (skipped when decoding unless asked for).
    special_ids: Arc<HashSet<u32>>,
    /// config.json's `model_type`, when the folder has one.
    model_type: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.eos_token_ids)
            .field("special_tokens", &self.special_tokens)
            .field("chat_templates", &self.chat_templates)
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from a model folder (MLX or HF
    /// layout). The chat template may also come from `chat_template.jinja`,
    /// `chat_template.json` or `additional_chat_templates/*.jinja` (how newer `transformers`
    /// saves it). Extra eos ids come from `generation_config.json` and `config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let tokenizer_json_path = dir.join("tokenizer.json");
        let tokenizer_json = read(&tokenizer_json_path)?;
        let config_path = dir.join("tokenizer_config.json");
        let mut config = if config_path.exists() {
            read_json(&config_path)?
        } else {
            Json::Object(Map::new())
        };
        if let Json::Object(fields) = &mut config {
            if !fields.contains_key("chat_template") {
                if let Some(templates) = chat_templates_from_files(dir)? {
                    fields.insert("chat_template".into(), templates);
                }
            }
        }

        let mut extra_eos = Vec::new();
        let mut model_type = None;
        for file in ["generation_config.json", "config.json"] {
            let path = dir.join(file);
            if path.exists() {
                let json = read_json(&path)?;
                extra_eos.extend(eos_ids_from_model_config(file, &json)?);
                if file == "config.json" {
                    model_type = json
                        .get("model_type")
                        .and_then(Json::as_str)
                        .map(str::to_owned);
                }
            }
        }
        let mut tokenizer = Self::from_parts(&tokenizer_json, &config, &extra_eos)?;
        tokenizer.model_type = model_type;
        Ok(tokenizer)
    }

    /// Builds a tokenizer from the bytes of a `tokenizer.json` and a parsed
    /// `tokenizer_config.json`; `extra_eos` are eos ids from the model's other configs.
    pub fn from_parts(
        tokenizer_json: &[u8],
        tokenizer_config: &Json,
        extra_eos: &[u32],
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|err| TokenizerError::Load(err.to_string()))?;
        let empty = Map::new();
        let config = match tokenizer_config {
            Json::Object(fields) => fields,
            Json::Null => &empty,
            _ => {
                return Err(TokenizerError::Config {
                    field: "(root)".into(),
                    reason: "expected a JSON object".into(),
                })
            }
        };

        let mut special_tokens = Map::new();
        for field in SPECIAL_TOKEN_FIELDS {
            if let Some(value) = config.get(field) {
                if let Some(token) = special_token_text(field, value)? {
                    special_tokens.insert(field.to_owned(), Json::String(token));
                }
            }
        }

        let mut eos_token_ids = Vec::new();
        if let Some(Json::String(eos)) = special_tokens.get("eos_token") {
            match inner.token_to_id(eos) {
                Some(id) => eos_token_ids.push(id),
                None => tracing::warn!(
                    eos_token = %eos,
                    "tokenizer_config.json eos_token is not in the vocabulary"
                ),
            }
        }
        for &id in extra_eos {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }

        let chat_templates = match config.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(field) => Some(Arc::new(ChatTemplates::from_config_field(field)?)),
        };

        let clean_up_tokenization_spaces = match config.get("clean_up_tokenization_spaces") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(flag)) => *flag,
            Some(_) => {
                return Err(TokenizerError::Config {
                    field: "clean_up_tokenization_spaces".into(),
                    reason: "expected true or false".into(),
                })
            }
        };

        let special_ids = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Ok(Self {
            inner: Arc::new(inner),
            eos_token_ids,
            special_tokens,
            chat_templates,
            clean_up_tokenization_spaces,
            special_ids: Arc::new(special_ids),
            model_type: None,
        })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|err| TokenizerError::Encode(err.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes like `transformers`' `decode`, including `clean_up_tokenization_spaces` when
    /// tokenizer_config.json asks for it.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|err| TokenizerError::Decode(err.to_string()))?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Every id that ends generation: tokenizer_config `eos_token`, then generation_config /
    /// config `eos_token_id` (an int or a list), without duplicates.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The named special tokens from tokenizer_config.json (`bos_token`, `eos_token`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).and_then(Json::as_str)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_templates.is_some()
    }

    /// The text of the chat template used with tools (the one that shows how the model
    /// writes calls).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_templates.as_ref().and_then(|t| t.source(true))
    }

    /// config.json's `model_type` (`None` for a GGUF file or a folder without one).
    pub fn model_type(&self) -> Option<&str> {
        self.model_type.as_deref()
    }

    /// Whether the chat template used with tools renders them at all (some, like SmolLM2's,
    /// ignore the `tools` variable).
    pub fn template_renders_tools(&self) -> bool {
        self.chat_templates
            .as_ref()
            .is_some_and(|t| t.renders_tools())
    }

    /// Renders the chat template as `apply_chat_template(..., tokenize=False)` does.
    pub fn apply_chat_template(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String, TokenizerError> {
        let templates = self
            .chat_templates
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        templates.render(
            messages,
            tools,
            add_generation_prompt,
            &self.special_tokens,
            extra,
        )
    }

    /// The prompt tokens `apply_chat_template(..., tokenize=True)` gives: the rendered text
    /// already holds any BOS, so no special tokens are added.
    pub fn encode_chat(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, tools, add_generation_prompt, extra)?;
        self.encode(&text, false)
    }

    /// A streaming decoder that skips special tokens.
    pub fn detokenizer(&self) -> IncrementalDetokenizer {
        IncrementalDetokenizer::new(self.inner.clone(), true)
    }

    /// A streaming decoder that skips special tokens except those spelled as in `keep` (the
    /// markup an output parser reads, which some tokenizers mark special).
    pub fn detokenizer_keeping(&self, keep: &[&str]) -> IncrementalDetokenizer {
        let keep: Vec<u32> = keep
            .iter()
            .filter_map(|t| self.token_to_id(t))
            .filter(|id| self.special_ids.contains(id))
            .collect();
        if keep.is_empty() {
            return self.detokenizer();
        }
        IncrementalDetokenizer::keeping(self.inner.clone(), self.special_ids.clone(), keep)
    }

    /// A streaming decoder; `skip_special_tokens` as in [`decode`](Self::decode).
    pub fn detokenizer_with(&self, skip_special_tokens: bool) -> IncrementalDetokenizer {
        IncrementalDetokenizer::new(self.inner.clone(), skip_special_tokens)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Json, TokenizerError> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        source,
    })
}

/// A special token is written either as a string or as an AddedToken object
/// (`{"content": "<s>", "__type": "AddedToken", ...}`).
fn special_token_text(field: &str, value: &Json) -> Result<Option<String>, TokenizerError> {
    match value {
        Json::Null => Ok(None),
        Json::String(text) => Ok(Some(text.clone())),
        Json::Object(fields) => match fields.get("content") {
            Some(Json::String(text)) => Ok(Some(text.clone())),
            _ => Err(TokenizerError::Config {
                field: field.to_owned(),
                reason: "an AddedToken object needs a string `content`".into(),
            }),
        },
        _ => Err(TokenizerError::Config {
            field: field.to_owned(),
            reason: "expected a string or an AddedToken object".into(),
        }),
    }
}

/// `eos_token_id` of generation_config.json / config.json: absent, null, an int or a list.
fn eos_ids_from_model_config(file: &'static str, json: &Json) -> Result<Vec<u32>, TokenizerError> {
    let bad = |reason: String| TokenizerError::EosConfig {
        file,
        field: "eos_token_id",
        reason,
    };
    let to_id = |value: &Json| -> Result<u32, TokenizerError> {
        value
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| bad(format!("{value} is not a token id")))
    };
    match json.get("eos_token_id") {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items.iter().map(to_id).collect(),
        Some(value) => Ok(vec![to_id(value)?]),
    }
}

/// The chat template(s) saved next to tokenizer_config.json instead of inside it, as the
/// value the `chat_template` field would have.
fn chat_templates_from_files(dir: &Path) -> Result<Option<Json>, TokenizerError> {
    let mut default = None;
    let jinja_path = dir.join("chat_template.jinja");
    let json_path = dir.join("chat_template.json");
    if jinja_path.exists() {
        let bytes = read(&jinja_path)?;
        default = Some(String::from_utf8(bytes).map_err(|err| TokenizerError::Io {
            path: jinja_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        })?);
    } else if json_path.exists() {
        let json = read_json(&json_path)?;
        match json.get("chat_template") {
            Some(Json::String(text)) => default = Some(text.clone()),
            _ => {
                return Err(TokenizerError::Json {
                    path: json_path,
                    source: serde::de::Error::custom("expected a string field `chat_template`"),
                })
            }
        }
    }

    let mut named = Vec::new();
    let extra_dir = dir.join("additional_chat_templates");
    if extra_dir.is_dir() {
        let entries = std::fs::read_dir(&extra_dir).map_err(|source| TokenizerError::Io {
            path: extra_dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| TokenizerError::Io {
                path: extra_dir.clone(),
                source,
            })?;
            let path = entry.path();
            let name = match (path.file_stem(), path.extension()) {
                (Some(stem), Some(ext)) if ext == "jinja" => stem.to_string_lossy().into_owned(),
                _ => continue,
            };
            let bytes = read(&path)?;
            named.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
        named.sort();
    }

    if named.is_empty() {
        return Ok(default.map(Json::String));
    }
    let mut list = Vec::new();
    if let Some(text) = default {
        list.push(serde_json::json!({"name": "default", "template": text}));
    }
    for (name, text) in named {
        list.push(serde_json::json!({"name": name, "template": text}));
    }
    Ok(Some(Json::Array(list)))
}

/// `transformers`' `clean_up_tokenization`: drops the space before punctuation and English
/// contractions that word-level tokenizers leave.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
