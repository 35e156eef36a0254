//! Embedding models: how a model folder says it is one (sentence-transformers' `modules.json`
//! and pooling config, or a transformers embedding class), the engine thread that embeds
//! batches of inputs, and the pooling and normalization of the final hidden states.
//!
//! An embedding model is a decoder run without its head: the final norm's output at every
//! position, pooled per input (the last token for Qwen3-Embedding, the mean or the first token
//! where the pooling config says so), then L2-normalized when `modules.json` lists a
//! `Normalize` module. Everything queued when the engine looks is embedded together: the
//! inputs of all waiting requests laid end to end in passes of up to [`PASS_TOKENS`] tokens,
//! one forward per pass, an input longer than that continuing through its cache in the next.

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use serde_json::Value;

use crate::kv::cache::DenseKvCache;
use crate::mlx_ext::slice_axis;
use crate::model::{BatchSeq, LanguageModel};

/// Tokens of one forward pass: big enough that a batch of short inputs is one pass, small
/// enough that the attention of a long input stays modest (the scheduler's prefill chunks are
/// the same order).
pub const PASS_TOKENS: usize = 2048;

/// Which positions' hidden states make an input's vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last position (causal models: the only one that has seen every token).
    LastToken,
    /// The mean over every position.
    Mean,
    /// The first position.
    Cls,
}

/// How a model folder embeds: its pooling, whether the vector is L2-normalized, and whether a
/// prefix of it is itself an embedding (Matryoshka-trained: `dimensions` may truncate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingSpec {
    pub pooling: Pooling,
    pub normalize: bool,
    pub truncatable: bool,
    /// The length of a full vector (the hidden size).
    pub dimensions: usize,
}

/// Whether the folder `dir` (whose parsed config.json is `config`) holds an embedding model:
/// `Ok(None)` when it is a generative one, `Err` when it is an embedding model this server
/// cannot pool. Read the way sentence-transformers does (`modules.json` naming a `Pooling`
/// module and its folder's `config.json`); failing that, a transformers class that has no
/// head (`Qwen3Model`, `…ForEmbedding`) pools the last token, as Qwen3-Embedding does.
pub fn detect(dir: &Path, config: &Value) -> Result<Option<EmbeddingSpec>, String> {
    let dimensions = config
        .get("hidden_size")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    // Qwen3-Embedding is trained with Matryoshka representation learning.
    let truncatable = config
        .get("model_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t == "qwen3");
    let modules_path = dir.join("modules.json");
    if let Ok(text) = std::fs::read_to_string(&modules_path) {
        let modules: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: malformed JSON: {e}", modules_path.display()))?;
        let of_type = |suffix: &str| {
            modules.iter().find(|m| {
                m.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with(suffix))
            })
        };
        if let Some(pooling_module) = of_type(".Pooling") {
            let folder = pooling_module
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("1_Pooling");
            let pooling = read_pooling(&dir.join(folder).join("config.json"))?;
            return Ok(Some(EmbeddingSpec {
                pooling,
                normalize: of_type(".Normalize").is_some(),
                truncatable,
                dimensions,
            }));
        }
    }
    let headless_class = config
        .get("architectures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|c| c.ends_with("ForEmbedding") || c == "Qwen3Model");
    Ok(headless_class.then_some(EmbeddingSpec {
        pooling: Pooling::LastToken,
        normalize: true,
        truncatable,
        dimensions,
    }))
}

/// A sentence-transformers `Pooling` config: exactly one mode of the ones served.
fn read_pooling(path: &Path) -> Result<Pooling, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: malformed JSON: {e}", path.display()))?;
    let on = |key: &str| config.get(key).and_then(Value::as_bool) == Some(true);
    let served = [
        ("pooling_mode_lasttoken", Pooling::LastToken),
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
    ];
    let chosen: Vec<Pooling> = served
        .iter()
        .filter(|(k, _)| on(k))
        .map(|&(_, p)| p)
        .collect();
    let others = [
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
    ];
    match (chosen.as_slice(), others.iter().find(|k| on(k))) {
        ([one], None) => Ok(*one),
        (_, Some(other)) => Err(format!(
            "{}: {other} is not supported (last-token, mean and CLS pooling are)",
            path.display()
        )),
        _ => Err(format!(
            "{}: exactly one of pooling_mode_lasttoken, pooling_mode_mean_tokens and pooling_mode_cls_token must be true",
            path.display()
        )),
    }
}

/// `vector` cut to its first `dimensions` values (when given) and, when `normalize`, scaled to
/// unit length.
pub fn finish(mut vector: Vec<f32>, dimensions: Option<usize>, normalize: bool) -> Vec<f32> {
    if let Some(d) = dimensions {
        vector.truncate(d);
    }
    if normalize {
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        // Sentence-transformers' Normalize: x / max(|x|, 1e-12).
        let scale = 1.0 / norm.max(1e-12);
        vector.iter_mut().for_each(|x| *x *= scale);
    }
    vector
}

/// One request's inputs, as token ids, and where their pooled vectors go.
pub struct EmbedJob {
    pub inputs: Vec<Vec<u32>>,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The engine thread of an embedding model: embeds every job waiting when it looks, together,
/// until the sender is dropped (unload).
pub fn run_engine(
    model: Box<dyn LanguageModel>,
    jobs: std_mpsc::Receiver<EmbedJob>,
    pooling: Pooling,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter());
        // A client that went away needs nothing computed.
        batch.retain(|job| !job.reply.is_closed());
        let inputs: Vec<&[u32]> = batch
            .iter()
            .flat_map(|job| job.inputs.iter().map(Vec::as_slice))
            .collect();
        if inputs.is_empty() {
            continue;
        }
        let result = embed_all(model.as_ref(), &inputs, pooling, PASS_TOKENS);
        // Give the pass's buffers back: an embedding model is idle between batches.
        let _ = mlx_rs::memory::clear_cache();
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in batch {
                    let mine = vectors.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedding failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.what().to_string()));
                }
            }
        }
    }
}

/// The pooled (not normalized) vector of each input, in float32. The inputs are laid end to
/// end in passes of at most `pass_tokens` tokens (each input its own cache, so that its
/// vector does not depend on what else is in the pass); an input that does not fit in what is
/// left of a pass continues in the next.
pub fn embed_all(
    model: &dyn LanguageModel,
    inputs: &[&[u32]],
    pooling: Pooling,
    pass_tokens: usize,
) -> Result<Vec<Vec<f32>>, Exception> {
    let n = inputs.len();
    let mut caches: Vec<DenseKvCache> = (0..n)
        .map(|_| DenseKvCache::new(model.num_layers()))
        .collect();
    let mut read = vec![0usize; n];
    let mut pooled: Vec<Option<Array>> = vec![None; n];
    let mut first = 0;
    while first < n {
        // This pass: the unfinished inputs from `first`, each from where it stopped.
        let mut pieces = Vec::new();
        let mut room = pass_tokens.max(1);
        let mut end = first;
        while end < n && room > 0 {
            let take = (inputs[end].len() - read[end]).min(room);
            pieces.push((end, read[end], take));
            room -= take;
            end += 1;
        }
        let flat: Vec<i32> = pieces
            .iter()
            .flat_map(|&(i, start, len)| inputs[i][start..start + len].iter().map(|&t| t as i32))
            .collect();
        let tokens = Array::from_slice(&flat, &[1, flat.len() as i32]);
        let mut batch: Vec<BatchSeq<'_>> = caches[first..end]
            .iter_mut()
            .zip(&pieces)
            .map(|(cache, &(_, _, len))| BatchSeq {
                len,
                cache: cache as &mut dyn crate::kv::cache::KvCache,
            })
            .collect();
        let hidden = model.hidden_states(&tokens, &mut batch)?;
        drop(batch);
        let mut row = 0i32;
        for &(i, start, len) in &pieces {
            let (len_i32, total) = (len as i32, inputs[i].len());
            let part = match pooling {
                Pooling::LastToken if start + len == total => {
                    Some(slice_axis(&hidden, 1, row + len_i32 - 1, row + len_i32)?)
                }
                Pooling::Cls if start == 0 => Some(slice_axis(&hidden, 1, row, row + 1)?),
                Pooling::Mean => {
                    let sum = slice_axis(&hidden, 1, row, row + len_i32)?
                        .as_dtype(Dtype::Float32)?
                        .sum_axis(1, true)?;
                    Some(match pooled[i].take() {
                        Some(before) => before + sum,
                        None => sum,
                    })
                }
                _ => None,
            };
            if let Some(part) = part {
                pooled[i] = Some(part.as_dtype(Dtype::Float32)?);
            }
            read[i] += len;
            row += len_i32;
        }
        // Evaluated per pass, so the graph does not grow across passes.
        mlx_rs::transforms::eval(pooled[first..end].iter().flatten())?;
        while first < n && read[first] == inputs[first].len() {
            // Its cache is no longer needed.
            caches[first] = DenseKvCache::default();
            first += 1;
        }
    }
    pooled
        .into_iter()
        .zip(inputs)
        .map(|(vector, input)| {
            let vector = vector.ok_or_else(|| Exception::custom("an input was not pooled"))?;
            let vector = match pooling {
                Pooling::Mean => vector / input.len() as f32,
                _ => vector,
            };
            vector.eval()?;
            Ok(vector.as_slice::<f32>().to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wuwei-embed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const MODULES: &str = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
        {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn sentence_transformers_files_say_how_to_pool() {
        let config = serde_json::json!({"model_type": "qwen3", "hidden_size": 1024,
            "architectures": ["Qwen3ForCausalLM"]});
        let dir = folder(
            "last",
            &[
                ("modules.json", MODULES),
                (
                    "1_Pooling/config.json",
                    r#"{"pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false}"#,
                ),
            ],
        );
        let spec = detect(&dir, &config).unwrap().unwrap();
        assert_eq!(
            spec,
            EmbeddingSpec {
                pooling: Pooling::LastToken,
                normalize: true,
                truncatable: true,
                dimensions: 1024
            }
        );
        let dir = folder(
            "mean",
            &[
                ("modules.json", &MODULES.replace(",\n        {\"idx\":2,\"name\":\"2\",\"path\":\"2_Normalize\",\"type\":\"sentence_transformers.models.Normalize\"}", "")),
                ("1_Pooling/config.json", r#"{"pooling_mode_mean_tokens": true}"#),
            ],
        );
        let spec = detect(&dir, &serde_json::json!({"model_type": "llama"}))
            .unwrap()
            .unwrap();
        assert_eq!(
            (spec.pooling, spec.normalize, spec.truncatable),
            (Pooling::Mean, false, false)
        );
        let dir = folder(
            "max",
            &[
                ("modules.json", MODULES),
                (
                    "1_Pooling/config.json",
                    r#"{"pooling_mode_max_tokens": true}"#,
                ),
            ],
        );
        assert!(detect(&dir, &config)
            .unwrap_err()
            .contains("pooling_mode_max_tokens"));
    }

    #[test]
    fn a_chat_model_is_not_an_embedding_model_but_a_headless_class_is() {
        let dir = folder("chat", &[]);
        let chat =
            serde_json::json!({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]});
        assert_eq!(detect(&dir, &chat).unwrap(), None);
        let base = serde_json::json!({"model_type": "qwen3", "architectures": ["Qwen3Model"]});
        assert_eq!(
            detect(&dir, &base).unwrap().unwrap().pooling,
            Pooling::LastToken
        );
    }

    #[test]
    fn truncation_renormalizes() {
        let v = finish(vec![3.0, 4.0, 12.0], Some(2), true);
        assert_eq!(v, vec![0.6, 0.8]);
        assert_eq!(finish(vec![3.0, 4.0], None, false), vec![3.0, 4.0]);
    }
}
