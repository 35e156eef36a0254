//! What the admin API may change while the daemon runs: pins, the default model, serving on/off and
//! the runtime settings.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;
use wuwei_api::{EventKind, Settings};

use crate::core::CoreError;
use crate::memory::{self, Amount};

use super::Registry;

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
            let model = id.to_string();
            self.emit(if pinned {
                EventKind::ModelPinned { model }
            } else {
                EventKind::ModelUnpinned { model }
            });
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
        self.emit(EventKind::DefaultChanged { model: id.into() });
        Ok(())
    }

    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn set_serving(&self, serving: bool) {
        if self.serving.swap(serving, Ordering::Relaxed) != serving {
            self.emit(EventKind::ServingChanged { serving });
        }
    }

    pub fn settings_snapshot(&self) -> Settings {
        let runtime = self.runtime.lock().unwrap();
        Settings {
            idle_ttl_secs: runtime.idle_ttl_secs,
            memory_budget: runtime.memory_budget.map(|a| a.to_string()),
            memory_reserve: runtime.memory_reserve.to_string(),
            memory_pressure_threshold: runtime.pressure_threshold.to_string(),
            kv_reserve_tokens: runtime.kv_reserve_tokens as u64,
            aliases: runtime.aliases.clone(),
            budget_bytes: memory::budget_bytes(
                runtime.memory_budget,
                runtime.memory_reserve,
                memory::models_memory_total(),
            ),
        }
    }

    /// Available system memory below which idle models are unloaded.
    pub fn pressure_threshold(&self) -> Amount {
        self.runtime.lock().unwrap().pressure_threshold
    }

    /// Changes runtime settings; all or nothing.
    pub fn update_settings(&self, change: RuntimeSettings) -> Result<Settings, CoreError> {
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
        self.emit(EventKind::SettingsChanged {
            settings: snapshot.clone(),
        });
        Ok(snapshot)
    }
}
