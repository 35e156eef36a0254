//! GGUF (llama.cpp) models → MLX weights, an mlx-lm config and HF tokenizer files.
//!
//! The header (metadata, tensor table) is read by [`header`]; tensor data comes from
//! MLX's GGUF loader, which hands Q4_0/Q4_1/Q8_0 tensors over already repacked into
//! MLX's affine quantized format (group size 32: `X.weight` as packed uint32 plus
//! float16 `X.scales` and `X.biases`). Every tensor type is checked first, because MLX
//! turns some other types into float16 and returns nothing at all for types it does
//! not know.

mod config;
mod header;
mod tokenizer;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::Array;
use serde_json::Value;

pub use header::{check_tensor_extent, read_header, GgufHeader, MetaValue, TensorInfo};

/// A GGUF model, converted in memory to what an mlx-lm model folder holds.
pub struct GgufModel {
    /// HF/mlx-lm style config.json content, with a "quantization" section when any
    /// tensor is quantized (per-module overrides where bit widths differ).
    pub config: Value,
    /// Weights under mlx-lm / HF names (`model.layers.{i}.self_attn.q_proj.weight`, ...,
    /// plus `.scales`/`.biases` for quantized ones). q/k rows are un-permuted for llama,
    /// so standard (non-interleaved) RoPE applies. Float tensors, scales and biases are
    /// float32.
    pub weights: HashMap<String, Array>,
    /// A Hugging Face tokenizer.json (byte-level BPE).
    pub tokenizer_json: String,
    pub tokenizer_config: Value,
    pub generation_config: Value,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel")
            .field("config", &self.config)
            .field("weights", &self.weights.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (no GGUF magic at the start)")]
    NotGguf { path: PathBuf },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated or corrupt file: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: malformed GGUF: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: missing metadata {key}")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata {key} is {found}, expected {expected}")]
    WrongMetadataType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "{path}: unsupported architecture {arch:?} (supported: {})",
        crate::model::architectures::gguf_architectures()
    )]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: tensor {tensor} has type {ggml_type}, which cannot be converted (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)")]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
    },
    #[error("{path}: unexpected tensor {tensor} for architecture {arch}")]
    UnsupportedTensor {
        path: PathBuf,
        tensor: String,
        arch: String,
    },
    #[error("{path}: unsupported tokenizer model {model:?} (supported: gpt2 byte-level BPE)")]
    UnsupportedTokenizer { path: PathBuf, model: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: MLX failed {action}: {message}")]
    Mlx {
        path: PathBuf,
        action: String,
        message: String,
    },
    #[error("{path}: output {out}: {what}")]
    Output {
        path: PathBuf,
        out: PathBuf,
        what: String,
    },
}

/// Reads a GGUF file into weights, config and tokenizer files.
pub fn load_gguf(path: &Path) -> Result<GgufModel, GgufError> {
    if !path.is_file() {
        return Err(GgufError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let header = header::read_header(path)?;
    // Checks architecture, tensor types and extents before MLX touches the data.
    config::architecture(&header)?;
    for tensor in &header.tensors {
        header::check_tensor_extent(&header, tensor)?;
    }

    let mlx_arrays = load_mlx_arrays(&header)?;
    let tokens_len = match header.get("tokenizer.ggml.tokens") {
        Some(header::MetaValue::Array(items)) => Some(items.len() as u64),
        _ => None,
    };
    // Shape-only pass for the heads, needed by the q/k un-permutation.
    let (_, shape) = config::build_config(&header, 0, false)?;
    let converted = weights::convert_weights(&header, mlx_arrays, &shape)?;

    let vocab_size =
        converted
            .vocab_rows
            .or(tokens_len)
            .ok_or_else(|| GgufError::MissingMetadata {
                path: path.to_path_buf(),
                key: "token_embd.weight".into(),
            })?;
    let (mut config, shape) = config::build_config(&header, vocab_size, !converted.has_lm_head)?;
    if let Some(q) = converted.quantization {
        config["quantization"] = q;
    }
    let files = tokenizer::build_tokenizer_files(&header, shape.context_length)?;
    tracing::info!(
        path = %path.display(),
        arch = %shape.arch,
        tensors = converted.weights.len(),
        "loaded GGUF"
    );
    Ok(GgufModel {
        config,
        weights: converted.weights,
        tokenizer_json: files.tokenizer_json,
        tokenizer_config: files.tokenizer_config,
        generation_config: files.generation_config,
    })
}

fn load_mlx_arrays(header: &header::GgufHeader) -> Result<HashMap<String, Array>, GgufError> {
    let mlx_err = |e: mlx_rs::io::GgufError| GgufError::Mlx {
        path: header.path.clone(),
        action: "loading tensors".into(),
        message: e.to_string(),
    };
    let file = mlx_rs::io::GgufFile::load(&header.path).map_err(mlx_err)?;
    file.arrays().map_err(mlx_err)
}

/// Writes an MLX-format model folder (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json, generation_config.json) that `mlx_lm.load` reads. The folder
/// is written beside `out_dir` under a temporary name and renamed into place, so a
/// failure never leaves a half-written model at `out_dir`.
pub fn convert_gguf(gguf: &Path, out_dir: &Path) -> Result<(), GgufError> {
    let output_err = |what: String| GgufError::Output {
        path: gguf.to_path_buf(),
        out: out_dir.to_path_buf(),
        what,
    };
    if out_dir.exists() {
        let empty_dir = std::fs::read_dir(out_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty_dir {
            return Err(output_err(
                "already exists and is not an empty folder".into(),
            ));
        }
    }
    let model = load_gguf(gguf)?;

    let name = out_dir
        .file_name()
        .ok_or_else(|| output_err("has no folder name".into()))?;
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| output_err(format!("cannot create parent: {e}")))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = write_model_folder(&model, &tmp)
        .map_err(output_err)
        .and_then(|()| {
            if out_dir.exists() {
                std::fs::remove_dir(out_dir)
                    .map_err(|e| output_err(format!("cannot replace: {e}")))?;
            }
            std::fs::rename(&tmp, out_dir)
                .map_err(|e| output_err(format!("cannot rename into place: {e}")))
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_model_folder(model: &GgufModel, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let metadata: HashMap<String, String> = [("format".to_string(), "mlx".to_string())].into();
    Array::save_safetensors(
        model.weights.iter().map(|(k, v)| (k.as_str(), v)),
        &metadata,
        dir.join("model.safetensors"),
    )
    .map_err(|e| format!("cannot write model.safetensors: {e}"))?;
    write("config.json", pretty(&model.config))?;
    write("tokenizer.json", model.tokenizer_json.clone())?;
    write("tokenizer_config.json", pretty(&model.tokenizer_config))?;
    write("generation_config.json", pretty(&model.generation_config))?;
    Ok(())
}
