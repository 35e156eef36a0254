//! The models the daemon can serve: found in the models folders, loaded on first use (each on
//! its own engine thread), and reached by the HTTP layer through `Backend`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::core::{
    Backend, BoxFuture, CoreError, GenerateRequest, Generation, Health, ModelInfo, Prompt,
    ToolChoice,
};
use crate::loader::{self, is_gguf};
use crate::model::WeightsMode;
use crate::output_parser::ParserConfig;
use crate::prompt::{hf_messages, hf_tools};
use crate::scheduler::{Engine, EngineStats, SchedulerConfig, SeqRequest, EVENT_CHANNEL_CAPACITY};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub model_dirs: Vec<PathBuf>,
    pub default_model: Option<String>,
    /// Model-name patterns (`*` matches any run of characters) → model id.
    pub aliases: BTreeMap<String, String>,
    pub scheduler: SchedulerConfig,
    /// Requests allowed to wait per model before new ones get "overloaded".
    pub max_queue: usize,
    pub weights_mode: WeightsMode,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            model_dirs: Vec::new(),
            default_model: None,
            aliases: BTreeMap::new(),
            scheduler: SchedulerConfig::default(),
            max_queue: 64,
            weights_mode: WeightsMode::Auto,
        }
    }
}

/// A loaded model: its tokenizer and the channel to its engine thread.
pub struct Served {
    pub id: String,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    pub stats: Arc<EngineStats>,
    /// Whether the model writes `<think>` reasoning.
    pub reasoning: bool,
    requests: Mutex<std::sync::mpsc::Sender<crate::scheduler::SeqRequest>>,
}

#[derive(Clone)]
enum State {
    Available,
    Loading(watch::Receiver<bool>),
    Loaded(Arc<Served>),
    /// The last load failed (the message); the next request tries again.
    Failed(#[allow(dead_code)] String),
}

struct Entry {
    path: PathBuf,
    created: u64,
    state: State,
}

pub struct Registry {
    config: RegistryConfig,
    models: Mutex<BTreeMap<String, Entry>>,
    /// One load at a time: loads compete for memory and disk.
    load_lock: tokio::sync::Mutex<()>,
}

/// Finds models in `dirs`: MLX folders (a `config.json` one or two levels deep, `org/name`)
/// and `.gguf` files. Ids are the paths relative to the models folder (GGUF without `.gguf`).
pub fn discover(dirs: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if is_gguf(&path) {
                let id = name.trim_end_matches(".gguf").to_string();
                found.entry(id).or_insert(path);
            } else if path.join("config.json").is_file() {
                found.entry(name).or_insert(path);
            } else if path.is_dir() {
                for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let p = inner.path();
                    if p.join("config.json").is_file() {
                        let id = format!("{name}/{}", inner.file_name().to_string_lossy());
                        found.entry(id).or_insert(p);
                    }
                }
            }
        }
    }
    found
}

fn modified_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Arc<Self> {
        let models = discover(&config.model_dirs)
            .into_iter()
            .map(|(id, path)| {
                let created = modified_secs(&path);
                (
                    id,
                    Entry {
                        path,
                        created,
                        state: State::Available,
                    },
                )
            })
            .collect();
        Arc::new(Self {
            config,
            models: Mutex::new(models),
            load_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn model_ids(&self) -> Vec<String> {
        self.models.lock().unwrap().keys().cloned().collect()
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> Option<String> {
        let models = self.models.lock().unwrap();
        if let Some(d) = &self.config.default_model {
            if models.contains_key(d) {
                return Some(d.clone());
            }
        }
        // Prefer an MLX folder over a GGUF file of the same model, then the first by name.
        models
            .iter()
            .find(|(_, e)| e.path.is_dir())
            .or_else(|| models.iter().next())
            .map(|(id, _)| id.clone())
    }

    /// Resolves a requested name (or none) to a model id.
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, CoreError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        let unknown = |name: &str| CoreError::UnknownModel {
            requested: name.into(),
            available: self.model_ids(),
        };
        let Some(name) = requested else {
            return self.default_model().ok_or_else(|| unknown("(default)"));
        };
        if self.models.lock().unwrap().contains_key(name) {
            return Ok(name.to_string());
        }
        if let Some(target) = crate::config::resolve_alias(&self.config.aliases, name) {
            // "default" follows the default model, whichever it is.
            let target = if target == "default" {
                self.default_model()
            } else {
                Some(target.to_string())
            };
            if let Some(t) = target.filter(|t| self.models.lock().unwrap().contains_key(t)) {
                return Ok(t);
            }
        }
        Err(unknown(name))
    }

    /// The loaded model `id`, loading it first if needed (other callers wait for that load).
    pub async fn ensure_loaded(&self, id: &str) -> Result<Arc<Served>, CoreError> {
        loop {
            let state = {
                let models = self.models.lock().unwrap();
                let entry = models.get(id).ok_or_else(|| CoreError::UnknownModel {
                    requested: id.into(),
                    available: models.keys().cloned().collect(),
                })?;
                entry.state.clone()
            };
            match state {
                State::Loaded(s) => return Ok(s),
                State::Loading(mut rx) => {
                    let _ = rx.wait_for(|done| *done).await;
                }
                State::Available | State::Failed(_) => {
                    let _guard = self.load_lock.lock().await;
                    // Someone else may have loaded it while we waited for the lock.
                    let path = {
                        let mut models = self.models.lock().unwrap();
                        let entry = models.get_mut(id).expect("entry exists");
                        if matches!(entry.state, State::Loaded(_) | State::Loading(_)) {
                            continue;
                        }
                        entry.path.clone()
                    };
                    let (done_tx, done_rx) = watch::channel(false);
                    self.set_state(id, State::Loading(done_rx));
                    let result = self.spawn_engine(id, &path).await;
                    let state = match &result {
                        Ok(served) => State::Loaded(served.clone()),
                        Err(e) => State::Failed(e.to_string()),
                    };
                    self.set_state(id, state);
                    let _ = done_tx.send(true);
                    return result;
                }
            }
        }
    }

    fn set_state(&self, id: &str, state: State) {
        if let Some(e) = self.models.lock().unwrap().get_mut(id) {
            e.state = state;
        }
    }

    /// Starts the engine thread of model `id`; the thread loads the weights itself so that
    /// MLX is only ever touched from the thread that owns the model.
    async fn spawn_engine(&self, id: &str, path: &Path) -> Result<Arc<Served>, CoreError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (req_tx, req_rx) = std::sync::mpsc::channel::<SeqRequest>();
        let stats = Arc::new(EngineStats::default());
        let (model_id, path_buf, mode) =
            (id.to_string(), path.to_path_buf(), self.config.weights_mode);
        let mut sched = self.config.scheduler.clone();
        sched.kv.model_path = Some(path.to_path_buf());
        let thread_stats = stats.clone();
        let started = Instant::now();
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || match loader::load(&path_buf, mode) {
                Ok(loaded) => {
                    let _ = ready_tx.send(Ok((loaded.tokenizer.clone(), loaded.context_length)));
                    Engine::new(
                        model_id,
                        loaded.model,
                        loaded.tokenizer,
                        sched,
                        thread_stats,
                    )
                    .run(req_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| CoreError::Internal(format!("cannot start engine thread: {e}")))?;
        let (tokenizer, context_length) = ready_rx
            .await
            .map_err(|_| CoreError::Internal("engine thread died while loading".into()))?
            .map_err(|e| CoreError::Internal(format!("loading model '{id}' failed: {e}")))?;
        tracing::info!(model = id, path = %path.display(), secs = started.elapsed().as_secs_f32(), context_length, "model loaded");
        let reasoning = tokenizer.token_to_id("<think>").is_some()
            && tokenizer.token_to_id("</think>").is_some();
        Ok(Arc::new(Served {
            id: id.to_string(),
            tokenizer,
            context_length,
            stats,
            reasoning,
            requests: Mutex::new(req_tx),
        }))
    }

    /// Tokenizes a prompt for `served`; also says whether it ends inside an open `<think>`.
    fn tokenize(
        &self,
        served: &Served,
        prompt: &Prompt,
    ) -> Result<(Vec<u32>, bool, bool), CoreError> {
        let tok = &served.tokenizer;
        let bad = |e: crate::tokenizer::TokenizerError| CoreError::Invalid(e.to_string());
        match prompt {
            Prompt::Text(text) => Ok((tok.encode(text, true).map_err(bad)?, false, false)),
            Prompt::Tokens(ids) => {
                let vocab = tok.vocab_size();
                if let Some(bad_id) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(CoreError::Invalid(format!(
                        "token id {bad_id} is outside the vocabulary (size {vocab})"
                    )));
                }
                Ok((ids.clone(), false, false))
            }
            Prompt::Chat {
                messages,
                tools,
                tool_choice,
                template_kwargs,
            } => {
                if !tok.has_chat_template() {
                    return Err(CoreError::Unsupported(format!(
                        "model '{}' has no chat template; use the completions endpoint",
                        served.id
                    )));
                }
                let tools_json = hf_tools(tools, tool_choice);
                let mut kwargs: Map<String, Value> = template_kwargs.clone();
                kwargs
                    .entry("enable_thinking")
                    .or_insert(Value::Bool(served.reasoning));
                let text = tok
                    .apply_chat_template(
                        &hf_messages(messages),
                        tools_json.as_deref(),
                        true,
                        &kwargs,
                    )
                    .map_err(bad)?;
                let in_think = served.reasoning && {
                    let t = text.trim_end();
                    t.rfind("<think>")
                        .is_some_and(|open| !t[open..].contains("</think>"))
                };
                let tools_on = tools_json.is_some() && *tool_choice != ToolChoice::None;
                Ok((tok.encode(&text, false).map_err(bad)?, in_think, tools_on))
            }
        }
    }

    async fn submit_inner(&self, request: GenerateRequest) -> Result<Generation, CoreError> {
        let id = self.resolve(request.model.as_deref())?;
        let served = self.ensure_loaded(&id).await?;
        let (prompt, starts_in_reasoning, tools) = self.tokenize(&served, &request.prompt)?;
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
        let room = context - prompt.len();
        let (max_tokens, limited_by_context) = match request.max_tokens {
            Some(n) if n <= room => (n, false),
            _ => (room, true),
        };
        if served.stats.waiting.load(Ordering::Relaxed) >= self.config.max_queue {
            return Err(CoreError::Overloaded {
                retry_after_secs: 2,
            });
        }
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let prompt_tokens = prompt.len();
        let cached_tokens = served.stats.prefix.estimate_cached_tokens(&prompt);
        let seq = SeqRequest {
            id: request.id,
            prompt,
            sampling: request.sampling,
            max_tokens,
            limited_by_context,
            stop: request.stop,
            logprobs: request.logprobs,
            parser: ParserConfig {
                reasoning: served.reasoning,
                starts_in_reasoning,
                tools,
            },
            events: tx,
            received: Instant::now(),
        };
        served.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if served.requests.lock().unwrap().send(seq).is_err() {
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

    fn loaded(&self, id: &str) -> Option<Arc<Served>> {
        match &self.models.lock().unwrap().get(id)?.state {
            State::Loaded(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl Backend for Registry {
    fn list_models(&self) -> Vec<ModelInfo> {
        let models = self.models.lock().unwrap();
        models
            .iter()
            .map(|(id, e)| {
                let (loaded, context_length) = match &e.state {
                    State::Loaded(s) => (true, s.context_length),
                    _ => (false, 0),
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

    fn count_tokens(&self, model: Option<&str>, prompt: &Prompt) -> Result<usize, CoreError> {
        let id = self.resolve(model)?;
        let served = self.loaded(&id).ok_or_else(|| {
            CoreError::Internal(format!(
                "model '{id}' is not loaded yet; send a request first"
            ))
        })?;
        Ok(self.tokenize(&served, prompt)?.0.len())
    }

    fn submit(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, CoreError>> {
        Box::pin(self.submit_inner(request))
    }

    fn health(&self) -> Health {
        let models = self.models.lock().unwrap();
        if models
            .values()
            .any(|e| matches!(e.state, State::Loading(_)))
        {
            Health::Loading
        } else {
            Health::Ok
        }
    }
}
