//! `wuwei generate`: one prompt through the same engine thread the server uses, streamed to
//! stdout, followed by a line of prompt and decode speed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Map};

use crate::core::{Event, SamplingParams};
use crate::loader;
use crate::model::WeightsMode;
use crate::output_parser::ParserConfig;
use crate::scheduler::{Engine, EngineStats, SchedulerConfig, SeqRequest, EVENT_CHANNEL_CAPACITY};

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
    /// How weights are held: native (exact reference parity) or dequantized (f32, faster
    /// batched matmuls on CPU).
    #[arg(long, value_enum, default_value = "native")]
    pub weights: WeightsArg,
    /// Don't print the generated text (benchmarks).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WeightsArg {
    Native,
    Dequantized,
}

impl From<WeightsArg> for WeightsMode {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::Native => WeightsMode::Native,
            WeightsArg::Dequantized => WeightsMode::Dequantized,
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let loaded = loader::load(&args.model, args.weights.into())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = loaded.tokenizer.clone();
    let prompt = if args.chat {
        let messages = vec![json!({"role": "user", "content": args.prompt})];
        tokenizer.encode_chat(&messages, None, true, &Map::new())?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    if prompt.len() >= loaded.context_length {
        bail!(
            "prompt is too long: {} tokens > {} maximum",
            prompt.len(),
            loaded.context_length - 1
        );
    }
    let max_tokens = args.max_tokens.min(loaded.context_length - prompt.len());

    let (req_tx, req_rx) = std::sync::mpsc::channel();
    let (tx, mut rx) = tokio::sync::mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let prompt_tokens = prompt.len();
    let received = Instant::now();
    req_tx.send(SeqRequest {
        id: "generate".into(),
        prompt,
        sampling: SamplingParams {
            temperature: args.temp,
            top_p: args.top_p,
            seed: args.seed,
            ..SamplingParams::default()
        },
        max_tokens,
        limited_by_context: max_tokens < args.max_tokens,
        stop: Vec::new(),
        logprobs: None,
        // Show everything the model writes, markup included.
        parser: ParserConfig {
            reasoning: false,
            starts_in_reasoning: false,
            tools: false,
        },
        events: tx,
        received,
    })?;
    drop(req_tx);
    let engine = Engine::new(
        "generate".into(),
        loaded.model,
        tokenizer.clone(),
        SchedulerConfig::default(),
        Arc::new(EngineStats::default()),
    );
    let engine_thread = std::thread::spawn(move || engine.run(req_rx));

    let mut out = std::io::stdout().lock();
    let mut first_at = None;
    let mut last_at = received;
    let mut generated = 0;
    let mut finish = None;
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Text(t) | Event::Reasoning(t) => {
                if !args.quiet {
                    write!(out, "{t}")?;
                    out.flush()?;
                }
            }
            Event::Finished { reason, usage } => {
                generated = usage.completion_tokens;
                finish = Some(reason);
            }
            Event::Error(e) => bail!("generation failed: {e}"),
            _ => {}
        }
        let now = Instant::now();
        first_at.get_or_insert(now);
        last_at = now;
    }
    engine_thread.join().ok();
    let first_at = first_at.unwrap_or(last_at);
    let prefill_s = first_at.duration_since(received).as_secs_f64();
    let decode_s = last_at.duration_since(first_at).as_secs_f64();
    writeln!(out)?;
    writeln!(
        out,
        "prompt: {prompt_tokens} tokens, {:.1} tok/s | generation: {generated} tokens, {:.1} tok/s | finish: {:?}",
        prompt_tokens as f64 / prefill_s.max(1e-9),
        generated.saturating_sub(1) as f64 / decode_s.max(1e-9),
        finish.unwrap_or(crate::core::FinishReason::Cancelled),
    )?;
    Ok(())
}
