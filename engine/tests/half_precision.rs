//! The GPU configuration on the CPU, through the whole engine: SmolLM2 as a bf16 checkpoint — quantized weights kept as stored, activations in the checkpoint's dtype,
//! what a Mac runs — gives mlx-lm's greedy tokens in the same dtype, with the prompts decoding
//! together through the scheduler's pipelined steps and the device sampler. (Reading the
//! logits as float32 on the host once crashed the engine thread in exactly this setting.)
//!
//! Half precision is slow on MLX's CPU kernels (fp16's quantized matmul slower still): the
//! prompts are short and so are the answers; fp16 checkpoints are checked on small random
//! models (arch_parity.rs, tests/e2e/test_half_precision.py).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use common::{python, root};
use serde_json::{json, Value};
use wuwei::core::{Event, SamplingParams};
use wuwei::device::{set_activations, Activations};
use wuwei::model::WeightsMode;
use wuwei::scheduler::{Engine, EngineStats, SchedulerConfig, SeqRequest, EVENT_CHANNEL_CAPACITY};
use wuwei::text::output_parser::ParserConfig;

const MAX_TOKENS: usize = 8;

/// The embedded GGUF converted once per test run, then cast to `dtype` as published
/// half-precision MLX checkpoints are (scales and biases of the quantized layers included).
fn checkpoint(dtype: &str) -> PathBuf {
    static CONVERTED: OnceLock<PathBuf> = OnceLock::new();
    let converted = CONVERTED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wuwei-half-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gguf = root().join(".deps/SmolLM2-135M-Instruct.Q4_1.gguf");
        wuwei::gguf::convert_gguf(&gguf, &dir).expect("convert the GGUF");
        dir
    });
    let out = converted.with_extension(dtype);
    let _ = std::fs::remove_dir_all(&out);
    let script = root().join("tests/reference/cast_model.py");
    python(&[
        script.to_str().unwrap(),
        converted.to_str().unwrap(),
        out.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
    out
}

/// mlx-lm's prompt ids and greedy tokens (EOS excluded) for each prompt.
fn reference(model: &Path, prompts: &Value) -> Vec<(Vec<u32>, Vec<u32>)> {
    let script = root().join("tests/reference/mlx_lm_greedy.py");
    let out: Value = serde_json::from_str(&python(&[
        script.to_str().unwrap(),
        model.to_str().unwrap(),
        &MAX_TOKENS.to_string(),
        &prompts.to_string(),
    ]))
    .unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    };
    out.as_array()
        .unwrap()
        .iter()
        .map(|r| (ids(&r["prompt"]), ids(&r["tokens"])))
        .collect()
}

/// What the engine streamed for one request.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    completion_tokens: usize,
    logprobs: usize,
}

/// Runs every prompt through one engine at once (they share its steps) and collects what
/// each streams.
fn engine(model: &Path, prompts: &[Vec<u32>]) -> Vec<Streamed> {
    let model = model.to_path_buf();
    let (req_tx, req_rx) = std::sync::mpsc::channel();
    let mut receivers = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel(EVENT_CHANNEL_CAPACITY);
        receivers.push(rx);
        req_tx
            .send(SeqRequest {
                id: format!("half-{i}"),
                prompt: prompt.clone(),
                head: 0,
                sampling: SamplingParams::greedy(),
                max_tokens: MAX_TOKENS,
                limited_by_context: false,
                stop: Vec::new(),
                // One of them also reports log-probabilities (read on the device in bf16/f16).
                logprobs: (i == 0).then_some(2),
                parser: ParserConfig {
                    reasoning: false,
                    starts_in_reasoning: false,
                    tools: false,
                }
                .into(),
                grammar: None,
                events: tx,
                received: Instant::now(),
            })
            .unwrap();
    }
    drop(req_tx);
    // MLX streams belong to a thread: load where the engine runs.
    let thread = std::thread::spawn(move || {
        let loaded = wuwei::loader::load(&model, WeightsMode::Native).expect("load");
        Engine::new(
            "half".into(),
            loaded.model,
            loaded.tokenizer.clone(),
            SchedulerConfig::default(),
            Arc::new(EngineStats::default()),
        )
        .run(req_rx);
    });
    let results = receivers
        .into_iter()
        .map(|mut rx| {
            let mut s = Streamed::default();
            while let Some(event) = rx.blocking_recv() {
                match event {
                    Event::Text(t) => s.text.push_str(&t),
                    Event::Logprobs(l) => s.logprobs += l.len(),
                    Event::Finished { usage, .. } => s.completion_tokens = usage.completion_tokens,
                    Event::Error(e) => panic!("generation failed: {e}"),
                    _ => {}
                }
            }
            s
        })
        .collect();
    thread.join().expect("the engine thread panicked");
    results
}

fn greedy_tokens_match_mlx_lm(dtype: &str) {
    set_activations(Activations::Checkpoint);
    let model = checkpoint(dtype);
    let prompts = json!([
        {"text": "def fibonacci(n):", "chat": false},
        {"text": "The capital of France is", "chat": false},
        {"text": "Once upon a time,", "chat": false},
    ]);
    // mlx-lm (a Python process) runs beside the engine: it reports the prompt ids it used,
    // which must be ours.
    let tokenizer = wuwei::loader::load_tokenizer(&model).unwrap();
    let ids: Vec<Vec<u32>> = prompts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| tokenizer.encode(p["text"].as_str().unwrap(), true).unwrap())
        .collect();
    let reference = {
        let (model, prompts) = (model.clone(), prompts.clone());
        std::thread::spawn(move || reference(&model, &prompts))
    };
    let ours = engine(&model, &ids);
    let reference = reference.join().expect("the mlx-lm reference");
    for (i, ((prompt, want), got)) in reference.iter().zip(&ours).enumerate() {
        assert_eq!(prompt, &ids[i], "{dtype} prompt {i}: prompt ids");
        let text = tokenizer.decode(want, false).unwrap();
        assert_eq!(got.text, text, "{dtype} prompt {i}: text");
        // The engine counts an EOS it sampled; mlx-lm's list stops before it.
        let eos = usize::from(want.len() < MAX_TOKENS);
        assert_eq!(
            got.completion_tokens,
            want.len() + eos,
            "{dtype} prompt {i}: tokens"
        );
    }
    assert_eq!(ours[0].logprobs, ours[0].completion_tokens, "one per token");
}

#[test]
fn smollm2_bf16() {
    greedy_tokens_match_mlx_lm("bfloat16");
}
