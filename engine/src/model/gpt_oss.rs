//! gpt-oss (20b, 120b): mlx-lm's `models/gpt_oss.py`. Attention with biased projections,
//! per-head attention sinks and YaRN RoPE, alternating sliding-window (`sliding_window`
//! positions) and full layers as `layer_types` says; every block's MLP is a sparse MoE block
//! (`MLPBlock`): a biased router whose top-k logits are softmaxed, and experts with biases and
//! gpt-oss's clipped SwiGLU (usually mxfp4).

use mlx_rs::error::Exception;
use mlx_rs::Array;
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::{attend_with, Extras};
use super::decoder::{linear, Decoder, SelfAttention};
use super::layers::{Linear, Rope};
use super::switch_layers::{Activation, Routing, SparseMoeBlock, SwitchGlu};
use super::{make_rope, BatchSeq, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<AttentionBlock>;

/// gpt_oss.py always has an `lm_head`.
pub const TIE_DEFAULT: bool = false;

/// gpt_oss's fields beyond [`ModelArgs`].
#[derive(Debug, Deserialize)]
struct MoeArgs {
    #[serde(default = "default_experts_per_tok")]
    num_experts_per_tok: i32,
}

fn default_experts_per_tok() -> i32 {
    4
}

/// The window of layer `layer`: `layer_types` says which are sliding, or sliding and full
/// alternate from a sliding layer (gpt_oss.py's default); 128 positions by default.
fn window_of(args: &ModelArgs, layer: usize) -> Option<i32> {
    let sliding = match &args.layer_types {
        Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
        None => layer.is_multiple_of(2),
    };
    sliding.then_some(args.sliding_window.unwrap_or(128))
}

pub struct AttentionBlock {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    sinks: Array,
    /// `Some(sliding_window)` on sliding-attention layers.
    window: Option<i32>,
    num_attention_heads: i32,
    num_key_value_heads: i32,
    head_dim: i32,
    sm_scale: f32,
    rope: Rope,
}

/// The block's index in `model.layers.{i}.self_attn`.
fn layer_index(prefix: &str) -> Option<usize> {
    prefix
        .strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl SelfAttention for AttentionBlock {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
    ) -> Result<Self, ModelError> {
        let layer = layer_index(p).ok_or_else(|| ModelError::Invalid {
            path: t.source().into(),
            reason: format!("unexpected attention prefix '{p}'"),
        })?;
        let head_dim = args.head_dim();
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), true, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), true, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), true, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), true, mode)?,
            sinks: t.take(&format!("{p}.sinks"))?,
            window: window_of(args, layer),
            num_attention_heads: args.num_attention_heads,
            num_key_value_heads: args.kv_heads(),
            head_dim,
            sm_scale: 1.0 / (head_dim as f32).sqrt(),
            rope: make_rope(args, false, args.rope_theta_or(150000.0), t.source())?,
        })
    }

    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception> {
        let n = x.shape()[1];
        let d = self.head_dim;
        let q = self
            .q_proj
            .forward(x)?
            .reshape(&[1, n, self.num_attention_heads, d])?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(&[1, n, self.num_key_value_heads, d])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[1, n, self.num_key_value_heads, d])?;
        let extras = Extras {
            window: self.window,
            sinks: Some(&self.sinks),
        };
        let out = attend_with(&q, &k, &v, batch, layer, &self.rope, self.sm_scale, extras)?;
        self.o_proj.forward(&out)
    }

    fn window(&self) -> Option<i32> {
        self.window
    }
}

pub fn load(
    config: &Value,
    args: &ModelArgs,
    t: Tensors,
    mode: WeightsMode,
) -> Result<Model, ModelError> {
    let moe: MoeArgs = parse_args(config, &t)?;
    Model::load_with(args, t, mode, TIE_DEFAULT, &mut |t, _, p| {
        // MLPBlock
        let p = format!("{p}.mlp");
        Ok(Box::new(SparseMoeBlock {
            gate: SparseMoeBlock::gate(t, &format!("{p}.router"), true, mode)?,
            gate_in_f32: false,
            routing: Routing::TopKSoftmax,
            top_k: moe.num_experts_per_tok,
            switch_mlp: SwitchGlu::load(
                t,
                &format!("{p}.experts"),
                true,
                Activation::SwiGluOai {
                    alpha: 1.702,
                    limit: 7.0,
                },
                None,
            )?,
            shared_experts: None,
        }))
    })
}
