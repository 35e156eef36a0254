//! Model architectures and loading. One file per architecture, each readable beside mlx-lm's
//! file of the same name; the shared pieces live in `layers`.

pub mod architectures;
pub mod attention;
pub mod batch;
pub mod cpu_attention;
pub mod decoder;
pub mod gemma3_text;
pub mod gemma4_text;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod layers;
pub mod llama;
pub mod minimax;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_5;
pub mod qwen3_moe;
pub mod qwen3_next;
pub mod switch_layers;
pub mod two_streams;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use serde::Deserialize;
use serde_json::Value;

pub use batch::{BatchSeq, Logits};
use layers::{Linear, Matrix, QuantMode, RmsNorm, Rope};

/// Why a model could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {reason}", path.display())]
    MissingFile { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: unsupported model_type '{model_type}' (supported: {})", path.display(), architectures::model_types())]
    UnsupportedArchitecture { path: PathBuf, model_type: String },
    #[error("{}: tensor '{name}' is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("MLX error: {0}")]
    Mlx(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return ModelError::MissingFile {
                path: path.into(),
                reason: "not found".into(),
            };
        }
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn parse(path: &Path, e: impl std::fmt::Display) -> Self {
        ModelError::Invalid {
            path: path.into(),
            reason: format!("malformed JSON: {e}"),
        }
    }
    pub fn mlx(e: Exception) -> Self {
        ModelError::Mlx(e.what().to_string())
    }
}

impl From<Exception> for ModelError {
    fn from(e: Exception) -> Self {
        ModelError::mlx(e)
    }
}

/// A decoder-only language model.
pub trait LanguageModel: Send {
    /// Runs `tokens` (`[1, N]` int32, the sequences of `batch` end to end) through the model,
    /// storing their keys/values in each sequence's cache and advancing it.
    fn forward(
        &self,
        tokens: &Array,
        batch: &mut [BatchSeq<'_>],
        logits: Logits,
    ) -> Result<Array, Exception>;
    /// The layers a sequence's cache holds (KV or recurrent state): every layer, except
    /// those that read another layer's KV (Gemma 4's KV-shared layers).
    fn num_layers(&self) -> usize;
    /// Runs `tokens` as [`LanguageModel::forward`] does but stops before the head: the final
    /// norm's output at every position, `[1, N, hidden]` (embedding models pool these).
    /// Architectures without it answer an error.
    fn hidden_states(
        &self,
        tokens: &Array,
        batch: &mut [BatchSeq<'_>],
    ) -> Result<Array, Exception> {
        let _ = (tokens, batch);
        Err(Exception::custom(
            "this architecture does not give hidden states (it cannot serve embeddings)",
        ))
    }
    /// Whether some layers keep a recurrent state per sequence (linear attention) beside the
    /// KV cache: the prefix cache then snapshots that state at snapshot boundaries and
    /// restores a prefix only up to a snapshot.
    fn has_recurrent_state(&self) -> bool {
        false
    }
    /// Each cache layer's sliding window (`None`: it attends to every position), for the
    /// prefix cache: windowed layers' KV is kept beside snapshots, not in the blocks. Empty:
    /// no layer is windowed.
    fn kv_windows(&self) -> Vec<Option<i32>> {
        Vec::new()
    }
}

/// The fields of `config.json` the supported architectures read (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModelArgs {
    pub model_type: String,
    pub hidden_size: i32,
    pub num_hidden_layers: usize,
    pub intermediate_size: i32,
    pub num_attention_heads: i32,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    pub head_dim: Option<i32>,
    pub max_position_embeddings: Option<usize>,
    pub num_key_value_heads: Option<i32>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_traditional: bool,
    pub rope_scaling: Option<serde_json::Map<String, Value>>,
    /// transformers >= 5 nests rope_theta/rope_scaling here.
    pub rope_parameters: Option<serde_json::Map<String, Value>>,
    pub tie_word_embeddings: Option<bool>,
    /// Partial rotary embeddings: the rotated features of each head (minimax), or their
    /// fraction of `head_dim` (glm4_moe).
    pub rotary_dim: Option<i32>,
    pub partial_rotary_factor: Option<f32>,
    /// RMSNorm on queries and keys (minimax, glm4_moe).
    pub use_qk_norm: Option<bool>,
    /// Sliding-window attention (gpt_oss): the window, and which layers use it
    /// (`"sliding_attention"` / `"full_attention"`).
    pub sliding_window: Option<i32>,
    pub layer_types: Option<Vec<String>>,
}

impl ModelArgs {
    pub fn head_dim(&self) -> i32 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn kv_heads(&self) -> i32 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn rope_theta_or(&self, default: f32) -> f32 {
        self.rope_theta
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(Value::as_f64)
                    .map(|v| v as f32)
            })
            .unwrap_or(default)
    }
    fn rope_scaling(&self) -> Option<&serde_json::Map<String, Value>> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }
}

/// mlx-lm's `initialize_rope` for the rope types these architectures use.
pub fn make_rope(
    args: &ModelArgs,
    traditional: bool,
    base: f32,
    source: &Path,
) -> Result<Rope, ModelError> {
    make_rope_dims(args, args.head_dim(), traditional, base, source)
}

/// [`make_rope`] rotating the first `dims` features of each head (partial rotary).
pub fn make_rope_dims(
    args: &ModelArgs,
    dims: i32,
    traditional: bool,
    base: f32,
    source: &Path,
) -> Result<Rope, ModelError> {
    let mut rope = Rope {
        dims,
        traditional,
        base,
        scale: 1.0,
        freqs: None,
        mscale: 1.0,
    };
    let Some(scaling) = args.rope_scaling() else {
        return Ok(rope);
    };
    let kind = scaling
        .get("type")
        .or_else(|| scaling.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str, d: f64| scaling.get(k).and_then(Value::as_f64).unwrap_or(d);
    match kind {
        // mlx-lm's initialize_rope: multimodal RoPE is plain RoPE on text positions.
        "default" | "mrope" => {}
        "linear" => rope.scale = 1.0 / num("factor", 1.0) as f32,
        "llama3" => {
            let factor = num("factor", 1.0);
            let low = num("low_freq_factor", 1.0);
            let high = num("high_freq_factor", 4.0);
            let old_ctx = num("original_max_position_embeddings", 8192.0);
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            let freqs: Vec<f32> = (0..dims / 2)
                .map(|i| {
                    let freq = (base as f64).powf(2.0 * i as f64 / dims as f64);
                    let wavelen = 2.0 * std::f64::consts::PI * freq;
                    let scaled = if wavelen > low_wavelen {
                        freq * factor
                    } else {
                        freq
                    };
                    if wavelen > high_wavelen && wavelen < low_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (scaled / ((1.0 - smooth) / factor + smooth)) as f32
                    } else {
                        scaled as f32
                    }
                })
                .collect();
            rope.freqs = Some(Array::from_slice(&freqs, &[dims / 2]));
        }
        "yarn" => {
            let (freqs, mscale) = yarn(dims, base, &num)?;
            rope.freqs = Some(freqs);
            rope.mscale = mscale;
        }
        other => {
            return Err(ModelError::Invalid {
                path: source.join("config.json"),
                reason: format!("unsupported rope_scaling type '{other}'"),
            })
        }
    }
    Ok(rope)
}

/// mlx-lm's `YarnRoPE`: frequencies (computed with the same float32 MLX ops) and the scale
/// of the rotated features.
fn yarn(dims: i32, base: f32, num: &dyn Fn(&str, f64) -> f64) -> Result<(Array, f32), ModelError> {
    use mlx_rs::ops::{arange, clip};
    let factor = num("factor", 1.0);
    let original = num("original_max_position_embeddings", 4096.0);
    let (beta_fast, beta_slow) = (num("beta_fast", 32.0), num("beta_slow", 1.0));
    let (mscale, mscale_all_dim) = (num("mscale", 1.0), num("mscale_all_dim", 0.0));
    let d = dims as f64;
    let correction_dim = |rotations: f64| {
        d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * (base as f64).ln())
    };
    let low = correction_dim(beta_fast).floor().max(0.0);
    let mut high = correction_dim(beta_slow).ceil().min(d - 1.0);
    if low == high {
        high += 0.001;
    }
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_scale = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim);
    let freq_extra = Array::from_f32(base).power(arange::<_, f32>(0, dims, 2)? / dims as f32)?;
    let freq_inter = &freq_extra * factor as f32;
    let ramp = (arange::<_, f32>(0, dims / 2, None)? - low as f32) / (high - low) as f32;
    let one = Array::from_f32(1.0);
    let freq_mask = &one - clip(&ramp, (0.0f32, 1.0f32))?;
    let freqs = (&freq_inter * &freq_extra)
        / (&freq_inter * &freq_mask + &freq_extra * (&one - &freq_mask));
    freqs.eval()?;
    Ok((freqs, attention_scale as f32))
}

/// How one matrix is quantized (mlx-lm's `group_size`, `bits`, `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
}

impl QuantParams {
    /// A config entry: `{"group_size", "bits"[, "mode"]}`. Without `mode` it is affine, as
    /// `to_quantized` defaults it (mlx-lm's 8-bit router overrides name no mode, also under
    /// an mxfp4 default); a Hugging Face `quant_method` names the float modes.
    fn from_entry(v: &Value) -> Option<Self> {
        let mode_name = v
            .get("mode")
            .or_else(|| v.get("quant_method"))
            .and_then(Value::as_str);
        let mode = match mode_name {
            Some(name) => QuantMode::parse(name)?,
            None => QuantMode::Affine,
        };
        let (default_group, default_bits) = match mode {
            QuantMode::Affine => (None, None),
            QuantMode::Mxfp4 => (Some(32), Some(4)),
            QuantMode::Mxfp8 => (Some(32), Some(8)),
            QuantMode::Nvfp4 => (Some(16), Some(4)),
        };
        let int = |k: &str| v.get(k).and_then(Value::as_i64).map(|n| n as i32);
        Some(Self {
            group_size: int("group_size").or(default_group)?,
            bits: int("bits").or(default_bits)?,
            mode,
        })
    }

    /// Whether a packed `weight` with these `scales` can be of this kind: the scales' dtype
    /// (uint8 only in the float modes) and their count per row agree.
    fn fits(&self, weight_cols: i32, scales_cols: i32, uint8_scales: bool) -> bool {
        let inputs = weight_cols * 32 / self.bits.max(1);
        uint8_scales == (self.mode != QuantMode::Affine)
            && self.group_size > 0
            && inputs == scales_cols * self.group_size
    }

    /// mlx-lm's `infer_quant_config` without the layer's input size: the float modes each
    /// allow one (bits, group) pair, told apart by the packing ratio; affine assumes groups
    /// of 64.
    fn infer(weight_cols: i32, scales_cols: i32, uint8_scales: bool) -> Option<Self> {
        let ratio = weight_cols / scales_cols.max(1);
        let (group_size, bits, mode) = if uint8_scales {
            match ratio {
                2 => (16, 4, QuantMode::Nvfp4),
                4 => (32, 4, QuantMode::Mxfp4),
                8 => (32, 8, QuantMode::Mxfp8),
                _ => return None,
            }
        } else {
            (64, weight_cols * 32 / (scales_cols * 64), QuantMode::Affine)
        };
        Some(Self {
            group_size,
            bits,
            mode,
        })
    }
}

/// `config.quantization`: the default parameters and per-layer overrides (`false`: the layer
/// is not quantized).
#[derive(Debug, Clone, Default)]
pub struct Quantization {
    default: Option<QuantParams>,
    per_layer: HashMap<String, Option<QuantParams>>,
}

impl Quantization {
    pub fn from_config(config: &Value) -> Self {
        let Some(q) = config
            .get("quantization")
            .or_else(|| config.get("quantization_config"))
            .and_then(Value::as_object)
        else {
            return Self::default();
        };
        let default = QuantParams::from_entry(&Value::Object(q.clone()));
        let per_layer = q
            .iter()
            .filter(|(_, v)| v.is_object() || v.is_boolean())
            .map(|(k, v)| (k.clone(), QuantParams::from_entry(v)))
            .collect();
        Self { default, per_layer }
    }

    fn for_layer(&self, prefix: &str) -> Option<QuantParams> {
        match self.per_layer.get(prefix) {
            Some(setting) => *setting,
            None => self.default,
        }
    }
}

/// The loaded tensors, handed out by name to the layers that own them.
pub struct Tensors {
    map: HashMap<String, Array>,
    quantization: Quantization,
    source: PathBuf,
}

impl Tensors {
    pub fn new(map: HashMap<String, Array>, quantization: Quantization, source: PathBuf) -> Self {
        Self {
            map,
            quantization,
            source,
        }
    }

    pub fn take(&mut self, name: &str) -> Result<Array, ModelError> {
        self.map
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.clone(),
                name: name.into(),
            })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The tensor `name`, left in place.
    pub fn peek(&self, name: &str) -> Option<&Array> {
        self.map.get(name)
    }

    /// The names of the tensors not taken yet.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Adds a tensor made from others (stacked experts).
    pub fn insert(&mut self, name: String, tensor: Array) {
        self.map.insert(name, tensor);
    }

    /// The `[out, in]` matrix (or `[experts, out, in]` stack) at `prefix`, quantized when
    /// `prefix.scales` exists, as the config says or, where it says nothing that fits the
    /// shapes, as the shapes say (mlx-lm infers unlisted layers too).
    pub fn matrix(&mut self, prefix: &str) -> Result<Matrix, ModelError> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        if !self.contains(&format!("{prefix}.scales")) {
            return Ok(Matrix::Dense(weight));
        }
        let scales = self.take(&format!("{prefix}.scales"))?;
        let biases = self.map.remove(&format!("{prefix}.biases"));
        let last = |a: &Array| a.shape().last().copied().unwrap_or(0);
        let (w_cols, s_cols) = (last(&weight), last(&scales));
        let uint8_scales = scales.dtype() == Dtype::Uint8;
        let params = self
            .quantization
            .for_layer(prefix)
            .filter(|p| p.fits(w_cols, s_cols, uint8_scales))
            .or_else(|| QuantParams::infer(w_cols, s_cols, uint8_scales))
            .ok_or_else(|| ModelError::Invalid {
                path: self.source.join("config.json"),
                reason: format!("cannot tell how '{prefix}' is quantized"),
            })?;
        Ok(Matrix::Quantized {
            weight,
            scales,
            biases,
            group_size: params.group_size,
            bits: params.bits,
            mode: params.mode,
        })
    }

    pub fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear, ModelError> {
        let matrix = self.matrix(prefix)?;
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Linear { matrix, bias })
    }

    pub fn norm(&mut self, prefix: &str, eps: f32) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm {
            weight: self.take(&format!("{prefix}.weight"))?,
            eps,
        })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Bytes the weights take once every quantized matrix is expanded to float32 (expert
    /// stacks stay as stored: [`switch_layers::stays_quantized`]).
    pub fn dequantized_bytes(&self) -> usize {
        let packed = |prefix: &str| {
            self.map.get(&format!("{prefix}.weight")).filter(|w| {
                w.dtype() == Dtype::Uint32 && self.map.contains_key(&format!("{prefix}.scales"))
            })
        };
        self.map
            .iter()
            .map(|(name, a)| {
                let (prefix, part) = name.rsplit_once('.').unwrap_or((name, ""));
                match packed(prefix) {
                    Some(w) if switch_layers::stays_quantized(w.ndim()) => a.nbytes(),
                    // Scales and biases disappear once their matrix is expanded.
                    Some(_) if part != "weight" => 0,
                    // Packed uint32 rows of `in * bits / 32` words.
                    Some(_) => match self.quantization.for_layer(prefix) {
                        Some(q) => a.size() * 32 / q.bits as usize * 4,
                        None => a.size() * 8 * 4,
                    },
                    None if name.ends_with(".scales") || name.ends_with(".biases") => 0,
                    None => a.size() * 4,
                }
            })
            .sum()
    }
}

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsMode {
    /// `Dequantized` on the CPU backend with float32 activations when the float32 weights
    /// fit comfortably in available memory; `Native` otherwise, and always on a GPU.
    #[default]
    Auto,
    /// As stored (quantized stays quantized): exact parity with mlx-lm.
    Native,
    /// Quantized matrices dequantized at load (to float32 with float32 activations): ~4-8x
    /// the memory of 4-bit weights, but batched CPU matmuls go through BLAS.
    Dequantized,
}

pub use crate::device::compute_dtype;

/// Builds the architecture named by `config["model_type"]` from `tensors`.
pub fn build_model(
    config: &Value,
    tensors: Tensors,
    mode: WeightsMode,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    let config_path = tensors.source().join("config.json");
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(arch) = architectures::find(model_type) else {
        return Err(ModelError::UnsupportedArchitecture {
            path: config_path,
            model_type: model_type.into(),
        });
    };
    let config = &arch.config.map_or_else(|| config.clone(), |f| f(config));
    let mode = resolve_mode(mode, &tensors);
    let args: ModelArgs =
        serde_json::from_value(config.clone()).map_err(|e| ModelError::Invalid {
            path: config_path.clone(),
            reason: format!("bad config: {e}"),
        })?;
    (arch.load)(config, &args, tensors, mode)
}

/// Applies the weights mode to one matrix (`Auto` must have been resolved already).
pub fn prepare(matrix: Matrix, mode: WeightsMode) -> Result<Matrix, ModelError> {
    match mode {
        WeightsMode::Native | WeightsMode::Auto => Ok(matrix),
        // In the compute dtype: float32 on the CPU, the checkpoint's dtype otherwise.
        WeightsMode::Dequantized => Ok(matrix.dequantized(compute_dtype())?),
    }
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<Value, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| ModelError::parse(&path, e))?;
    if !config.is_object() {
        return Err(ModelError::Invalid {
            path,
            reason: "not a JSON object".into(),
        });
    }
    Ok(config)
}

/// Loads the weights of an MLX-format model folder into its architecture.
pub fn load_model_dir(
    dir: &Path,
    mode: WeightsMode,
) -> Result<(Value, Box<dyn LanguageModel>), ModelError> {
    load_model_config(dir, read_config(dir)?, mode)
}

/// [`load_model_dir`] with its config.json already read (and perhaps amended).
pub fn load_model_config(
    dir: &Path,
    config: Value,
    mode: WeightsMode,
) -> Result<(Value, Box<dyn LanguageModel>), ModelError> {
    // Reject an unknown architecture before reading gigabytes of weights.
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if architectures::find(model_type).is_none() {
        return Err(ModelError::UnsupportedArchitecture {
            path: dir.join("config.json"),
            model_type: model_type.into(),
        });
    }
    let tensors = with_model_prefix(weights::load_safetensors_dir(dir, compute_dtype())?);
    materialize(&tensors)?;
    let tensors = Tensors::new(tensors, Quantization::from_config(&config), dir.into());
    let model = build_model(&config, tensors, mode)?;
    Ok((config, model))
}

/// A transformers base-model checkpoint (`Qwen3Model`, as Qwen3-Embedding is published) names
/// its tensors without the `model.` prefix its `…ForCausalLM` class adds (`embed_tokens.weight`,
/// `layers.0.…`, `norm.weight`) and has no head: prefixed here so that the decoder reads both.
fn with_model_prefix(tensors: HashMap<String, Array>) -> HashMap<String, Array> {
    if tensors.contains_key("model.embed_tokens.weight")
        || !tensors.contains_key("embed_tokens.weight")
    {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(name, t)| match name.starts_with("lm_head.") {
            true => (name, t),
            false => (format!("model.{name}"), t),
        })
        .collect()
}

/// Reads every tensor into memory now (MLX loads lazily), so that load time is paid at load,
/// not by the first request.
pub fn materialize(tensors: &HashMap<String, Array>) -> Result<(), ModelError> {
    mlx_rs::transforms::eval(tensors.values())?;
    Ok(())
}

/// Whether `Auto` expands quantized weights to float32: only where the CPU levers apply
/// ([`crate::device::cpu_levers`]: the CPU backend with float32 activations; a GPU keeps
/// weights as stored) and the expanded weights take at most a quarter of the memory available
/// now, so batching goes through BLAS without crowding the machine. The registry's memory plan
/// and the loader both ask this, so the estimate matches what loads.
pub fn auto_dequantizes(dequantized_bytes: u64, available: u64) -> bool {
    crate::device::cpu_levers() && dequantized_bytes <= available / 4
}

/// Settles `Auto` by [`auto_dequantizes`] against the memory available now.
pub fn resolve_mode(mode: WeightsMode, tensors: &Tensors) -> WeightsMode {
    if mode != WeightsMode::Auto {
        return mode;
    }
    let available = crate::memory::system_memory().available;
    let needed = tensors.dequantized_bytes() as u64;
    let chosen = if auto_dequantizes(needed, available) {
        WeightsMode::Dequantized
    } else {
        WeightsMode::Native
    };
    tracing::info!(
        ?chosen,
        needed_mib = needed >> 20,
        available_mib = available >> 20,
        "weights mode"
    );
    chosen
}
