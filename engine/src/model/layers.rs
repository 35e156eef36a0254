//! Building blocks shared by the architectures: linear layers (dense or MLX affine-quantized),
//! embeddings, RMSNorm, RoPE, the SwiGLU MLP, and attention over a flattened batch.

use mlx_rs::error::Exception;
use mlx_rs::fast::{rms_norm, rope, scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::{addmm, concatenate, dequantize, matmul, multiply, quantized_matmul, sigmoid};
use mlx_rs::{Array, Dtype};

use super::batch::BatchSeq;
use crate::mlx_ext::slice_axis;

type Result<T> = std::result::Result<T, Exception>;

/// A weight matrix `[out, in]`, stored as is or MLX affine-quantized (packed uint32).
pub enum Matrix {
    Dense(Array),
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        group_size: i32,
        bits: i32,
    },
}

impl Matrix {
    /// `x @ self.T`
    pub fn apply(&self, x: &Array) -> Result<Array> {
        match self {
            Matrix::Dense(w) => matmul(x, w.t()),
            Matrix::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => quantized_matmul(x, weight, scales, biases.as_ref(), true, *group_size, *bits),
        }
    }

    /// Rows `ids` of the matrix, dequantized (an embedding lookup).
    pub fn rows(&self, ids: &Array) -> Result<Array> {
        match self {
            Matrix::Dense(w) => w.take_axis(ids, 0),
            Matrix::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => {
                let b = biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?;
                dequantize(
                    weight.take_axis(ids, 0)?,
                    scales.take_axis(ids, 0)?,
                    b.as_ref(),
                    *group_size,
                    *bits,
                )
            }
        }
    }

    /// The same matrix dequantized to `dtype`: more memory, but dense matmuls batch well on
    /// CPU BLAS where MLX's quantized CPU kernel does not.
    pub fn dequantized(self, dtype: Dtype) -> Result<Matrix> {
        match self {
            Matrix::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
            } => {
                let w = dequantize(&weight, &scales, biases.as_ref(), group_size, bits)?
                    .as_dtype(dtype)?;
                w.eval()?;
                Ok(Matrix::Dense(w))
            }
            dense => Ok(dense),
        }
    }

    pub fn nbytes(&self) -> usize {
        match self {
            Matrix::Dense(w) => w.nbytes(),
            Matrix::Quantized {
                weight,
                scales,
                biases,
                ..
            } => weight.nbytes() + scales.nbytes() + biases.as_ref().map_or(0, Array::nbytes),
        }
    }
}

/// `nn.Linear` / `nn.QuantizedLinear`.
pub struct Linear {
    pub matrix: Matrix,
    pub bias: Option<Array>,
}

impl Linear {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        match (&self.matrix, &self.bias) {
            // mlx's nn.Linear fuses the bias with addmm; do the same for identical numerics.
            (Matrix::Dense(w), Some(b)) => addmm(b, x, w.t(), None, None),
            (m, None) => m.apply(x),
            (m, Some(b)) => Ok(m.apply(x)? + b),
        }
    }
}

/// `nn.RMSNorm`.
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        rms_norm(x, Some(&self.weight), self.eps)
    }
}

/// Rotary position embedding (`nn.RoPE`, or llama3-scaled frequencies).
pub struct Rope {
    pub dims: i32,
    pub traditional: bool,
    pub base: f32,
    pub scale: f32,
    /// Precomputed frequencies (llama3 scaling); `base` is ignored when set.
    pub freqs: Option<Array>,
}

impl Rope {
    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        let base = if self.freqs.is_some() {
            None
        } else {
            Some(self.base)
        };
        rope(
            x,
            self.dims,
            self.traditional,
            base,
            self.scale,
            offset,
            self.freqs.as_ref(),
        )
    }
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let gate = self.gate_proj.forward(x)?;
        let silu = multiply(&gate, sigmoid(&gate)?)?;
        self.down_proj
            .forward(&multiply(silu, self.up_proj.forward(x)?)?)
    }
}

/// Attention of every sequence of a flattened batch: `queries` `[1, N, heads, head_dim]`,
/// `keys`/`values` `[1, N, kv_heads, head_dim]`, rows ordered as `batch`. Each sequence gets
/// RoPE at its own position, its own KV cache and its own causal mask, so its result does not
/// depend on what else is in the batch. Returns `[1, N, heads * head_dim]`.
pub fn attend(
    queries: &Array,
    keys: &Array,
    values: &Array,
    batch: &mut [BatchSeq<'_>],
    layer: usize,
    rope: &Rope,
    scale: f32,
) -> Result<Array> {
    let mut outputs = Vec::with_capacity(batch.len());
    let mut start = 0;
    for seq in batch.iter_mut() {
        let end = start + seq.len as i32;
        let part = |a: &Array| -> Result<Array> {
            let a = if batch_is_single(start, end, a) {
                a.clone()
            } else {
                slice_axis(a, 1, start, end)?
            };
            a.transpose_axes(&[0, 2, 1, 3])
        };
        let offset = seq.cache.offset() as i32;
        let q = rope.forward(&part(queries)?, offset)?;
        let k = rope.forward(&part(keys)?, offset)?;
        let (k, v) = seq.cache.update_and_fetch(layer, k, part(values)?)?;
        let mask = (seq.len > 1).then_some(ScaledDotProductAttentionMask::Causal);
        let out = scaled_dot_product_attention(q, k, v, scale, mask, None)?;
        let out = out.transpose_axes(&[0, 2, 1, 3])?;
        outputs.push(out.reshape(&[1, seq.len as i32, -1])?);
        start = end;
    }
    if outputs.len() == 1 {
        Ok(outputs.pop().expect("one output"))
    } else {
        concatenate(&outputs, 1)
    }
}

fn batch_is_single(start: i32, end: i32, a: &Array) -> bool {
    start == 0 && end == a.shape()[1]
}

/// Embedding lookup of `[1, N]` token ids → `[1, N, hidden]`.
pub fn embed(table: &Matrix, tokens: &Array) -> Result<Array> {
    table.rows(tokens)
}

/// The model's head: final norm and the vocabulary projection, on the rows `logits` asks for.
pub fn head(
    hidden: &Array,
    batch: &[BatchSeq<'_>],
    logits: super::Logits,
    norm: &RmsNorm,
    lm_head: &Matrix,
) -> Result<Array> {
    let rows = match logits {
        super::Logits::All => hidden.clone(),
        super::Logits::Last => {
            // Only the last position of each sequence predicts its next token.
            let mut last = Vec::with_capacity(batch.len());
            let mut end = 0i32;
            for seq in batch {
                end += seq.len as i32;
                last.push(end - 1);
            }
            let n = last.len() as i32;
            let idx = Array::from_slice(&last, &[n]);
            hidden.take_axis(&idx, 1)?
        }
    };
    let out = lm_head.apply(&norm.forward(&rows)?)?;
    match logits {
        super::Logits::All => Ok(out),
        super::Logits::Last => {
            let vocab = out.shape()[2];
            out.reshape(&[-1, vocab])
        }
    }
}
