//! Memory: what loading a model costs, the budget, and making room by evicting idle models.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use wuwei_api::{EventKind, EvictReason};

use crate::config::ModelSettings;
use crate::core::CoreError;
use crate::integrity::ModelFacts;
use crate::kv::cost::KvCost;
use crate::kv::quant::KvQuant;
use crate::memory::{self, format_bytes};
use crate::model::{auto_dequantizes, WeightsMode};

use super::{is_idle, Entry, Registry, Served, State};

/// What loading a model costs, decided before it loads.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryPlan {
    /// How the weights will be held (never `Auto`).
    #[serde(skip)]
    pub mode: WeightsMode,
    pub weights_bytes: u64,
    /// KV cache counted for the model while it is loaded.
    pub kv_reserved_bytes: u64,
    /// Recurrent state of hybrid models' running sequences (`max_running` of them), counted
    /// beside the KV.
    pub state_reserved_bytes: u64,
    /// The most memory the load itself takes at once (e.g. quantized and expanded copies).
    pub load_peak_bytes: u64,
}

impl MemoryPlan {
    /// Memory counted against the budget while the model is loaded.
    pub fn steady(&self) -> u64 {
        self.weights_bytes + self.kv_reserved_bytes + self.state_reserved_bytes
    }

    /// Memory that must be free before the load starts.
    pub fn needed(&self) -> u64 {
        self.steady().max(self.load_peak_bytes)
    }
}

/// Why a model is unloaded: asked for (`model_unloaded`), or evicted (`model_evicted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unload {
    Manual,
    Evicted(EvictReason),
}

impl Registry {
    /// The models' memory budget in bytes.
    pub fn budget(&self) -> u64 {
        let runtime = self.runtime.lock().unwrap();
        memory::budget_bytes(
            runtime.memory_budget,
            runtime.memory_reserve,
            memory::models_memory_total(),
        )
    }

    pub(super) fn settings(&self, id: &str) -> ModelSettings {
        self.config.per_model.get(id).cloned().unwrap_or_default()
    }

    /// The model's context: its own, or what its `rope_scaling` setting extends it to,
    /// capped by its `context_length` setting.
    pub(super) fn capped_context(facts: &ModelFacts, settings: &ModelSettings) -> usize {
        let own = facts.context_length;
        let full = settings
            .rope_scaling
            .as_ref()
            .map_or(own, |rope| rope.context(own).max(own));
        settings
            .context_length
            .map_or(full, |cap| cap.min(full))
            .max(2)
    }

    /// The KV format a model runs with: its own `kv_bits`, else the global one; as computed
    /// for a model that cannot store it in that format (`ModelFacts::kv_quant_unfit`).
    pub(super) fn kv_quant(&self, facts: &ModelFacts, settings: &ModelSettings) -> Option<KvQuant> {
        settings
            .kv_quant(self.config.scheduler.kv_quant)
            .filter(|&q| facts.kv_quant_unfit(q).is_none())
    }

    /// KV bytes of one position as the model stores it (quantized KV counted as such).
    pub(super) fn kv_bytes_per_token(&self, facts: &ModelFacts, settings: &ModelSettings) -> u64 {
        match self.kv_quant(facts, settings) {
            Some(q) => {
                let float_bytes = if crate::model::compute_dtype().is_some() {
                    4
                } else {
                    2
                };
                q.bytes_per_token(facts.kv_bytes_per_token, float_bytes)
            }
            None => facts.kv_bytes_per_token,
        }
    }

    /// What one sequence's KV costs by its length, as the model will store it: quantized KV
    /// keeps every position of every layer; float KV only about a window of sliding-window
    /// layers.
    pub(super) fn kv_cost(&self, facts: &ModelFacts, settings: &ModelSettings) -> KvCost {
        let windowed = match self.kv_quant(facts, settings) {
            Some(_) => None,
            None => facts.windowed_kv,
        };
        let sched = &self.config.scheduler;
        // The block windowed layers keep for the prefix cache's end snapshots
        // (`PrefixCache::window_slack`).
        let slack = match sched.kv.enabled {
            true => sched.kv.block_size,
            false => 0,
        };
        KvCost::new(
            self.kv_bytes_per_token(facts, settings),
            windowed,
            sched.prefill_chunk,
            slack,
        )
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
        // Room for one sequence of `kv_tokens` (or several sharing them).
        let kv = self.kv_cost(facts, settings).bytes(kv_tokens);
        // A running sequence's recurrent state, and with the prefix cache the state it keeps
        // at its reply's last block boundary for its end snapshot (`PrefixCache::finish`).
        let held = if self.config.scheduler.kv.enabled {
            2
        } else {
            1
        };
        let states =
            held * facts.state_bytes_per_sequence * self.config.scheduler.max_running as u64;
        let budget = self.budget();
        let mode = match self.config.weights_mode {
            WeightsMode::Auto => {
                // The loader's rule, decided here so the estimate matches what loads; and
                // never expand past what the budget allows.
                let available = memory::system_memory().available;
                if facts.quantized
                    && auto_dequantizes(facts.weights_dequantized, available)
                    && facts.weights_native + facts.weights_dequantized <= budget
                    && facts.weights_dequantized + kv + states <= budget
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
            state_reserved_bytes: states,
            load_peak_bytes: peak,
        }
    }

    /// Memory counted for loaded (and still unloading) models.
    pub(super) fn accounted(models: &BTreeMap<String, Entry>) -> u64 {
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
    pub(super) async fn make_room(&self, id: &str, need: u64) -> Result<(), CoreError> {
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
            self.finish_unload(victim, Unload::Evicted(EvictReason::Budget))
                .await;
        }
        Ok(())
    }

    /// Stops the engine of a model already marked `Unloading`, waits until it has dropped
    /// the model, and marks it available.
    pub(super) async fn finish_unload(&self, served: Arc<Served>, why: Unload) {
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
        let (model, freed_bytes) = (served.id.clone(), served.plan.steady());
        match why {
            Unload::Manual => self.emit(EventKind::ModelUnloaded {
                model,
                reason: Some("manual".into()),
                freed_bytes,
            }),
            Unload::Evicted(reason) => {
                tracing::info!(model = %served.id, reason = reason.as_str(), "model evicted");
                self.emit(EventKind::ModelEvicted {
                    model,
                    reason,
                    freed_bytes,
                });
            }
        }
    }

    /// Unloads `id` if it is loaded and idle and not pinned (or `force_busy`: waits for its
    /// requests). Returns whether it was unloaded.
    pub(super) async fn evict(&self, id: &str, why: Unload) -> bool {
        let served = {
            let mut models = self.models.lock().unwrap();
            let Some(entry) = models.get_mut(id) else {
                return false;
            };
            let State::Loaded(s) = &entry.state else {
                return false;
            };
            if why != Unload::Manual && !is_idle(s) {
                return false;
            }
            let s = s.clone();
            entry.state = State::Unloading(s.clone());
            s
        };
        self.finish_unload(served, why).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity;
    use crate::memory::Amount;
    use crate::registry::RegistryConfig;
    use std::path::PathBuf;

    fn test_models() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/test-models")
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

    #[test]
    fn quantized_kv_is_counted_at_its_own_size() {
        let facts = integrity::check_model(&test_models().join("SmolLM2-135M-Instruct")).unwrap();
        let mut config = RegistryConfig {
            weights_mode: WeightsMode::Native,
            kv_reserve_tokens: 100,
            memory_budget: Some(Amount::Bytes(1 << 40)),
            ..RegistryConfig::default()
        };
        config.scheduler.kv_quant = Some(KvQuant::new(8, 64).unwrap());
        let registry = Registry::new(config);
        let float = facts.kv_bytes_per_token * 100;
        let eight = registry.plan(&facts, &ModelSettings::default());
        assert!(eight.kv_reserved_bytes < float * 6 / 10, "8-bit counted");
        let four = ModelSettings {
            kv_bits: Some(4),
            ..ModelSettings::default()
        };
        assert!(registry.plan(&facts, &four).kv_reserved_bytes < eight.kv_reserved_bytes);
        let off = ModelSettings {
            kv_bits: Some(0),
            ..ModelSettings::default()
        };
        assert_eq!(registry.plan(&facts, &off).kv_reserved_bytes, float);
        // A model that cannot store quantized KV (attention sinks) keeps it as computed, and
        // is counted so, whatever kv_bits says.
        let sinks = ModelFacts {
            kv_quant_refusal: Some("attention sinks"),
            ..facts.clone()
        };
        for settings in [ModelSettings::default(), four] {
            assert_eq!(registry.plan(&sinks, &settings).kv_reserved_bytes, float);
            assert_eq!(registry.kv_quant(&sinks, &settings), None);
        }
        // Nor can one whose head dimension the group size does not divide (SmolLM2's is 64).
        let wide_groups = ModelSettings {
            kv_group_size: Some(128),
            ..ModelSettings::default()
        };
        assert_eq!(facts.kv_head_dim, 64);
        assert_eq!(registry.kv_quant(&facts, &wide_groups), None);
        assert_eq!(registry.plan(&facts, &wide_groups).kv_reserved_bytes, float);
        let narrow_groups = ModelSettings {
            kv_group_size: Some(32),
            ..ModelSettings::default()
        };
        assert!(registry.kv_quant(&facts, &narrow_groups).is_some());
    }

    /// A model with sliding-window layers reserves, for a long context, full KV for its
    /// full-attention layers and about a window for the others (what the caches hold); a
    /// short reserve, or quantized KV, counts every position.
    #[test]
    fn windowed_layers_are_reserved_a_window_at_long_context() {
        let mut facts =
            integrity::check_model(&test_models().join("SmolLM2-135M-Instruct")).unwrap();
        let per_token = facts.kv_bytes_per_token;
        facts.windowed_kv = Some(crate::kv::cost::WindowedKv {
            bytes_per_token: per_token / 2,
            window: 1024,
        });
        facts.context_length = 100_000;
        let registry = Registry::new(RegistryConfig {
            weights_mode: WeightsMode::Native,
            memory_budget: Some(Amount::Bytes(1 << 40)),
            ..RegistryConfig::default()
        });
        let plan = registry.plan(&facts, &ModelSettings::default());
        let cost = registry.kv_cost(&facts, &ModelSettings::default());
        let span = cost.window_span as u64;
        // The window, the prefix cache's block of slack, a prefill chunk's room.
        assert_eq!(span, 1024 + 32 + 512);
        assert_eq!(
            plan.kv_reserved_bytes,
            per_token / 2 * 100_000 + per_token / 2 * span
        );
        // A lone long sequence may grow to the whole context within that reserve.
        assert_eq!(cost.positions_within(plan.kv_reserved_bytes), 100_000);
        let short = ModelSettings {
            context_length: Some(1500),
            ..ModelSettings::default()
        };
        assert_eq!(
            registry.plan(&facts, &short).kv_reserved_bytes,
            per_token * 1500
        );
        let quantized = ModelSettings {
            kv_bits: Some(8),
            ..ModelSettings::default()
        };
        let q = registry.kv_cost(&facts, &quantized);
        assert_eq!(q.window_span, 0, "quantized caches keep every position");
    }
}
