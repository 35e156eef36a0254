//! Building blocks shared by the architectures: linear layers (dense or MLX-quantized),
//! embeddings, RMSNorm, RoPE, the SwiGLU MLP, and the model head.

use mlx_rs::error::Exception;
use mlx_rs::fast::{rms_norm, rope, rope_dynamic};
use mlx_rs::ops::{addmm, concatenate, matmul, multiply, sigmoid, tanh};
use mlx_rs::{Array, Dtype};

use super::batch::BatchSeq;
use super::two_streams;
pub use crate::mlx_ext::QuantMode;
use crate::mlx_ext::{dequantize, quantized_matmul, slice_axis};

type Result<T> = std::result::Result<T, Exception>;

/// A weight matrix `[out, in]` (or a stack of them, `[experts, out, in]`), stored as is or
/// MLX-quantized (packed uint32; `biases` only in affine mode).
pub enum Matrix {
    Dense(Array),
    Quantized {
        weight: Array,
        scales: Array,
        biases: Option<Array>,
        group_size: i32,
        bits: i32,
        mode: QuantMode,
    },
}

/// Weights (output features × input features) from which a quantized matmul is split over
/// two CPU streams (see `two_streams`): below it the second stream's hand-over costs more
/// than the second core gives.
const SPLIT_MIN_WEIGHTS: i64 = 1 << 21;

impl Matrix {
    /// `x @ self.T`. Quantized, with the CPU levers on, a large matrix is applied in two
    /// halves of its output features on two CPU streams (MLX's quantized CPU kernel is
    /// single-threaded); each output is the same sum over the same values either way.
    pub fn apply(&self, x: &Array) -> Result<Array> {
        match self {
            Matrix::Dense(w) => matmul(x, w.t()),
            Matrix::Quantized { weight, .. } => {
                let (out, packed) = (weight.shape()[0], weight.shape()[1]);
                let inputs = i64::from(packed) * 32 / i64::from(self.bits());
                if weight.ndim() != 2
                    || i64::from(out) * inputs < SPLIT_MIN_WEIGHTS
                    || !two_streams::enabled()
                {
                    return self.apply_rows(x, 0, out);
                }
                let half = out / 2;
                let first = self.apply_rows(x, 0, half)?;
                let second = two_streams::on_side_stream(|| self.apply_rows(x, half, out))?;
                concatenate(&[first, second], -1)
            }
        }
    }

    /// `x @ self[start..end].T` of a quantized matrix (its output features `start..end`).
    fn apply_rows(&self, x: &Array, start: i32, end: i32) -> Result<Array> {
        let Matrix::Quantized {
            weight,
            scales,
            biases,
            group_size,
            bits,
            mode,
        } = self
        else {
            unreachable!("only quantized matrices are applied by rows")
        };
        let rows = |a: &Array| -> Result<Array> {
            if start == 0 && end == a.shape()[0] {
                Ok(a.clone())
            } else {
                Ok(slice_axis(a, 0, start, end)?)
            }
        };
        let biases = biases.as_ref().map(rows).transpose()?;
        Ok(quantized_matmul(
            x,
            &rows(weight)?,
            &rows(scales)?,
            biases.as_ref(),
            true,
            *group_size,
            *bits,
            *mode,
        )?)
    }

    /// Bits per quantized weight (32 for a dense matrix: one element per word).
    fn bits(&self) -> i32 {
        match self {
            Matrix::Quantized { bits, .. } => *bits,
            Matrix::Dense(_) => 32,
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
                mode,
            } => {
                let b = biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?;
                // MLX's default output dtype, as mlx-lm's QuantizedEmbedding gets.
                Ok(dequantize(
                    &weight.take_axis(ids, 0)?,
                    &scales.take_axis(ids, 0)?,
                    b.as_ref(),
                    *group_size,
                    *bits,
                    *mode,
                    None,
                )?)
            }
        }
    }

    /// The same matrix dequantized, to `dtype` (`None`: the scales' dtype): more memory, but
    /// dense matmuls batch well on CPU BLAS where MLX's quantized CPU kernel does not.
    pub fn dequantized(self, dtype: Option<Dtype>) -> Result<Matrix> {
        match self {
            Matrix::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
            } => {
                let w = dequantize(
                    &weight,
                    &scales,
                    biases.as_ref(),
                    group_size,
                    bits,
                    mode,
                    dtype,
                )?;
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

/// Rotary position embedding (`nn.RoPE`, or llama3/YaRN-scaled frequencies).
pub struct Rope {
    pub dims: i32,
    pub traditional: bool,
    pub base: f32,
    pub scale: f32,
    /// Precomputed frequencies (llama3, YaRN); `base` is ignored when set.
    pub freqs: Option<Array>,
    /// YaRN's attention scaling: the rotated features are multiplied by it first (1: none).
    pub mscale: f32,
}

impl Rope {
    /// mlx-lm's `YarnRoPE` scales `x[..., :dims]` before rotating.
    fn prescale(&self, x: &Array) -> Result<Array> {
        if self.mscale == 1.0 {
            return Ok(x.clone());
        }
        // In x's dtype, as mlx-lm's Python float is: a float32 array would promote x.
        let m = Array::from_f32(self.mscale).as_dtype(x.dtype())?;
        let head = *x.shape().last().expect("feature axis");
        if self.dims == head {
            return multiply(x, &m);
        }
        let axis = x.ndim() - 1;
        let rotated = multiply(slice_axis(x, axis, 0, self.dims)?, &m)?;
        concatenate(&[rotated, slice_axis(x, axis, self.dims, head)?], -1)
    }

    pub fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        let base = if self.freqs.is_some() {
            None
        } else {
            Some(self.base)
        };
        let x = &self.prescale(x)?;
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

    /// RoPE of `x` (`[B, heads, 1, dim]`) with row `b` at position `offsets[b]`.
    pub fn forward_rows(&self, x: &Array, offsets: &Array) -> Result<Array> {
        let base = if self.freqs.is_some() {
            None
        } else {
            Some(self.base)
        };
        let x = &self.prescale(x)?;
        rope_dynamic(
            x,
            self.dims,
            self.traditional,
            base,
            self.scale,
            offsets,
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

/// A Python float in `like`'s dtype (MLX's weak scalars: a float32 array would promote
/// half-precision activations).
pub fn scalar(v: f32, like: &Array) -> Result<Array> {
    Array::from_f32(v).as_dtype(like.dtype())
}

/// `nn.gelu_approx`: `0.5 * x * (1 + tanh(√(2/π) * (x + 0.044715 * x**3)))`, op for op
/// (Gemma's gated MLPs).
pub fn gelu_approx(x: &Array) -> Result<Array> {
    let half = x * scalar(0.5, x)?;
    let cube = x.power(scalar(3.0, x)?)?;
    let inner = x + cube * scalar(0.044715, x)?;
    let t = tanh(inner * scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32, x)?)?;
    Ok(half * (scalar(1.0, x)? + t))
}

/// Gemma's gated MLP: `down(gelu_approx(gate(x)) * up(x))`.
pub struct GeluMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl GeluMlp {
    /// The MLP at `prefix` (`gate_proj`, `up_proj`, `down_proj`, no biases).
    pub fn load(
        t: &mut super::Tensors,
        prefix: &str,
        mode: super::WeightsMode,
    ) -> std::result::Result<Self, super::ModelError> {
        use super::decoder::linear;
        Ok(Self {
            gate_proj: linear(t, &format!("{prefix}.gate_proj"), false, mode)?,
            up_proj: linear(t, &format!("{prefix}.up_proj"), false, mode)?,
            down_proj: linear(t, &format!("{prefix}.down_proj"), false, mode)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let gate = gelu_approx(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?))
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mlx_rs::ops::quantize;
    use mlx_rs::random::normal;

    /// A 4-bit affine matrix `[out, inputs]` (groups of 64) of random values.
    pub(crate) fn quantized(shape: &[i32]) -> Matrix {
        let w = normal::<f32>(shape, None, None, None).unwrap();
        let (weight, scales, biases) = quantize(&w, 64, 4).unwrap();
        Matrix::Quantized {
            weight,
            scales,
            biases: Some(biases),
            group_size: 64,
            bits: 4,
            mode: QuantMode::Affine,
        }
    }

    /// The bits of an array's float32 values (for bit-for-bit comparisons).
    pub(crate) fn bits_of(a: &Array) -> Vec<u32> {
        a.eval().unwrap();
        a.as_slice::<f32>().iter().map(|x| x.to_bits()).collect()
    }

    /// A large quantized matrix applied in two halves on two streams gives the one call's
    /// result bit for bit, for a decode row and for a prefill chunk.
    #[test]
    fn a_split_quantized_matmul_is_the_whole_one() {
        assert!(two_streams::enabled());
        let m = quantized(&[2048, 1024]);
        for rows in [1, 37] {
            let x = normal::<f32>(&[1, rows, 1024], None, None, None).unwrap();
            let whole = m.apply_rows(&x, 0, 2048).unwrap();
            let split = m.apply(&x).unwrap();
            assert_eq!(split.shape(), &[1, rows, 2048]);
            assert_eq!(bits_of(&split), bits_of(&whole));
        }
    }
}
