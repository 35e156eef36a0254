//! GGUF tensors → mlx-lm weight names and layouts.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use mlx_rs::{Array, Dtype};
use serde_json::{json, Map, Value};

use super::config::ModelShape;
use super::header::{GgmlType, GgufHeader, TensorInfo};
use super::GgufError;

/// Maps a llama.cpp tensor base name (without `.weight`/`.bias`) to the mlx-lm module path.
fn module_path(base: &str) -> Option<String> {
    let fixed = match base {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let module = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

pub struct ConvertedWeights {
    pub weights: HashMap<String, Array>,
    /// mlx-lm "quantization" config section, when any tensor is quantized.
    pub quantization: Option<Value>,
    pub has_lm_head: bool,
    pub vocab_rows: Option<u64>,
}

fn mlx_err(header: &GgufHeader, action: &str, e: impl std::fmt::Display) -> GgufError {
    GgufError::Mlx {
        path: header.path.clone(),
        action: action.to_string(),
        message: e.to_string(),
    }
}

/// Undoes llama.cpp's row permutation of q/k projections. llama.cpp reorders each head's
/// rows from HF's "first half, second half" rotary layout to interleaved pairs; the
/// inverse takes rows (head, i, pair) back to (head, pair, i). Works on packed weights,
/// scales, biases and bias vectors alike because it only moves whole rows.
fn unpermute_rows(header: &GgufHeader, a: &Array, n_heads: u64) -> Result<Array, GgufError> {
    let shape = a.shape().to_vec();
    let rows = i64::from(shape[0]);
    let heads = n_heads as i64;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(GgufError::Malformed {
            path: header.path.clone(),
            what: format!("q/k projection with {rows} rows does not split into {heads} heads"),
        });
    }
    let per_half = (rows / heads / 2) as i32;
    let mut split = vec![heads as i32, per_half, 2];
    split.extend_from_slice(&shape[1..]);
    a.reshape(&split)
        .and_then(|x| x.swap_axes(1, 2))
        .and_then(|x| x.reshape(&shape))
        .map_err(|e| mlx_err(header, "un-permuting q/k rows", e))
}

/// Reads a BF16 tensor ourselves: MLX would turn it into float16, whose narrower range
/// can overflow. bf16 → f32 is exact (the bf16 bits are the top half of an f32).
fn read_bf16_as_f32(header: &GgufHeader, tensor: &TensorInfo) -> Result<Array, GgufError> {
    let io = |source| GgufError::Io {
        path: header.path.clone(),
        source,
    };
    let count = tensor.element_count() as usize;
    let mut raw = vec![0u8; count * 2];
    let mut file = File::open(&header.path).map_err(io)?;
    file.seek(SeekFrom::Start(tensor.data_offset)).map_err(io)?;
    file.read_exact(&mut raw).map_err(io)?;
    let values: Vec<f32> = raw
        .chunks_exact(2)
        .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
        .collect();
    let shape: Vec<i32> = tensor.mlx_shape().iter().map(|&d| d as i32).collect();
    Ok(Array::from_slice(&values, &shape))
}

/// Converts every tensor: renames, un-permutes q/k (llama only), makes floats f32.
pub fn convert_weights(
    header: &GgufHeader,
    mut mlx_arrays: HashMap<String, Array>,
    shape: &ModelShape,
) -> Result<ConvertedWeights, GgufError> {
    let mut weights = HashMap::new();
    // module path → bits, for tensors MLX returned in its affine quantized format.
    let mut quantized: Vec<(String, u32)> = Vec::new();
    let mut has_lm_head = false;
    let mut vocab_rows = None;

    for tensor in &header.tensors {
        let (base, kind) = match tensor.name.rsplit_once('.') {
            Some((base, kind @ ("weight" | "bias"))) => (base, kind),
            _ => (tensor.name.as_str(), ""),
        };
        if base == "rope_freqs" {
            // Llama-3.1 style frequency scaling is stored as a tensor; mlx-lm needs its
            // parameters instead, which we do not recover yet.
            return Err(GgufError::Unsupported {
                path: header.path.clone(),
                what: "llama-3 rope frequency scaling (rope_freqs tensor)".into(),
            });
        }
        let module = module_path(base)
            .filter(|_| !kind.is_empty())
            .ok_or_else(|| GgufError::UnsupportedTensor {
                path: header.path.clone(),
                tensor: tensor.name.clone(),
                arch: shape.arch.clone(),
            })?;
        if module == "lm_head" {
            has_lm_head = true;
        }
        if module == "model.embed_tokens" {
            vocab_rows = tensor.mlx_shape().first().copied();
        }

        // q/k rows were permuted for llama's interleaved rope; qwen files are not.
        let unpermute_heads = match (shape.arch.as_str(), base.rsplit('.').next()) {
            ("llama", Some("attn_q")) => Some(shape.n_heads),
            ("llama", Some("attn_k")) => Some(shape.n_kv_heads),
            _ => None,
        };

        let take = |arrays: &mut HashMap<String, Array>, key: &str| {
            arrays.remove(key).ok_or_else(|| GgufError::Mlx {
                path: header.path.clone(),
                action: "loading tensors".into(),
                message: format!("MLX returned no array {key:?}"),
            })
        };
        let mut parts: Vec<(String, Array)> = Vec::new();
        if let Some(bits) = tensor.ggml_type.quant_bits() {
            if kind != "weight" {
                return Err(GgufError::UnsupportedTensorType {
                    path: header.path.clone(),
                    tensor: tensor.name.clone(),
                    ggml_type: tensor.ggml_type.name(),
                });
            }
            // MLX names the parts of a quantized `X.weight` as X.weight, X.scales, X.biases.
            parts.push((
                format!("{module}.weight"),
                take(&mut mlx_arrays, &tensor.name)?,
            ));
            for extra in ["scales", "biases"] {
                let a = take(&mut mlx_arrays, &format!("{base}.{extra}"))?;
                // Scales and biases come as float16; f16 arithmetic is very slow on the CPU.
                let a = a
                    .as_dtype(Dtype::Float32)
                    .map_err(|e| mlx_err(header, "converting scales to float32", e))?;
                parts.push((format!("{module}.{extra}"), a));
            }
            quantized.push((module.clone(), bits));
        } else {
            let a = if tensor.ggml_type == GgmlType::BF16 {
                mlx_arrays.remove(&tensor.name);
                read_bf16_as_f32(header, tensor)?
            } else {
                take(&mut mlx_arrays, &tensor.name)?
            };
            let a = if a.dtype() == Dtype::Float32 {
                a
            } else {
                a.as_dtype(Dtype::Float32)
                    .map_err(|e| mlx_err(header, "converting weights to float32", e))?
            };
            parts.push((format!("{module}.{kind}"), a));
        }

        for (name, array) in parts {
            let array = match unpermute_heads {
                Some(heads) => unpermute_rows(header, &array, heads)?,
                None => array,
            };
            weights.insert(name, array);
        }
    }

    Ok(ConvertedWeights {
        weights,
        quantization: quantization_config(&quantized),
        has_lm_head,
        vocab_rows,
    })
}

/// mlx-lm's quantization section: the most common bit width as the default, and an
/// entry per module whose width differs (mlx-lm reads those as per-layer overrides).
fn quantization_config(quantized: &[(String, u32)]) -> Option<Value> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for (_, bits) in quantized {
        *counts.entry(*bits).or_default() += 1;
    }
    let default_bits = counts
        .iter()
        .max_by_key(|(bits, count)| (**count, **bits))
        .map(|(bits, _)| *bits)?;
    let mut section = Map::new();
    section.insert("group_size".into(), json!(32));
    section.insert("bits".into(), json!(default_bits));
    for (module, bits) in quantized {
        if *bits != default_bits {
            section.insert(module.clone(), json!({"group_size": 32, "bits": bits}));
        }
    }
    Some(Value::Object(section))
}
