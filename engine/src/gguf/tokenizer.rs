//! Hugging Face tokenizer files rebuilt from `tokenizer.ggml.*` metadata.
//!
//! Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is built: that is what
//! llama-3, Qwen and SmolLM GGUFs carry. The pre-tokenizer follows
//! `tokenizer.ggml.pre`, which names the split regex llama.cpp uses for the vocabulary.

use serde_json::{json, Map, Value};

use super::header::{GgufHeader, MetaValue};
use super::GgufError;

/// llama.cpp token_type values.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama-3 style split: case-insensitive contractions, digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split: like llama-3 but single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The three tokenizer files of an HF/mlx-lm model folder.
pub struct TokenizerFiles {
    pub tokenizer_json: String,
    pub tokenizer_config: Value,
    pub generation_config: Value,
}

/// GPT-2's reversible byte-to-character map: printable bytes stand for themselves, the
/// rest are moved to code points from 256 up so that no token contains whitespace or
/// control characters.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(code).unwrap_or('\0');
    }
    table
}

fn string_array<'a>(header: &'a GgufHeader, key: &str) -> Result<Vec<&'a str>, GgufError> {
    let wrong = |found: &str| GgufError::WrongMetadataType {
        path: header.path.clone(),
        key: key.to_string(),
        expected: "array of strings",
        found: found.to_string(),
    };
    match header.get(key) {
        None => Err(GgufError::MissingMetadata {
            path: header.path.clone(),
            key: key.to_string(),
        }),
        Some(MetaValue::Array(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or_else(|| wrong("array of non-strings")))
            .collect(),
        Some(other) => Err(wrong(other.type_name())),
    }
}

fn token_id(header: &GgufHeader, key: &str, vocab_len: usize) -> Result<Option<usize>, GgufError> {
    let Some(value) = header.get(key) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(id) if (id as usize) < vocab_len => Ok(Some(id as usize)),
        _ => Err(GgufError::Malformed {
            path: header.path.clone(),
            what: format!("{key} = {value:?} is not a token id below {vocab_len}"),
        }),
    }
}

fn pre_tokenizer(pre: Option<&str>) -> Value {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split_then_bytes = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    match pre {
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe",
        ) => split_then_bytes(LLAMA3_SPLIT),
        Some("qwen2" | "deepseek-r1-qwen" | "megrez") => split_then_bytes(QWEN2_SPLIT),
        // These vocabularies were trained with every digit split off before GPT-2's split.
        Some("smollm" | "starcoder" | "refact" | "codeshell") => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]})
        }
        // "gpt2", "default" and anything unknown: GPT-2's own split.
        _ => byte_level(true),
    }
}

/// Builds tokenizer.json, tokenizer_config.json and generation_config.json.
pub fn build_tokenizer_files(
    header: &GgufHeader,
    context_length: Option<u64>,
) -> Result<TokenizerFiles, GgufError> {
    let path = &header.path;
    let model = header
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| GgufError::MissingMetadata {
            path: path.clone(),
            key: "tokenizer.ggml.model".into(),
        })?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            path: path.clone(),
            model: model.to_string(),
        });
    }

    let tokens = string_array(header, "tokenizer.ggml.tokens")?;
    let merges = string_array(header, "tokenizer.ggml.merges")?;
    let token_types: Vec<i64> = match header.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };

    let table = byte_to_char_table();
    let in_alphabet = |s: &str| s.chars().all(|c| table.contains(&c));
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        // Tokens are stored already spelled in the byte alphabet; a token that is not
        // (some files store added tokens as raw text) is spelled out so BPE can reach it.
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }

    let mut merge_pairs = Vec::with_capacity(merges.len());
    for merge in &merges {
        let Some((left, right)) = merge.split_once(' ') else {
            return Err(GgufError::Malformed {
                path: path.clone(),
                what: format!("tokenizer.ggml.merges entry {merge:?} is not two tokens"),
            });
        };
        merge_pairs.push(json!([left, right]));
    }

    let mut added_tokens = Vec::new();
    for (id, (token, kind)) in tokens.iter().zip(&token_types).enumerate() {
        let special = match *kind {
            // A control token written outside the byte alphabet is a mislabelled piece
            // of text in some files; it cannot be matched literally, so leave it to BPE.
            TOKEN_TYPE_CONTROL if in_alphabet(token) => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        added_tokens.push(json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
    }

    let n = tokens.len();
    let bos = token_id(header, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(header, "tokenizer.ggml.eos_token_id", n)?;
    let eot = token_id(header, "tokenizer.ggml.eot_token_id", n)?;
    let eom = token_id(header, "tokenizer.ggml.eom_token_id", n)?;
    let unk = token_id(header, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = token_id(header, "tokenizer.ggml.padding_token_id", n)?;
    let flag = |key: &str| header.get(key).and_then(MetaValue::as_bool);
    let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);

    // The post-processor is what adds BOS/EOS when the tokenizer encodes with special tokens.
    let mut single = Vec::new();
    let mut special_tokens = Map::new();
    let mut piece = |id: Option<usize>, enabled: bool, out: &mut Vec<Value>| {
        if let (Some(id), true) = (id, enabled) {
            let content = tokens[id];
            out.push(json!({"SpecialToken": {"id": content, "type_id": 0}}));
            special_tokens.insert(
                content.to_string(),
                json!({"id": content, "ids": [id], "tokens": [content]}),
            );
        }
    };
    piece(bos, add_bos, &mut single);
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    piece(eos, add_eos, &mut single);
    let mut pair = single.clone();
    for item in &single {
        let mut item = item.clone();
        if let Some(seq) = item.get_mut("Sequence") {
            *seq = json!({"id": "B", "type_id": 1});
        } else if let Some(st) = item.get_mut("SpecialToken") {
            st["type_id"] = json!(1);
        }
        pair.push(item);
    }

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(header.get("tokenizer.ggml.pre").and_then(MetaValue::as_str)),
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merge_pairs,
        },
    });
    let tokenizer_json = serde_json::to_string(&tokenizer).map_err(|e| GgufError::Malformed {
        path: path.clone(),
        what: format!("cannot serialize tokenizer.json: {e}"),
    })?;

    let name_of = |id: Option<usize>| id.map_or(Value::Null, |id| json!(tokens[id]));
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": name_of(bos),
        "eos_token": name_of(eos),
        "unk_token": name_of(unk),
        "pad_token": name_of(pad),
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = header
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
    {
        tokenizer_config["chat_template"] = json!(template);
    }
    if let Some(ctx) = context_length {
        tokenizer_config["model_max_length"] = json!(ctx);
    }

    let mut generation_config = json!({});
    if let Some(bos) = bos {
        generation_config["bos_token_id"] = json!(bos);
    }
    if let Some(eos) = eos_ids(eos, eot, eom) {
        generation_config["eos_token_id"] = eos;
    }
    if let Some(pad) = pad {
        generation_config["pad_token_id"] = json!(pad);
    }

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config,
        generation_config,
    })
}

/// The ids that end generation: EOS plus end-of-turn/end-of-message where the file names
/// them (llama-3 chats end with <|eot_id|>, not the EOS token).
pub fn eos_ids(eos: Option<usize>, eot: Option<usize>, eom: Option<usize>) -> Option<Value> {
    let mut ids: Vec<usize> = Vec::new();
    for id in [eos, eot, eom].into_iter().flatten() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    match ids.as_slice() {
        [] => None,
        [one] => Some(json!(one)),
        many => Some(json!(many)),
    }
}

/// End-of-generation ids read straight from the header, for config.json.
pub fn header_eos_ids(header: &GgufHeader) -> Option<Value> {
    let id = |key: &str| {
        header
            .get(key)
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
    };
    eos_ids(
        id("tokenizer.ggml.eos_token_id"),
        id("tokenizer.ggml.eot_token_id"),
        id("tokenizer.ggml.eom_token_id"),
    )
}
