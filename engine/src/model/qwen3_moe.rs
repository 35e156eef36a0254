//! Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B, Qwen3-235B-A22B): mlx-lm's
//! `models/qwen3_moe.py`. Qwen3's attention (RMSNorm on each query and key head); every
//! `decoder_sparse_step`-th block not in `mlp_only_layers` has a sparse MoE block with softmax
//! top-k routing instead of the MLP.

use serde::Deserialize;
use serde_json::Value;

use super::architectures::parse_args;
use super::decoder::{mlp, Decoder};
use super::switch_layers::{Activation, PerExpert, Routing, SparseMoeBlock, SwitchGlu};
use super::{qwen3, ModelArgs, ModelError, Tensors, WeightsMode};

pub type Model = Decoder<qwen3::Attention>;

pub const TIE_DEFAULT: bool = false;

/// qwen3_moe's fields beyond [`ModelArgs`].
#[derive(Debug, Deserialize)]
struct MoeArgs {
    num_experts: i32,
    num_experts_per_tok: i32,
    #[serde(default = "one")]
    decoder_sparse_step: usize,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default)]
    norm_topk_prob: bool,
}

fn one() -> usize {
    1
}

pub fn load(
    config: &Value,
    args: &ModelArgs,
    t: Tensors,
    mode: WeightsMode,
) -> Result<Model, ModelError> {
    let moe: MoeArgs = parse_args(config, &t)?;
    // qwen3_moe.py builds a plain `nn.RoPE(head_dim, base=rope_theta)`: no rope scaling.
    let args = ModelArgs {
        rope_theta: Some(args.rope_theta_or(1_000_000.0)),
        rope_scaling: None,
        rope_parameters: None,
        ..args.clone()
    };
    let sparse = |layer: usize| {
        !moe.mlp_only_layers.contains(&layer)
            && moe.num_experts > 0
            && (layer + 1).is_multiple_of(moe.decoder_sparse_step.max(1))
    };
    Model::load_with(&args, t, mode, TIE_DEFAULT, &mut |t, i, p| {
        let p = format!("{p}.mlp");
        if !sparse(i) {
            return Ok(Box::new(mlp(t, &p, false, mode)?));
        }
        // Qwen3MoeSparseMoeBlock
        Ok(Box::new(SparseMoeBlock {
            gate: SparseMoeBlock::gate(t, &format!("{p}.gate"), false, mode)?,
            gate_in_f32: false,
            routing: Routing::Softmax {
                norm_topk_prob: moe.norm_topk_prob,
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
            shared_experts: None,
        }))
    })
}
