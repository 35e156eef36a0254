//! Gemma 3 (text): mlx-lm's `models/gemma3_text.py`, and `models/gemma3.py`'s wrapper of it
//! (`model_type: gemma3`, the text model's fields under `text_config`, its weights under
//! `language_model.`). Gemma's RMSNorm scales by `1 + weight`; the embeddings are scaled by
//! √hidden (rounded to bfloat16, as mlx-lm does); each block has norms before and after both
//! attention and the MLP; queries and keys are RMS-normed per head; the softmax scale is
//! `query_pre_attn_scalar^-0.5`; the MLP is gelu(approx)-gated. Layers are sliding-window
//! (`sliding_window` positions, RoPE base `rope_local_base_freq`) except every
//! `sliding_window_pattern`-th, which is global (RoPE base `rope_theta`, with `rope_scaling`).
//! Embeddings are tied when the checkpoint has no `lm_head`. mlx-lm's gemma3_text applies no
//! logit soft-capping (Gemma 2 did), so neither do we.

use mlx_rs::error::Exception;
use mlx_rs::ops::clip;
use mlx_rs::{Array, Dtype};
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::{attend_with, Extras};
use super::decoder::linear;
use super::layers::{embed, head, GeluMlp, Linear, Matrix, RmsNorm, Rope};
use super::{
    make_rope, prepare, BatchSeq, LanguageModel, Logits, ModelArgs, ModelError, Tensors,
    WeightsMode,
};

/// gemma3_text's fields beyond [`ModelArgs`], with mlx-lm's defaults.
#[derive(Debug, Deserialize)]
struct GemmaArgs {
    #[serde(default = "default_scalar")]
    query_pre_attn_scalar: f32,
    #[serde(default = "default_local_base")]
    rope_local_base_freq: f32,
    #[serde(default = "default_window")]
    sliding_window: i32,
    #[serde(default = "default_pattern")]
    sliding_window_pattern: usize,
}

fn default_scalar() -> f32 {
    256.0
}
fn default_local_base() -> f32 {
    10_000.0
}
fn default_window() -> i32 {
    512
}
fn default_pattern() -> usize {
    6
}

/// gemma3_text.py's `ModelArgs` defaults for the common fields a Gemma 3 config may leave out
/// (Hugging Face's Gemma 3 configs omit their defaults, notably in `text_config`).
const TEXT_DEFAULTS: &[(&str, f64)] = &[
    ("hidden_size", 1152.0),
    ("num_hidden_layers", 26.0),
    ("intermediate_size", 6912.0),
    ("num_attention_heads", 4.0),
    ("head_dim", 256.0),
    ("rms_norm_eps", 1.0e-6),
    ("vocab_size", 262144.0),
    ("num_key_value_heads", 1.0),
];

/// Inserts `defaults` (a Gemma text model's `ModelArgs` defaults) that `config` leaves out.
pub(super) fn fill_defaults(config: &mut serde_json::Map<String, Value>, defaults: &[(&str, f64)]) {
    for (key, value) in defaults {
        if !config.contains_key(*key) {
            let v = if value.fract() == 0.0 {
                Value::from(*value as i64)
            } else {
                Value::from(*value)
            };
            config.insert((*key).into(), v);
        }
    }
}

/// `model_type: gemma3_text`'s config with mlx-lm's defaults filled in.
pub fn text_config(config: &Value) -> Value {
    let mut c = config.as_object().cloned().unwrap_or_default();
    fill_defaults(&mut c, TEXT_DEFAULTS);
    Value::Object(c)
}

/// `model_type: gemma3`: the text model's config, as gemma3.py's `ModelArgs.__post_init__`
/// makes it (the top-level vocabulary size, 8 heads and 4 KV heads unless given).
pub fn wrapped_config(config: &Value) -> Value {
    unwrap_text_config(config, "gemma3", 262208, 4, TEXT_DEFAULTS)
}

/// A Gemma wrapper's (`model_type`) text model config: `text_config` with the top-level
/// vocabulary size (default `vocab`), 8 heads and `kv_heads` KV heads unless given, the
/// wrapper's quantization, and the text model's `defaults`.
pub(super) fn unwrap_text_config(
    config: &Value,
    model_type: &str,
    vocab: i64,
    kv_heads: i64,
    defaults: &[(&str, f64)],
) -> Value {
    let mut c = config
        .get("text_config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let vocab = config
        .get("vocab_size")
        .cloned()
        .unwrap_or(Value::from(vocab));
    c.insert("vocab_size".into(), vocab);
    c.entry("num_attention_heads").or_insert(Value::from(8));
    c.entry("num_key_value_heads")
        .or_insert(Value::from(kv_heads));
    c.insert("model_type".into(), Value::from(model_type));
    if let Some(q) = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))
    {
        c.insert("quantization".into(), q.clone());
    }
    fill_defaults(&mut c, defaults);
    Value::Object(c)
}

/// Gemma's RMSNorm: `rms_norm(x, 1 + weight)`, the `1 + weight` in the weight's dtype (mlx-lm
/// adds a Python float), computed once at load.
fn gemma_norm(t: &mut Tensors, prefix: &str, eps: f32) -> Result<RmsNorm, ModelError> {
    let w = t.take(&format!("{prefix}.weight"))?;
    let one = Array::from_f32(1.0).as_dtype(w.dtype())?;
    let weight = &one + &w;
    weight.eval()?;
    Ok(RmsNorm { weight, eps })
}

/// gemma3_text.py's `clip_residual`: `x + y`, in float16 summed in float32 and clipped to
/// float16's range.
fn clip_residual(x: &Array, y: &Array) -> Result<Array, Exception> {
    if x.dtype() != Dtype::Float16 {
        return Ok(x + y);
    }
    let bound = 65504.0f32;
    let sum = x.as_dtype(Dtype::Float32)? + y.as_dtype(Dtype::Float32)?;
    clip(&sum, (-bound, bound))?.as_dtype(Dtype::Float16)
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
    rope: Rope,
    /// `Some(sliding_window)` on sliding layers.
    window: Option<i32>,
}

impl Attention {
    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception> {
        let n = x.shape()[1];
        let d = self.head_dim;
        let q = self.q_proj.forward(x)?.reshape(&[1, n, self.n_heads, d])?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, d])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, d])?;
        let (q, k) = (self.q_norm.forward(&q)?, self.k_norm.forward(&k)?);
        let extras = Extras {
            window: self.window,
            sinks: None,
        };
        let out = attend_with(&q, &k, &v, batch, layer, &self.rope, self.scale, extras)?;
        self.o_proj.forward(&out)
    }
}

struct Block {
    self_attn: Attention,
    mlp: GeluMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
}

impl Block {
    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception> {
        let r = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, batch, layer)?;
        let h = clip_residual(x, &self.post_attention_layernorm.forward(&r)?)?;
        let r = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&h)?)?;
        clip_residual(&h, &self.post_feedforward_layernorm.forward(&r)?)
    }
}

pub struct Model {
    embed_tokens: Matrix,
    /// √hidden_size rounded to bfloat16 (cast to the activations' dtype when applied).
    embed_scale: Array,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None`: tied to the embeddings.
    lm_head: Option<Matrix>,
}

/// Loads a Gemma 3 text model whose tensors are named under `root` (`""`, or
/// `"language_model."` in gemma3's wrapper).
pub fn load(
    config: &Value,
    args: &ModelArgs,
    mut t: Tensors,
    mode: WeightsMode,
    root: &str,
) -> Result<Model, ModelError> {
    let g: GemmaArgs = parse_args(config, &t)?;
    let eps = args.rms_norm_eps;
    let head_dim = args.head_dim();
    let pattern = g.sliding_window_pattern.max(1);
    let embed_tokens = prepare(t.matrix(&format!("{root}model.embed_tokens"))?, mode)?;
    let lm_head = if t.contains(&format!("{root}lm_head.weight")) {
        Some(prepare(t.matrix(&format!("{root}lm_head"))?, mode)?)
    } else {
        None
    };
    let mut layers = Vec::with_capacity(args.num_hidden_layers);
    for i in 0..args.num_hidden_layers {
        let p = format!("{root}model.layers.{i}");
        let a = format!("{p}.self_attn");
        let sliding = (i + 1) % pattern != 0;
        let rope = if sliding {
            Rope {
                dims: head_dim,
                traditional: false,
                base: g.rope_local_base_freq,
                scale: 1.0,
                freqs: None,
                mscale: 1.0,
            }
        } else {
            make_rope(args, false, args.rope_theta_or(1_000_000.0), t.source())?
        };
        let self_attn = Attention {
            q_proj: linear(&mut t, &format!("{a}.q_proj"), false, mode)?,
            k_proj: linear(&mut t, &format!("{a}.k_proj"), false, mode)?,
            v_proj: linear(&mut t, &format!("{a}.v_proj"), false, mode)?,
            o_proj: linear(&mut t, &format!("{a}.o_proj"), false, mode)?,
            q_norm: gemma_norm(&mut t, &format!("{a}.q_norm"), eps)?,
            k_norm: gemma_norm(&mut t, &format!("{a}.k_norm"), eps)?,
            n_heads: args.num_attention_heads,
            n_kv_heads: args.kv_heads(),
            head_dim,
            scale: g.query_pre_attn_scalar.powf(-0.5),
            rope,
            window: sliding.then_some(g.sliding_window),
        };
        layers.push(Block {
            self_attn,
            mlp: GeluMlp::load(&mut t, &format!("{p}.mlp"), mode)?,
            input_layernorm: gemma_norm(&mut t, &format!("{p}.input_layernorm"), eps)?,
            post_attention_layernorm: gemma_norm(
                &mut t,
                &format!("{p}.post_attention_layernorm"),
                eps,
            )?,
            pre_feedforward_layernorm: gemma_norm(
                &mut t,
                &format!("{p}.pre_feedforward_layernorm"),
                eps,
            )?,
            post_feedforward_layernorm: gemma_norm(
                &mut t,
                &format!("{p}.post_feedforward_layernorm"),
                eps,
            )?,
        });
    }
    let norm = gemma_norm(&mut t, &format!("{root}model.norm"), eps)?;
    let embed_scale =
        Array::from_f32((args.hidden_size as f32).sqrt()).as_dtype(Dtype::Bfloat16)?;
    Ok(Model {
        embed_tokens,
        embed_scale,
        layers,
        norm,
        lm_head,
    })
}

impl LanguageModel for Model {
    fn forward(
        &self,
        tokens: &Array,
        batch: &mut [BatchSeq<'_>],
        logits: Logits,
    ) -> Result<Array, Exception> {
        let h = embed(&self.embed_tokens, tokens)?;
        let mut h = &h * self.embed_scale.as_dtype(h.dtype())?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, batch, i)?;
        }
        for seq in batch.iter_mut() {
            seq.cache.advance(seq.len);
        }
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        head(&h, batch, logits, &self.norm, lm_head)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn kv_windows(&self) -> Vec<Option<i32>> {
        self.layers.iter().map(|l| l.self_attn.window).collect()
    }
}
