//! Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next): mlx-lm's `models/qwen3_next.py` and
//! `models/gated_delta.py`. Every `full_attention_interval`-th layer is gated attention (a
//! sigmoid gate from a second half of `q_proj` on the attention output, per-head q/k RMSNorm,
//! partial RoPE); the others are Gated DeltaNet linear attention: a causal depthwise conv1d
//! over the projected q, k, v (its last `kernel - 1` inputs kept per sequence), L2-normalised
//! q and k, and the gated delta rule's recurrent state `[v_heads, v_dim, k_dim]` (float32) per
//! sequence, run token by token as mlx-lm's ops version (`gated_delta_ops`) runs it on the
//! CPU. The state lives in each sequence's cache ([`KvCache::state`]). Feed-forward layers
//! are the sparse MoE block with a sigmoid-gated shared expert, or a SwiGLU MLP on
//! `mlp_only_layers`.

use mlx_rs::error::Exception;
use mlx_rs::fast::rms_norm;
use mlx_rs::ops::{broadcast_to, concatenate, conv1d, exp, logaddexp, sigmoid, stack, zeros_dtype};
use mlx_rs::{Array, Dtype};
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::attend;
use super::decoder::{linear, mlp, FeedForward};
use super::layers::{embed, head, Linear, Matrix, Mlp, RmsNorm, Rope};
use super::switch_layers::{Activation, PerExpert, Routing, SparseMoeBlock, SwitchGlu};
use super::{
    make_rope_dims, prepare, BatchSeq, LanguageModel, Logits, ModelArgs, ModelError, Tensors,
    WeightsMode,
};
use crate::mlx_ext::slice_axis;

type Result<T> = std::result::Result<T, Exception>;

/// qwen3_next's fields beyond [`ModelArgs`].
#[derive(Debug, Deserialize)]
struct NextArgs {
    linear_num_value_heads: i32,
    linear_num_key_heads: i32,
    linear_key_head_dim: i32,
    linear_value_head_dim: i32,
    linear_conv_kernel_dim: i32,
    #[serde(default)]
    num_experts: i32,
    #[serde(default)]
    num_experts_per_tok: i32,
    #[serde(default = "one")]
    decoder_sparse_step: usize,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default)]
    norm_topk_prob: bool,
    #[serde(default = "four")]
    full_attention_interval: usize,
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}

/// A Python float in `like`'s dtype (MLX's weak scalars).
fn scalar(v: f32, like: &Array) -> Result<Array> {
    Array::from_f32(v).as_dtype(like.dtype())
}

fn silu(x: &Array) -> Result<Array> {
    Ok(x * sigmoid(x)?)
}

/// `x[..., start..end]`
fn last_axis(x: &Array, start: i32, end: i32) -> Result<Array> {
    Ok(slice_axis(x, x.ndim() - 1, start, end)?)
}

/// Qwen3NextAttention: gated full attention.
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
}

impl Attention {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
    ) -> std::result::Result<Self, ModelError> {
        let head_dim = args.head_dim();
        let bias = args.attention_bias;
        let rotary = (head_dim as f32 * args.partial_rotary_factor.unwrap_or(1.0)) as i32;
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), bias, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), bias, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), bias, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), bias, mode)?,
            q_norm: t.norm(&format!("{p}.q_norm"), args.rms_norm_eps)?,
            k_norm: t.norm(&format!("{p}.k_norm"), args.rms_norm_eps)?,
            n_heads: args.num_attention_heads,
            n_kv_heads: args.kv_heads(),
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            rope: make_rope_dims(
                args,
                rotary,
                false,
                args.rope_theta_or(10_000.0),
                t.source(),
            )?,
        })
    }

    fn forward(&self, x: &Array, batch: &mut [BatchSeq<'_>], layer: usize) -> Result<Array> {
        let n = x.shape()[1];
        let d = self.head_dim;
        let qg = self
            .q_proj
            .forward(x)?
            .reshape(&[1, n, self.n_heads, 2 * d])?;
        let queries = last_axis(&qg, 0, d)?;
        let gate = last_axis(&qg, d, 2 * d)?.reshape(&[1, n, -1])?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, d])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, d])?;
        let (q, k) = (self.q_norm.forward(&queries)?, self.k_norm.forward(&k)?);
        let out = attend(&q, &k, &v, batch, layer, &self.rope, self.scale)?;
        self.o_proj.forward(&(out * sigmoid(&gate)?))
    }
}

/// How a Gated DeltaNet layer projects its input.
enum InProj {
    /// qwen3_next: q, k, v, z interleaved per key head in one matrix, b and a in another.
    Interleaved { qkvz: Linear, ba: Linear },
    /// qwen3_5: `in_proj_qkv` (q, k, v one after the other), `in_proj_z`, `in_proj_b`,
    /// `in_proj_a`.
    Split {
        qkv: Linear,
        z: Linear,
        b: Linear,
        a: Linear,
    },
}

/// Qwen3NextGatedDeltaNet (qwen3_5's `GatedDeltaNet`).
struct GatedDeltaNet {
    in_proj: InProj,
    /// `[conv_dim, kernel, 1]`: depthwise.
    conv1d: Array,
    dt_bias: Array,
    a_log: Array,
    /// Qwen3NextRMSNormGated's weight.
    norm: Array,
    eps: f32,
    out_proj: Linear,
    num_k_heads: i32,
    num_v_heads: i32,
    head_k_dim: i32,
    head_v_dim: i32,
    kernel: i32,
}

impl GatedDeltaNet {
    fn load(
        args: &ModelArgs,
        n: &NextArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
    ) -> std::result::Result<Self, ModelError> {
        let in_proj = if t.contains(&format!("{p}.in_proj_qkvz.weight")) {
            InProj::Interleaved {
                qkvz: linear(t, &format!("{p}.in_proj_qkvz"), false, mode)?,
                ba: linear(t, &format!("{p}.in_proj_ba"), false, mode)?,
            }
        } else {
            InProj::Split {
                qkv: linear(t, &format!("{p}.in_proj_qkv"), false, mode)?,
                z: linear(t, &format!("{p}.in_proj_z"), false, mode)?,
                b: linear(t, &format!("{p}.in_proj_b"), false, mode)?,
                a: linear(t, &format!("{p}.in_proj_a"), false, mode)?,
            }
        };
        Ok(Self {
            in_proj,
            conv1d: t.take(&format!("{p}.conv1d.weight"))?,
            dt_bias: t.take(&format!("{p}.dt_bias"))?,
            a_log: t.take(&format!("{p}.A_log"))?,
            norm: t.take(&format!("{p}.norm.weight"))?,
            eps: args.rms_norm_eps,
            out_proj: linear(t, &format!("{p}.out_proj"), false, mode)?,
            num_k_heads: n.linear_num_key_heads,
            num_v_heads: n.linear_num_value_heads,
            head_k_dim: n.linear_key_head_dim,
            head_v_dim: n.linear_value_head_dim,
            kernel: n.linear_conv_kernel_dim,
        })
    }

    fn key_dim(&self) -> i32 {
        self.num_k_heads * self.head_k_dim
    }
    fn value_dim(&self) -> i32 {
        self.num_v_heads * self.head_v_dim
    }
    fn conv_dim(&self) -> i32 {
        2 * self.key_dim() + self.value_dim()
    }

    /// The conv's input `[1, S, conv_dim]` (q, k, v), the output gate z `[1, S, Hv, Dv]`, and
    /// b, a `[1, S, Hv]`.
    fn project(&self, x: &Array) -> Result<(Array, Array, Array, Array)> {
        let s = x.shape()[1];
        let (nk, dk, nv, dv) = (
            self.num_k_heads,
            self.head_k_dim,
            self.num_v_heads,
            self.head_v_dim,
        );
        match &self.in_proj {
            InProj::Interleaved { qkvz, ba } => {
                // fix_query_key_value_ordering
                let qkvz = qkvz.forward(x)?.reshape(&[1, s, nk, -1])?;
                let ba = ba.forward(x)?.reshape(&[1, s, nk, -1])?;
                let per = nv / nk * dv;
                let q = last_axis(&qkvz, 0, dk)?;
                let k = last_axis(&qkvz, dk, 2 * dk)?;
                let v = last_axis(&qkvz, 2 * dk, 2 * dk + per)?.reshape(&[1, s, nv, dv])?;
                let z =
                    last_axis(&qkvz, 2 * dk + per, 2 * dk + 2 * per)?.reshape(&[1, s, nv, dv])?;
                let b = last_axis(&ba, 0, nv / nk)?.reshape(&[1, s, nv])?;
                let a = last_axis(&ba, nv / nk, 2 * (nv / nk))?.reshape(&[1, s, nv])?;
                let mixed = concatenate(
                    &[
                        q.reshape(&[1, s, -1])?,
                        k.reshape(&[1, s, -1])?,
                        v.reshape(&[1, s, -1])?,
                    ],
                    -1,
                )?;
                Ok((mixed, z, b, a))
            }
            InProj::Split { qkv, z, b, a } => Ok((
                qkv.forward(x)?,
                z.forward(x)?.reshape(&[1, s, nv, dv])?,
                b.forward(x)?,
                a.forward(x)?,
            )),
        }
    }

    fn forward(&self, x: &Array, batch: &mut [BatchSeq<'_>], layer: usize) -> Result<Array> {
        let s = x.shape()[1];
        let (mixed, z, b, a) = self.project(x)?;
        let out = if batch.len() > 1 && batch.iter().all(|seq| seq.len == 1) {
            self.decode_together(&mixed, &a, &b, batch, layer, x.dtype())?
        } else {
            self.each_sequence(&mixed, &a, &b, batch, layer, x.dtype())?
        };
        // Qwen3NextRMSNormGated: precise_swiglu(out, z, rms_norm(out))
        let normed = rms_norm(&out, Some(&self.norm), self.eps)?;
        let gated = (silu(&z.as_dtype(Dtype::Float32)?)? * normed.as_dtype(Dtype::Float32)?)
            .as_dtype(out.dtype())?;
        self.out_proj.forward(&gated.reshape(&[1, s, -1])?)
    }

    /// A decode step of several sequences (one row each) as one batch of the recurrence: the
    /// same operations per row as [`Self::sequence`] alone (rows never mix), so a sequence's
    /// numbers do not depend on its batch, but a fixed number of graph operations per layer
    /// instead of one set per sequence. Returns `[1, B, Hv, Dv]`.
    fn decode_together(
        &self,
        mixed: &Array,
        a: &Array,
        b: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
        dtype: Dtype,
    ) -> Result<Array> {
        let n = batch.len() as i32;
        let rows = |t: &Array| -> Result<Array> {
            let mut shape = t.shape().to_vec();
            shape[0] = n;
            shape[1] = 1;
            t.reshape(&shape)
        };
        let (mut convs, mut recurrents) = (Vec::new(), Vec::new());
        for seq in batch.iter_mut() {
            let [conv, recurrent] = self.state_or_zeros(seq.cache.state(layer).take(), dtype)?;
            convs.push(conv);
            recurrents.push(recurrent);
        }
        let state = [concatenate(&convs, 0)?, concatenate(&recurrents, 0)?];
        let (y, [conv, recurrent]) = self.sequence(&rows(mixed)?, &rows(a)?, &rows(b)?, state)?;
        for (i, seq) in batch.iter_mut().enumerate() {
            let i = i as i32;
            *seq.cache.state(layer) = Some(vec![
                slice_axis(&conv, 0, i, i + 1)?,
                slice_axis(&recurrent, 0, i, i + 1)?,
            ]);
        }
        let shape = y.shape();
        y.reshape(&[1, n, shape[2], shape[3]])
    }

    /// Each sequence's rows through its own recurrence. Returns `[1, S, Hv, Dv]`.
    fn each_sequence(
        &self,
        mixed: &Array,
        a: &Array,
        b: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
        dtype: Dtype,
    ) -> Result<Array> {
        let s = mixed.shape()[1];
        let mut outs = Vec::with_capacity(batch.len());
        let mut start = 0;
        for seq in batch.iter_mut() {
            let end = start + seq.len as i32;
            let rows = |t: &Array| -> Result<Array> {
                if start == 0 && end == s {
                    Ok(t.clone())
                } else {
                    Ok(slice_axis(t, 1, start, end)?)
                }
            };
            let state = self.state_or_zeros(seq.cache.state(layer).take(), dtype)?;
            let (out, new_state) = self.sequence(&rows(mixed)?, &rows(a)?, &rows(b)?, state)?;
            *seq.cache.state(layer) = Some(new_state.to_vec());
            outs.push(out);
            start = end;
        }
        if outs.len() == 1 {
            Ok(outs.pop().expect("one sequence"))
        } else {
            concatenate(&outs, 1)
        }
    }

    /// A sequence's state (conv state `[1, kernel - 1, conv_dim]`, recurrent state
    /// `[1, Hv, Dv, Dk]` float32), zeros before its first token.
    fn state_or_zeros(&self, state: Option<Vec<Array>>, dtype: Dtype) -> Result<[Array; 2]> {
        match state {
            Some(mut s) if s.len() == 2 => {
                let recurrent = s.pop().expect("two");
                Ok([s.pop().expect("two"), recurrent])
            }
            _ => Ok([
                zeros_dtype(&[1, self.kernel - 1, self.conv_dim()], dtype)?,
                zeros_dtype(
                    &[1, self.num_v_heads, self.head_v_dim, self.head_k_dim],
                    Dtype::Float32,
                )?,
            ]),
        }
    }

    /// `N` independent recurrences of `L` rows each (one sequence's prefill chunk: N = 1; a
    /// batched decode step: L = 1): `mixed` `[N, L, conv_dim]`, `a`/`b` `[N, L, v_heads]`,
    /// their states (see [`Self::state_or_zeros`]). Returns `[N, L, Hv, Dv]` and the new
    /// states.
    fn sequence(
        &self,
        mixed: &Array,
        a: &Array,
        b: &Array,
        [conv_state, recurrent]: [Array; 2],
    ) -> Result<(Array, [Array; 2])> {
        let (n, l) = (mixed.shape()[0], mixed.shape()[1]);
        let (nk, dk, nv, dv) = (
            self.num_k_heads,
            self.head_k_dim,
            self.num_v_heads,
            self.head_v_dim,
        );
        let keep = self.kernel - 1;
        let conv_input = concatenate(&[conv_state, mixed.clone()], 1)?;
        let total = conv_input.shape()[1];
        let new_conv = slice_axis(&conv_input, 1, total - keep, total)?;
        let conv_out = silu(&conv1d(
            &conv_input,
            &self.conv1d,
            1,
            0,
            1,
            self.conv_dim(),
        )?)?;
        let kd = self.key_dim();
        let q = last_axis(&conv_out, 0, kd)?.reshape(&[n, l, nk, dk])?;
        let k = last_axis(&conv_out, kd, 2 * kd)?.reshape(&[n, l, nk, dk])?;
        let v = last_axis(&conv_out, 2 * kd, self.conv_dim())?.reshape(&[n, l, nv, dv])?;

        // normalize_qk(inv_scale = dk^-0.5, eps = 1e-6)
        let inv_scale = (dk as f64).powf(-0.5);
        let rms_eps = (1e-6 * inv_scale * inv_scale) as f32;
        let q = scalar((inv_scale * inv_scale) as f32, &q)? * rms_norm(&q, None, rms_eps)?;
        let k = scalar(inv_scale as f32, &k)? * rms_norm(&k, None, rms_eps)?;

        // gated_delta_update: beta, g (compute_g), then gated_delta_ops' loop.
        let beta = sigmoid(b)?;
        let softplus = logaddexp(a + &self.dt_bias, scalar(0.0, a)?)?;
        let g = exp(-exp(self.a_log.as_dtype(Dtype::Float32)?)? * softplus)?;
        let repeat = nv / nk;
        let (q, k) = if repeat > 1 {
            let rep = |t: &Array| -> Result<Array> {
                broadcast_to(t.reshape(&[n, l, nk, 1, dk])?, &[n, l, nk, repeat, dk])?
                    .reshape(&[n, l, nv, dk])
            };
            (rep(&q)?, rep(&k)?)
        } else {
            (q, k)
        };
        let mut state = recurrent;
        let mut ys = Vec::with_capacity(l as usize);
        let at = |t: &Array, i: i32| -> Result<Array> {
            let mut shape = t.shape().to_vec();
            shape.remove(1);
            slice_axis(t, 1, i, i + 1)?.reshape(&shape)
        };
        for i in 0..l {
            let (qt, kt, vt) = (at(&q, i)?, at(&k, i)?, at(&v, i)?);
            let (gt, bt) = (at(&g, i)?, at(&beta, i)?);
            // _gated_delta_step_ops
            let decay = gt.reshape(&[n, nv, 1, 1])?;
            state = &state * decay;
            let k_row = kt.reshape(&[n, nv, 1, dk])?;
            let kv_mem = (&state * &k_row).sum_axis(-1, false)?;
            let delta = (vt - kv_mem) * bt.reshape(&[n, nv, 1])?;
            state = &state + &k_row * delta.reshape(&[n, nv, dv, 1])?;
            let y = (&state * qt.reshape(&[n, nv, 1, dk])?).sum_axis(-1, false)?;
            ys.push(y.as_dtype(qt.dtype())?);
        }
        let y = stack(&ys, 1)?;
        Ok((y, [new_conv, state]))
    }
}

/// Qwen3NextSparseMoeBlock: the routed experts plus a shared expert weighted by
/// `sigmoid(shared_expert_gate(x))`.
struct MoeWithSharedExpert {
    routed: SparseMoeBlock,
    shared_expert: Mlp,
    shared_expert_gate: Linear,
}

impl FeedForward for MoeWithSharedExpert {
    fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.routed.forward(x)?;
        let shared =
            sigmoid(&self.shared_expert_gate.forward(x)?)? * self.shared_expert.forward(x)?;
        Ok(y + shared)
    }
}

enum Mixer {
    Linear(GatedDeltaNet),
    Full(Attention),
}

struct Block {
    mixer: Mixer,
    mlp: Box<dyn FeedForward>,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

pub struct Model {
    embed_tokens: Matrix,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Matrix>,
}

/// A checkpoint in the Hugging Face layout, as mlx-lm's `sanitize` converts it: the conv
/// kernels stored `[channels, 1, kernel]` (moved to MLX's `[channels, kernel, 1]`) tell it
/// apart, and its RMSNorm weights (blocks', final, q/k; not the DeltaNet's gated norm) are
/// stored minus one. Per-expert tensors are stacked where the MoE block loads them.
fn sanitize_hf_layout(t: &mut Tensors) -> std::result::Result<(), ModelError> {
    let names = t.names();
    let unsanitized = names.iter().any(|name| {
        name.ends_with(".conv1d.weight")
            && t.peek(name)
                .is_some_and(|w| w.shape().last().is_some_and(|&k| k != 1))
    });
    if !unsanitized {
        return Ok(());
    }
    const NORMS: [&str; 5] = [
        ".input_layernorm.weight",
        ".post_attention_layernorm.weight",
        "model.norm.weight",
        ".q_norm.weight",
        ".k_norm.weight",
    ];
    for name in names {
        if name.ends_with(".conv1d.weight") {
            let w = t.take(&name)?;
            if w.shape().last().is_some_and(|&k| k != 1) {
                t.insert(name, w.swap_axes(1, 2)?);
            } else {
                t.insert(name, w);
            }
        } else if NORMS.iter().any(|sfx| name.ends_with(sfx)) {
            let w = t.take(&name)?;
            if w.ndim() == 1 {
                let one = Array::from_f32(1.0).as_dtype(w.dtype())?;
                t.insert(name, &w + &one);
            } else {
                t.insert(name, w);
            }
        }
    }
    Ok(())
}

pub fn load(
    config: &Value,
    args: &ModelArgs,
    t: Tensors,
    mode: WeightsMode,
) -> std::result::Result<Model, ModelError> {
    load_under(config, args, t, mode, "")
}

/// Loads the model whose tensors are named under `root` (`""`, or qwen3_5's
/// `"language_model."`).
pub fn load_under(
    config: &Value,
    args: &ModelArgs,
    mut t: Tensors,
    mode: WeightsMode,
    root: &str,
) -> std::result::Result<Model, ModelError> {
    let n: NextArgs = parse_args(config, &t)?;
    sanitize_hf_layout(&mut t)?;
    let eps = args.rms_norm_eps;
    let tied =
        args.tie_word_embeddings.unwrap_or(false) || !t.contains(&format!("{root}lm_head.weight"));
    let embed_tokens = prepare(t.matrix(&format!("{root}model.embed_tokens"))?, mode)?;
    let lm_head = if tied {
        None
    } else {
        Some(prepare(t.matrix(&format!("{root}lm_head"))?, mode)?)
    };
    let interval = n.full_attention_interval.max(1);
    let mut layers = Vec::with_capacity(args.num_hidden_layers);
    for i in 0..args.num_hidden_layers {
        let p = format!("{root}model.layers.{i}");
        let mixer = if (i + 1) % interval != 0 {
            Mixer::Linear(GatedDeltaNet::load(
                args,
                &n,
                &mut t,
                &format!("{p}.linear_attn"),
                mode,
            )?)
        } else {
            Mixer::Full(Attention::load(
                args,
                &mut t,
                &format!("{p}.self_attn"),
                mode,
            )?)
        };
        let m = format!("{p}.mlp");
        let sparse = !n.mlp_only_layers.contains(&i)
            && n.num_experts > 0
            && (i + 1).is_multiple_of(n.decoder_sparse_step.max(1));
        let ffn: Box<dyn FeedForward> = if sparse {
            Box::new(MoeWithSharedExpert {
                routed: SparseMoeBlock {
                    gate: SparseMoeBlock::gate(&mut t, &format!("{m}.gate"), false, mode)?,
                    gate_in_f32: false,
                    routing: Routing::Softmax {
                        norm_topk_prob: n.norm_topk_prob,
                    },
                    top_k: n.num_experts_per_tok,
                    switch_mlp: SwitchGlu::load(
                        &mut t,
                        &format!("{m}.switch_mlp"),
                        false,
                        Activation::SwiGlu,
                        Some(PerExpert {
                            experts: &format!("{m}.experts"),
                            names: ["gate_proj", "up_proj", "down_proj"],
                        }),
                    )?,
                    shared_experts: None,
                },
                shared_expert: mlp(&mut t, &format!("{m}.shared_expert"), false, mode)?,
                shared_expert_gate: linear(
                    &mut t,
                    &format!("{m}.shared_expert_gate"),
                    false,
                    mode,
                )?,
            })
        } else {
            Box::new(mlp(&mut t, &m, false, mode)?)
        };
        layers.push(Block {
            mixer,
            mlp: ffn,
            input_layernorm: t.norm(&format!("{p}.input_layernorm"), eps)?,
            post_attention_layernorm: t.norm(&format!("{p}.post_attention_layernorm"), eps)?,
        });
    }
    let norm = t.norm(&format!("{root}model.norm"), eps)?;
    Ok(Model {
        embed_tokens,
        layers,
        norm,
        lm_head,
    })
}

impl LanguageModel for Model {
    fn forward(&self, tokens: &Array, batch: &mut [BatchSeq<'_>], logits: Logits) -> Result<Array> {
        let mut h = embed(&self.embed_tokens, tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let x = layer.input_layernorm.forward(&h)?;
            let r = match &layer.mixer {
                Mixer::Linear(l) => l.forward(&x, batch, i)?,
                Mixer::Full(a) => a.forward(&x, batch, i)?,
            };
            let hh = &h + r;
            h = &hh
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&hh)?)?;
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

    fn has_recurrent_state(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l.mixer, Mixer::Linear(_)))
    }
}
