//! GLM-4.5 / 4.6 / 4.7 (and -Air): mlx-lm's `models/glm4_moe.py`. Attention with biased q/k/v
//! projections, optional per-head QK-norm and RoPE over the first `partial_rotary_factor` of
//! each head; the first `first_k_dense_replace` blocks have a dense MLP, the others a sparse
//! MoE block routed DeepSeek-V3 style (sigmoid scores with a correction bias, grouped top-k,
//! scaled weights) plus shared experts.

use mlx_rs::error::Exception;
use mlx_rs::Array;
use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::attention::attend;
use super::decoder::{linear, mlp, Decoder, SelfAttention};
use super::layers::{Linear, RmsNorm, Rope};
use super::switch_layers::{Activation, PerExpert, Routing, SparseMoeBlock, SwitchGlu};
use super::{make_rope_dims, BatchSeq, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<Attention>;

/// glm4_moe.py always has an `lm_head`.
pub const TIE_DEFAULT: bool = false;

/// glm4_moe's fields beyond [`ModelArgs`].
#[derive(Debug, Deserialize)]
struct MoeArgs {
    n_routed_experts: Option<i32>,
    n_shared_experts: Option<i32>,
    num_experts_per_tok: i32,
    first_k_dense_replace: usize,
    #[serde(default)]
    norm_topk_prob: bool,
    #[serde(default = "one_i32")]
    n_group: i32,
    #[serde(default = "one_i32")]
    topk_group: i32,
    #[serde(default = "one_f32")]
    routed_scaling_factor: f32,
    #[serde(default = "noaux_tc")]
    topk_method: String,
}

fn one_i32() -> i32 {
    1
}
fn one_f32() -> f32 {
    1.0
}
fn noaux_tc() -> String {
    "noaux_tc".into()
}

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per head.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
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
        let head_dim = args.head_dim();
        let bias = args.attention_bias;
        let qk_norm = if args.use_qk_norm.unwrap_or(false) {
            Some((
                t.norm(&format!("{p}.q_norm"), args.rms_norm_eps)?,
                t.norm(&format!("{p}.k_norm"), args.rms_norm_eps)?,
            ))
        } else {
            None
        };
        let rotary = (head_dim as f32 * args.partial_rotary_factor.unwrap_or(1.0)) as i32;
        Ok(Self {
            q_proj: linear(t, &format!("{p}.q_proj"), bias, mode)?,
            k_proj: linear(t, &format!("{p}.k_proj"), bias, mode)?,
            v_proj: linear(t, &format!("{p}.v_proj"), bias, mode)?,
            o_proj: linear(t, &format!("{p}.o_proj"), false, mode)?,
            qk_norm,
            n_heads: args.num_attention_heads,
            n_kv_heads: args.kv_heads(),
            head_dim,
            scale: (head_dim as f32).powf(-0.5),
            // glm4_moe.py: `nn.RoPE(int(head_dim * partial_rotary_factor), base=rope_theta)`.
            rope: make_rope_dims(
                &ModelArgs {
                    rope_scaling: None,
                    rope_parameters: None,
                    ..args.clone()
                },
                rotary,
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
        let mut q = self
            .q_proj
            .forward(x)?
            .reshape(&[1, n, self.n_heads, self.head_dim])?;
        let mut k = self
            .k_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, self.head_dim])?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape(&[1, n, self.n_kv_heads, self.head_dim])?;
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = q_norm.forward(&q)?;
            k = k_norm.forward(&k)?;
        }
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
    if moe.topk_method != "noaux_tc" {
        return Err(ModelError::Invalid {
            path: t.source().join("config.json"),
            reason: format!("unsupported topk_method '{}'", moe.topk_method),
        });
    }
    Model::load_with(args, t, mode, TIE_DEFAULT, &mut |t, i, p| {
        let p = format!("{p}.mlp");
        if moe.n_routed_experts.is_none() || i < moe.first_k_dense_replace {
            return Ok(Box::new(mlp(t, &p, false, mode)?));
        }
        // MoE: MoEGate (a plain float matrix, never quantized) + SwitchGLU + shared experts.
        let gate = format!("{p}.gate");
        let shared_experts = match moe.n_shared_experts {
            Some(_) => Some(mlp(t, &format!("{p}.shared_experts"), false, mode)?),
            None => None,
        };
        Ok(Box::new(SparseMoeBlock {
            gate: Linear {
                matrix: t.matrix(&gate)?,
                bias: None,
            },
            gate_in_f32: false,
            routing: Routing::Sigmoid {
                e_score_correction_bias: SparseMoeBlock::correction_bias(t, &gate)?,
                n_group: moe.n_group,
                topk_group: moe.topk_group,
                normalize: moe.norm_topk_prob && moe.num_experts_per_tok > 1,
                norm_eps: 0.0,
                routed_scaling_factor: moe.routed_scaling_factor,
                scores_in_x_dtype: false,
            },
            top_k: moe.num_experts_per_tok,
            switch_mlp: SwitchGlu::load(
                t,
                &format!("{p}.switch_mlp"),
                false,
                Activation::SwiGlu,
                Some(PerExpert {
                    experts: &format!("{p}.experts"),
                    names: ["gate_proj", "up_proj", "down_proj"],
                }),
            )?,
            shared_experts,
        }))
    })
}
