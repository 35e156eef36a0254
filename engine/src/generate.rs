//! `wuwei generate`: one prompt through the same engine thread the server uses, streamed to
//! stdout, followed by a line of prompt and decode speed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Map};

use crate::core::{Event, SamplingParams};
use crate::kv::quant::KvQuant;
use crate::loader;
use crate::model::WeightsMode;
use crate::scheduler::{Engine, EngineStats, SchedulerConfig, SeqRequest, EVENT_CHANNEL_CAPACITY};
use crate::text::output_parser::ParserConfig;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model folder (MLX format) or .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// How weights are held: auto (dequantized on CPU when memory allows), native (exact
    /// reference parity) or dequantized (f32, faster batched matmuls on CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub weights: WeightsArg,
    /// The dtype activations are computed in: auto (the checkpoint's on a GPU, float32 on
    /// the CPU), checkpoint or float32.
    #[arg(long, env = "WUWEI_ACTIVATIONS", default_value = "auto")]
    pub activations: crate::device::Activations,
    /// Prompt tokens per scheduler step (default: the device's, as `wuwei serve`).
    #[arg(long, env = "WUWEI_PREFILL_CHUNK", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefill_chunk: Option<u32>,
    /// Store the KV cache quantized to this many bits (4 or 8; as `kv_bits` of `wuwei
    /// serve`). Unset: as computed.
    #[arg(long, env = "WUWEI_KV_BITS")]
    pub kv_bits: Option<i32>,
    /// Don't print the generated text (benchmarks).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WeightsArg {
    Auto,
    Native,
    Dequantized,
}

impl From<WeightsArg> for WeightsMode {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Auto => WeightsMode::Auto,
            WeightsArg::Native => WeightsMode::Native,
            WeightsArg::Dequantized => WeightsMode::Dequantized,
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    crate::device::set_activations(args.activations);
    let mut scheduler = SchedulerConfig {
        prefill_chunk: args.prefill_chunk.map_or_else(
            || crate::device::default_prefill_chunk(crate::device::info().backend),
            |n| n as usize,
        ),
        kv_quant: args
            .kv_bits
            .map(|bits| KvQuant::new(bits, KvQuant::DEFAULT_GROUP_SIZE))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--kv-bits: {e}"))?,
        ..SchedulerConfig::default()
    };
    // As `serve`: a model that cannot store its KV in that format keeps it as computed.
    if scheduler.kv_quant.is_some() {
        if let Ok(facts) = crate::integrity::check_model(&args.model) {
            scheduler.kv_quant = facts.kv_quant_at_load("generate", scheduler.kv_quant);
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let model_path = args.model.clone();
    let (weights, chat, text, wanted) = (
        args.weights.into(),
        args.chat,
        args.prompt.clone(),
        args.max_tokens,
    );
    let sampling = SamplingParams {
        temperature: args.temp,
        top_p: args.top_p,
        seed: args.seed,
        ..SamplingParams::default()
    };
    // MLX streams belong to a thread: the model is loaded on the thread that runs it.
    let engine_thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let prepared = prepare(&model_path, weights, chat, &text, wanted);
        let (loaded, prompt, max_tokens) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return Ok(());
            }
        };
        let _ = ready_tx.send(Ok(prompt.len()));
        let tokenizer = loaded.tokenizer.clone();
        let engine = Engine::new(
            "generate".into(),
            loaded.model,
            tokenizer,
            scheduler,
            Arc::new(EngineStats::default()),
        );
        let (req_tx, req_rx) = std::sync::mpsc::channel();
        req_tx.send(SeqRequest {
            id: "generate".into(),
            prompt,
            head: 0,
            sampling,
            max_tokens,
            limited_by_context: max_tokens < wanted,
            stop: Vec::new(),
            logprobs: None,
            // Show everything the model writes, markup included.
            parser: ParserConfig {
                reasoning: false,
                starts_in_reasoning: false,
                tools: false,
            }
            .into(),
            grammar: None,
            events: tx,
            received: Instant::now(),
        })?;
        drop(req_tx);
        engine.run(req_rx);
        Ok(())
    });
    let prompt_tokens = match ready_rx.recv() {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("the engine thread died while loading"),
    };
    let mut out = std::io::stdout().lock();
    let mut usage = None;
    let mut finish = None;
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Text(t) | Event::Reasoning(t) if !args.quiet => {
                write!(out, "{t}")?;
                out.flush()?;
            }
            Event::Finished { reason, usage: u } => {
                usage = Some(u);
                finish = Some(reason);
            }
            Event::Error(e) => bail!("generation failed: {e}"),
            _ => {}
        }
    }
    engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))??;
    let usage = usage.unwrap_or_default();
    // The engine's clock: prefill ends when the first token reaches the host (not at the first
    // event, which for a long prompt is a keep-alive after its first chunk).
    let prefill_s = usage.timings.to_first_token.as_secs_f64();
    let decode_s = usage.timings.decode.as_secs_f64();
    writeln!(out)?;
    writeln!(
        out,
        "prompt: {prompt_tokens} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s | finish: {:?}",
        prompt_tokens as f64 / prefill_s.max(1e-9),
        usage.completion_tokens,
        usage.completion_tokens.saturating_sub(1) as f64 / decode_s.max(1e-9),
        finish.unwrap_or(crate::core::FinishReason::Cancelled),
    )?;
    Ok(())
}

/// Loads the model and tokenizes the prompt; returns them with the token budget.
fn prepare(
    path: &std::path::Path,
    weights: WeightsMode,
    chat: bool,
    text: &str,
    wanted: usize,
) -> anyhow::Result<(loader::Loaded, Vec<u32>, usize)> {
    let loaded =
        loader::load(path, weights).with_context(|| format!("loading {}", path.display()))?;
    let prompt = if chat {
        let messages = vec![json!({"role": "user", "content": text})];
        loaded
            .tokenizer
            .encode_chat(&messages, None, true, &Map::new())?
    } else {
        loaded.tokenizer.encode(text, true)?
    };
    if prompt.len() >= loaded.context_length {
        bail!(
            "prompt is too long: {} tokens > {} maximum",
            prompt.len(),
            loaded.context_length - 1
        );
    }
    let max_tokens = wanted.min(loaded.context_length - prompt.len());
    Ok((loaded, prompt, max_tokens))
}
