//! Admission: a request resolved to its model, rendered, checked against the context and the KV
//! budget, given its sampling and queued on the model's engine; the `Backend` the HTTP layer calls.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::ModelSettings;
use crate::core::{
    Backend, BoxFuture, CoreError, EmbedInput, EmbedRequest, Embeddings, GenerateRequest,
    Generation, Health, ModelInfo, Prompt, SamplingRequest, ToolChoice, ToolSpec,
};
use crate::embedding::{self, EmbedJob, EmbeddingSpec};
use crate::memory::format_bytes;
use crate::scheduler::{SeqRequest, EVENT_CHANNEL_CAPACITY};
use crate::text::constraint::{grammar_for, ConstraintError, Grammar, GrammarCompiler};
use crate::text::output_parser::{self, ParserConfig, ParserSetup};
use crate::text::prompt::{PromptRenderer, RenderedPrompt};
use llguidance::api::TopLevelGrammar;

use super::{Inbox, Registry, Served, State};

/// The sampling a model's `generation_config.json` recommends (temperature, top_p, top_k,
/// min_p, repetition_penalty; `do_sample` is not read, as vLLM does not). An MLX folder's file;
/// a GGUF file, or a folder without the file, recommends nothing.
pub(super) fn generation_sampling(path: &Path) -> SamplingRequest {
    let Ok(text) = std::fs::read_to_string(path.join("generation_config.json")) else {
        return SamplingRequest::default();
    };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::warn!(path = %path.display(), "generation_config.json is not valid JSON; its sampling is ignored");
        return SamplingRequest::default();
    };
    let number = |key: &str| {
        config
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    SamplingRequest {
        temperature: number("temperature").map(|v| v as f32),
        top_p: number("top_p")
            .filter(|v| *v > 0.0 && *v <= 1.0)
            .map(|v| v as f32),
        top_k: number("top_k").map(|v| v as usize),
        min_p: number("min_p").filter(|v| *v <= 1.0).map(|v| v as f32),
        repetition_penalty: number("repetition_penalty")
            .filter(|v| *v > 0.0)
            .map(|v| v as f32),
        ..SamplingRequest::default()
    }
}

/// A model's default sampling, what a request leaves out: its `[models."id"]` settings, else
/// what its `generation_config.json` recommends (`generation`).
pub(super) fn model_sampling(
    settings: &ModelSettings,
    generation: &SamplingRequest,
) -> SamplingRequest {
    SamplingRequest {
        temperature: settings.temperature.or(generation.temperature),
        top_p: settings.top_p.or(generation.top_p),
        top_k: settings.top_k.or(generation.top_k),
        min_p: settings.min_p.or(generation.min_p),
        repetition_penalty: generation.repetition_penalty,
        ..SamplingRequest::default()
    }
}

impl Registry {
    /// A request's grammar compiled for `served`'s tokenizer (the compiler built on first use),
    /// on a blocking thread: a large schema takes milliseconds.
    async fn compile_grammar(
        served: &Arc<Served>,
        grammar: TopLevelGrammar,
    ) -> Result<Grammar, CoreError> {
        let served = served.clone();
        tokio::task::spawn_blocking(move || {
            let compiler = served
                .grammars
                .get_or_init(|| GrammarCompiler::new(served.tokenizer.clone()).map(Arc::new));
            match compiler {
                Ok(c) => c.compile(grammar),
                Err(e) => Err(e.clone()),
            }
        })
        .await
        .map_err(|e| CoreError::Internal(format!("grammar compilation failed: {e}")))?
        .map_err(|e| match e {
            ConstraintError::Invalid(_) => CoreError::Invalid(e.to_string()),
            ConstraintError::Unavailable(_) => CoreError::Unsupported(e.to_string()),
        })
    }

    /// How `served` reads prompts.
    pub(super) fn renderer(served: &Served) -> PromptRenderer<'_> {
        PromptRenderer {
            model: &served.id,
            tokenizer: &served.tokenizer,
            reasoning: served.reasoning,
            thinking: served.reasoning && served.settings.thinking.unwrap_or(true),
            mark_head: served.stats.prefix.restores_at_snapshots(),
        }
    }

    pub(super) async fn submit_inner(
        &self,
        request: GenerateRequest,
    ) -> Result<Generation, CoreError> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err(CoreError::Stopped);
        }
        let id = self.resolve(request.model.as_deref())?;
        self.refuse_embedding_model(&id)?;
        let served = self.ensure_loaded(&id).await?;
        let RenderedPrompt {
            tokens: prompt,
            starts_in_reasoning,
            tools,
            head,
        } = Self::renderer(&served).render(&request.prompt)?;
        if prompt.is_empty() {
            return Err(CoreError::Invalid("the prompt is empty".into()));
        }
        let context = served.context_length;
        if prompt.len() >= context {
            return Err(CoreError::PromptTooLong {
                tokens: prompt.len(),
                max: context - 1,
            });
        }
        // A prompt whose KV alone exceeds the model's KV budget would wait forever: refuse it.
        // (One that fits waits in the engine's queue until running sequences leave room.)
        let kv_need = served.kv_cost.bytes(prompt.len());
        if kv_need > served.plan.kv_reserved_bytes {
            return Err(CoreError::InsufficientMemory(format!(
                "the prompt's KV cache ({} tokens, {}) exceeds the KV budget of '{id}' ({}; raise kv_reserve_tokens)",
                prompt.len(),
                format_bytes(kv_need),
                format_bytes(served.plan.kv_reserved_bytes),
            )));
        }
        // Room for output: the context, and the KV budget, which a sequence running alone
        // may fill (its last sampled token never enters the KV, hence the + 1). Beyond the
        // budget the scheduler could not keep it running.
        let budget_tokens = served
            .kv_cost
            .positions_within(served.plan.kv_reserved_bytes);
        let room = (context - prompt.len()).min(budget_tokens.saturating_add(1) - prompt.len());
        let (max_tokens, limited_by_context) = match request.max_tokens {
            Some(n) if n <= room => (n, false),
            _ => (room, true),
        };
        if served.stats.waiting.load(Ordering::Relaxed) >= self.config.max_queue {
            return Err(CoreError::Overloaded {
                retry_after_secs: 2,
            });
        }
        let vocab = served.tokenizer.vocab_size();
        if let Some(&(bad, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|b| b.0 as usize >= vocab)
        {
            return Err(CoreError::Invalid(format!(
                "logit_bias names token id {bad}, outside the vocabulary of '{id}' ({vocab} tokens)"
            )));
        }
        let sampling = request.sampling.resolve(&served.sampling);
        let format = output_parser::choose(
            served.settings.tool_parser,
            served.tokenizer.chat_template_source(),
            served.tokenizer.model_type(),
        );
        let offered: &[ToolSpec] = match &request.prompt {
            Prompt::Chat { tools, .. } => tools,
            _ => &[],
        };
        let tool_choice = match &request.prompt {
            Prompt::Chat { tool_choice, .. } => tool_choice.clone(),
            _ => ToolChoice::Auto,
        };
        let grammar = match grammar_for(
            request.constraint.as_ref(),
            &tool_choice,
            offered,
            format,
            starts_in_reasoning,
        ) {
            None => None,
            Some(grammar) => Some(Self::compile_grammar(&served, grammar).await?),
        };
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let prompt_tokens = prompt.len();
        let cached_tokens = served.stats.prefix.estimate_cached_tokens(&prompt);
        let seq = SeqRequest {
            id: request.id,
            prompt,
            head,
            sampling,
            max_tokens,
            limited_by_context,
            stop: request.stop,
            logprobs: request.logprobs,
            parser: ParserSetup {
                config: ParserConfig {
                    reasoning: served.reasoning,
                    starts_in_reasoning,
                    tools,
                },
                format,
                tools: offered.to_vec(),
            },
            grammar,
            events: tx,
            received: Instant::now(),
        };
        served.stats.waiting.fetch_add(1, Ordering::Relaxed);
        served.touch();
        let sent = match served.requests.lock().unwrap().as_ref() {
            Some(Inbox::Generate(sender)) => sender.send(seq).is_ok(),
            _ => false,
        };
        if !sent {
            served.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(CoreError::Internal(format!(
                "the engine of '{id}' has stopped"
            )));
        }
        Ok(Generation {
            model: id,
            prompt_tokens,
            cached_tokens,
            events: rx,
        })
    }
}

impl Registry {
    /// How model `id` embeds, if it is an embedding model (from its folder, without loading
    /// it); an incomplete model's reason as the error loading it would give.
    fn embedding_spec(&self, id: &str) -> Result<Option<EmbeddingSpec>, CoreError> {
        let models = self.models.lock().unwrap();
        match models.get(id).map(|e| &e.facts) {
            Some(Ok(facts)) => Ok(facts.embedding),
            Some(Err(reason)) => Err(CoreError::Unsupported(format!(
                "model '{id}' is incomplete and cannot be loaded: {reason}"
            ))),
            None => Ok(None),
        }
    }

    /// Generation (and counting a prompt's tokens) is not for embedding models.
    fn refuse_embedding_model(&self, id: &str) -> Result<(), CoreError> {
        match self.embedding_spec(id)? {
            Some(_) => Err(CoreError::WrongModelKind(format!(
                "model '{id}' is an embedding model: it serves POST /v1/embeddings, not text generation"
            ))),
            None => Ok(()),
        }
    }

    /// Tokenizes, checks and embeds the request's inputs as one job on the model's engine
    /// (which batches it with whatever else is waiting).
    pub(super) async fn embed_inner(&self, request: EmbedRequest) -> Result<Embeddings, CoreError> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err(CoreError::Stopped);
        }
        let id = self.resolve(request.model.as_deref())?;
        let Some(spec) = self.embedding_spec(&id)? else {
            return Err(CoreError::WrongModelKind(format!(
                "model '{id}' is not an embedding model (it generates text: use /v1/chat/completions); \
                 embedding models are those whose folder has sentence-transformers' modules.json and pooling config"
            )));
        };
        if let Some(d) = request.dimensions {
            if d == 0 || d > spec.dimensions {
                return Err(CoreError::Invalid(format!(
                    "dimensions must be between 1 and {} for model '{id}'",
                    spec.dimensions
                )));
            }
            if d != spec.dimensions && !spec.truncatable {
                return Err(CoreError::Unsupported(format!(
                    "model '{id}' does not support shortened embeddings (dimensions); its vectors have {}",
                    spec.dimensions
                )));
            }
        }
        let served = self.ensure_loaded(&id).await?;
        let inputs = match request.input {
            EmbedInput::Texts(texts) => texts
                .iter()
                .map(|t| served.tokenizer.encode(t, true))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CoreError::Invalid(format!("cannot tokenize the input: {e}")))?,
            EmbedInput::Tokens(tokens) => {
                let vocab = served.tokenizer.vocab_size();
                if let Some(bad) = tokens.iter().flatten().find(|&&t| t as usize >= vocab) {
                    return Err(CoreError::Invalid(format!(
                        "token id {bad} is outside the vocabulary of '{id}' ({vocab} tokens)"
                    )));
                }
                tokens
            }
        };
        for (i, tokens) in inputs.iter().enumerate() {
            if tokens.is_empty() {
                return Err(CoreError::Invalid(format!("input[{i}] has no tokens")));
            }
            if tokens.len() > served.context_length {
                return Err(CoreError::PromptTooLong {
                    tokens: tokens.len(),
                    max: served.context_length,
                });
            }
        }
        let prompt_tokens = inputs.iter().map(Vec::len).sum();
        let (reply, answer) = tokio::sync::oneshot::channel();
        served.touch();
        let sent = match served.requests.lock().unwrap().as_ref() {
            Some(Inbox::Embed(sender)) => sender.send(EmbedJob { inputs, reply }).is_ok(),
            _ => false,
        };
        if !sent {
            return Err(CoreError::Internal(format!(
                "the engine of '{id}' has stopped"
            )));
        }
        let vectors = answer
            .await
            .map_err(|_| CoreError::Internal(format!("the engine of '{id}' has stopped")))?
            .map_err(|e| CoreError::Internal(format!("embedding failed: {e}")))?;
        served.touch();
        let vectors = vectors
            .into_iter()
            .map(|v| embedding::finish(v, request.dimensions, spec.normalize))
            .collect();
        Ok(Embeddings {
            model: id,
            vectors,
            prompt_tokens,
        })
    }
}

impl Backend for Registry {
    fn list_models(&self) -> Vec<ModelInfo> {
        let models = self.models.lock().unwrap();
        models
            .iter()
            .filter(|(_, e)| e.facts.is_ok())
            .map(|(id, e)| {
                let (loaded, context_length) = match &e.state {
                    State::Loaded(s) => (true, s.context_length),
                    _ => (
                        false,
                        e.facts
                            .as_ref()
                            .map_or(0, |f| Self::capped_context(f, &self.settings(id))),
                    ),
                };
                ModelInfo {
                    id: id.clone(),
                    created: e.created,
                    loaded,
                    context_length,
                }
            })
            .collect()
    }

    fn count_tokens<'a>(
        &'a self,
        model: Option<&'a str>,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<usize, CoreError>> {
        Box::pin(async move {
            let id = self.resolve(model)?;
            self.refuse_embedding_model(&id)?;
            let served = self.ensure_loaded(&id).await?;
            Ok(Self::renderer(&served).render(prompt)?.tokens.len())
        })
    }

    fn submit(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, CoreError>> {
        Box::pin(self.submit_inner(request))
    }

    fn embed(&self, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, CoreError>> {
        Box::pin(self.embed_inner(request))
    }

    fn health(&self) -> Health {
        let models = self.models.lock().unwrap();
        if models
            .values()
            .any(|e| matches!(e.state, State::Loading { .. }))
        {
            Health::Loading
        } else {
            Health::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_request_sets_wins_even_when_it_equals_the_api_default() {
        let model = model_sampling(
            &ModelSettings {
                temperature: Some(0.6),
                top_k: Some(20),
                ..ModelSettings::default()
            },
            &SamplingRequest::default(),
        );
        // Temperature 1 and top-k 0 are the API's defaults, sent explicitly: they stay.
        let asked = SamplingRequest {
            temperature: Some(1.0),
            top_k: Some(0),
            ..SamplingRequest::default()
        };
        let p = asked.resolve(&model);
        assert_eq!((p.temperature, p.top_k), (1.0, 0));
        // Left out: the model's default, then the API's.
        let p = SamplingRequest::default().resolve(&model);
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.6, 20, 1.0));
        let p = SamplingRequest {
            seed: Some(7),
            ..SamplingRequest::default()
        }
        .resolve(&SamplingRequest::default());
        assert_eq!(
            p,
            crate::core::SamplingParams {
                seed: Some(7),
                ..crate::core::SamplingParams::default()
            }
        );
    }

    #[test]
    fn generation_config_fills_what_the_settings_leave_out() {
        let dir = std::env::temp_dir().join(format!("wuwei-gencfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"eos_token_id": 2, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}"#,
        )
        .unwrap();
        let generation = generation_sampling(&dir);
        assert_eq!(generation.temperature, Some(0.7));
        assert_eq!(generation.top_k, Some(20));
        let settings = ModelSettings {
            temperature: Some(0.2),
            ..ModelSettings::default()
        };
        let p = SamplingRequest::default().resolve(&model_sampling(&settings, &generation));
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.2, 0.8, 20));
        assert_eq!(p.repetition_penalty, 1.05);
        // Absent or unreadable: nothing recommended.
        assert_eq!(
            generation_sampling(&dir.join("missing")),
            SamplingRequest::default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
