//! Sparse Mixture-of-Experts layers shared by the MoE architectures: mlx-lm's
//! `models/switch_layers.py` (`SwitchLinear`, `QuantizedSwitchLinear`, `SwitchGLU`), and the
//! routers its MoE models define in their own files (`Qwen3MoeSparseMoeBlock`,
//! `MiniMaxSparseMoeBlock`, glm4_moe's `MoEGate`/`group_expert_select`, gpt_oss's
//! `MLPBlock`), here as one block with the routing as a parameter.
//!
//! Every token of the step goes through the experts in one gather per projection, whatever
//! sequence it belongs to: the batch is `[1, N]` tokens end to end, and each token's result
//! depends only on that token (MLX's gather kernels compute each (token, expert) pair on its
//! own), so batching never changes a sequence's numbers.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{put_along_axis, take_along_axis, topk_axis};
use mlx_rs::ops::{
    argpartition_axis, argsort_axis, clip, concatenate, matmul, minimum, multiply, sigmoid,
    softmax_axis,
};
use mlx_rs::{Array, Dtype};

use super::decoder::{linear, FeedForward};
use super::layers::{gelu_approx, Linear, Matrix, Mlp};
use super::two_streams;
use super::{ModelError, Tensors, WeightsMode};
use crate::mlx_ext::{gather_mm, gather_qmm, slice_axis};

type Result<T> = std::result::Result<T, Exception>;

/// mlx-lm sorts the (token, expert) pairs by expert once there are this many, so that each
/// expert's weights are read once in a run (`do_sort = indices.size >= 64`).
const SORT_THRESHOLD: usize = 64;

/// `SwitchLinear` / `QuantizedSwitchLinear`: one `[out, in]` matrix per expert, stacked
/// (`[experts, out, in]`), applied to each token with the experts its indices name.
pub struct SwitchLinear {
    pub weight: Matrix,
    /// `[experts, out]`.
    pub bias: Option<Array>,
}

/// Whether a packed weight of `ndim` axes stays quantized in every weights mode: expert stacks
/// (3-D) do. Expanding them would not speed anything up, as MLX's CPU `gather_mm` multiplies
/// one (token, expert) pair at a time just as `gather_qmm` does (and measured slower: the
/// float32 expert is 8x the bytes to read), while it would take 8x the memory of 4-bit
/// experts, which are most of an MoE model. The registry's estimate follows the same rule.
pub fn stays_quantized(ndim: usize) -> bool {
    ndim >= 3
}

impl SwitchLinear {
    /// The expert stack at `prefix`, as stored (see [`stays_quantized`]).
    pub fn load(
        t: &mut Tensors,
        prefix: &str,
        bias: bool,
    ) -> std::result::Result<Self, ModelError> {
        let weight = t.matrix(prefix)?;
        let bias = if bias {
            Some(t.take(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// `x`: `[..., 1, in]` broadcast against `indices` `[...]`; returns `[..., 1, out]`.
    pub fn forward(&self, x: &Array, indices: &Array, sorted: bool) -> Result<Array> {
        let y = match &self.weight {
            Matrix::Dense(w) => gather_mm(x, &w.swap_axes(-1, -2)?, indices, sorted)?,
            Matrix::Quantized {
                weight,
                scales,
                biases,
                group_size,
                bits,
                mode,
            } => gather_qmm(
                x,
                weight,
                scales,
                biases.as_ref(),
                indices,
                true,
                *group_size,
                *bits,
                *mode,
                sorted,
            )?,
        };
        match &self.bias {
            Some(b) => {
                let b = b.take_axis(indices, 0)?;
                let mut shape = b.shape().to_vec();
                shape.insert(shape.len() - 1, 1);
                Ok(y + b.reshape(&shape)?)
            }
            None => Ok(y),
        }
    }
}

/// The experts' gated activation: `act(x_up, x_gate)`.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// `silu(gate) * up` (mlx-lm's `SwiGLU`).
    SwiGlu,
    /// gpt-oss's `swiglu_oai`: the gate clipped from above, the linear part clipped both ways
    /// and shifted by one: `(clip(up) + 1) * (g * sigmoid(alpha * g))`, `g = min(gate, limit)`.
    SwiGluOai { alpha: f32, limit: f32 },
    /// `gelu_approx(gate) * up` (Gemma 4's `GeGLU`).
    GeGlu,
}

impl Activation {
    fn apply(self, up: &Array, gate: &Array) -> Result<Array> {
        match self {
            Activation::SwiGlu => multiply(multiply(gate, sigmoid(gate)?)?, up),
            Activation::SwiGluOai { alpha, limit } => {
                // Constants in the activations' dtype, as Python's floats are (weak scalars):
                // a float32 array would promote half-precision activations.
                let c = |v: f32| Array::from_f32(v).as_dtype(gate.dtype());
                let gate = minimum(gate, c(limit)?)?;
                let up = clip(up, (&c(-limit)?, &c(limit)?))?;
                let glu = multiply(&gate, sigmoid(multiply(&gate, c(alpha)?)?)?)?;
                multiply(up + c(1.0)?, glu)
            }
            Activation::GeGlu => multiply(gelu_approx(gate)?, up),
        }
    }
}

/// `SwitchGLU`: the experts' SwiGLU MLPs, `down(act(up(x), gate(x)))` per (token, expert).
pub struct SwitchGlu {
    pub gate_proj: SwitchLinear,
    pub up_proj: SwitchLinear,
    pub down_proj: SwitchLinear,
    pub activation: Activation,
}

/// Where a checkpoint in the Hugging Face layout keeps each expert on its own: the experts'
/// prefix and the names of their gate, up and down projections.
pub struct PerExpert<'a> {
    pub experts: &'a str,
    pub names: [&'a str; 3],
}

/// mlx-lm's `sanitize` for such checkpoints: stacks `{experts}.{e}.{name}.{part}`, e = 0, 1, …,
/// into `{into}.{part}` (`[experts, out, in]`), one projection at a time.
fn stack_experts(
    t: &mut Tensors,
    experts: &str,
    name: &str,
    into: &str,
) -> std::result::Result<(), ModelError> {
    for part in ["weight", "scales", "biases", "bias"] {
        let mut parts = Vec::new();
        loop {
            let key = format!("{experts}.{}.{name}.{part}", parts.len());
            if !t.contains(&key) {
                break;
            }
            parts.push(t.take(&key)?);
        }
        if !parts.is_empty() {
            let stacked = mlx_rs::ops::stack(&parts, 0)?;
            // Now, so that the per-expert copies are freed before the next projection.
            stacked.eval()?;
            t.insert(format!("{into}.{part}"), stacked);
        }
    }
    Ok(())
}

impl SwitchGlu {
    /// The experts at `prefix` (`gate_proj`, `up_proj`, `down_proj` stacks), or stacked from
    /// `per_expert` when the checkpoint keeps them apart.
    pub fn load(
        t: &mut Tensors,
        prefix: &str,
        bias: bool,
        activation: Activation,
        per_expert: Option<PerExpert<'_>>,
    ) -> std::result::Result<Self, ModelError> {
        if let Some(pe) = per_expert {
            if !t.contains(&format!("{prefix}.gate_proj.weight")) {
                for (name, into) in pe.names.iter().zip(["gate_proj", "up_proj", "down_proj"]) {
                    stack_experts(t, pe.experts, name, &format!("{prefix}.{into}"))?;
                }
            }
        }
        Ok(Self {
            gate_proj: SwitchLinear::load(t, &format!("{prefix}.gate_proj"), bias)?,
            up_proj: SwitchLinear::load(t, &format!("{prefix}.up_proj"), bias)?,
            down_proj: SwitchLinear::load(t, &format!("{prefix}.down_proj"), bias)?,
            activation,
        })
    }

    /// `x`: `[..., hidden]`, `indices`: `[..., k]` → `[..., k, hidden]`.
    pub fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        let hidden = *x.shape().last().expect("x has a feature axis");
        let idx_shape = indices.shape().to_vec();
        let k = *idx_shape.last().expect("indices have an expert axis");
        let pairs = indices.size();
        let do_sort = pairs >= SORT_THRESHOLD;
        let mut out_shape = idx_shape.clone();
        out_shape.push(hidden);
        if !do_sort {
            // `[..., 1, 1, hidden]` against `[..., k]`: one row per (token, expert).
            let mut x_shape = x.shape().to_vec();
            x_shape.insert(x_shape.len() - 1, 1);
            x_shape.insert(x_shape.len() - 1, 1);
            let x = x.reshape(&x_shape)?;
            let y = self.experts(&x, indices, false)?;
            return y.reshape(&out_shape);
        }
        // mlx-lm's `_gather_sort`: the pairs in expert order, each token's row repeated for
        // each of its experts; `_scatter_unsort` puts the results back.
        let flat = indices.reshape(&[pairs as i32])?;
        let order = argsort_axis(&flat, 0)?;
        let inv_order = argsort_axis(&order, 0)?;
        let tokens = x.reshape(&[-1, 1, hidden])?;
        let rows = order.floor_divide(Array::from_int(k))?;
        let x = tokens.take_axis(&rows, 0)?;
        let idx = flat.take_axis(&order, 0)?;
        let y = self.experts(&x, &idx, true)?;
        y.take_axis(&inv_order, 0)?.reshape(&out_shape)
    }

    /// The experts of each (token, expert) pair: `x` `[..., 1, hidden]` broadcast against
    /// `idx` `[...]`. Quantized, with the CPU levers on, the pairs are split in two halves
    /// along `idx`'s last axis, the second computed on the side stream (MLX's `gather_qmm` is
    /// single-threaded on the CPU, ~90% of a 4-bit MoE decode step): each pair's result is the
    /// same ops over the same values either way.
    fn experts(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        let pairs = *idx.shape().last().unwrap_or(&1);
        let quantized = matches!(self.down_proj.weight, Matrix::Quantized { .. });
        if pairs < 2 || !quantized || !two_streams::enabled() {
            return self.experts_of(x, idx, sorted);
        }
        let axis = idx.ndim() - 1;
        let half = pairs / 2;
        // `x`'s last batch axis lines up with `idx`'s last: one row per pair (sorted) or
        // broadcast.
        let x_axis = x.ndim() - 3;
        let x_part = |start: i32, end: i32| -> Result<Array> {
            let x_axis_len = x.shape()[x_axis];
            if x_axis_len == 1 {
                Ok(x.clone())
            } else {
                Ok(slice_axis(x, x_axis, start, end)?)
            }
        };
        let first = self.experts_of(&x_part(0, half)?, &slice_axis(idx, axis, 0, half)?, sorted)?;
        let second = two_streams::on_side_stream(|| {
            let idx = slice_axis(idx, axis, half, pairs)?;
            self.experts_of(&x_part(half, pairs)?, &idx, sorted)
        })?;
        // The output's batch axes are the broadcast of `x`'s and `idx`'s, then `[1, hidden]`.
        let out_axis = first.ndim() as i32 - 3;
        concatenate(&[first, second], out_axis)
    }

    fn experts_of(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        let up = self.up_proj.forward(x, idx, sorted)?;
        let gate = self.gate_proj.forward(x, idx, sorted)?;
        self.down_proj
            .forward(&self.activation.apply(&up, &gate)?, idx, sorted)
    }
}

/// How the router turns the gate's logits into `k` experts and their weights.
pub enum Routing {
    /// qwen3_moe: softmax over all experts (in float32 precision), the top `k`, optionally
    /// renormalised to sum to one.
    Softmax { norm_topk_prob: bool },
    /// gpt_oss: the top `k` logits, softmaxed among themselves.
    TopKSoftmax,
    /// minimax and glm4_moe (DeepSeek-V3's "noaux_tc"): sigmoid scores in float32; experts
    /// chosen by score + `e_score_correction_bias`, within the best `topk_group` of `n_group`
    /// groups (each group ranked by its two best); weighted by their plain scores, normalised
    /// (`sum + norm_eps`) and scaled.
    Sigmoid {
        e_score_correction_bias: Array,
        n_group: i32,
        topk_group: i32,
        normalize: bool,
        norm_eps: f32,
        routed_scaling_factor: f32,
        /// minimax casts the weights to the activations' dtype before weighting the experts;
        /// glm4_moe weights in float32 and casts the sum.
        scores_in_x_dtype: bool,
    },
}

/// `a[..., start..]` along the last axis.
fn last_from(a: &Array, start: i32) -> Result<Array> {
    let axis = a.ndim() - 1;
    let end = a.shape()[axis];
    Ok(slice_axis(a, axis, start, end)?)
}

/// `a[..., ..end]` along `axis`.
fn prefix_along(a: &Array, axis: usize, end: i32) -> Result<Array> {
    Ok(slice_axis(a, axis, 0, end)?)
}

impl Routing {
    /// `(indices [..., k], weights [..., k])` from the gate logits `[..., experts]`.
    fn route(&self, gates: &Array, k: i32, x_dtype: Dtype) -> Result<(Array, Array)> {
        let experts = *gates.shape().last().expect("experts axis");
        match self {
            Routing::Softmax { norm_topk_prob } => {
                let gates = softmax_axis(gates, -1, true)?;
                let inds = last_from(&argpartition_axis(&gates, -k, -1)?, experts - k)?;
                let mut scores = take_along_axis(&gates, &inds, -1)?;
                if *norm_topk_prob {
                    scores = scores.divide(scores.sum_axis(-1, true)?)?;
                }
                Ok((inds, scores))
            }
            Routing::TopKSoftmax => {
                let inds = last_from(&argpartition_axis(gates, -k, -1)?, experts - k)?;
                let top = take_along_axis(gates, &inds, -1)?;
                Ok((inds, softmax_axis(&top, -1, true)?))
            }
            Routing::Sigmoid {
                e_score_correction_bias,
                n_group,
                topk_group,
                normalize,
                norm_eps,
                routed_scaling_factor,
                scores_in_x_dtype,
            } => {
                let orig_scores = sigmoid(gates.as_dtype(Dtype::Float32)?)?;
                let mut scores = &orig_scores + e_score_correction_bias;
                if *n_group > 1 {
                    let shape = scores.shape().to_vec();
                    let mut grouped = shape[..shape.len() - 1].to_vec();
                    grouped.extend([*n_group, experts / n_group]);
                    let s = scores.reshape(&grouped)?;
                    let group_scores = topk_axis(&s, 2, -1)?.sum_axis(-1, true)?;
                    let drop = n_group - topk_group;
                    let axis = grouped.len() - 2;
                    let group_idx =
                        prefix_along(&argpartition_axis(&group_scores, drop - 1, -2)?, axis, drop)?;
                    let s = put_along_axis(&s, &group_idx, Array::from_f32(0.0), -2)?;
                    scores = s.reshape(&shape)?;
                }
                let axis = scores.ndim() - 1;
                let inds =
                    prefix_along(&argpartition_axis(scores.negative()?, k - 1, -1)?, axis, k)?;
                let mut scores = take_along_axis(&orig_scores, &inds, -1)?;
                if *normalize {
                    let denominator = scores.sum_axis(-1, true)?;
                    let denominator = if *norm_eps != 0.0 {
                        denominator + Array::from_f32(*norm_eps)
                    } else {
                        denominator
                    };
                    scores = scores.divide(denominator)?;
                }
                if *routed_scaling_factor != 1.0 {
                    scores = scores.multiply(Array::from_f32(*routed_scaling_factor))?;
                }
                if *scores_in_x_dtype {
                    scores = scores.as_dtype(x_dtype)?;
                }
                Ok((inds, scores))
            }
        }
    }
}

/// A sparse MoE block: the router (`gate`), the routed experts (`switch_mlp`) and, where the
/// architecture has them, shared experts every token goes through.
pub struct SparseMoeBlock {
    pub gate: Linear,
    /// minimax runs its gate on float32 activations.
    pub gate_in_f32: bool,
    pub routing: Routing,
    pub top_k: i32,
    pub switch_mlp: SwitchGlu,
    pub shared_experts: Option<Mlp>,
}

impl SparseMoeBlock {
    /// The router at `prefix` (`weight`, and `bias` when `bias`), prepared for `mode`; routers
    /// are tiny, but an 8-bit one stays 8-bit in native mode as mlx-lm runs it.
    pub fn gate(
        t: &mut Tensors,
        prefix: &str,
        bias: bool,
        mode: WeightsMode,
    ) -> std::result::Result<Linear, ModelError> {
        linear(t, prefix, bias, mode)
    }

    /// `e_score_correction_bias` at `prefix`, kept in float32 as mlx-lm keeps it (its
    /// `cast_predicate` exempts it from the checkpoint dtype).
    pub fn correction_bias(
        t: &mut Tensors,
        prefix: &str,
    ) -> std::result::Result<Array, ModelError> {
        Ok(t.take(&format!("{prefix}.e_score_correction_bias"))?
            .as_dtype(Dtype::Float32)?)
    }
}

impl SparseMoeBlock {
    /// The router's logits `[..., experts]` ([`router_logits`]).
    fn gate_logits(&self, x: &Array) -> Result<Array> {
        let x = if self.gate_in_f32 {
            x.as_dtype(Dtype::Float32)?
        } else {
            x.clone()
        };
        router_logits(&self.gate, &x)
    }
}

/// A router's logits `gate(x)` `[..., experts]`, batch-invariant: a float router runs one
/// token at a time (a batch of one-row matmuls), because BLAS rounds a row differently with
/// other rows beside it, and a router's rounding picks experts. Quantized routers already
/// compute each row on its own.
pub fn router_logits(gate: &Linear, x: &Array) -> Result<Array> {
    match &gate.matrix {
        Matrix::Dense(w) => {
            let shape = x.shape().to_vec();
            let hidden = shape[shape.len() - 1];
            // `[tokens, 1, hidden] @ [1, hidden, experts]`: a 3-D right side keeps MLX from
            // folding the tokens into one matrix (a view of `w`, not a copy).
            let wt = w.reshape(&[1, -1, hidden])?.swap_axes(-1, -2)?;
            let logits = matmul(x.reshape(&[-1, 1, hidden])?, wt)?;
            let mut out_shape = shape;
            *out_shape.last_mut().expect("feature axis") = w.shape()[0];
            let logits = logits.reshape(&out_shape)?;
            match &gate.bias {
                Some(b) => Ok(logits + b),
                None => Ok(logits),
            }
        }
        Matrix::Quantized { .. } => gate.forward(x),
    }
}

impl FeedForward for SparseMoeBlock {
    fn forward(&self, x: &Array) -> Result<Array> {
        let gates = self.gate_logits(x)?;
        let (inds, scores) = self.routing.route(&gates, self.top_k, x.dtype())?;
        let y = self.switch_mlp.forward(x, &inds)?;
        let mut weights_shape = scores.shape().to_vec();
        weights_shape.push(1);
        let y = multiply(&y, scores.reshape(&weights_shape)?)?
            .sum_axis(-2, false)?
            .as_dtype(y.dtype())?;
        match &self.shared_experts {
            Some(shared) => Ok(y + shared.forward(x)?),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::tests::{bits_of, quantized};
    use mlx_rs::random::normal;

    /// Quantized experts computed in two halves of the (token, expert) pairs on two streams
    /// give the unsplit result bit for bit: decode (pairs broadcast against one row per
    /// token) and prefill (pairs sorted by expert, a row each).
    #[test]
    fn split_experts_are_the_unsplit_ones() {
        assert!(two_streams::enabled());
        let (experts, hidden, inner) = (8, 128, 64);
        let glu = SwitchGlu {
            gate_proj: SwitchLinear {
                weight: quantized(&[experts, inner, hidden]),
                bias: None,
            },
            up_proj: SwitchLinear {
                weight: quantized(&[experts, inner, hidden]),
                bias: None,
            },
            down_proj: SwitchLinear {
                weight: quantized(&[experts, hidden, inner]),
                bias: None,
            },
            activation: Activation::SwiGlu,
        };
        for tokens in [1, 20] {
            let x = normal::<f32>(&[1, tokens, hidden], None, None, None).unwrap();
            let ids: Vec<i32> = (0..tokens * 4).map(|i| (i * 5 + i / 3) % experts).collect();
            let indices = Array::from_slice(&ids, &[1, tokens, 4]);
            let split = glu.forward(&x, &indices).unwrap();
            // The same path with the split bypassed.
            let whole = {
                let xs = x.reshape(&[1, tokens, 1, 1, hidden]).unwrap();
                let sorted = indices.size() >= SORT_THRESHOLD;
                if sorted {
                    None
                } else {
                    Some(glu.experts_of(&xs, &indices, false).unwrap())
                }
            };
            assert_eq!(split.shape(), &[1, tokens, 4, hidden]);
            match whole {
                Some(w) => assert_eq!(bits_of(&split), bits_of(&w.reshape(split.shape()).unwrap())),
                None => {
                    // Sorted: compare with a forward whose experts run unsplit.
                    let flat = indices.reshape(&[-1]).unwrap();
                    let order = argsort_axis(&flat, 0).unwrap();
                    let inv = argsort_axis(&order, 0).unwrap();
                    let rows = order.floor_divide(Array::from_int(4)).unwrap();
                    let xr = x
                        .reshape(&[-1, 1, hidden])
                        .unwrap()
                        .take_axis(&rows, 0)
                        .unwrap();
                    let y = glu
                        .experts_of(&xr, &flat.take_axis(&order, 0).unwrap(), true)
                        .unwrap();
                    let y = y
                        .take_axis(&inv, 0)
                        .unwrap()
                        .reshape(split.shape())
                        .unwrap();
                    assert_eq!(bits_of(&split), bits_of(&y));
                }
            }
        }
    }
}
