//! Llama (Llama 2/3.x, SmolLM2, Mistral dense): mlx-lm's `models/llama.py`.

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::attention::attend;
use super::decoder::{linear, Decoder, SelfAttention};
use super::layers::{Linear, Rope};
use super::{make_rope, BatchSeq, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<Attention>;

/// Embeddings are tied unless config.json says otherwise (mlx-lm's default for llama).
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
        let bias = args.attention_bias;
        let head_dim = args.head_dim();
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), bias, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), bias, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), bias, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), bias, mode)?,
            n_heads: args.num_attention_heads,
            n_kv_heads: args.kv_heads(),
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            rope: make_rope(
                args,
                args.rope_traditional,
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
