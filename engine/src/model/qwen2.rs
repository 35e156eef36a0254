//! Qwen2 / Qwen2.5: mlx-lm's `models/qwen2.py`. Llama's block with biased q/k/v projections.

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::attention::attend;
use super::decoder::{linear, Decoder, SelfAttention};
use super::layers::{Linear, Rope};
use super::{make_rope, BatchSeq, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<Attention>;

pub const TIE_DEFAULT: bool = true;

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    scale: f32,
    rope: Rope,
}

impl SelfAttention for Attention {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
    ) -> Result<Self, ModelError> {
        // qwen2.py ignores config.head_dim: the head size is always hidden / heads.
        let head_dim = args.hidden_size / args.num_attention_heads;
        let args = ModelArgs {
            head_dim: Some(head_dim),
            ..args.clone()
        };
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), true, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), true, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), true, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), false, mode)?,
            n_heads: args.num_attention_heads,
            n_kv_heads: args.kv_heads(),
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            rope: make_rope(
                &args,
                args.rope_traditional,
                args.rope_theta_or(1_000_000.0),
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
        let q = self
            .q_proj
            .forward(x)?
            .reshape(&[1, n, self.n_heads, self.head_dim])?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, self.head_dim])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, self.head_dim])?;
        let out = attend(&q, &k, &v, batch, layer, &self.rope, self.scale)?;
        self.o_proj.forward(&out)
    }
}
