//! What the admin API shows: every discovered model and the live numbers of loaded ones.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wuwei_api::{
    LoadedStatus, ModelKind, ModelState, ModelStatus, PrefixCache, RamCache, SamplingDefaults,
    SsdCache,
};

use crate::core::SamplingRequest;
use crate::integrity::ModelFacts;
use crate::kv::ssd::SsdStore;
use crate::kv::PrefixStats;
use crate::loader::is_gguf;
use crate::memory;

use super::admission::{generation_sampling, model_sampling};
use super::discovery::dir_size;
use super::{unix_ms, Registry, Served, State};

/// A config value by the name it has in files and on the wire (`native`, `float32`, …).
pub fn wire_name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn prefix_cache(p: PrefixStats) -> PrefixCache {
    PrefixCache {
        block_size: p.block_size as u64,
        blocks_used: p.blocks_used as u64,
        blocks_referenced: p.blocks_referenced as u64,
        blocks_free: p.blocks_free as u64,
        bytes: p.bytes as u64,
        budget_bytes: p.budget_bytes as u64,
        evictions: p.evictions,
        queries: p.queries,
        hits: p.hits,
        hit_tokens_ram: p.hit_tokens_ram,
        hit_tokens_ssd: p.hit_tokens_ssd,
    }
}

impl Registry {
    /// The SSD tier of the KV prefix cache (one store for every model), when a folder is
    /// configured and prefix caching is on.
    pub fn ssd_cache(&self) -> Option<&Arc<SsdStore>> {
        let kv = &self.config.scheduler.kv;
        kv.ssd.as_ref().filter(|_| kv.enabled)
    }

    /// The SSD tier as the admin API shows it. Counters run since the daemon started.
    pub fn ssd_cache_status(&self) -> SsdCache {
        let Some(ssd) = self.ssd_cache() else {
            // No folder configured, or prefix caching off: nothing to switch.
            return SsdCache::default();
        };
        let st = ssd.stats();
        SsdCache {
            enabled: st.enabled,
            available: true,
            dir: Some(ssd.dir().to_string_lossy().into_owned()),
            scanning: st.scanning,
            bytes_used: st.bytes,
            cap_bytes: st.cap_bytes,
            blocks: st.files,
            hits: st.read_hits,
            misses: st.misses(),
            hit_rate: st.hit_rate(),
            writes: st.writes,
            writes_dropped: st.dropped,
            write_errors: st.write_errors,
            read_errors: st.read_failures - st.read_timeouts,
            read_timeouts: st.read_timeouts,
            corrupt_dropped: st.checksum_failures,
            evictions: st.evictions,
            errors: st.errors(),
            last_error: ssd.last_error(),
        }
    }

    /// The RAM tier of every loaded model, with totals.
    pub fn ram_cache_status(&self) -> RamCache {
        let mut ram = RamCache::default();
        for m in self.loaded_statuses() {
            if let Some(p) = m.prefix_cache {
                ram.blocks_used += p.blocks_used;
                ram.blocks_free += p.blocks_free;
                ram.bytes += p.bytes;
                ram.hit_tokens += p.hit_tokens_ram + p.hit_tokens_ssd;
                ram.queries += p.queries;
                ram.hits += p.hits;
                ram.models.insert(m.id, p);
            }
        }
        ram
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
                let sampling = match &state {
                    State::Loaded(s) | State::Unloading(s) => s.sampling.clone(),
                    _ => model_sampling(&settings, &generation_sampling(&path)),
                };
                let (size, estimate, context) = match &facts {
                    Ok(f) => (
                        f.disk_bytes,
                        self.plan(f, &settings).steady(),
                        Self::capped_context(f, &settings),
                    ),
                    Err(_) => (dir_size(&path), 0, 0),
                };
                let (state, progress, reason, estimate) = match (&facts, &state) {
                    (Err(r), _) => (ModelState::Incomplete, None, Some(r.clone()), estimate),
                    (_, State::Available) => (ModelState::Available, None, None, estimate),
                    (_, State::Failed(e)) => (ModelState::Failed, None, Some(e.clone()), estimate),
                    (
                        _,
                        State::Loading {
                            base_active,
                            expected,
                            ..
                        },
                    ) => {
                        let p = active.saturating_sub(*base_active) as f64 / *expected as f64;
                        (
                            ModelState::Loading,
                            Some(p.clamp(0.0, 0.99)),
                            None,
                            estimate,
                        )
                    }
                    (_, State::Loaded(s)) => (ModelState::Loaded, None, None, s.plan.steady()),
                    (_, State::Unloading(s)) => {
                        (ModelState::Unloading, None, None, s.plan.steady())
                    }
                };
                let model_aliases = aliases
                    .iter()
                    .filter(|(_, target)| {
                        *target == &id
                            || (target.as_str() == "default" && default.as_ref() == Some(&id))
                    })
                    .map(|(pattern, _)| pattern.clone())
                    .collect();
                let kind = match &facts {
                    Ok(f) if f.embedding.is_some() => ModelKind::Embedding,
                    _ => ModelKind::Chat,
                };
                ModelStatus {
                    kind,
                    sampling_defaults: sampling_defaults(&sampling),
                    format: if is_gguf(&path) { "gguf" } else { "mlx" }.into(),
                    pinned: pinned.contains(&id),
                    default: default.as_ref() == Some(&id),
                    aliases: model_aliases,
                    state,
                    progress,
                    reason,
                    size_bytes: size,
                    estimated_memory_bytes: estimate,
                    context_length: context as u64,
                    path: path.to_string_lossy().into_owned(),
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
                    memory_bytes: s.plan.weights_bytes
                        + kv.max(s.plan.kv_reserved_bytes + s.plan.state_reserved_bytes),
                    weights_bytes: s.plan.weights_bytes,
                    weights_mode: wire_name(s.plan.mode),
                    kv_bytes: kv,
                    kv_reserved_bytes: s.plan.kv_reserved_bytes,
                    kv_quantization: match s.embedding {
                        Some(_) => None,
                        None => s.kv_quant.map(|q| q.label()),
                    },
                    running: running as u64,
                    waiting: waiting as u64,
                    pinned: pinned.contains(&s.id),
                    idle_ttl_secs: self.ttl_of(&s),
                    last_used: unix_ms(last_used),
                    loaded_at: unix_ms(s.loaded_at),
                    unloading,
                    prefix_cache: s.stats.prefix.stats().map(prefix_cache),
                }
            })
            .collect()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A model's default sampling as the admin API shows it (`0.6`, not `0.6000000238`).
fn sampling_defaults(s: &SamplingRequest) -> SamplingDefaults {
    let wide = |v: Option<f32>| v.and_then(|v| v.to_string().parse::<f64>().ok());
    SamplingDefaults {
        temperature: wide(s.temperature),
        top_p: wide(s.top_p),
        top_k: s.top_k.map(|k| k as u64),
        min_p: wide(s.min_p),
        repetition_penalty: wide(s.repetition_penalty),
    }
}
