//! Loading and unloading: one engine thread per loaded model, loads that wait for each other,
//! unloads on request, idle TTLs and memory pressure.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use wuwei_api::{EventKind, EvictReason};

use crate::config::ModelSettings;
use crate::core::CoreError;
use crate::embedding::{self, EmbedJob, Pooling};
use crate::integrity::ModelFacts;
use crate::loader;
use crate::memory;
use crate::scheduler::{Engine, EngineStats, SeqRequest};

use super::budget::{MemoryPlan, Unload};
use super::status::wire_name;
use super::{is_idle, Inbox, Registry, Served, State};

impl Registry {
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
                        self.emit(EventKind::LoadFailed {
                            model: id.into(),
                            error: e.to_string(),
                        });
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
                    self.emit(match &result {
                        Ok(s) => EventKind::ModelLoaded {
                            model: id.into(),
                            memory_bytes: s.plan.steady(),
                            weights_mode: Some(wire_name(s.plan.mode)),
                        },
                        Err(e) => EventKind::LoadFailed {
                            model: id.into(),
                            error: e.to_string(),
                        },
                    });
                    return result;
                }
            }
        }
    }

    pub(super) fn set_state(&self, id: &str, state: State) {
        if let Some(e) = self.models.lock().unwrap().get_mut(id) {
            e.state = state;
        }
    }

    /// Starts the engine thread of model `id`; the thread loads the weights itself so that
    /// MLX is only ever touched from the thread that owns the model.
    pub(super) async fn spawn_engine(
        &self,
        id: &str,
        path: &Path,
        facts: &ModelFacts,
        plan: MemoryPlan,
        settings: ModelSettings,
    ) -> Result<Arc<Served>, CoreError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (req_tx, req_rx) = std::sync::mpsc::channel::<SeqRequest>();
        let (embed_tx, embed_rx) = std::sync::mpsc::channel::<EmbedJob>();
        let embedding = facts.embedding;
        let (exit_tx, exit_rx) = watch::channel(false);
        let stats = Arc::new(EngineStats::default());
        let (model_id, path_buf) = (id.to_string(), path.to_path_buf());
        let mut sched = self.config.scheduler.clone();
        sched.kv.model_path = Some(path.to_path_buf());
        sched.kv.model_overrides = settings
            .rope_scaling
            .as_ref()
            .map(|rope| rope.identity())
            .unwrap_or_default();
        let rope = settings.rope_scaling.clone();
        // Running sequences share the KV memory counted for the model in the budget.
        let asked = settings.kv_quant(self.config.scheduler.kv_quant);
        sched.kv_quant = facts.kv_quant_at_load(id, asked);
        let kv_quant = sched.kv_quant;
        let kv_cost = self.kv_cost(facts, &settings);
        sched.kv_cost = kv_cost;
        sched.kv_budget_bytes = (kv_cost.per_token > 0).then_some(plan.kv_reserved_bytes);
        let thread_stats = stats.clone();
        let started = Instant::now();
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || {
                match loader::load_with(&path_buf, plan.mode, rope.as_ref()) {
                    Ok(loaded) if embedding.is_some() => {
                        let pooling = embedding.map(|e| e.pooling).unwrap_or(Pooling::LastToken);
                        let _ = ready_tx.send(Ok((loaded.tokenizer, loaded.context_length)));
                        drop(req_rx);
                        embedding::run_engine(loaded.model, embed_rx, pooling);
                        tracing::info!(model = %model_id, "embedding engine stopped; model dropped");
                    }
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
                // Give the freed buffers back rather than keeping them for reuse, and end
                // this thread's MLX streams (the next load's thread makes its own).
                let _ = mlx_rs::memory::clear_cache();
                crate::model::two_streams::end_thread_streams();
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
        let sampling = super::admission::model_sampling(
            &settings,
            &super::admission::generation_sampling(path),
        );
        tracing::info!(model = id, temperature = ?sampling.temperature, top_p = ?sampling.top_p,
            top_k = ?sampling.top_k, min_p = ?sampling.min_p,
            repetition_penalty = ?sampling.repetition_penalty,
            "sampling defaults (absent: the API's)");
        Ok(Arc::new(Served {
            id: id.to_string(),
            tokenizer,
            context_length,
            stats,
            reasoning,
            plan,
            kv_cost,
            kv_quant,
            settings,
            sampling,
            loaded_at: SystemTime::now(),
            embedding,
            grammars: std::sync::OnceLock::new(),
            requests: Mutex::new(Some(match embedding {
                Some(_) => Inbox::Embed(embed_tx),
                None => Inbox::Generate(req_tx),
            })),
            last_used: Mutex::new(Instant::now()),
            idle_since: Mutex::new(None),
            exited: exit_rx,
        }))
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
        Ok(self.evict(id, Unload::Manual).await)
    }

    pub(super) fn ttl_of(&self, served: &Served) -> i64 {
        served
            .settings
            .idle_ttl_secs
            .unwrap_or_else(|| self.runtime.lock().unwrap().idle_ttl_secs)
    }

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
            self.evict(id, Unload::Evicted(EvictReason::Ttl)).await;
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
                self.evict(id, Unload::Evicted(EvictReason::MemoryPressure))
                    .await;
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
}
