//! Checks that a model on disk is complete before it is offered (the lesson of a download
//! tool that reported success with shards missing), and reads what the memory guard needs to
//! know about it without loading it: weight bytes as they will sit in memory and KV bytes per
//! token.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::gguf::{self, GgufHeader, MetaValue};
use crate::kv::cost::WindowedKv;
use crate::model::{compute_dtype, weights};

/// What the registry knows about a complete model without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// Bytes of the files that make up the model.
    pub disk_bytes: u64,
    /// Weight bytes in memory when held as stored (floats in the compute dtype).
    pub weights_native: u64,
    /// Weight bytes in memory with every quantized matrix expanded to float32.
    pub weights_dequantized: u64,
    /// Whether any matrix is quantized (otherwise both modes are the same).
    pub quantized: bool,
    /// KV-cache bytes one token takes across all (attention) layers.
    pub kv_bytes_per_token: u64,
    /// The sliding-window layers' share of those, and their window (`None`: no such
    /// layers): a sequence's cache keeps only about a window of them.
    pub windowed_kv: Option<WindowedKv>,
    /// Recurrent-state bytes one running sequence takes whatever its length (the
    /// linear-attention layers of hybrid models; 0 for others).
    pub state_bytes_per_sequence: u64,
    /// Tokens the model can attend to, as its config says.
    pub context_length: usize,
    /// `Some`: an embedding model (it serves `/v1/embeddings`, not generation).
    pub embedding: Option<crate::embedding::EmbeddingSpec>,
    /// Why the model cannot store its KV quantized (`kv_bits`), if it cannot: attention
    /// sinks (gpt-oss) or layers without keys of their own (Gemma 4's KV-shared layers), as
    /// in mlx-lm. Such a model keeps its KV as computed whatever `kv_bits` says.
    pub kv_quant_refusal: Option<&'static str>,
    /// The attention layers' head dimension (0: unknown); quantized KV groups values along
    /// it, so `kv_group_size` must divide it.
    pub kv_head_dim: u64,
}

impl ModelFacts {
    /// Why this model cannot store its KV in format `q`, if it cannot.
    pub fn kv_quant_unfit(&self, q: crate::kv::quant::KvQuant) -> Option<String> {
        if let Some(why) = self.kv_quant_refusal {
            return Some(why.to_string());
        }
        let group = q.group_size as u64;
        (self.kv_head_dim > 0 && !self.kv_head_dim.is_multiple_of(group)).then(|| {
            format!(
                "its head dimension {} is not a multiple of kv_group_size {group}",
                self.kv_head_dim
            )
        })
    }

    /// The KV format `model` loads with when `asked` is wanted: `asked` if it fits, else as
    /// computed, with a warning that says why (`serve` and `generate` alike).
    pub fn kv_quant_at_load(
        &self,
        model: &str,
        asked: Option<crate::kv::quant::KvQuant>,
    ) -> Option<crate::kv::quant::KvQuant> {
        let q = asked?;
        match self.kv_quant_unfit(q) {
            None => Some(q),
            Some(why) => {
                tracing::warn!(model, kv = q.label(),
                    "kv_bits does not apply to this model ({why}; as in mlx-lm): its KV is stored as computed");
                None
            }
        }
    }
}

/// Why a model of this config cannot store quantized KV (see `ModelFacts::kv_quant_refusal`).
fn kv_quant_refusal(config: &Value) -> Option<&'static str> {
    match config.get("model_type").and_then(Value::as_str)? {
        "gpt_oss" => Some("attention sinks"),
        // mlx-lm's default of 20 shared layers where the config is silent (gemma4_text.rs).
        "gemma4" | "gemma4_text"
            if config_u64(config, "num_kv_shared_layers").unwrap_or(20) > 0 =>
        {
            Some("KV-shared layers")
        }
        _ => None,
    }
}

/// Why a model is not usable, shown to users as is.
pub type Incomplete = String;

/// Checks the model at `path` (an MLX folder or a `.gguf` file) and describes it.
pub fn check_model(path: &Path) -> Result<ModelFacts, Incomplete> {
    if crate::loader::is_gguf(path) {
        check_gguf(path)
    } else {
        check_mlx_dir(path)
    }
}

/// Bytes per element of the float type a tensor of safetensors dtype `dtype` is held in.
fn float_bytes(dtype: &str) -> Option<u64> {
    let stored = match dtype {
        "F64" => 8,
        "F32" => 4,
        "F16" | "BF16" => 2,
        _ => return None,
    };
    Some(if compute_dtype().is_some() { 4 } else { stored })
}

fn int_bytes(dtype: &str) -> u64 {
    match dtype {
        "I64" | "U64" => 8,
        "I32" | "U32" => 4,
        "I16" | "U16" => 2,
        _ => 1,
    }
}

/// `(name, dtype, element count, axes)` of each tensor of a safetensors file whose header was
/// checked.
fn safetensors_tensors(path: &Path) -> Result<Vec<(String, String, u64, usize)>, Incomplete> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("{}: bad safetensors header: {e}", path.display()))?;
    Ok(header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(name, info)| {
            let dtype = info
                .get("dtype")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let shape = info.get("shape").and_then(Value::as_array);
            let elements = shape.map_or(0, |s| s.iter().filter_map(Value::as_u64).product());
            (name, dtype, elements, shape.map_or(0, Vec::len))
        })
        .collect())
}

/// `(group_size, bits)` configured for the matrix `prefix`.
fn quant_bits(config: &Value, prefix: &str) -> Option<u64> {
    let q = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))?;
    q.get(prefix)
        .and_then(|l| l.get("bits"))
        .or_else(|| q.get("bits"))
        .and_then(Value::as_u64)
        .filter(|&b| b > 0)
}

fn config_u64(config: &Value, key: &str) -> Option<u64> {
    config
        .get(key)
        .or_else(|| config.get("text_config").and_then(|t| t.get(key)))
        .and_then(Value::as_u64)
}

fn kv_bytes_per_token(layers: u64, kv_heads: u64, head_dim: u64) -> u64 {
    let elem = if compute_dtype().is_some() { 4 } else { 2 };
    layers * 2 * kv_heads * head_dim * elem
}

/// A hybrid model's layer kinds (Qwen3-Next's Gated DeltaNet layers, all but every
/// `full_attention_interval`-th): the attention layers of `layers`, and the recurrent state
/// of one sequence (per linear layer the conv state `(kernel - 1) x conv_dim` in the compute
/// dtype and the float32 state `v_heads x v_dim x k_dim`).
fn hybrid_layers(config: &Value, layers: u64) -> Option<(u64, u64)> {
    let v_heads = config_u64(config, "linear_num_value_heads")?;
    let k_heads = config_u64(config, "linear_num_key_heads")?;
    let k_dim = config_u64(config, "linear_key_head_dim")?;
    let v_dim = config_u64(config, "linear_value_head_dim")?;
    let kernel = config_u64(config, "linear_conv_kernel_dim").unwrap_or(4);
    let interval = config_u64(config, "full_attention_interval")
        .unwrap_or(4)
        .max(1);
    let attention = layers / interval;
    let linear = layers - attention;
    let elem = if compute_dtype().is_some() { 4 } else { 2 };
    let conv = kernel.saturating_sub(1) * (2 * k_heads * k_dim + v_heads * v_dim) * elem;
    let recurrent = v_heads * v_dim * k_dim * 4;
    Some((attention, linear * (conv + recurrent)))
}

/// Gemma 4's KV bytes per token (`model_type` gemma4 or gemma4_text, else `None`), and the
/// sliding layers' share: only the first `num_hidden_layers - num_kv_shared_layers` layers
/// keep KV (the others attend over an earlier layer's); full-attention layers have heads of
/// `global_head_dim` and, where values are the keys (`attention_k_eq_v`),
/// `num_global_key_value_heads` of them. mlx-lm's defaults where the config is silent.
fn gemma4_kv_bytes_per_token(config: &Value) -> Option<(u64, WindowedKv)> {
    let model_type = config.get("model_type").and_then(Value::as_str)?;
    if model_type != "gemma4" && model_type != "gemma4_text" {
        return None;
    }
    let field = |key: &str| {
        config
            .get("text_config")
            .and_then(|t| t.get(key))
            .or_else(|| config.get(key))
    };
    let layers = config_u64(config, "num_hidden_layers").unwrap_or(35);
    let shared = config_u64(config, "num_kv_shared_layers").unwrap_or(20);
    let kv_heads = config_u64(config, "num_key_value_heads").unwrap_or(1);
    let head_dim = config_u64(config, "head_dim").unwrap_or(256);
    let global_dim = match field("global_head_dim") {
        Some(Value::Null) => head_dim,
        Some(v) => v.as_u64().filter(|&d| d > 0).unwrap_or(head_dim),
        None => 512,
    };
    let k_eq_v = field("attention_k_eq_v").and_then(Value::as_bool) == Some(true);
    let global_kv_heads = match config_u64(config, "num_global_key_value_heads") {
        Some(n) if k_eq_v => n,
        _ => kv_heads,
    };
    let pattern = config_u64(config, "sliding_window_pattern")
        .unwrap_or(5)
        .max(1);
    let types: Option<Vec<bool>> = field("layer_types").and_then(Value::as_array).map(|t| {
        t.iter()
            .map(|x| x.as_str() == Some("sliding_attention"))
            .collect()
    });
    let elem = if compute_dtype().is_some() { 4 } else { 2 };
    let (mut all, mut sliding_part) = (0, 0);
    for i in 0..layers.saturating_sub(shared) {
        let sliding = match &types {
            Some(t) => t.get(i as usize).copied().unwrap_or(true),
            None => (i + 1) % pattern != 0,
        };
        if sliding {
            sliding_part += kv_heads * head_dim * 2 * elem;
            all += kv_heads * head_dim * 2 * elem;
        } else {
            all += global_kv_heads * global_dim * 2 * elem;
        }
    }
    let window = config_u64(config, "sliding_window").unwrap_or(512);
    Some((
        all,
        WindowedKv {
            bytes_per_token: sliding_part,
            window,
        },
    ))
}

/// The sliding-window layers of Gemma 3 and gpt-oss, by their configs as the model files read
/// them: how many of `layers` there are, and their window.
fn sliding_layers(config: &Value, layers: u64) -> Option<(u64, u64)> {
    let model_type = config.get("model_type").and_then(Value::as_str)?;
    let types = config
        .get("layer_types")
        .or_else(|| config.get("text_config").and_then(|t| t.get("layer_types")))
        .and_then(Value::as_array);
    let count_types = |t: &Vec<Value>| {
        t.iter()
            .take(layers as usize)
            .filter(|x| x.as_str() == Some("sliding_attention"))
            .count() as u64
    };
    let (sliding, default_window) = match model_type {
        "gemma3" | "gemma3_text" => {
            let pattern = config_u64(config, "sliding_window_pattern")
                .unwrap_or(6)
                .max(1);
            (
                (0..layers).filter(|i| (i + 1) % pattern != 0).count() as u64,
                512,
            )
        }
        "gpt_oss" => match types {
            Some(t) => (count_types(t), 128),
            None => (layers.div_ceil(2), 128),
        },
        _ => return None,
    };
    let window = config_u64(config, "sliding_window").unwrap_or(default_window);
    (sliding > 0).then_some((sliding, window))
}

fn check_mlx_dir(dir: &Path) -> Result<ModelFacts, Incomplete> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: malformed JSON: {e}", config_path.display()))?;
    let has_tokenizer = dir.join("tokenizer.json").is_file();
    if !has_tokenizer {
        return Err(format!("{}: missing", dir.join("tokenizer.json").display()));
    }
    let files = weights::safetensors_files(dir).map_err(|e| e.to_string())?;
    let mut disk_bytes = 0;
    let mut tensors: HashMap<String, (String, u64, usize)> = HashMap::new();
    for file in &files {
        weights::check_safetensors(file).map_err(|e| e.to_string())?;
        disk_bytes += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        for (name, dtype, elements, axes) in safetensors_tensors(file)? {
            tensors.insert(name, (dtype, elements, axes));
        }
    }
    for small in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        disk_bytes += std::fs::metadata(dir.join(small)).map_or(0, |m| m.len());
    }
    let (mut native, mut dequantized, mut quantized) = (0u64, 0u64, false);
    // Expert stacks (3-D packed weights) stay packed in every mode, scales and all.
    let stays_packed = |prefix: &str| {
        tensors
            .get(&format!("{prefix}.weight"))
            .is_some_and(|(_, _, axes)| crate::model::switch_layers::stays_quantized(*axes))
    };
    for (name, (dtype, elements, _)) in &tensors {
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let packed = dtype == "U32" && tensors.contains_key(&format!("{prefix}.scales"));
        if packed {
            quantized = true;
            native += elements * 4;
            dequantized += if stays_packed(prefix) {
                elements * 4
            } else {
                let bits = quant_bits(&config, prefix).unwrap_or(4);
                elements * 32 / bits * 4
            };
            continue;
        }
        let bytes = float_bytes(dtype).unwrap_or_else(|| int_bytes(dtype)) * elements;
        native += bytes;
        // Scales and biases disappear once their matrix is expanded.
        let owner = name.rsplit_once('.').map_or("", |(p, _)| p);
        let is_quant_aux = (name.ends_with(".scales") || name.ends_with(".biases"))
            && tensors.contains_key(&format!("{owner}.weight"))
            && !stays_packed(owner);
        if !is_quant_aux {
            dequantized += bytes;
        }
    }
    let layers = config_u64(&config, "num_hidden_layers").unwrap_or(0);
    let heads = config_u64(&config, "num_attention_heads")
        .unwrap_or(1)
        .max(1);
    let kv_heads = config_u64(&config, "num_key_value_heads").unwrap_or(heads);
    let head_dim = config_u64(&config, "head_dim")
        .unwrap_or_else(|| config_u64(&config, "hidden_size").unwrap_or(0) / heads);
    let (layers, state_bytes_per_sequence) = hybrid_layers(&config, layers).unwrap_or((layers, 0));
    let (kv_bytes_per_token, windowed_kv) = match gemma4_kv_bytes_per_token(&config) {
        Some((all, windowed)) => (all, Some(windowed)),
        None => {
            let windowed = sliding_layers(&config, layers).map(|(n, window)| WindowedKv {
                bytes_per_token: kv_bytes_per_token(n, kv_heads, head_dim),
                window,
            });
            (kv_bytes_per_token(layers, kv_heads, head_dim), windowed)
        }
    };
    Ok(ModelFacts {
        disk_bytes,
        weights_native: native,
        weights_dequantized: dequantized,
        quantized,
        kv_bytes_per_token,
        windowed_kv,
        state_bytes_per_sequence,
        context_length: crate::loader::context_length(&config),
        embedding: crate::embedding::detect(dir, &config)?,
        kv_quant_refusal: kv_quant_refusal(&config),
        kv_head_dim: head_dim,
    })
}

fn meta_u64(header: &GgufHeader, key: &str) -> Option<u64> {
    header.get(key).and_then(MetaValue::as_u64)
}

fn check_gguf(path: &Path) -> Result<ModelFacts, Incomplete> {
    let header = gguf::read_header(path).map_err(|e| e.to_string())?;
    let mut native = 0u64;
    let mut dequantized = 0u64;
    let mut quantized = false;
    for tensor in &header.tensors {
        gguf::check_tensor_extent(&header, tensor).map_err(|e| e.to_string())?;
        let elements = tensor.element_count();
        dequantized += elements * 4;
        match tensor.ggml_type.quant_bits() {
            // MLX's affine format: packed bits plus float32 scale and bias per 32 weights.
            Some(bits) => {
                quantized = true;
                native += elements * u64::from(bits) / 8 + elements / 32 * 8;
            }
            None => native += elements * 4,
        }
    }
    let arch = header
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| format!("{}: missing metadata general.architecture", path.display()))?
        .to_string();
    let layers = meta_u64(&header, &format!("{arch}.block_count")).unwrap_or(0);
    let heads = meta_u64(&header, &format!("{arch}.attention.head_count"))
        .unwrap_or(1)
        .max(1);
    let kv_heads = meta_u64(&header, &format!("{arch}.attention.head_count_kv")).unwrap_or(heads);
    let head_dim =
        meta_u64(&header, &format!("{arch}.attention.key_length")).unwrap_or_else(|| {
            meta_u64(&header, &format!("{arch}.embedding_length")).unwrap_or(0) / heads
        });
    let context_length =
        meta_u64(&header, &format!("{arch}.context_length")).map_or(4096, |n| n as usize);
    Ok(ModelFacts {
        disk_bytes: header.file_len,
        weights_native: native,
        weights_dequantized: dequantized,
        quantized,
        kv_bytes_per_token: kv_bytes_per_token(layers, kv_heads, head_dim),
        windowed_kv: None,
        state_bytes_per_sequence: 0,
        context_length,
        embedding: None,
        kv_quant_refusal: (arch == "gpt-oss").then_some("attention sinks"),
        kv_head_dim: head_dim,
    })
}

/// A cheap fingerprint of the model's files (names, sizes, modification times), so that a
/// rescan only re-checks models that changed.
pub fn fingerprint(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut add = |p: &Path| {
        if let Ok(m) = std::fs::metadata(p) {
            p.hash(&mut h);
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    };
    add(path);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            add(&e);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn test_models() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/test-models")
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    /// gpt-oss (attention sinks) and Gemma 4 with KV-shared layers cannot store quantized
    /// KV; other models, and a Gemma 4 without shared layers, can.
    #[test]
    fn models_that_cannot_store_quantized_kv_are_named() {
        let of = |v: Value| kv_quant_refusal(&v);
        assert_eq!(
            of(serde_json::json!({"model_type": "gpt_oss"})),
            Some("attention sinks")
        );
        assert_eq!(
            of(serde_json::json!({"model_type": "gemma4_text"})),
            Some("KV-shared layers")
        );
        let unshared = serde_json::json!({"model_type": "gemma4", "num_kv_shared_layers": 0});
        assert_eq!(of(unshared), None);
        assert_eq!(of(serde_json::json!({"model_type": "llama"})), None);
        assert_eq!(of(serde_json::json!({})), None);
    }

    #[test]
    fn complete_mlx_folder_and_gguf_are_described() {
        let dir = test_models().join("SmolLM2-135M-Instruct");
        let facts = check_model(&dir).unwrap();
        assert!(facts.quantized);
        assert_eq!(facts.context_length, 8192);
        // 30 layers x (k, v) x 3 KV heads x 64 dims x 4 bytes (f32 on CPU).
        assert_eq!(facts.kv_bytes_per_token, 30 * 2 * 3 * 64 * 4);
        assert!(facts.weights_dequantized > facts.weights_native);
        assert!(facts.disk_bytes > 100_000_000);
        let gguf = check_model(&test_models().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        assert_eq!(gguf.kv_bytes_per_token, facts.kv_bytes_per_token);
        assert!(gguf.quantized);
    }

    #[test]
    fn truncated_and_missing_shards_are_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("m");
        copy_dir(&test_models().join("SmolLM2-135M-Instruct"), &copy);
        // Truncated weights.
        let weights = copy.join("model.safetensors");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&weights)
            .unwrap();
        f.set_len(1_000_000).unwrap();
        let reason = check_model(&copy).unwrap_err();
        assert!(reason.contains("truncated"), "{reason}");
        // An index naming a shard that is not there.
        std::fs::remove_file(&weights).unwrap();
        std::fs::write(
            copy.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let reason = check_model(&copy).unwrap_err();
        assert!(
            reason.contains("model-00001-of-00002.safetensors"),
            "{reason}"
        );
        // A GGUF cut short.
        let g = tmp.path().join("x.gguf");
        let bytes = std::fs::read(test_models().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
        std::fs::write(&g, &bytes[..bytes.len() / 2]).unwrap();
        assert!(check_model(&g).is_err());
    }
}
