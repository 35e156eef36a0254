//! Gemma 4 (text): mlx-lm's `models/gemma4_text.py`, and `models/gemma4.py`'s wrapper of it
//! (`model_type: gemma4`, the text model's fields under `text_config`, its weights under
//! `language_model.`).
//!
//! Against Gemma 3: plain RMSNorms (`weight`, not `1 + weight`); the embeddings scaled by
//! √hidden as a float; queries and keys RMS-normed per head and values too (without a scale);
//! a softmax scale of 1. Layers are `sliding_attention` (window `sliding_window`) or
//! `full_attention` (`layer_types`, else every `sliding_window_pattern`-th is full), each kind
//! with its own `rope_parameters`; full layers may have wider heads (`global_head_dim`) with
//! RoPE on a fraction of them (`proportional`), and, with `attention_k_eq_v`, values equal to
//! their keys and their own KV head count. Each block ends scaled by `layer_scalar`.
//!
//! The small models add per-layer inputs: a second embedding table gives every token a vector
//! per layer, mixed with a projection of the embeddings and gated into that layer's output.
//! Their last `num_kv_shared_layers` layers compute no keys or values: each attends over the
//! cache of the last earlier layer of its kind, so only the first layers have a cache (as
//! mlx-lm's `make_cache`). The MoE models run a dense MLP and routed experts (`Router`,
//! `Experts`) side by side in every block. Logits are soft-capped (`final_logit_softcapping`).

use mlx_rs::error::Exception;
use mlx_rs::fast::rms_norm;
use mlx_rs::ops::indexing::take_along_axis;
use mlx_rs::ops::{arange, argpartition_axis, concatenate, full, softmax_axis, tanh};
use mlx_rs::Array;
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::{attend_stored, attend_with, Extras};
use super::decoder::linear;
use super::gemma3_text::{fill_defaults, unwrap_text_config};
use super::layers::{embed, gelu_approx, head, scalar, GeluMlp, Linear, Matrix, RmsNorm, Rope};
use super::switch_layers::{router_logits, Activation, SwitchGlu};
use super::{
    prepare, BatchSeq, LanguageModel, Logits, ModelArgs, ModelError, Tensors, WeightsMode,
};
use crate::mlx_ext::slice_axis;

type Result<T> = std::result::Result<T, Exception>;

/// gemma4_text.py's `ModelArgs` defaults for the common fields a config may leave out.
const TEXT_DEFAULTS: &[(&str, f64)] = &[
    ("hidden_size", 1536.0),
    ("num_hidden_layers", 35.0),
    ("intermediate_size", 6144.0),
    ("num_attention_heads", 8.0),
    ("head_dim", 256.0),
    ("rms_norm_eps", 1.0e-6),
    ("vocab_size", 262144.0),
    ("num_key_value_heads", 1.0),
    ("sliding_window", 512.0),
    ("max_position_embeddings", 131072.0),
];

/// `model_type: gemma4_text`'s config with mlx-lm's defaults filled in.
pub fn text_config(config: &Value) -> Value {
    let mut c = config.as_object().cloned().unwrap_or_default();
    fill_defaults(&mut c, TEXT_DEFAULTS);
    Value::Object(c)
}

/// `model_type: gemma4`: the text model's config, as gemma4.py's `ModelArgs.__post_init__`
/// makes it (the top-level vocabulary size, 8 heads and 1 KV head unless given).
pub fn wrapped_config(config: &Value) -> Value {
    unwrap_text_config(config, "gemma4", 262144, 1, TEXT_DEFAULTS)
}

/// gemma4_text's fields beyond [`ModelArgs`], with mlx-lm's defaults.
#[derive(Debug, Deserialize)]
struct Gemma4Args {
    #[serde(default = "default_global_head_dim")]
    global_head_dim: Option<i32>,
    num_global_key_value_heads: Option<i32>,
    #[serde(default = "default_kv_shared")]
    num_kv_shared_layers: usize,
    #[serde(default = "default_per_layer_input")]
    hidden_size_per_layer_input: Option<i32>,
    #[serde(default = "default_pattern")]
    sliding_window_pattern: usize,
    #[serde(default)]
    attention_k_eq_v: bool,
    #[serde(default = "default_softcap")]
    final_logit_softcapping: Option<f32>,
    #[serde(default)]
    enable_moe_block: bool,
    top_k_experts: Option<i32>,
    rope_parameters: Option<serde_json::Map<String, Value>>,
}

fn default_global_head_dim() -> Option<i32> {
    Some(512)
}
fn default_kv_shared() -> usize {
    20
}
fn default_per_layer_input() -> Option<i32> {
    Some(256)
}
fn default_pattern() -> usize {
    5
}
fn default_softcap() -> Option<f32> {
    Some(30.0)
}

impl Gemma4Args {
    /// `layer_types`, or `sliding_window_pattern - 1` sliding layers then a full one, repeated.
    fn layer_types(&self, args: &ModelArgs) -> Vec<bool> {
        let n = args.num_hidden_layers;
        match &args.layer_types {
            Some(types) => types.iter().map(|t| t == "sliding_attention").collect(),
            None => {
                let pattern = self.sliding_window_pattern.max(1);
                (0..n).map(|i| (i + 1) % pattern != 0).collect()
            }
        }
    }

    /// mlx-lm's `rope_parameters` default: proportional RoPE on a quarter of the full
    /// layers' heads (base 1e6), plain RoPE on the sliding ones (base 1e4).
    fn rope_params(&self, sliding: bool) -> serde_json::Map<String, Value> {
        let key = if sliding {
            "sliding_attention"
        } else {
            "full_attention"
        };
        if let Some(p) = &self.rope_parameters {
            return p
                .get(key)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
        }
        let v = if sliding {
            serde_json::json!({"partial_rotary_factor": 1.0, "rope_theta": 10000.0,
                               "rope_type": "default"})
        } else {
            serde_json::json!({"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                               "rope_type": "proportional"})
        };
        v.as_object().cloned().unwrap_or_default()
    }
}

/// `initialize_rope` for one layer kind's `rope_parameters` over heads of `dims` features.
fn layer_rope(
    params: &serde_json::Map<String, Value>,
    dims: i32,
    traditional: bool,
    source: &std::path::Path,
) -> std::result::Result<Rope, ModelError> {
    let num = |k: &str, d: f64| params.get(k).and_then(Value::as_f64).unwrap_or(d);
    let base = num("rope_theta", 10000.0) as f32;
    let kind = params
        .get("type")
        .or_else(|| params.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let mut rope = Rope {
        dims,
        traditional,
        base,
        scale: 1.0,
        freqs: None,
        mscale: 1.0,
    };
    match kind {
        "default" => {}
        "linear" => rope.scale = 1.0 / num("factor", 1.0) as f32,
        "proportional" => {
            let rotated = (dims as f64 * num("partial_rotary_factor", 1.0)) as i32;
            rope.freqs = Some(proportional_freqs(
                dims,
                rotated,
                base,
                num("factor", 1.0) as f32,
            )?);
        }
        other => {
            return Err(ModelError::Invalid {
                path: source.join("config.json"),
                reason: format!("unsupported gemma4 rope_type '{other}'"),
            })
        }
    }
    Ok(rope)
}

/// `ProportionalRoPE`'s frequencies, with the same float32 MLX ops: `factor * base ** (i /
/// dims)` for the `rotated` features (`i` = 0, 2, …), infinite (no rotation) for the rest.
fn proportional_freqs(dims: i32, rotated: i32, base: f32, factor: f32) -> Result<Array> {
    let exponents = arange::<_, f32>(0, rotated, 2)? / dims as f32;
    let freqs = Array::from_f32(base).power(&exponents)? * factor;
    let rest = full::<f32>(&[(dims - rotated) / 2], Array::from_f32(f32::INFINITY))?;
    let freqs = concatenate(&[freqs, rest], 0)?;
    freqs.eval()?;
    Ok(freqs)
}

/// mlx-lm's `sanitize` of a Hugging Face checkpoint's experts: `experts.gate_up_proj`
/// (`[experts, 2 * moe_intermediate, hidden]`, gate then up) split into SwitchGLU's
/// `gate_proj` and `up_proj`, `experts.down_proj` renamed. Returns SwitchGLU's prefix.
fn split_gate_up(t: &mut Tensors, experts: &str) -> std::result::Result<String, ModelError> {
    let into = format!("{experts}.switch_glu");
    let gate_up = format!("{experts}.gate_up_proj");
    if t.contains(&gate_up) {
        let parts = t.take(&gate_up)?.split_equal(2, -2)?;
        for (part, name) in parts.into_iter().zip(["gate_proj", "up_proj"]) {
            let part = part.contiguous()?;
            part.eval()?;
            t.insert(format!("{into}.{name}.weight"), part);
        }
    }
    let down = format!("{experts}.down_proj");
    if t.contains(&down) {
        let w = t.take(&down)?;
        t.insert(format!("{into}.down_proj.weight"), w);
    }
    Ok(into)
}

/// The keys and values of a layer that computes its own (`k_proj`; `v_proj` unless values
/// are the keys).
struct KvProj {
    k_proj: Linear,
    v_proj: Option<Linear>,
    k_norm: RmsNorm,
    n_kv_heads: i32,
}

struct Attention {
    q_proj: Linear,
    /// `None`: a KV-shared layer.
    kv: Option<KvProj>,
    o_proj: Linear,
    q_norm: RmsNorm,
    n_heads: i32,
    head_dim: i32,
    eps: f32,
    rope: Rope,
    /// `Some(sliding_window)` on sliding layers.
    window: Option<i32>,
    /// The cache layer this layer stores into, or reads (a KV-shared layer: the last earlier
    /// layer of its kind).
    cache_layer: usize,
}

impl Attention {
    fn forward(&self, x: &Array, batch: &mut [BatchSeq<'_>]) -> Result<Array> {
        let n = x.shape()[1];
        let d = self.head_dim;
        let q = self.q_proj.forward(x)?.reshape(&[1, n, self.n_heads, d])?;
        let q = self.q_norm.forward(&q)?;
        let extras = Extras {
            window: self.window,
            sinks: None,
        };
        let out = match &self.kv {
            Some(kv) => {
                let k = kv.k_proj.forward(x)?.reshape(&[1, n, kv.n_kv_heads, d])?;
                let v = match &kv.v_proj {
                    Some(v_proj) => v_proj.forward(x)?.reshape(&[1, n, kv.n_kv_heads, d])?,
                    None => k.clone(),
                };
                let k = kv.k_norm.forward(&k)?;
                // `v_norm`: RMSNormNoScale.
                let v = rms_norm(&v, None, self.eps)?;
                attend_with(&q, &k, &v, batch, self.cache_layer, &self.rope, 1.0, extras)?
            }
            None => attend_stored(&q, batch, self.cache_layer, &self.rope, 1.0, extras)?,
        };
        self.o_proj.forward(&out)
    }
}

/// Expert router: norm → scale → project → top-k → renormalize.
struct Router {
    proj: Linear,
    /// `scale * hidden_size**-0.5`, as the norm's weight.
    scale: Array,
    per_expert_scale: Array,
    top_k: i32,
    eps: f32,
}

impl Router {
    /// `(top_k_indices, top_k_weights)`, `[1, N, k]` each.
    fn forward(&self, x: &Array) -> Result<(Array, Array)> {
        let x = rms_norm(x, Some(&self.scale), self.eps)?;
        let scores = router_logits(&self.proj, &x)?;
        let experts = *scores.shape().last().expect("experts axis");
        let k = self.top_k;
        let inds = argpartition_axis(&scores, -k, -1)?;
        let inds = slice_axis(&inds, inds.ndim() - 1, experts - k, experts)?;
        let weights = take_along_axis(&scores, &inds, -1)?;
        let weights = softmax_axis(&weights, -1, false)?;
        let weights = weights * self.per_expert_scale.take_axis(&inds, 0)?;
        Ok((inds, weights))
    }
}

/// Sparse MoE over SwitchGLU with a GeGLU activation.
struct Experts {
    switch_glu: SwitchGlu,
}

impl Experts {
    fn forward(&self, x: &Array, top_k_indices: &Array, top_k_weights: &Array) -> Result<Array> {
        let w = top_k_weights.expand_dims(-1)?;
        let y = self.switch_glu.forward(x, top_k_indices)?;
        (w * y).sum_axis(-2, false)
    }
}

/// The MoE half of a block: its router, experts and their norms.
struct MoE {
    router: Router,
    experts: Experts,
    post_feedforward_layernorm_1: RmsNorm,
    post_feedforward_layernorm_2: RmsNorm,
    pre_feedforward_layernorm_2: RmsNorm,
}

/// Per-layer input gating (the small models).
struct PerLayerInput {
    per_layer_input_gate: Linear,
    per_layer_projection: Linear,
    post_per_layer_input_norm: RmsNorm,
}

struct DecoderLayer {
    self_attn: Attention,
    mlp: GeluMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    post_feedforward_layernorm: RmsNorm,
    moe: Option<MoE>,
    per_layer_input: Option<PerLayerInput>,
    layer_scalar: Array,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        per_layer_input: Option<&Array>,
    ) -> Result<Array> {
        let residual = x;
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, batch)?;
        let h = self.post_attention_layernorm.forward(&h)?;
        let h = residual + h;

        let residual = &h;
        let h2 = match &self.moe {
            Some(moe) => {
                let h1 = self.pre_feedforward_layernorm.forward(&h)?;
                let h1 = self.mlp.forward(&h1)?;
                let h1 = moe.post_feedforward_layernorm_1.forward(&h1)?;

                let (top_k_indices, top_k_weights) = moe.router.forward(&h)?;
                let h2 = moe.pre_feedforward_layernorm_2.forward(&h)?;
                let h2 = moe.experts.forward(&h2, &top_k_indices, &top_k_weights)?;
                let h2 = moe.post_feedforward_layernorm_2.forward(&h2)?;
                h1 + h2
            }
            None => self
                .mlp
                .forward(&self.pre_feedforward_layernorm.forward(&h)?)?,
        };
        let h2 = self.post_feedforward_layernorm.forward(&h2)?;
        let mut h = residual + h2;

        if let (Some(p), Some(input)) = (&self.per_layer_input, per_layer_input) {
            let residual = &h;
            let gate = p.per_layer_input_gate.forward(&h)?;
            let gate = gelu_approx(&gate)?;
            let gate = gate * input;
            let gate = p.per_layer_projection.forward(&gate)?;
            let gate = p.post_per_layer_input_norm.forward(&gate)?;
            h = residual + gate;
        }
        Ok(h * &self.layer_scalar)
    }
}

/// The per-layer embeddings and their projection from the model's embeddings.
struct PerLayerEmbeddings {
    embed_tokens_per_layer: Matrix,
    per_layer_model_projection: Linear,
    per_layer_projection_norm: RmsNorm,
    hidden_size_per_layer_input: i32,
    hidden_size: i32,
}

impl PerLayerEmbeddings {
    /// `_get_per_layer_inputs` and `_project_per_layer_inputs`: `[1, N, layers, per_layer]`
    /// from the tokens and the scaled embeddings `h`.
    fn inputs(&self, tokens: &Array, h: &Array, layers: i32) -> Result<Array> {
        let d = self.hidden_size_per_layer_input;
        let n = h.shape()[1];
        let per_layer = embed(&self.embed_tokens_per_layer, tokens)?;
        let per_layer = &per_layer * scalar((d as f32).sqrt(), &per_layer)?;
        let per_layer = per_layer.reshape(&[1, n, layers, d])?;

        let projection = self.per_layer_model_projection.forward(h)?;
        let projection = &projection * scalar((self.hidden_size as f32).powf(-0.5), &projection)?;
        let projection = projection.reshape(&[1, n, layers, d])?;
        let projection = self.per_layer_projection_norm.forward(&projection)?;
        let sum = projection + per_layer;
        let out = &sum * scalar(2f32.powf(-0.5), &sum)?;
        Ok(out)
    }
}

pub struct Model {
    embed_tokens: Matrix,
    hidden_size: i32,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    per_layer: Option<PerLayerEmbeddings>,
    /// `None`: tied to the embeddings.
    lm_head: Option<Matrix>,
    final_logit_softcapping: Option<f32>,
    /// Layers with a cache of their own (the first `num_hidden_layers -
    /// num_kv_shared_layers`).
    cache_layers: usize,
}

/// Loads a Gemma 4 text model whose tensors are named under `root` (`""`, or
/// `"language_model."` in gemma4's wrapper).
pub fn load(
    config: &Value,
    args: &ModelArgs,
    mut t: Tensors,
    mode: WeightsMode,
    root: &str,
) -> std::result::Result<Model, ModelError> {
    let g: Gemma4Args = parse_args(config, &t)?;
    let eps = args.rms_norm_eps;
    let n_layers = args.num_hidden_layers;
    let sliding = g.layer_types(args);
    let config_path = t.source().join("config.json");
    let invalid = |reason: String| ModelError::Invalid {
        path: config_path.clone(),
        reason,
    };
    if sliding.len() < n_layers {
        return Err(invalid(format!(
            "layer_types names {} layers of {n_layers}",
            sliding.len()
        )));
    }
    let cache_layers = n_layers.saturating_sub(g.num_kv_shared_layers);
    if cache_layers == 0 {
        return Err(invalid("every layer is KV-shared".into()));
    }
    // A KV-shared layer reads the cache of the last earlier layer of its kind.
    let mut last_of_kind = [None, None];
    for (i, &s) in sliding.iter().enumerate().take(cache_layers) {
        last_of_kind[s as usize] = Some(i);
    }
    let window = args.sliding_window.unwrap_or(512);
    let embed_tokens = prepare(t.matrix(&format!("{root}model.embed_tokens"))?, mode)?;
    let lm_head = if args.tie_word_embeddings.unwrap_or(true) {
        None
    } else {
        Some(prepare(t.matrix(&format!("{root}lm_head"))?, mode)?)
    };
    let per_layer_dim = g.hidden_size_per_layer_input.unwrap_or(0);
    let mut layers = Vec::with_capacity(n_layers);
    for (i, &is_sliding) in sliding.iter().enumerate().take(n_layers) {
        let p = format!("{root}model.layers.{i}");
        let a = format!("{p}.self_attn");
        let head_dim = match g.global_head_dim {
            Some(d) if d > 0 && !is_sliding => d,
            _ => args.head_dim(),
        };
        let k_eq_v = g.attention_k_eq_v && !is_sliding;
        let n_kv_heads = match g.num_global_key_value_heads {
            Some(n) if k_eq_v => n,
            _ => args.kv_heads(),
        };
        let (kv, cache_layer) = if i < cache_layers {
            let kv = KvProj {
                k_proj: linear(&mut t, &format!("{a}.k_proj"), false, mode)?,
                v_proj: if k_eq_v {
                    None
                } else {
                    Some(linear(&mut t, &format!("{a}.v_proj"), false, mode)?)
                },
                k_norm: t.norm(&format!("{a}.k_norm"), eps)?,
                n_kv_heads,
            };
            (Some(kv), i)
        } else {
            let source = last_of_kind[is_sliding as usize].ok_or_else(|| {
                invalid(format!(
                    "KV-shared layer {i} has no earlier layer of its kind"
                ))
            })?;
            (None, source)
        };
        let rope = layer_rope(
            &g.rope_params(is_sliding),
            head_dim,
            args.rope_traditional,
            t.source(),
        )?;
        let self_attn = Attention {
            q_proj: linear(&mut t, &format!("{a}.q_proj"), false, mode)?,
            kv,
            o_proj: linear(&mut t, &format!("{a}.o_proj"), false, mode)?,
            q_norm: t.norm(&format!("{a}.q_norm"), eps)?,
            n_heads: args.num_attention_heads,
            head_dim,
            eps,
            rope,
            window: is_sliding.then_some(window),
            cache_layer,
        };
        let moe = if g.enable_moe_block {
            let r = format!("{p}.router");
            let switch_glu = split_gate_up(&mut t, &format!("{p}.experts"))?;
            let scale = t.take(&format!("{r}.scale"))?;
            let root_size = (args.hidden_size as f32).powf(-0.5);
            let scale = &scale * scalar(root_size, &scale)?;
            scale.eval()?;
            let top_k = g
                .top_k_experts
                .ok_or_else(|| invalid("enable_moe_block without top_k_experts".into()))?;
            Some(MoE {
                router: Router {
                    proj: linear(&mut t, &format!("{r}.proj"), false, mode)?,
                    scale,
                    per_expert_scale: t.take(&format!("{r}.per_expert_scale"))?,
                    top_k,
                    eps,
                },
                experts: Experts {
                    switch_glu: SwitchGlu::load(
                        &mut t,
                        &switch_glu,
                        false,
                        Activation::GeGlu,
                        None,
                    )?,
                },
                post_feedforward_layernorm_1: t
                    .norm(&format!("{p}.post_feedforward_layernorm_1"), eps)?,
                post_feedforward_layernorm_2: t
                    .norm(&format!("{p}.post_feedforward_layernorm_2"), eps)?,
                pre_feedforward_layernorm_2: t
                    .norm(&format!("{p}.pre_feedforward_layernorm_2"), eps)?,
            })
        } else {
            None
        };
        let per_layer_input = if per_layer_dim > 0 {
            Some(PerLayerInput {
                per_layer_input_gate: linear(
                    &mut t,
                    &format!("{p}.per_layer_input_gate"),
                    false,
                    mode,
                )?,
                per_layer_projection: linear(
                    &mut t,
                    &format!("{p}.per_layer_projection"),
                    false,
                    mode,
                )?,
                post_per_layer_input_norm: t
                    .norm(&format!("{p}.post_per_layer_input_norm"), eps)?,
            })
        } else {
            None
        };
        layers.push(DecoderLayer {
            self_attn,
            mlp: GeluMlp::load(&mut t, &format!("{p}.mlp"), mode)?,
            input_layernorm: t.norm(&format!("{p}.input_layernorm"), eps)?,
            post_attention_layernorm: t.norm(&format!("{p}.post_attention_layernorm"), eps)?,
            pre_feedforward_layernorm: t.norm(&format!("{p}.pre_feedforward_layernorm"), eps)?,
            post_feedforward_layernorm: t.norm(&format!("{p}.post_feedforward_layernorm"), eps)?,
            moe,
            per_layer_input,
            layer_scalar: t.take(&format!("{p}.layer_scalar"))?,
        });
    }
    let per_layer = if per_layer_dim > 0 {
        let m = format!("{root}model");
        Some(PerLayerEmbeddings {
            embed_tokens_per_layer: prepare(
                t.matrix(&format!("{m}.embed_tokens_per_layer"))?,
                mode,
            )?,
            per_layer_model_projection: linear(
                &mut t,
                &format!("{m}.per_layer_model_projection"),
                false,
                mode,
            )?,
            per_layer_projection_norm: t.norm(&format!("{m}.per_layer_projection_norm"), eps)?,
            hidden_size_per_layer_input: per_layer_dim,
            hidden_size: args.hidden_size,
        })
    } else {
        None
    };
    let norm = t.norm(&format!("{root}model.norm"), eps)?;
    Ok(Model {
        embed_tokens,
        hidden_size: args.hidden_size,
        layers,
        norm,
        per_layer,
        lm_head,
        final_logit_softcapping: g.final_logit_softcapping,
        cache_layers,
    })
}

impl LanguageModel for Model {
    fn forward(&self, tokens: &Array, batch: &mut [BatchSeq<'_>], logits: Logits) -> Result<Array> {
        let input_embeddings = embed(&self.embed_tokens, tokens)?;
        let embed_scale = scalar((self.hidden_size as f32).sqrt(), &input_embeddings)?;
        let mut h = &input_embeddings * embed_scale;
        let n_layers = self.layers.len() as i32;
        let per_layer_inputs = match &self.per_layer {
            Some(p) => Some(p.inputs(tokens, &h, n_layers)?),
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let input = match &per_layer_inputs {
                Some(all) => {
                    let i = i as i32;
                    let s = all.shape();
                    Some(slice_axis(all, 2, i, i + 1)?.reshape(&[s[0], s[1], s[3]])?)
                }
                None => None,
            };
            h = layer.forward(&h, batch, input.as_ref())?;
        }
        for seq in batch.iter_mut() {
            seq.cache.advance(seq.len);
        }
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let out = head(&h, batch, logits, &self.norm, lm_head)?;
        match self.final_logit_softcapping {
            // `logit_softcap`: tanh(x / cap) * cap.
            Some(cap) => Ok(tanh(out.divide(scalar(cap, &out)?)?)? * scalar(cap, &out)?),
            None => Ok(out),
        }
    }

    /// The layers with a cache of their own (KV-shared layers read theirs).
    fn num_layers(&self) -> usize {
        self.cache_layers
    }

    fn kv_windows(&self) -> Vec<Option<i32>> {
        let own = self.layers.iter().take(self.cache_layers);
        own.map(|l| l.self_attn.window).collect()
    }
}
