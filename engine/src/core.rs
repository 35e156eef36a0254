//! The canonical request, the events a generation produces, and the backend the HTTP layer
//! talks to. Every protocol adapter (OpenAI, Anthropic) translates to and from these types;
//! nothing below this module knows which API asked.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// A boxed future, so that `Backend` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool invocation the assistant made (arguments are JSON text, as models write them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message of a conversation, after the adapter flattened its API's content blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Option<Role>,
    pub content: String,
    /// Earlier reasoning of an assistant turn (templates such as Qwen3's may render or drop it).
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: which call this answers.
    pub tool_call_id: Option<String>,
    /// For `Role::Tool`: the tool's name, when the API gives it.
    pub name: Option<String>,
}

/// A tool the model may call; `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Tools are not offered to the model at all.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Named(String),
}

/// A form the output must take, whichever API asked for it: generation is constrained token
/// by token so that the text parses as it says (a `length` finish may still cut it short).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against this JSON Schema.
    JsonSchema(Value),
}

/// What the model reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Rendered through the model's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        tool_choice: ToolChoice,
        /// Extra template variables, e.g. `enable_thinking`.
        template_kwargs: Map<String, Value>,
        /// The last message is the assistant's unfinished answer (a prefill): the prompt ends
        /// with its text, with no new turn opened, and generation continues it.
        continue_final: bool,
    },
    /// Raw text, tokenized as is (with the tokenizer's special tokens, like mlx-lm).
    Text(String),
    /// Token ids, used as is.
    Tokens(Vec<u32>),
}

/// Sampling settings; `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1 disables the multiplicative repetition penalty.
    pub repetition_penalty: f32,
    /// OpenAI-style additive penalties (0 disables).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    /// OpenAI's `logit_bias`: added to these tokens' logits before any penalty or filter
    /// (token ids unique and ascending; empty: none).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// Sampling as a request asks for it: a setting the request leaves out is `None`, and falls
/// to the model's default (its `[models."id"]` settings), then to the API's (`resolve`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingRequest {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `Some(0)` disables top-k.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Per-token additive biases (a request's own: no model default); ids unique, ascending.
    pub logit_bias: Vec<(u32, f32)>,
}

impl SamplingRequest {
    /// The sampling the engine runs: each setting as the request gives it, else as
    /// `defaults` (the model's) gives it, else the API default.
    pub fn resolve(&self, defaults: &SamplingRequest) -> SamplingParams {
        let mut p = SamplingParams::default();
        let pick = |asked: Option<f32>, model: Option<f32>, api: &mut f32| {
            if let Some(v) = asked.or(model) {
                *api = v;
            }
        };
        pick(self.temperature, defaults.temperature, &mut p.temperature);
        pick(self.top_p, defaults.top_p, &mut p.top_p);
        pick(self.min_p, defaults.min_p, &mut p.min_p);
        pick(
            self.repetition_penalty,
            defaults.repetition_penalty,
            &mut p.repetition_penalty,
        );
        pick(
            self.presence_penalty,
            defaults.presence_penalty,
            &mut p.presence_penalty,
        );
        pick(
            self.frequency_penalty,
            defaults.frequency_penalty,
            &mut p.frequency_penalty,
        );
        if let Some(k) = self.top_k.or(defaults.top_k) {
            p.top_k = k;
        }
        p.seed = self.seed.or(defaults.seed);
        p.logit_bias = self.logit_bias.clone();
        p
    }
}

/// The one request type every API is translated into.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Request id for logs (the adapter's own id, e.g. `chatcmpl-…` / `msg_…`).
    pub id: String,
    /// The model as the client named it (`None`: the default model). Aliases resolve in the backend.
    pub model: Option<String>,
    pub prompt: Prompt,
    pub sampling: SamplingRequest,
    /// `None`: up to the end of the context. Larger than the remaining context: clamped.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// `Some(k)`: report the chosen token's logprob and the `k` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Upper bound on reasoning tokens (thinking budget); `None`: no bound.
    pub reasoning_budget: Option<usize>,
    /// The output's required form (`None`: free text). A chat prompt whose `tool_choice` is
    /// `Required` or `Named` is constrained to a call of the model's tool-call syntax as well.
    pub constraint: Option<OutputConstraint>,
}

/// Log-probability of one generated token and its most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// Why a generation ended. Adapters map these onto their API's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// One of the request's stop strings matched (which one).
    StopSequence(String),
    /// `max_tokens` reached.
    MaxTokens,
    /// The model's context window is full.
    ContextWindow,
    /// The model finished with one or more tool calls.
    ToolCalls,
    /// The client went away or the server is shutting down.
    Cancelled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    /// The engine's clock (not part of any API's usage object).
    #[serde(skip)]
    pub timings: Timings,
}

/// How long a generation took as the engine saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// From the request reaching the engine to its first token on the host: queueing and
    /// prefill (a prefix-cache hit shortens it).
    pub to_first_token: std::time::Duration,
    /// From the first token to the last.
    pub decode: std::time::Duration,
}

/// What a running generation reports, in order. Text has already been detokenized, cut at stop
/// strings and split by the output parser into content, reasoning and tool calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Visible answer text.
    Text(String),
    /// Reasoning ("thinking") text.
    Reasoning(String),
    /// A tool call begins; arguments follow as fragments. `index` counts calls from 0.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    /// Logprobs of the tokens behind the events since the previous `Logprobs`.
    Logprobs(Vec<TokenLogprob>),
    /// Sent while the prompt is still being read (long prefill), so adapters can keep the
    /// connection alive (Anthropic `ping`).
    KeepAlive,
    /// Last event of a successful generation.
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    /// Last event of a generation that failed after it started.
    Error(String),
}

/// A submitted generation. Dropping `events` cancels it: the scheduler frees its sequence
/// within one step.
#[derive(Debug)]
pub struct Generation {
    /// The model id that serves it (aliases resolved).
    pub model: String,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub events: mpsc::Receiver<Event>,
}

/// What an embeddings request embeds: texts (the model's tokenizer reads them) or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

/// An embeddings request, after the adapter checked its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    pub model: Option<String>,
    pub input: EmbedInput,
    /// Keep the first this many dimensions (then normalized again), where the model allows it.
    pub dimensions: Option<usize>,
}

/// One vector per input, in the input's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The model id that served it (aliases resolved).
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// A model the daemon can serve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// Unix seconds (the model file's modification time).
    pub created: u64,
    pub loaded: bool,
    pub context_length: usize,
}

/// Why the backend refused a request. Adapters map these onto their API's error shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("model '{requested}' does not exist; available: {}", available.join(", "))]
    UnknownModel {
        requested: String,
        available: Vec<String>,
    },
    #[error("prompt is too long: {tokens} tokens > {max} maximum")]
    PromptTooLong { tokens: usize, max: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The model exists but does the other job (an embedding model asked to generate, or
    /// a generative one asked for embeddings).
    #[error("{0}")]
    WrongModelKind(String),
    /// The model has no vision / the feature is not supported by this model.
    #[error("{0}")]
    Unsupported(String),
    #[error("server is overloaded; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("serving is stopped")]
    Stopped,
    #[error("not enough memory: {0}")]
    InsufficientMemory(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The daemon's health as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The requested/default model is loading.
    Loading,
}

/// What the HTTP layer needs from the engine. Implemented by the model registry over the
/// per-model schedulers.
pub trait Backend: Send + Sync + 'static {
    fn list_models(&self) -> Vec<ModelInfo>;
    /// Number of prompt tokens `prompt` becomes for `model` (template and tools included),
    /// loading the model first if needed (its tokenizer and template come with it).
    fn count_tokens<'a>(
        &'a self,
        model: Option<&'a str>,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<usize, CoreError>>;
    /// Validates, tokenizes and queues the request. Resolves once the request is queued (after
    /// the model has loaded, if it had to); it never waits for generation itself.
    fn submit(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, CoreError>>;
    /// Embeds the request's inputs with an embedding model (loading it first if needed).
    fn embed(&self, request: EmbedRequest) -> BoxFuture<'_, Result<Embeddings, CoreError>> {
        let _ = request;
        Box::pin(async {
            Err(CoreError::Unsupported(
                "embeddings are not served here".into(),
            ))
        })
    }
    fn health(&self) -> Health;
}
