//! What the admin API shows: every discovered model and the live numbers of loaded ones.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::integrity::ModelFacts;
use crate::kv::ssd::SsdStore;
use crate::kv::PrefixStats;
use crate::loader::is_gguf;
use crate::memory;
use crate::model::WeightsMode;

use super::discovery::dir_size;
use super::{unix_ms, Registry, Served, State};

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

impl Registry {
    /// The SSD tier of the KV prefix cache (one store for every model), when a folder is
    /// configured and prefix caching is on.
    pub fn ssd_cache(&self) -> Option<&Arc<SsdStore>> {
        let kv = &self.config.scheduler.kv;
        kv.ssd.as_ref().filter(|_| kv.enabled)
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
}
