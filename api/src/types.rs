//! The admin API's JSON as the app reads it (docs/ADMIN_API.md).
//!
//! Every struct takes `#[serde(default)]` and ignores unknown fields: a newer daemon may add
//! fields or omit ones it no longer reports, and the menu-bar app must keep working against it.
//! Strings that name a closed set (a model's state, an event's type) are kept open-ended for
//! the same reason: an unknown value deserializes to `Other`/`Unknown` instead of failing.

use serde::{Deserialize, Serialize};

/// `GET /admin/api/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub serving: bool,
    /// `serving` or `stopped`.
    pub state: String,
    pub version: String,
    pub host: String,
    pub port: u16,
    pub uptime_secs: f64,
    /// The daemon's process id (0 from a daemon too old to say): a new pid means it restarted.
    pub pid: u32,
    /// The folders searched for models.
    pub models_dirs: Vec<String>,
    pub memory: Memory,
    pub default_model: Option<String>,
    pub loaded: Vec<LoadedStatus>,
    pub ssd_cache: SsdCache,
    /// What the models run on.
    pub device: DeviceStatus,
}

/// `status.device`: the device MLX computes on and the precision models run in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceStatus {
    /// `cpu`, `metal` or `cuda`.
    pub backend: String,
    pub name: String,
    /// Memory the device offers models (Metal: the recommended working set; CUDA: device
    /// memory); `null` on the CPU, where the budget comes from RAM.
    pub memory_bytes: Option<u64>,
    /// `checkpoint` (the model's own dtype, what GPUs run) or `float32` (the CPU's lever).
    pub activations: String,
    /// The configured weights mode (`auto`, `native`, `dequantized`); each loaded model's
    /// settled mode is in `loaded[].weights_mode`.
    pub weights: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Memory {
    pub system: SystemMemory,
    pub mlx: MlxMemory,
    /// The models' memory budget.
    pub budget_bytes: u64,
    /// What loaded models are counted for (weights + reserved KV).
    pub counted_bytes: u64,
    /// Available memory below which idle models are unloaded.
    pub pressure_threshold_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemMemory {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    /// `null` through the portable interface.
    pub wired_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlxMemory {
    pub active_bytes: u64,
    pub cache_bytes: u64,
    pub peak_bytes: u64,
}

/// One entry of `status.loaded`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadedStatus {
    pub id: String,
    pub memory_bytes: u64,
    pub weights_bytes: u64,
    /// `native` or `dequantized`.
    pub weights_mode: String,
    pub kv_bytes: u64,
    pub kv_reserved_bytes: u64,
    pub running: u64,
    pub waiting: u64,
    pub pinned: bool,
    pub idle_ttl_secs: i64,
    /// Unix ms.
    pub last_used: u64,
    /// Unix ms.
    pub loaded_at: u64,
    pub unloading: bool,
}

/// `status.ssd_cache` and `GET /admin/api/cache`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SsdCache {
    pub enabled: bool,
    /// Whether this daemon has an SSD cache at all; the toggle means nothing while false.
    pub available: bool,
    pub bytes_used: u64,
    pub cap_bytes: u64,
    pub hit_rate: Option<f64>,
}

/// `GET /admin/api/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelList {
    pub models: Vec<ModelStatus>,
}

/// A discovered model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelStatus {
    pub id: String,
    pub path: String,
    /// `mlx` or `gguf`.
    pub format: String,
    pub state: ModelState,
    /// 0..1, only while loading.
    pub progress: Option<f64>,
    /// Why it is incomplete or why its last load failed.
    pub reason: Option<String>,
    pub size_bytes: u64,
    pub estimated_memory_bytes: u64,
    pub context_length: u64,
    pub pinned: bool,
    pub default: bool,
    pub aliases: Vec<String>,
}

/// A model's state; values this app does not know yet read as `Other`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    #[default]
    Available,
    Loading,
    Loaded,
    Unloading,
    Incomplete,
    Failed,
    #[serde(other)]
    Other,
}

impl ModelState {
    /// Whether the model can be loaded (and so chosen as the default or pinned).
    pub fn usable(self) -> bool {
        !matches!(self, ModelState::Incomplete)
    }
}

/// `POST /admin/api/settings` and friends answer the settings object; the app only reads the
/// budget from it, the rest is kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub idle_ttl_secs: i64,
    pub memory_budget: Option<String>,
    pub budget_bytes: u64,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// One admin event (`GET /admin/api/events`): `{"type", "seq", "time", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default)]
    pub seq: u64,
    /// Unix ms.
    #[serde(default)]
    pub time: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why a model was evicted (`model_evicted.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    MemoryPressure,
    Budget,
    Ttl,
    #[serde(other)]
    Other,
}

/// The event types of docs/ADMIN_API.md. Unknown types (a newer daemon) read as `Unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    ModelLoaded {
        model: String,
        #[serde(default)]
        memory_bytes: u64,
        #[serde(default)]
        weights_mode: Option<String>,
    },
    ModelUnloaded {
        model: String,
        /// `manual`, or `removed` when its files went away.
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        freed_bytes: u64,
    },
    ModelEvicted {
        model: String,
        reason: EvictReason,
        #[serde(default)]
        freed_bytes: u64,
    },
    LoadFailed {
        model: String,
        #[serde(default)]
        error: String,
    },
    ModelDiscovered {
        model: String,
        /// The reason, when it is incomplete.
        #[serde(default)]
        incomplete: Option<String>,
    },
    ModelRemoved {
        model: String,
    },
    ModelPinned {
        model: String,
    },
    ModelUnpinned {
        model: String,
    },
    DefaultChanged {
        model: String,
    },
    ServingChanged {
        serving: bool,
    },
    SettingsChanged {
        #[serde(default)]
        settings: serde_json::Value,
    },
    /// The SSD tier was switched on or off (`ssd_cache`: the tier after the switch).
    CacheToggled {
        #[serde(default)]
        enabled: Option<bool>,
        #[serde(default)]
        ssd_cache: Option<SsdCache>,
    },
    /// Live cache numbers, at most once a second while they change (not replayed).
    CacheStats {
        #[serde(default)]
        ssd_cache: Option<SsdCache>,
    },
    /// The client fell behind and missed `missed` events: refetch the state.
    Lagged {
        #[serde(default)]
        missed: u64,
    },
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_from_the_documented_example() {
        let s: Status = serde_json::from_value(json!({
            "serving": true, "state": "serving", "version": "0.1.0", "host": "127.0.0.1",
            "port": 8686, "uptime_secs": 123.4,
            "memory": {
                "system": {"total_bytes": 100, "used_bytes": 60, "available_bytes": 40, "wired_bytes": null},
                "mlx": {"active_bytes": 1, "cache_bytes": 2, "peak_bytes": 3},
                "budget_bytes": 80, "counted_bytes": 10, "pressure_threshold_bytes": 5
            },
            "default_model": "org/name",
            "loaded": [{
                "id": "org/name", "memory_bytes": 10, "weights_bytes": 8, "weights_mode": "native",
                "kv_bytes": 1, "kv_reserved_bytes": 2, "running": 0, "waiting": 0, "pinned": false,
                "idle_ttl_secs": -1, "last_used": 1700000000000u64, "loaded_at": 1700000000000u64,
                "unloading": false
            }],
            "ssd_cache": {"enabled": false, "available": false, "bytes_used": 0, "cap_bytes": 0, "hit_rate": null}
        }))
        .unwrap();
        assert!(s.serving);
        assert_eq!(s.port, 8686);
        assert_eq!(s.memory.budget_bytes, 80);
        assert_eq!(s.memory.system.wired_bytes, None);
        assert_eq!(s.loaded[0].id, "org/name");
        assert_eq!(s.loaded[0].idle_ttl_secs, -1);
        assert_eq!(s.default_model.as_deref(), Some("org/name"));
        assert!(!s.ssd_cache.available);
    }

    #[test]
    fn missing_and_unknown_fields_are_tolerated() {
        // A daemon that reports less, and more, than this app knows.
        let s: Status = serde_json::from_value(json!({
            "serving": false,
            "brand_new": {"x": 1},
            "memory": {"budget_bytes": 7, "gpu": {"whatever": true}},
            "ssd_cache": {"enabled": true, "available": true, "tier": "nvme"}
        }))
        .unwrap();
        assert!(!s.serving);
        assert_eq!(s.port, 0);
        assert_eq!(s.memory.budget_bytes, 7);
        assert!(s.ssd_cache.enabled && s.ssd_cache.available);
        assert!(s.loaded.is_empty());
    }

    #[test]
    fn model_states_including_unknown_ones() {
        let list: ModelList = serde_json::from_value(json!({"models": [
            {"id": "a", "state": "incomplete", "reason": "no tokenizer", "format": "gguf"},
            {"id": "b", "state": "loading", "progress": 0.5},
            {"id": "c", "state": "hibernating"},
            {"id": "d"}
        ]}))
        .unwrap();
        let states: Vec<_> = list.models.iter().map(|m| m.state).collect();
        assert_eq!(
            states,
            [
                ModelState::Incomplete,
                ModelState::Loading,
                ModelState::Other,
                ModelState::Available
            ]
        );
        assert_eq!(list.models[0].reason.as_deref(), Some("no tokenizer"));
        assert!(!list.models[0].state.usable());
        assert!(list.models[2].state.usable());
    }

    #[test]
    fn events_of_every_documented_type() {
        let cases = [
            (
                json!({"type": "model_evicted", "seq": 3, "time": 9, "model": "m", "reason": "memory_pressure", "freed_bytes": 5}),
                EventKind::ModelEvicted {
                    model: "m".into(),
                    reason: EvictReason::MemoryPressure,
                    freed_bytes: 5,
                },
            ),
            (
                json!({"type": "load_failed", "seq": 1, "model": "m", "error": "does not fit"}),
                EventKind::LoadFailed {
                    model: "m".into(),
                    error: "does not fit".into(),
                },
            ),
            (
                json!({"type": "serving_changed", "seq": 1, "serving": false}),
                EventKind::ServingChanged { serving: false },
            ),
            (
                json!({"type": "model_discovered", "model": "x", "incomplete": "missing shard"}),
                EventKind::ModelDiscovered {
                    model: "x".into(),
                    incomplete: Some("missing shard".into()),
                },
            ),
            (
                json!({"type": "model_unloaded", "model": "x", "reason": "removed"}),
                EventKind::ModelUnloaded {
                    model: "x".into(),
                    reason: Some("removed".into()),
                    freed_bytes: 0,
                },
            ),
            (
                json!({"type": "cache_toggled", "seq": 5, "enabled": true,
                       "ssd_cache": {"enabled": true, "available": true, "dir": "/k", "bytes_used": 7}}),
                EventKind::CacheToggled {
                    enabled: Some(true),
                    ssd_cache: Some(SsdCache {
                        enabled: true,
                        available: true,
                        bytes_used: 7,
                        ..Default::default()
                    }),
                },
            ),
            (
                json!({"type": "cache_stats", "seq": 6, "ssd_cache": {"hit_rate": 0.5}, "ram": {"hits": 1}}),
                EventKind::CacheStats {
                    ssd_cache: Some(SsdCache {
                        hit_rate: Some(0.5),
                        ..Default::default()
                    }),
                },
            ),
            (
                json!({"type": "lagged", "seq": 0, "missed": 12}),
                EventKind::Lagged { missed: 12 },
            ),
            (
                json!({"type": "model_evicted", "model": "m", "reason": "swap"}),
                EventKind::ModelEvicted {
                    model: "m".into(),
                    reason: EvictReason::Other,
                    freed_bytes: 0,
                },
            ),
            (
                json!({"type": "something_new", "seq": 4, "model": "m", "extra": [1, 2]}),
                EventKind::Unknown,
            ),
        ];
        for (value, kind) in cases {
            let event: Event = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(event.kind, kind, "{value}");
        }
        let e: Event = serde_json::from_value(
            json!({"type": "default_changed", "seq": 42, "time": 1700, "model": "m"}),
        )
        .unwrap();
        assert_eq!((e.seq, e.time), (42, 1700));
    }
}
