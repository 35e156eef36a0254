//! The decoder stack the supported architectures share (mlx-lm's `TransformerBlock` and
//! `…Model` classes): pre-norm blocks of attention + a feed-forward layer, a final norm and a
//! head. The architectures differ in their attention, which they plug in here, and in the
//! feed-forward layer of each block (the SwiGLU MLP, or a sparse MoE block).

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::layers::{embed, head, Linear, Matrix, Mlp, RmsNorm};
use super::{
    prepare, BatchSeq, LanguageModel, Logits, ModelArgs, ModelError, Tensors, WeightsMode,
};

/// An architecture's attention layer.
pub trait SelfAttention: Send + Sized {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        prefix: &str,
        mode: WeightsMode,
    ) -> Result<Self, ModelError>;
    /// `x`: `[1, N, hidden]` for the sequences of `batch` end to end.
    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception>;
    /// The sliding window this attention sees (`None`: every position).
    fn window(&self) -> Option<i32> {
        None
    }
}

/// A block's feed-forward layer (`x`: `[1, N, hidden]`, every sequence of the batch).
pub trait FeedForward: Send {
    fn forward(&self, x: &Array) -> Result<Array, Exception>;
}

impl FeedForward for Mlp {
    fn forward(&self, x: &Array) -> Result<Array, Exception> {
        Mlp::forward(self, x)
    }
}

/// The SwiGLU MLP at `prefix` (`gate_proj`, `up_proj`, `down_proj`).
pub fn mlp(
    t: &mut Tensors,
    prefix: &str,
    bias: bool,
    mode: WeightsMode,
) -> Result<Mlp, ModelError> {
    Ok(Mlp {
        gate_proj: linear(t, &format!("{prefix}.gate_proj"), bias, mode)?,
        up_proj: linear(t, &format!("{prefix}.up_proj"), bias, mode)?,
        down_proj: linear(t, &format!("{prefix}.down_proj"), bias, mode)?,
    })
}

/// A linear layer at `prefix`, prepared for the weights mode.
pub fn linear(
    t: &mut Tensors,
    prefix: &str,
    bias: bool,
    mode: WeightsMode,
) -> Result<Linear, ModelError> {
    let mut l = t.linear(prefix, bias)?;
    l.matrix = prepare(l.matrix, mode)?;
    Ok(l)
}

/// Builds block `layer`'s feed-forward layer from the tensors under the block's prefix.
pub type LoadFeedForward<'a> =
    dyn FnMut(&mut Tensors, usize, &str) -> Result<Box<dyn FeedForward>, ModelError> + 'a;

pub struct TransformerBlock<A> {
    self_attn: A,
    mlp: Box<dyn FeedForward>,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl<A: SelfAttention> TransformerBlock<A> {
    fn load(
        args: &ModelArgs,
        t: &mut Tensors,
        p: &str,
        mode: WeightsMode,
        mlp: Box<dyn FeedForward>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            self_attn: A::load(args, t, &format!("{p}.self_attn"), mode)?,
            mlp,
            input_layernorm: t.norm(&format!("{p}.input_layernorm"), args.rms_norm_eps)?,
            post_attention_layernorm: t
                .norm(&format!("{p}.post_attention_layernorm"), args.rms_norm_eps)?,
        })
    }

    fn forward(
        &self,
        x: &Array,
        batch: &mut [BatchSeq<'_>],
        layer: usize,
    ) -> Result<Array, Exception> {
        let h = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, batch, layer)?;
        let out = &h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?;
        Ok(out)
    }
}

pub struct Decoder<A> {
    embed_tokens: Matrix,
    layers: Vec<TransformerBlock<A>>,
    norm: RmsNorm,
    /// `None`: tied to the embeddings.
    lm_head: Option<Matrix>,
}

impl<A: SelfAttention> Decoder<A> {
    /// `tie_default`: whether embeddings are tied when config.json does not say. Every block
    /// has the SwiGLU MLP at `mlp`.
    pub fn load(
        args: &ModelArgs,
        t: Tensors,
        mode: WeightsMode,
        tie_default: bool,
    ) -> Result<Self, ModelError> {
        let bias = args.mlp_bias;
        Self::load_with(args, t, mode, tie_default, &mut |t, _, p| {
            Ok(Box::new(mlp(t, &format!("{p}.mlp"), bias, mode)?))
        })
    }

    /// As [`Decoder::load`], with each block's feed-forward layer built by `ffn`.
    pub fn load_with(
        args: &ModelArgs,
        mut t: Tensors,
        mode: WeightsMode,
        tie_default: bool,
        ffn: &mut LoadFeedForward<'_>,
    ) -> Result<Self, ModelError> {
        let tied = args.tie_word_embeddings.unwrap_or(tie_default) || !t.contains("lm_head.weight");
        let embed_tokens = prepare(t.matrix("model.embed_tokens")?, mode)?;
        let lm_head = if tied {
            None
        } else {
            Some(prepare(t.matrix("lm_head")?, mode)?)
        };
        let layers = (0..args.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let mlp = ffn(&mut t, i, &p)?;
                TransformerBlock::load(args, &mut t, &p, mode, mlp)
            })
            .collect::<Result<_, _>>()?;
        let norm = t.norm("model.norm", args.rms_norm_eps)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
        })
    }
}

impl<A: SelfAttention> Decoder<A> {
    /// The embeddings through every block (before the final norm), advancing the caches.
    fn blocks(&self, tokens: &Array, batch: &mut [BatchSeq<'_>]) -> Result<Array, Exception> {
        let mut h = embed(&self.embed_tokens, tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, batch, i)?;
        }
        for seq in batch.iter_mut() {
            seq.cache.advance(seq.len);
        }
        Ok(h)
    }
}

impl<A: SelfAttention> LanguageModel for Decoder<A> {
    fn forward(
        &self,
        tokens: &Array,
        batch: &mut [BatchSeq<'_>],
        logits: Logits,
    ) -> Result<Array, Exception> {
        let h = self.blocks(tokens, batch)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        head(&h, batch, logits, &self.norm, lm_head)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn kv_windows(&self) -> Vec<Option<i32>> {
        self.layers.iter().map(|l| l.self_attn.window()).collect()
    }

    fn hidden_states(
        &self,
        tokens: &Array,
        batch: &mut [BatchSeq<'_>],
    ) -> Result<Array, Exception> {
        self.norm.forward(&self.blocks(tokens, batch)?)
    }
}
