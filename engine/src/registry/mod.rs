//! The models the daemon can serve: found in the models folders (and kept up to date by the
//! watcher), checked for completeness, loaded on first use (each on its own engine thread)
//! within a memory budget, unloaded when idle, under pressure or when asked, and reached by
//! the HTTP layer through `Backend` and by the admin API through the methods below.
//!
//! One `impl Registry` per seam: `discovery` (folders, ids, names), `budget` (what a load
//! costs, making room), `lifecycle` (engine threads, loads, unloads, TTL and pressure),
//! `admission` (a request to its model's queue: the `Backend`), `settings` (what the admin
//! API changes), `status` (what it shows) and `events` (what it streams).

mod admission;
mod budget;
mod discovery;
mod events;
mod lifecycle;
mod settings;
mod status;

pub use budget::MemoryPlan;
pub use discovery::{discover, validate_id};
pub use events::event_json;
pub use settings::RuntimeSettings;
pub use status::wire_name;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};
use wuwei_api::Event;

use crate::config::ModelSettings;
use crate::embedding::{EmbedJob, EmbeddingSpec};
use crate::integrity::ModelFacts;
use crate::memory::{self, Amount};
use crate::model::WeightsMode;
use crate::scheduler::{EngineStats, SchedulerConfig, SeqRequest};
use crate::text::constraint::{ConstraintError, GrammarCompiler};
use crate::text::tokenizer::Tokenizer;

use discovery::new_entry;

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

/// A loaded model: its tokenizer and the channel to its engine thread.
pub struct Served {
    pub id: String,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    pub stats: Arc<EngineStats>,
    /// Whether the model writes `<think>` reasoning.
    pub reasoning: bool,
    pub plan: MemoryPlan,
    /// What a sequence's KV costs by its length (`per_token` 0: unknown).
    pub kv_cost: crate::kv::cost::KvCost,
    /// The format its running sequences store KV in (`None`: as computed).
    pub kv_quant: Option<crate::kv::quant::KvQuant>,
    pub settings: ModelSettings,
    /// The sampling a request gets for what it leaves out (`[models."id"]` settings over the
    /// model's `generation_config.json`).
    pub sampling: crate::core::SamplingRequest,
    pub loaded_at: SystemTime,
    /// `Some`: an embedding model, which takes embedding jobs rather than generations.
    pub embedding: Option<EmbeddingSpec>,
    /// Compiles constrained requests' grammars; built on the first one (an error is kept:
    /// the tokenizer does not change).
    pub grammars: std::sync::OnceLock<Result<Arc<GrammarCompiler>, ConstraintError>>,
    /// Dropping the sender (taking it out) lets the engine thread finish its work and exit.
    requests: Mutex<Option<Inbox>>,
    last_used: Mutex<Instant>,
    /// When the monitor first saw the model idle (reset when it sees it busy).
    idle_since: Mutex<Option<Instant>>,
    /// Turns true once the engine thread has dropped the model and ended.
    exited: watch::Receiver<bool>,
}

/// Where a loaded model's engine thread takes its work: the scheduler's queue, or an
/// embedding model's.
enum Inbox {
    Generate(std::sync::mpsc::Sender<SeqRequest>),
    Embed(std::sync::mpsc::Sender<EmbedJob>),
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

pub struct Registry {
    config: RegistryConfig,
    runtime: Mutex<Runtime>,
    models: Mutex<BTreeMap<String, Entry>>,
    /// One load at a time: loads compete for memory and disk, and the budget check must see
    /// every other model settled.
    load_lock: tokio::sync::Mutex<()>,
    serving: AtomicBool,
    events: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
    event_seq: AtomicU64,
    started: Instant,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A loaded model with nothing running, nothing queued and no request holding it.
fn is_idle(served: &Arc<Served>) -> bool {
    // The registry's map holds one reference; anyone else holding one is about to submit.
    Arc::strong_count(served) == 1 && served.busy_counts() == (0, 0)
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
}
