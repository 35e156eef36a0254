//! The embedded default model, SmolLM2-135M-Instruct: Wuwei's greedy tokens equal mlx-lm's
//! for 64 tokens on varied chat and raw prompts (same converted weights, same MLX build), and
//! the GGUF file gives the same tokens as its MLX-format conversion.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{python, root};
use mlx_rs::Array;
use serde_json::{json, Map, Value};
use wuwei::core::SamplingParams;
use wuwei::kv::cache::DenseKvCache;
use wuwei::loader::{self, Loaded};
use wuwei::model::{BatchSeq, Logits, WeightsMode};
use wuwei::text::sampler::{self, Sampler};

const MAX_TOKENS: usize = 64;

fn gguf() -> PathBuf {
    root().join(".deps/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The GGUF converted once per test run.
fn converted() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wuwei-parity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        wuwei::gguf::convert_gguf(&gguf(), &dir).expect("convert the GGUF");
        dir
    })
}

fn prompts() -> Value {
    json!([
        {"text": "What is the capital of France?", "chat": true},
        {"text": "Write a haiku about autumn leaves.", "chat": true},
        {"text": "Explain in two sentences why the sky is blue.", "chat": true},
        {"text": "def fibonacci(n):", "chat": false},
        {"text": "Once upon a time, in a small village by the sea,", "chat": false},
        {"text": "List three prime numbers and their squares. Émilie a dit « bonjour » 🙂", "chat": true},
    ])
}

fn reference() -> Vec<(Vec<u32>, Vec<u32>)> {
    let script = root().join("tests/reference/mlx_lm_greedy.py");
    let out = python(&[
        script.to_str().unwrap(),
        converted().to_str().unwrap(),
        &MAX_TOKENS.to_string(),
        &prompts().to_string(),
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (ids(&r["prompt"]), ids(&r["tokens"])))
        .collect()
}

fn prompt_ids(m: &Loaded, p: &Value) -> Vec<u32> {
    let text = p["text"].as_str().unwrap();
    if p["chat"].as_bool().unwrap() {
        m.tokenizer
            .encode_chat(
                &[json!({"role": "user", "content": text})],
                None,
                true,
                &Map::new(),
            )
            .unwrap()
    } else {
        m.tokenizer.encode(text, true).unwrap()
    }
}

fn greedy(m: &Loaded, prompt: &[u32]) -> Vec<u32> {
    let mut cache = DenseKvCache::new(m.model.num_layers());
    let mut input: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let mut out = Vec::new();
    while out.len() < MAX_TOKENS {
        let tokens = Array::from_slice(&input, &[1, input.len() as i32]);
        let mut batch = [BatchSeq {
            len: input.len(),
            cache: &mut cache,
        }];
        let logits = m.model.forward(&tokens, &mut batch, Logits::Last).unwrap();
        // The engine's greedy rule (mlx-lm's: the arg-max of the log-probabilities).
        let row = Sampler::new(SamplingParams::greedy()).row(&[], 0, None);
        let next = sampler::sample(&logits, &[row]).unwrap().read().unwrap()[0].token;
        if m.tokenizer.eos_token_ids().contains(&next) {
            break;
        }
        out.push(next);
        input = vec![next as i32];
    }
    out
}

/// Each prompt's ids and greedy tokens under `m`.
fn greedy_all(m: &Loaded) -> Vec<(Vec<u32>, Vec<u32>)> {
    prompts()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids = prompt_ids(m, p);
            let tokens = greedy(m, &ids);
            (ids, tokens)
        })
        .collect()
}

#[test]
fn greedy_tokens_match_mlx_lm_and_gguf_matches_conversion() {
    // Three independent runs of the same prompts — mlx-lm (a Python process), the conversion
    // and the GGUF — go side by side: the reference reads our prompt ids back to us, so nothing
    // waits for it, and CI's second core is used.
    let converted = converted();
    let reference = std::thread::spawn(reference);
    let gguf_run = std::thread::spawn(|| {
        // MLX streams belong to a thread: load where the model runs.
        greedy_all(&loader::load(&gguf(), WeightsMode::Native).unwrap())
    });
    let mlx = loader::load(converted, WeightsMode::Native).unwrap();
    let prompts = prompts();
    let ours = greedy_all(&mlx);
    let reference = reference.join().expect("the mlx-lm reference");
    let gguf = gguf_run.join().expect("the GGUF run");
    for (i, p) in prompts.as_array().unwrap().iter().enumerate() {
        let (ref_prompt, ref_tokens) = &reference[i];
        let (prompt, tokens) = &ours[i];
        assert_eq!(prompt, ref_prompt, "prompt {i} tokenizes differently");
        assert_eq!(
            tokens,
            ref_tokens,
            "prompt {i}: {:?}\nours: {:?}\nref:  {:?}",
            p["text"],
            mlx.tokenizer.decode(tokens, false),
            mlx.tokenizer.decode(ref_tokens, false)
        );
        assert_eq!(&gguf[i].0, prompt, "prompt {i}: GGUF tokenizer differs");
        assert_eq!(
            &gguf[i].1, tokens,
            "prompt {i}: GGUF output differs from its conversion"
        );
    }
    let first = mlx.tokenizer.decode(&reference[0].1, true).unwrap();
    assert!(
        first.starts_with("The capital of France is Paris."),
        "{first:?}"
    );
}

/// With the CPU levers on (this binary's default: float32 activations on the CPU), a prefill
/// chunk of 64+ queries is attended by the engine's own CPU kernel (model/cpu_attention.rs)
/// and a shorter one by MLX's attention. The same 330-token prompt read in one chunk and in
/// chunks of 40 gives the same last logits (within float32 rounding: 2.6e-5 measured) and
/// greedy token.
#[test]
fn the_cpu_attention_kernel_agrees_with_mlx_attention_on_the_real_model() {
    assert!(wuwei::device::cpu_levers());
    // Dequantized, as `weights = auto` runs it on the CPU (BLAS matmuls: a quick prefill).
    let m = loader::load(converted(), WeightsMode::Dequantized).unwrap();
    let text = "The lighthouse keeper counted the ships that passed each night, writing the \
                names in a book that had belonged to his grandfather. "
        .repeat(14);
    let prompt: Vec<i32> = m
        .tokenizer
        .encode(&text, true)
        .unwrap()
        .iter()
        .map(|&t| t as i32)
        .collect();
    assert!(prompt.len() > 320, "{}", prompt.len());
    let run = |chunk: usize| {
        let mut cache = DenseKvCache::new(m.model.num_layers());
        let mut logits = None;
        for part in prompt.chunks(chunk) {
            let tokens = Array::from_slice(part, &[1, part.len() as i32]);
            let mut batch = [BatchSeq {
                len: part.len(),
                cache: &mut cache,
            }];
            let l = m.model.forward(&tokens, &mut batch, Logits::Last).unwrap();
            l.eval().unwrap();
            logits = Some(l);
        }
        let logits = logits.unwrap().as_dtype(mlx_rs::Dtype::Float32).unwrap();
        logits.as_slice::<f32>().to_vec()
    };
    let (kernel, mlx) = (run(prompt.len()), run(40));
    let worst = kernel
        .iter()
        .zip(&mlx)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let argmax = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
    eprintln!("largest logit difference {worst}");
    assert!(worst < 1e-3, "largest logit difference {worst}");
    assert_eq!(argmax(&kernel), argmax(&mlx));
}

/// A pooled sequence (the slot pool: prompts up to 2,048 tokens) decoding over 1,024+ keys
/// beside a short one is attended by the CPU kernel from its row of the pool; an own cache
/// of the same sequence decodes the same tokens with logits within float32 rounding.
#[test]
fn a_pooled_decoder_over_many_keys_agrees_with_its_own_cache() {
    use wuwei::kv::slots::SharedSlots;
    let m = loader::load(converted(), WeightsMode::Dequantized).unwrap();
    let layers = m.model.num_layers();
    let prompt: Vec<i32> = (0..1100).map(|i| i * 37 % 5000 + 20).collect();
    let short: Vec<i32> = (0..20).map(|i| i + 100).collect();
    let pool = SharedSlots::new(layers);
    let (mut long_slot, mut short_slot) = (pool.acquire(), pool.acquire());
    let mut own = DenseKvCache::new(layers);
    let forward = |batch: &mut [BatchSeq<'_>], ids: &[i32]| {
        let l = m
            .model
            .forward(
                &Array::from_slice(ids, &[1, ids.len() as i32]),
                batch,
                Logits::Last,
            )
            .unwrap()
            .as_dtype(mlx_rs::Dtype::Float32)
            .unwrap();
        l.eval().unwrap();
        l.as_slice::<f32>().to_vec()
    };
    let one = |cache: &mut dyn wuwei::kv::cache::KvCache, ids: &[i32]| {
        forward(
            &mut [BatchSeq {
                len: ids.len(),
                cache,
            }],
            ids,
        )
    };
    one(&mut short_slot, &short);
    one(&mut long_slot, &prompt);
    let mut want = one(&mut own, &prompt);
    let vocab = want.len();
    let argmax = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as i32;
    for step in 0..4 {
        let t = argmax(&want);
        let mut batch = [
            BatchSeq {
                len: 1,
                cache: &mut long_slot,
            },
            BatchSeq {
                len: 1,
                cache: &mut short_slot,
            },
        ];
        let pooled = forward(&mut batch, &[t, 7]);
        want = one(&mut own, &[t]);
        let worst = pooled[..vocab]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < 1e-3,
            "step {step}: largest logit difference {worst}"
        );
        assert_eq!(argmax(&pooled[..vocab]), argmax(&want), "step {step}");
    }
}
