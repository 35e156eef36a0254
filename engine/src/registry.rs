//! The models the daemon can serve: found in the models folders (and kept up to date by the
//! watcher), checked for completeness, loaded on first use (each on its own engine thread)
//! within a memory budget, unloaded when idle, under pressure or when asked, and reached by
//! the HTTP layer through `Backend` and by the admin API through the methods below.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::ModelSettings;
use crate::core::{
    Backend, BoxFuture, CoreError, GenerateRequest, Generation, Health, ModelInfo, Prompt,
    SamplingParams, ToolChoice,
};
use crate::integrity::{self, ModelFacts};
use crate::kv::ssd::SsdStore;
use crate::kv::PrefixStats;
use crate::loader::{self, is_gguf};
use crate::memory::{self, format_bytes, Amount};
use crate::model::{auto_dequantizes, WeightsMode};
use crate::output_parser::{self, ParserConfig, ParserSetup};
use crate::prompt::{describe_tools_in_system, hf_messages, hf_tools};
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
    /// `None`: total RAM minus `memory_reserve`.
    pub memory_budget: Option<Amount>,
    pub memory_reserve: Amount,
    /// Available system memory below which idle models are unloaded.
    pub pressure_threshold: Amount,
    pub pinned: Vec<String>,
    /// Default idle TTL: 0 unloads after each request, negative never.
    pub idle_ttl_secs: i64,
    /// KV tokens counted per loaded model (0: its context length).
    pub kv_reserve_tokens: usize,
    pub per_model: BTreeMap<String, ModelSettings>,
    /// How often the pressure/TTL monitor looks.
    pub monitor_interval: Duration,
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
            memory_budget: None,
            memory_reserve: Amount::Percent(20.0),
            pressure_threshold: Amount::Percent(5.0),
            pinned: Vec::new(),
            idle_ttl_secs: -1,
            kv_reserve_tokens: 0,
            per_model: BTreeMap::new(),
            monitor_interval: Duration::from_millis(500),
        }
    }
}

/// What loading a model costs, decided before it loads.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryPlan {
    /// How the weights will be held (never `Auto`).
    #[serde(skip)]
    pub mode: WeightsMode,
    pub weights_bytes: u64,
    /// KV cache counted for the model while it is loaded.
    pub kv_reserved_bytes: u64,
    /// The most memory the load itself takes at once (e.g. quantized and expanded copies).
    pub load_peak_bytes: u64,
}

impl MemoryPlan {
    /// Memory counted against the budget while the model is loaded.
    pub fn steady(&self) -> u64 {
        self.weights_bytes + self.kv_reserved_bytes
    }

    /// The reserved KV in token positions (`None` when the size of a position is unknown):
    /// what the model's running sequences may hold together.
    pub fn kv_positions(&self, kv_bytes_per_token: u64) -> Option<usize> {
        self.kv_reserved_bytes
            .checked_div(kv_bytes_per_token)
            .map(|t| t as usize)
    }

    /// Memory that must be free before the load starts.
    pub fn needed(&self) -> u64 {
        self.steady().max(self.load_peak_bytes)
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
    pub plan: MemoryPlan,
    /// KV bytes of one token position (0: unknown).
    pub kv_bytes_per_token: u64,
    pub settings: ModelSettings,
    pub loaded_at: SystemTime,
    /// Dropping the sender (taking it out) lets the engine thread finish its work and exit.
    requests: Mutex<Option<std::sync::mpsc::Sender<SeqRequest>>>,
    last_used: Mutex<Instant>,
    /// When the monitor first saw the model idle (reset when it sees it busy).
    idle_since: Mutex<Option<Instant>>,
    /// Turns true once the engine thread has dropped the model and ended.
    exited: watch::Receiver<bool>,
}

impl Served {
    pub fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap()
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    fn busy_counts(&self) -> (usize, usize) {
        (
            self.stats.running.load(Ordering::Relaxed),
            self.stats.waiting.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone)]
enum State {
    Available,
    Loading {
        done: watch::Receiver<bool>,
        base_active: u64,
        expected: u64,
    },
    Loaded(Arc<Served>),
    /// Its engine is finishing and dropping the model; counted until it has.
    Unloading(Arc<Served>),
    /// The last load failed (the message); the next request tries again.
    Failed(String),
}

struct Entry {
    path: PathBuf,
    created: u64,
    fingerprint: u64,
    /// `Err(reason)`: incomplete, never loaded.
    facts: Result<ModelFacts, String>,
    state: State,
}

/// Why a model was unloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    MemoryPressure,
    Budget,
    Ttl,
    Manual,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::MemoryPressure => "memory_pressure",
            EvictReason::Budget => "budget",
            EvictReason::Ttl => "ttl",
            EvictReason::Manual => "manual",
        }
    }
}

/// Settings the admin API may change while the daemon runs.
struct Runtime {
    default_model: Option<String>,
    aliases: BTreeMap<String, String>,
    pinned: BTreeSet<String>,
    idle_ttl_secs: i64,
    memory_budget: Option<Amount>,
    memory_reserve: Amount,
    pressure_threshold: Amount,
    kv_reserve_tokens: usize,
}

/// Recent admin events kept for clients that connect late (`?since=`).
const EVENT_HISTORY: usize = 512;

pub struct Registry {
    config: RegistryConfig,
    runtime: Mutex<Runtime>,
    models: Mutex<BTreeMap<String, Entry>>,
    /// One load at a time: loads compete for memory and disk, and the budget check must see
    /// every other model settled.
    load_lock: tokio::sync::Mutex<()>,
    serving: AtomicBool,
    events: broadcast::Sender<Value>,
    history: Mutex<VecDeque<Value>>,
    event_seq: AtomicU64,
    started: Instant,
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
                    let inner_name = inner.file_name().to_string_lossy().into_owned();
                    if inner_name.starts_with('.') {
                        continue;
                    }
                    let p = inner.path();
                    if p.join("config.json").is_file() {
                        found.entry(format!("{name}/{inner_name}")).or_insert(p);
                    } else if is_gguf(&p) {
                        let id = format!("{name}/{}", inner_name.trim_end_matches(".gguf"));
                        found.entry(id).or_insert(p);
                    }
                }
            }
        }
    }
    found
}

/// Checks that a model id from a client is a plain folder-relative name: no parent or
/// absolute path, no NUL or control characters. Ids are only ever looked up among the
/// discovered models, never joined to a path, so this is about clear errors, not safety.
pub fn validate_id(id: &str) -> Result<(), CoreError> {
    let bad = |why: &str| Err(CoreError::Invalid(format!("bad model id {id:?}: {why}")));
    if id.trim().is_empty() {
        return bad("it is empty");
    }
    if id.len() > 512 {
        return bad("it is longer than 512 bytes");
    }
    if id.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if id.starts_with('/') || id.starts_with('\\') || id.starts_with('~') || id.contains(':') {
        return bad("it must be a name relative to a models folder, not a path");
    }
    if id.contains('\\')
        || id
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("it must not contain `..`, `.`, empty parts or backslashes");
    }
    Ok(())
}

fn modified_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_entry(path: PathBuf) -> Entry {
    let fingerprint = integrity::fingerprint(&path);
    let facts = integrity::check_model(&path);
    if let Err(reason) = &facts {
        tracing::warn!(path = %path.display(), %reason, "incomplete model");
    }
    Entry {
        created: modified_secs(&path),
        path,
        fingerprint,
        facts,
        state: State::Available,
    }
}

/// A loaded model with nothing running, nothing queued and no request holding it.
fn is_idle(served: &Arc<Served>) -> bool {
    // The registry's map holds one reference; anyone else holding one is about to submit.
    Arc::strong_count(served) == 1 && served.busy_counts() == (0, 0)
}

/// The state as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub path: PathBuf,
    pub format: &'static str,
    /// `available`, `loading`, `loaded`, `unloading`, `incomplete`, `failed`.
    pub state: &'static str,
    /// 0..1 while loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Why it is incomplete or why its last load failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub size_bytes: u64,
    /// Memory it takes (or would take) when loaded: weights plus reserved KV.
    pub estimated_memory_bytes: u64,
    pub context_length: usize,
    pub pinned: bool,
    pub default: bool,
    pub aliases: Vec<String>,
}

/// A loaded model's live numbers for the status endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct LoadedStatus {
    pub id: String,
    pub memory_bytes: u64,
    pub weights_bytes: u64,
    pub weights_mode: WeightsMode,
    pub kv_bytes: u64,
    pub kv_reserved_bytes: u64,
    pub running: usize,
    pub waiting: usize,
    pub pinned: bool,
    pub idle_ttl_secs: i64,
    /// Unix milliseconds.
    pub last_used: u64,
    pub loaded_at: u64,
    pub unloading: bool,
    /// The model's RAM prefix-cache tier (`None`: prefix caching is off).
    pub prefix_cache: Option<PrefixStats>,
}

/// Runtime settings, as the admin API reads and changes them.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl_secs: Option<i64>,
    /// `null` in a change request is not distinguishable from absent; use `"default"` to go
    /// back to total RAM minus the reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reserve: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pressure_threshold: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_reserve_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<BTreeMap<String, String>>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Arc<Self> {
        let models = discover(&config.model_dirs)
            .into_iter()
            .map(|(id, path)| (id, new_entry(path)))
            .collect();
        let (events, _) = broadcast::channel(256);
        let runtime = Runtime {
            default_model: config.default_model.clone(),
            aliases: config.aliases.clone(),
            pinned: config.pinned.iter().cloned().collect(),
            idle_ttl_secs: config.idle_ttl_secs,
            memory_budget: config.memory_budget,
            memory_reserve: config.memory_reserve,
            pressure_threshold: config.pressure_threshold,
            kv_reserve_tokens: config.kv_reserve_tokens,
        };
        let registry = Arc::new(Self {
            config,
            runtime: Mutex::new(runtime),
            models: Mutex::new(models),
            load_lock: tokio::sync::Mutex::new(()),
            serving: AtomicBool::new(true),
            events,
            history: Mutex::new(VecDeque::new()),
            event_seq: AtomicU64::new(0),
            started: Instant::now(),
        });
        memory::apply_mlx_limits(registry.budget());
        registry
    }

    // -----------------------------------------------------------------------------------------
    // Events

    /// Publishes an admin event `{"type", "seq", "time", ...fields}`.
    pub fn emit(&self, kind: &str, fields: Value) {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = json!({"type": kind, "seq": seq, "time": unix_ms(SystemTime::now())});
        if let (Some(obj), Value::Object(extra)) = (event.as_object_mut(), fields) {
            obj.extend(extra);
        }
        tracing::info!(event = %event, "admin event");
        {
            let mut history = self.history.lock().unwrap();
            if history.len() == EVENT_HISTORY {
                history.pop_front();
            }
            history.push_back(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// Publishes an event to live subscribers only, not to the replay history: frequent
    /// numbers (cache statistics) would push the events that matter out of it.
    pub fn emit_live(&self, kind: &str, fields: Value) {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = json!({"type": kind, "seq": seq, "time": unix_ms(SystemTime::now())});
        if let (Some(obj), Value::Object(extra)) = (event.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let _ = self.events.send(event);
    }

    /// The SSD tier of the KV prefix cache (one store for every model), when a folder is
    /// configured and prefix caching is on.
    pub fn ssd_cache(&self) -> Option<&Arc<SsdStore>> {
        let kv = &self.config.scheduler.kv;
        kv.ssd.as_ref().filter(|_| kv.enabled)
    }

    /// Live events, and the recent ones with `seq > since` (oldest first).
    pub fn subscribe(&self, since: Option<u64>) -> (Vec<Value>, broadcast::Receiver<Value>) {
        let history = self.history.lock().unwrap();
        let rx = self.events.subscribe();
        let past = match since {
            Some(since) => history
                .iter()
                .filter(|e| e["seq"].as_u64().unwrap_or(0) > since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, rx)
    }

    // -----------------------------------------------------------------------------------------
    // Discovery

    pub fn model_ids(&self) -> Vec<String> {
        self.models.lock().unwrap().keys().cloned().collect()
    }

    fn usable_ids(&self) -> Vec<String> {
        let models = self.models.lock().unwrap();
        models
            .iter()
            .filter(|(_, e)| e.facts.is_ok())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Looks at the models folders again: new models are checked and listed, changed ones
    /// re-checked, gone ones dropped (unloaded if loaded). Returns whether anything changed.
    pub fn rescan(&self) -> bool {
        let found = discover(&self.config.model_dirs);
        let known: BTreeMap<String, (PathBuf, u64)> = self
            .models
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| (id.clone(), (e.path.clone(), e.fingerprint)))
            .collect();
        // Integrity checks read files: do them before taking the lock.
        let mut fresh: Vec<(String, Entry)> = Vec::new();
        for (id, path) in &found {
            match known.get(id) {
                Some((p, fp)) if p == path && *fp == integrity::fingerprint(path) => {}
                _ => fresh.push((id.clone(), new_entry(path.clone()))),
            }
        }
        let mut events: Vec<(&str, Value)> = Vec::new();
        let mut dropped: Vec<Arc<Served>> = Vec::new();
        {
            let mut models = self.models.lock().unwrap();
            for (id, entry) in fresh {
                let complete = entry.facts.is_ok();
                let reason = entry.facts.as_ref().err().cloned();
                match models.get_mut(&id) {
                    Some(old) => {
                        let was_complete = old.facts.is_ok();
                        old.path = entry.path;
                        old.fingerprint = entry.fingerprint;
                        old.created = entry.created;
                        old.facts = entry.facts;
                        if complete && !was_complete {
                            events.push(("model_discovered", json!({"model": id})));
                        } else if !complete && was_complete {
                            events.push((
                                "model_discovered",
                                json!({"model": id, "incomplete": reason}),
                            ));
                        }
                    }
                    None => {
                        let mut fields = json!({"model": id});
                        if let Some(r) = reason {
                            fields["incomplete"] = Value::String(r);
                        }
                        events.push(("model_discovered", fields));
                        models.insert(id, entry);
                    }
                }
            }
            let gone: Vec<String> = models
                .keys()
                .filter(|id| !found.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                if let Some(entry) = models.remove(&id) {
                    if let State::Loaded(s) | State::Unloading(s) = entry.state {
                        dropped.push(s);
                    }
                    events.push(("model_removed", json!({"model": id})));
                }
            }
        }
        for served in dropped {
            // Its files are gone: the engine finishes what it has and drops the model.
            served.requests.lock().unwrap().take();
            self.emit(
                "model_unloaded",
                json!({"model": served.id, "reason": "removed"}),
            );
        }
        let changed = !events.is_empty();
        for (kind, fields) in events {
            self.emit(kind, fields);
        }
        changed
    }

    // -----------------------------------------------------------------------------------------
    // Names

    /// The model used when a request names none.
    pub fn default_model(&self) -> Option<String> {
        let configured = self.runtime.lock().unwrap().default_model.clone();
        let models = self.models.lock().unwrap();
        if let Some(d) = configured {
            if models.get(&d).is_some_and(|e| e.facts.is_ok()) {
                return Some(d);
            }
        }
        // Prefer an MLX folder over a GGUF file of the same model, then the first by name.
        let usable = || models.iter().filter(|(_, e)| e.facts.is_ok());
        usable()
            .find(|(_, e)| e.path.is_dir())
            .or_else(|| usable().next())
            .map(|(id, _)| id.clone())
    }

    /// Resolves a requested name (or none) to a model id.
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, CoreError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        let unknown = |name: &str| CoreError::UnknownModel {
            requested: name.into(),
            available: self.usable_ids(),
        };
        let Some(name) = requested else {
            return self.default_model().ok_or_else(|| unknown("(default)"));
        };
        if self.models.lock().unwrap().contains_key(name) {
            return Ok(name.to_string());
        }
        let target = {
            let runtime = self.runtime.lock().unwrap();
            crate::config::resolve_alias(&runtime.aliases, name).map(str::to_string)
        };
        if let Some(target) = target {
            // "default" follows the default model, whichever it is.
            let target = if target == "default" {
                self.default_model()
            } else {
                Some(target)
            };
            if let Some(t) = target.filter(|t| self.models.lock().unwrap().contains_key(t)) {
                return Ok(t);
            }
        }
        Err(unknown(name))
    }

    // -----------------------------------------------------------------------------------------
    // Memory

    /// The models' memory budget in bytes.
    pub fn budget(&self) -> u64 {
        let runtime = self.runtime.lock().unwrap();
        memory::budget_bytes(
            runtime.memory_budget,
            runtime.memory_reserve,
            memory::models_memory_total(),
        )
    }

    fn settings(&self, id: &str) -> ModelSettings {
        self.config.per_model.get(id).cloned().unwrap_or_default()
    }

    fn capped_context(facts: &ModelFacts, settings: &ModelSettings) -> usize {
        settings
            .context_length
            .map_or(facts.context_length, |cap| cap.min(facts.context_length))
            .max(2)
    }

    /// What loading a model with these facts would cost, and how its weights will be held.
    pub fn plan(&self, facts: &ModelFacts, settings: &ModelSettings) -> MemoryPlan {
        let context = Self::capped_context(facts, settings);
        let reserve_tokens = self.runtime.lock().unwrap().kv_reserve_tokens;
        let kv_tokens = if reserve_tokens == 0 {
            context
        } else {
            reserve_tokens.min(context)
        };
        let kv = facts.kv_bytes_per_token * kv_tokens as u64;
        let budget = self.budget();
        let mode = match self.config.weights_mode {
            WeightsMode::Auto => {
                // The loader's rule, decided here so the estimate matches what loads; and
                // never expand past what the budget allows.
                let available = memory::system_memory().available;
                if facts.quantized
                    && auto_dequantizes(facts.weights_dequantized, available)
                    && facts.weights_native + facts.weights_dequantized <= budget
                    && facts.weights_dequantized + kv <= budget
                {
                    WeightsMode::Dequantized
                } else {
                    WeightsMode::Native
                }
            }
            m => m,
        };
        let (weights, peak) = match mode {
            // Both copies exist while layers are expanded one by one.
            WeightsMode::Dequantized if facts.quantized => (
                facts.weights_dequantized,
                facts.weights_native + facts.weights_dequantized,
            ),
            _ => (facts.weights_native, facts.weights_native),
        };
        MemoryPlan {
            mode,
            weights_bytes: weights,
            kv_reserved_bytes: kv,
            load_peak_bytes: peak,
        }
    }

    /// Memory counted for loaded (and still unloading) models.
    fn accounted(models: &BTreeMap<String, Entry>) -> u64 {
        models
            .values()
            .map(|e| match &e.state {
                State::Loaded(s) | State::Unloading(s) => s.plan.steady(),
                _ => 0,
            })
            .sum()
    }

    /// Makes room for `need` bytes by evicting idle unpinned models, least recently used
    /// first; refuses (507) when even that would not be enough, evicting nothing.
    async fn make_room(&self, id: &str, need: u64) -> Result<(), CoreError> {
        let budget = self.budget();
        if need > budget {
            return Err(CoreError::InsufficientMemory(format!(
                "model '{id}' needs {} but the whole memory budget is {}",
                format_bytes(need),
                format_bytes(budget)
            )));
        }
        let pinned = self.runtime.lock().unwrap().pinned.clone();
        let victims: Vec<Arc<Served>> = {
            let mut models = self.models.lock().unwrap();
            let used = Self::accounted(&models);
            if used + need <= budget {
                return Ok(());
            }
            let mut candidates: Vec<Arc<Served>> = Vec::new();
            let (mut held_pinned, mut held_busy) = (Vec::new(), Vec::new());
            for (mid, e) in models.iter() {
                match &e.state {
                    State::Loaded(s) if mid != id => {
                        let describe = format!("{mid} ({})", format_bytes(s.plan.steady()));
                        if pinned.contains(mid) {
                            held_pinned.push(describe);
                        } else if !is_idle(s) {
                            held_busy.push(describe);
                        } else {
                            candidates.push(s.clone());
                        }
                    }
                    State::Unloading(s) => held_busy.push(format!(
                        "{mid} ({}, unloading)",
                        format_bytes(s.plan.steady())
                    )),
                    _ => {}
                }
            }
            let freeable: u64 = candidates.iter().map(|s| s.plan.steady()).sum();
            if used - freeable + need > budget {
                let missing = used - freeable + need - budget;
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                return Err(CoreError::InsufficientMemory(format!(
                    "model '{id}' needs {} but at most {} of the {} budget can be made free \
                     ({} missing). Pinned: {}. Busy: {}.",
                    format_bytes(need),
                    format_bytes(budget.saturating_sub(used) + freeable),
                    format_bytes(budget),
                    format_bytes(missing),
                    list(&held_pinned),
                    list(&held_busy),
                )));
            }
            candidates.sort_by_key(|s| s.last_used());
            let mut victims = Vec::new();
            let mut used = used;
            for s in candidates {
                if used + need <= budget {
                    break;
                }
                used -= s.plan.steady();
                if let Some(e) = models.get_mut(&s.id) {
                    e.state = State::Unloading(s.clone());
                }
                victims.push(s);
            }
            victims
        };
        for victim in victims {
            self.finish_unload(victim, EvictReason::Budget).await;
        }
        Ok(())
    }

    /// Stops the engine of a model already marked `Unloading`, waits until it has dropped
    /// the model, and marks it available.
    async fn finish_unload(&self, served: Arc<Served>, reason: EvictReason) {
        served.requests.lock().unwrap().take();
        let mut exited = served.exited.clone();
        let _ = exited.wait_for(|done| *done).await;
        {
            let mut models = self.models.lock().unwrap();
            if let Some(e) = models.get_mut(&served.id) {
                if matches!(&e.state, State::Unloading(s) if Arc::ptr_eq(s, &served)) {
                    e.state = State::Available;
                }
            }
        }
        let freed = served.plan.steady();
        let fields = json!({"model": served.id, "reason": reason.as_str(), "freed_bytes": freed});
        if reason == EvictReason::Manual {
            self.emit("model_unloaded", fields);
        } else {
            tracing::info!(model = %served.id, reason = reason.as_str(), "model evicted");
            self.emit("model_evicted", fields);
        }
    }

    /// Unloads `id` if it is loaded and idle and not pinned (or `force_busy`: waits for its
    /// requests). Returns whether it was unloaded.
    async fn evict(&self, id: &str, reason: EvictReason) -> bool {
        let served = {
            let mut models = self.models.lock().unwrap();
            let Some(entry) = models.get_mut(id) else {
                return false;
            };
            let State::Loaded(s) = &entry.state else {
                return false;
            };
            if reason != EvictReason::Manual && !is_idle(s) {
                return false;
            }
            let s = s.clone();
            entry.state = State::Unloading(s.clone());
            s
        };
        self.finish_unload(served, reason).await;
        true
    }

    // -----------------------------------------------------------------------------------------
    // Loading

    /// The loaded model `id`, loading it first if needed (other callers wait for that load).
    pub async fn ensure_loaded(&self, id: &str) -> Result<Arc<Served>, CoreError> {
        loop {
            let state = {
                let models = self.models.lock().unwrap();
                let entry = models.get(id).ok_or_else(|| CoreError::UnknownModel {
                    requested: id.into(),
                    available: models.keys().cloned().collect(),
                })?;
                if let Err(reason) = &entry.facts {
                    return Err(CoreError::Unsupported(format!(
                        "model '{id}' is incomplete and cannot be loaded: {reason}"
                    )));
                }
                entry.state.clone()
            };
            match state {
                State::Loaded(s) => {
                    s.touch();
                    return Ok(s);
                }
                State::Loading { mut done, .. } => {
                    let _ = done.wait_for(|d| *d).await;
                }
                State::Unloading(s) => {
                    let mut exited = s.exited.clone();
                    let _ = exited.wait_for(|d| *d).await;
                    // `finish_unload` marks it available right after; give it a moment.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                State::Available | State::Failed(_) => {
                    let _guard = self.load_lock.lock().await;
                    // Someone else may have loaded it while we waited for the lock.
                    let (path, facts) = {
                        let models = self.models.lock().unwrap();
                        let Some(entry) = models.get(id) else {
                            continue;
                        };
                        if !matches!(entry.state, State::Available | State::Failed(_)) {
                            continue;
                        }
                        match &entry.facts {
                            Ok(f) => (entry.path.clone(), f.clone()),
                            Err(_) => continue,
                        }
                    };
                    let settings = self.settings(id);
                    let plan = self.plan(&facts, &settings);
                    if let Err(e) = self.make_room(id, plan.needed()).await {
                        self.emit("load_failed", json!({"model": id, "error": e.to_string()}));
                        return Err(e);
                    }
                    let (done_tx, done_rx) = watch::channel(false);
                    self.set_state(
                        id,
                        State::Loading {
                            done: done_rx,
                            base_active: memory::mlx_memory().active,
                            expected: plan.load_peak_bytes.max(1),
                        },
                    );
                    let result = self.spawn_engine(id, &path, &facts, plan, settings).await;
                    let state = match &result {
                        Ok(served) => State::Loaded(served.clone()),
                        Err(e) => State::Failed(e.to_string()),
                    };
                    self.set_state(id, state);
                    let _ = done_tx.send(true);
                    match &result {
                        Ok(s) => self.emit(
                            "model_loaded",
                            json!({"model": id, "memory_bytes": s.plan.steady(), "weights_mode": s.plan.mode}),
                        ),
                        Err(e) => {
                            self.emit("load_failed", json!({"model": id, "error": e.to_string()}))
                        }
                    }
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
    async fn spawn_engine(
        &self,
        id: &str,
        path: &Path,
        facts: &ModelFacts,
        plan: MemoryPlan,
        settings: ModelSettings,
    ) -> Result<Arc<Served>, CoreError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (req_tx, req_rx) = std::sync::mpsc::channel::<SeqRequest>();
        let (exit_tx, exit_rx) = watch::channel(false);
        let stats = Arc::new(EngineStats::default());
        let (model_id, path_buf) = (id.to_string(), path.to_path_buf());
        let mut sched = self.config.scheduler.clone();
        sched.kv.model_path = Some(path.to_path_buf());
        // Running sequences share the KV memory counted for the model in the budget.
        sched.kv_budget_tokens = plan.kv_positions(facts.kv_bytes_per_token);
        let thread_stats = stats.clone();
        let started = Instant::now();
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || {
                match loader::load(&path_buf, plan.mode) {
                    Ok(loaded) => {
                        let ready = (loaded.tokenizer.clone(), loaded.context_length);
                        // Ready once the engine exists (its prefix cache included), so that the
                        // admin API never shows a loaded model without it.
                        let engine = Engine::new(
                            model_id.clone(),
                            loaded.model,
                            loaded.tokenizer,
                            sched,
                            thread_stats,
                        );
                        let _ = ready_tx.send(Ok(ready));
                        engine.run(req_rx);
                        tracing::info!(model = %model_id, "engine stopped; model dropped");
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
                // Give the freed buffers back rather than keeping them for reuse.
                let _ = mlx_rs::memory::clear_cache();
                let _ = exit_tx.send(true);
            })
            .map_err(|e| CoreError::Internal(format!("cannot start engine thread: {e}")))?;
        let (tokenizer, context_length) = ready_rx
            .await
            .map_err(|_| CoreError::Internal("engine thread died while loading".into()))?
            .map_err(|e| CoreError::Internal(format!("loading model '{id}' failed: {e}")))?;
        let context_length = Self::capped_context(
            &ModelFacts {
                context_length,
                ..facts.clone()
            },
            &settings,
        );
        tracing::info!(model = id, path = %path.display(), secs = started.elapsed().as_secs_f32(),
            context_length, mode = ?plan.mode, weights_mib = plan.weights_bytes >> 20, "model loaded");
        let reasoning = tokenizer.token_to_id("<think>").is_some()
            && tokenizer.token_to_id("</think>").is_some();
        Ok(Arc::new(Served {
            id: id.to_string(),
            tokenizer,
            context_length,
            stats,
            reasoning,
            plan,
            kv_bytes_per_token: facts.kv_bytes_per_token,
            settings,
            loaded_at: SystemTime::now(),
            requests: Mutex::new(Some(req_tx)),
            last_used: Mutex::new(Instant::now()),
            idle_since: Mutex::new(None),
            exited: exit_rx,
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
                let thinking = served.reasoning && served.settings.thinking.unwrap_or(true);
                kwargs
                    .entry("enable_thinking")
                    .or_insert(Value::Bool(thinking));
                let mut hf = hf_messages(messages);
                if let Some(tools) = tools_json
                    .as_deref()
                    .filter(|_| !tok.template_renders_tools())
                {
                    describe_tools_in_system(&mut hf, tools);
                }
                let text = tok
                    .apply_chat_template(&hf, tools_json.as_deref(), true, &kwargs)
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

    /// The model's default sampling for settings the request left at the API's defaults.
    fn apply_sampling_defaults(settings: &ModelSettings, sampling: &mut SamplingParams) {
        let api = SamplingParams::default();
        if let Some(t) = settings
            .temperature
            .filter(|_| sampling.temperature == api.temperature)
        {
            sampling.temperature = t;
        }
        if let Some(p) = settings.top_p.filter(|_| sampling.top_p == api.top_p) {
            sampling.top_p = p;
        }
        if let Some(k) = settings.top_k.filter(|_| sampling.top_k == api.top_k) {
            sampling.top_k = k;
        }
        if let Some(m) = settings.min_p.filter(|_| sampling.min_p == api.min_p) {
            sampling.min_p = m;
        }
    }

    async fn submit_inner(&self, request: GenerateRequest) -> Result<Generation, CoreError> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err(CoreError::Stopped);
        }
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
        // A prompt whose KV alone exceeds the model's KV budget would wait forever: refuse it.
        // (One that fits waits in the engine's queue until running sequences leave room.)
        let kv_need = prompt.len() as u64 * served.kv_bytes_per_token;
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
            .plan
            .kv_positions(served.kv_bytes_per_token)
            .unwrap_or(usize::MAX);
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
        let mut sampling = request.sampling;
        Self::apply_sampling_defaults(&served.settings, &mut sampling);
        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let prompt_tokens = prompt.len();
        let cached_tokens = served.stats.prefix.estimate_cached_tokens(&prompt);
        let seq = SeqRequest {
            id: request.id,
            prompt,
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
                format: output_parser::choose(
                    served.settings.tool_parser,
                    served.tokenizer.chat_template_source(),
                    served.tokenizer.model_type(),
                ),
                tools: match &request.prompt {
                    Prompt::Chat { tools, .. } => tools.clone(),
                    _ => Vec::new(),
                },
            },
            events: tx,
            received: Instant::now(),
        };
        served.stats.waiting.fetch_add(1, Ordering::Relaxed);
        served.touch();
        let sent = match served.requests.lock().unwrap().as_ref() {
            Some(sender) => sender.send(seq).is_ok(),
            None => false,
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

    // -----------------------------------------------------------------------------------------
    // Admin actions

    fn known(&self, id: &str) -> Result<(), CoreError> {
        validate_id(id)?;
        if self.models.lock().unwrap().contains_key(id) {
            Ok(())
        } else {
            Err(CoreError::UnknownModel {
                requested: id.into(),
                available: self.model_ids(),
            })
        }
    }

    /// Loads `id` now (no-op when loaded).
    pub async fn load(&self, id: &str) -> Result<(), CoreError> {
        self.known(id)?;
        self.ensure_loaded(id).await.map(|_| ())
    }

    /// Unloads `id` (its running requests finish first). Pinned models must be unpinned first.
    pub async fn unload(&self, id: &str) -> Result<bool, CoreError> {
        self.known(id)?;
        if self.runtime.lock().unwrap().pinned.contains(id) {
            return Err(CoreError::Invalid(format!(
                "model '{id}' is pinned; unpin it before unloading it"
            )));
        }
        Ok(self.evict(id, EvictReason::Manual).await)
    }

    /// Pins or unpins `id`; says whether that changed anything.
    pub fn pin(&self, id: &str, pinned: bool) -> Result<bool, CoreError> {
        self.known(id)?;
        let changed = {
            let mut runtime = self.runtime.lock().unwrap();
            if pinned {
                runtime.pinned.insert(id.to_string())
            } else {
                runtime.pinned.remove(id)
            }
        };
        if changed {
            self.emit(
                if pinned {
                    "model_pinned"
                } else {
                    "model_unpinned"
                },
                json!({"model": id}),
            );
        }
        Ok(changed)
    }

    pub fn pinned(&self) -> Vec<String> {
        self.runtime
            .lock()
            .unwrap()
            .pinned
            .iter()
            .cloned()
            .collect()
    }

    pub fn set_default(&self, id: &str) -> Result<(), CoreError> {
        self.known(id)?;
        self.runtime.lock().unwrap().default_model = Some(id.to_string());
        self.emit("default_changed", json!({"model": id}));
        Ok(())
    }

    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn set_serving(&self, serving: bool) {
        if self.serving.swap(serving, Ordering::Relaxed) != serving {
            self.emit("serving_changed", json!({"serving": serving}));
        }
    }

    pub fn settings_snapshot(&self) -> Value {
        let runtime = self.runtime.lock().unwrap();
        json!({
            "idle_ttl_secs": runtime.idle_ttl_secs,
            "memory_budget": runtime.memory_budget.map(|a| a.to_string()),
            "memory_reserve": runtime.memory_reserve.to_string(),
            "memory_pressure_threshold": runtime.pressure_threshold.to_string(),
            "kv_reserve_tokens": runtime.kv_reserve_tokens,
            "aliases": runtime.aliases,
            "budget_bytes": memory::budget_bytes(runtime.memory_budget, runtime.memory_reserve, memory::models_memory_total()),
        })
    }

    /// Changes runtime settings; all or nothing.
    pub fn update_settings(&self, change: RuntimeSettings) -> Result<Value, CoreError> {
        let budget = match change.memory_budget.as_deref() {
            None => None,
            Some("default") | Some("") => Some(None),
            Some(s) => {
                Some(Some(s.parse::<Amount>().map_err(|e| {
                    CoreError::Invalid(format!("memory_budget: {e}"))
                })?))
            }
        };
        {
            let mut runtime = self.runtime.lock().unwrap();
            if let Some(t) = change.idle_ttl_secs {
                runtime.idle_ttl_secs = t;
            }
            if let Some(b) = budget {
                runtime.memory_budget = b;
            }
            if let Some(r) = change.memory_reserve {
                runtime.memory_reserve = r;
            }
            if let Some(p) = change.memory_pressure_threshold {
                runtime.pressure_threshold = p;
            }
            if let Some(k) = change.kv_reserve_tokens {
                runtime.kv_reserve_tokens = k;
            }
            if let Some(a) = change.aliases {
                runtime.aliases = a;
            }
        }
        memory::apply_mlx_limits(self.budget());
        let snapshot = self.settings_snapshot();
        self.emit("settings_changed", json!({"settings": snapshot.clone()}));
        Ok(snapshot)
    }

    /// Every discovered model, as the admin API lists them.
    pub fn model_statuses(&self) -> Vec<ModelStatus> {
        let (default, pinned, aliases) = {
            let runtime = self.runtime.lock().unwrap();
            (
                runtime.default_model.clone(),
                runtime.pinned.clone(),
                runtime.aliases.clone(),
            )
        };
        let default = default.or_else(|| self.default_model());
        let active = memory::mlx_memory().active;
        let snapshot: Vec<(String, PathBuf, Result<ModelFacts, String>, State)> = {
            let models = self.models.lock().unwrap();
            models
                .iter()
                .map(|(id, e)| (id.clone(), e.path.clone(), e.facts.clone(), e.state.clone()))
                .collect()
        };
        snapshot
            .into_iter()
            .map(|(id, path, facts, state)| {
                let settings = self.settings(&id);
                let (size, estimate, context) = match &facts {
                    Ok(f) => (
                        f.disk_bytes,
                        self.plan(f, &settings).steady(),
                        Self::capped_context(f, &settings),
                    ),
                    Err(_) => (dir_size(&path), 0, 0),
                };
                let (state_name, progress, reason, estimate) = match (&facts, &state) {
                    (Err(r), _) => ("incomplete", None, Some(r.clone()), estimate),
                    (_, State::Available) => ("available", None, None, estimate),
                    (_, State::Failed(e)) => ("failed", None, Some(e.clone()), estimate),
                    (
                        _,
                        State::Loading {
                            base_active,
                            expected,
                            ..
                        },
                    ) => {
                        let p = active.saturating_sub(*base_active) as f64 / *expected as f64;
                        ("loading", Some(p.clamp(0.0, 0.99)), None, estimate)
                    }
                    (_, State::Loaded(s)) => ("loaded", None, None, s.plan.steady()),
                    (_, State::Unloading(s)) => ("unloading", None, None, s.plan.steady()),
                };
                let model_aliases = aliases
                    .iter()
                    .filter(|(_, target)| {
                        *target == &id
                            || (target.as_str() == "default" && default.as_ref() == Some(&id))
                    })
                    .map(|(pattern, _)| pattern.clone())
                    .collect();
                ModelStatus {
                    format: if is_gguf(&path) { "gguf" } else { "mlx" },
                    pinned: pinned.contains(&id),
                    default: default.as_ref() == Some(&id),
                    aliases: model_aliases,
                    state: state_name,
                    progress,
                    reason,
                    size_bytes: size,
                    estimated_memory_bytes: estimate,
                    context_length: context,
                    path,
                    id,
                }
            })
            .collect()
    }

    /// Loaded models' live numbers.
    pub fn loaded_statuses(&self) -> Vec<LoadedStatus> {
        let pinned = self.runtime.lock().unwrap().pinned.clone();
        let served: Vec<(Arc<Served>, bool)> = {
            let models = self.models.lock().unwrap();
            models
                .values()
                .filter_map(|e| match &e.state {
                    State::Loaded(s) => Some((s.clone(), false)),
                    State::Unloading(s) => Some((s.clone(), true)),
                    _ => None,
                })
                .collect()
        };
        let now = Instant::now();
        served
            .into_iter()
            .map(|(s, unloading)| {
                let (running, waiting) = s.busy_counts();
                let kv = s.stats.kv_bytes.load(Ordering::Relaxed) as u64;
                let last_used = SystemTime::now() - now.duration_since(s.last_used());
                LoadedStatus {
                    id: s.id.clone(),
                    memory_bytes: s.plan.weights_bytes + kv.max(s.plan.kv_reserved_bytes),
                    weights_bytes: s.plan.weights_bytes,
                    weights_mode: s.plan.mode,
                    kv_bytes: kv,
                    kv_reserved_bytes: s.plan.kv_reserved_bytes,
                    running,
                    waiting,
                    pinned: pinned.contains(&s.id),
                    idle_ttl_secs: self.ttl_of(&s),
                    last_used: unix_ms(last_used),
                    loaded_at: unix_ms(s.loaded_at),
                    unloading,
                    prefix_cache: s.stats.prefix.stats(),
                }
            })
            .collect()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn ttl_of(&self, served: &Served) -> i64 {
        served
            .settings
            .idle_ttl_secs
            .unwrap_or_else(|| self.runtime.lock().unwrap().idle_ttl_secs)
    }

    // -----------------------------------------------------------------------------------------
    // Background work

    /// Loads the pinned models (then the default one), in that order.
    pub async fn load_at_start(self: &Arc<Self>) {
        let mut ids = self.pinned();
        if let Some(d) = self.default_model() {
            if !ids.contains(&d) {
                ids.push(d);
            }
        }
        for id in ids {
            if !self.models.lock().unwrap().contains_key(&id) {
                tracing::warn!(model = %id, "pinned model not found in the models folders");
                continue;
            }
            if let Err(e) = self.ensure_loaded(&id).await {
                tracing::error!(model = %id, error = %e, "loading at start failed");
            }
        }
    }

    /// One look of the monitor: idle TTLs, then system memory pressure.
    pub async fn monitor_tick(&self) {
        let now = Instant::now();
        let pinned = self.runtime.lock().unwrap().pinned.clone();
        let mut expired = Vec::new();
        let mut idle_lru: Vec<(Instant, String)> = Vec::new();
        {
            let models = self.models.lock().unwrap();
            for (id, e) in models.iter() {
                let State::Loaded(s) = &e.state else { continue };
                let mut idle_since = s.idle_since.lock().unwrap();
                if !is_idle(s) {
                    *idle_since = None;
                    continue;
                }
                let since = *idle_since.get_or_insert(now);
                if pinned.contains(id) {
                    continue;
                }
                idle_lru.push((s.last_used(), id.clone()));
                let ttl = self.ttl_of(s);
                let idle_for = now.duration_since(since.max(s.last_used()));
                if ttl >= 0 && idle_for >= Duration::from_secs(ttl as u64) {
                    expired.push(id.clone());
                }
            }
        }
        for id in &expired {
            self.evict(id, EvictReason::Ttl).await;
        }
        let threshold = self.runtime.lock().unwrap().pressure_threshold;
        let sys = memory::system_memory();
        if sys.available < threshold.of(sys.total) {
            idle_lru.retain(|(_, id)| !expired.contains(id));
            idle_lru.sort();
            // One model per look: the next look sees what that freed.
            if let Some((_, id)) = idle_lru.first() {
                tracing::warn!(model = %id, available = sys.available, threshold = %threshold,
                    "memory pressure: unloading the least recently used idle model");
                self.evict(id, EvictReason::MemoryPressure).await;
            }
        }
    }

    /// Runs the monitor forever (spawn it).
    pub async fn run_monitor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.monitor_tick().await;
        }
    }

    /// The folders searched for models.
    pub fn model_dirs(&self) -> &[PathBuf] {
        &self.config.model_dirs
    }

    /// The configured weights mode (each model settles `auto` at load).
    pub fn weights_mode(&self) -> WeightsMode {
        self.config.weights_mode
    }
}

fn dir_size(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
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
            let served = self.ensure_loaded(&id).await?;
            Ok(self.tokenize(&served, prompt)?.0.len())
        })
    }

    fn submit(&self, request: GenerateRequest) -> BoxFuture<'_, Result<Generation, CoreError>> {
        Box::pin(self.submit_inner(request))
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
    fn ids_that_are_paths_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../b",
            "a\0b",
            "",
            "a\\b",
            "C:x",
            "~/m",
            "a//b",
            "./a",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["SmolLM2-135M-Instruct", "org/name", "model.Q4_1", "a b"] {
            validate_id(good).unwrap();
        }
    }

    fn test_models() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/test-models")
    }

    #[test]
    fn discovery_finds_folders_one_or_two_deep_and_ggufs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = test_models().join("SmolLM2-135M-Instruct");
        let flat = tmp.path().join("flat");
        let nested = tmp.path().join("org").join("nested");
        for d in [&flat, &nested] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
        }
        std::fs::write(tmp.path().join("x.gguf"), b"GGUF").unwrap();
        std::fs::create_dir_all(tmp.path().join(".hidden")).unwrap();
        std::fs::copy(
            src.join("config.json"),
            tmp.path().join(".hidden/config.json"),
        )
        .unwrap();
        let found = discover(&[tmp.path().to_path_buf()]);
        let ids: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(ids, ["flat", "org/nested", "x"]);

        // Folders without weights are listed, but as incomplete, and never loadable.
        let registry = Registry::new(RegistryConfig {
            model_dirs: vec![tmp.path().to_path_buf()],
            ..RegistryConfig::default()
        });
        let statuses = registry.model_statuses();
        assert!(
            statuses.iter().all(|s| s.state == "incomplete"),
            "{statuses:?}"
        );
        assert!(registry.list_models().is_empty());
        assert_eq!(registry.default_model(), None);
    }

    #[test]
    fn plan_counts_weights_and_kv() {
        let facts = integrity::check_model(&test_models().join("SmolLM2-135M-Instruct")).unwrap();
        let registry = Registry::new(RegistryConfig {
            weights_mode: WeightsMode::Native,
            kv_reserve_tokens: 100,
            memory_budget: Some(Amount::Bytes(1 << 40)),
            ..RegistryConfig::default()
        });
        let plan = registry.plan(&facts, &ModelSettings::default());
        assert_eq!(plan.mode, WeightsMode::Native);
        assert_eq!(plan.weights_bytes, facts.weights_native);
        assert_eq!(plan.kv_reserved_bytes, facts.kv_bytes_per_token * 100);
        let capped = ModelSettings {
            context_length: Some(50),
            ..ModelSettings::default()
        };
        assert_eq!(
            registry.plan(&facts, &capped).kv_reserved_bytes,
            facts.kv_bytes_per_token * 50
        );
    }
}
