//! MiniMax-M2 / M2.1 / M2.5: mlx-lm's `models/minimax.py`. Attention with an RMSNorm over all
//! query heads together (and over all key heads) before RoPE, which rotates only the first
//! `rotary_dim` features of each head; every block's feed-forward layer is a sparse MoE block
//! (`block_sparse_moe`) routed by sigmoid scores with a correction bias.

use mlx_rs::error::Exception;
use mlx_rs::Array;
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::attend;
use super::decoder::{linear, Decoder, SelfAttention};
use super::layers::{Linear, RmsNorm, Rope};
use super::switch_layers::{Activation, PerExpert, Routing, SparseMoeBlock, SwitchGlu};
use super::{make_rope_dims, BatchSeq, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<MiniMaxAttention>;

pub const TIE_DEFAULT: bool = false;

/// minimax's fields beyond [`ModelArgs`].
#[derive(Debug, Deserialize)]
struct MoeArgs {
    num_experts_per_tok: i32,
}

pub struct MiniMaxAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Over `heads * head_dim` (and `kv_heads * head_dim`), not per head.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_attention_heads: i32,
    num_key_value_heads: i32,
    head_dim: i32,
    scale: f32,
    rope: Rope,
}

impl SelfAttention for MiniMaxAttention {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
    ) -> Result<Self, ModelError> {
        let head_dim = args.head_dim();
        let qk_norm = if args.use_qk_norm.unwrap_or(true) {
            Some((
                t.norm(&format!("{p}.q_norm"), args.rms_norm_eps)?,
                t.norm(&format!("{p}.k_norm"), args.rms_norm_eps)?,
            ))
        } else {
            None
        };
        let rotary_dim = args.rotary_dim.unwrap_or(head_dim);
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), false, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), false, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), false, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), false, mode)?,
            qk_norm,
            num_attention_heads: args.num_attention_heads,
            num_key_value_heads: args.kv_heads(),
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            // minimax.py: `nn.RoPE(rotary_dim, base=rope_theta)`, no scaling.
            rope: make_rope_dims(
                &ModelArgs {
                    rope_scaling: None,
                    rope_parameters: None,
                    ..args.clone()
                },
                rotary_dim,
                false,
                args.rope_theta_or(10000.0),
                t.source(),
            )?,
        })
    }

    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception> {
        let n = x.shape()[1];
        let (mut q, mut k) = (self.q_proj.forward(x)?, self.k_proj.forward(x)?);
        let v = self.v_proj.forward(x)?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
        let q = q.reshape(&[1, n, self.num_attention_heads, self.head_dim])?;
        let k = k.reshape(&[1, n, self.num_key_value_heads, self.head_dim])?;
        let v = v.reshape(&[1, n, self.num_key_value_heads, self.head_dim])?;
        let out = attend(&q, &k, &v, batch, layer, &self.rope, self.scale)?;
        self.o_proj.forward(&out)
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
        // MiniMaxSparseMoeBlock
        let p = format!("{p}.block_sparse_moe");
        Ok(Box::new(SparseMoeBlock {
            gate: SparseMoeBlock::gate(t, &format!("{p}.gate"), false, mode)?,
            gate_in_f32: true,
            routing: Routing::Sigmoid {
                e_score_correction_bias: SparseMoeBlock::correction_bias(t, &p)?,
                n_group: 1,
                topk_group: 1,
                normalize: true,
                norm_eps: 1e-20,
                routed_scaling_factor: 1.0,
                scores_in_x_dtype: true,
            },
            top_k: moe.num_experts_per_tok,
            switch_mlp: SwitchGlu::load(
                t,
                &format!("{p}.switch_mlp"),
                false,
                Activation::SwiGlu,
                Some(PerExpert {
                    experts: &format!("{p}.experts"),
                    names: ["w1", "w3", "w2"],
                }),
            )?,
            shared_experts: None,
        }))
    })
}
