//! The admin API's JSON (docs/ADMIN_API.md): the one schema of it. The daemon serialises
//! these types, the menu-bar app and `wuwei ls|ps|…` read them, and the dashboard's
//! TypeScript types (`ui/src/api-types.ts`) are generated from them.
//!
//! Every struct takes `#[serde(default)]` and ignores unknown fields: a newer daemon may add
//! fields or omit ones it no longer reports, and the menu-bar app must keep working against it.
//! Strings that name a closed set (a model's state, an event's type) are kept open-ended for
//! the same reason: an unknown value deserializes to `Other`/`Unknown` instead of failing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /admin/api/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
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
    /// What the models run on.
    pub device: DeviceStatus,
    pub memory: Memory,
    pub default_model: Option<String>,
    pub loaded: Vec<LoadedStatus>,
    pub ssd_cache: SsdCache,
}

/// `status.device`: the device MLX computes on and the precision models run in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
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
#[cfg_attr(test, derive(ts_rs::TS))]
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
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct SystemMemory {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    /// `null` through the portable interface.
    pub wired_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct MlxMemory {
    pub active_bytes: u64,
    pub cache_bytes: u64,
    pub peak_bytes: u64,
}

/// One entry of `status.loaded`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct LoadedStatus {
    pub id: String,
    pub memory_bytes: u64,
    pub weights_bytes: u64,
    /// `native` or `dequantized`.
    pub weights_mode: String,
    pub kv_bytes: u64,
    pub kv_reserved_bytes: u64,
    /// The format running sequences' KV and its prefix-cache blocks are stored in when
    /// quantized (`kv_bits`), as `affine-q8g64` (bits and group size); `null`: as computed.
    pub kv_quantization: Option<String>,
    pub running: u64,
    pub waiting: u64,
    pub pinned: bool,
    pub idle_ttl_secs: i64,
    /// Unix ms.
    pub last_used: u64,
    /// Unix ms.
    pub loaded_at: u64,
    pub unloading: bool,
    /// The model's RAM tier of the KV prefix cache; `null` when prefix caching is off.
    pub prefix_cache: Option<PrefixCache>,
}

/// One model's RAM tier of the KV prefix cache (`status.loaded[].prefix_cache`), since it
/// loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct PrefixCache {
    /// Token positions per block.
    pub block_size: u64,
    /// Blocks cached in RAM.
    pub blocks_used: u64,
    /// Of those, blocks held by running sequences.
    pub blocks_referenced: u64,
    /// Blocks that still fit the RAM budget.
    pub blocks_free: u64,
    pub bytes: u64,
    pub budget_bytes: u64,
    pub evictions: u64,
    /// Admissions that looked up a prefix.
    pub queries: u64,
    /// Admissions that reused one.
    pub hits: u64,
    /// Prompt tokens reused from RAM.
    pub hit_tokens_ram: u64,
    /// Prompt tokens read back from the SSD tier.
    pub hit_tokens_ssd: u64,
}

/// The SSD tier of the KV prefix cache (one store shared by every model): `status.ssd_cache`,
/// `GET /admin/api/cache` and the cache events. Counters run since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct SsdCache {
    /// Reads and writes happen now.
    pub enabled: bool,
    /// Whether this daemon has an SSD cache at all; the toggle means nothing while false.
    pub available: bool,
    /// The cache folder; `null` when not available.
    pub dir: Option<String>,
    /// The startup index scan is still running (blocks not yet seen are misses).
    pub scanning: bool,
    /// Block files on disk.
    pub bytes_used: u64,
    /// The size cap in force.
    pub cap_bytes: u64,
    /// Block files on disk.
    pub blocks: u64,
    /// Blocks read back and served.
    pub hits: u64,
    /// Blocks looked up (missing from RAM) and not served from disk.
    pub misses: u64,
    /// hits / (hits + misses); `null` before the first lookup.
    pub hit_rate: Option<f64>,
    /// Blocks written.
    pub writes: u64,
    /// Not written: queue full, tier off, or no room on disk.
    pub writes_dropped: u64,
    /// Writes that failed (read-only folder, disk full…).
    pub write_errors: u64,
    /// Reads that failed on I/O.
    pub read_errors: u64,
    /// Reads that ran past the read timeout (recomputed instead).
    pub read_timeouts: u64,
    /// Files that failed the checksum or header checks: deleted, never served.
    pub corrupt_dropped: u64,
    /// Files removed by the size cap.
    pub evictions: u64,
    /// write_errors + read_errors.
    pub errors: u64,
    /// The most recent I/O error.
    pub last_error: Option<String>,
}

/// The RAM tier of every loaded model, with totals (`GET /admin/api/cache`'s `ram`, and the
/// `cache_stats` event's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct RamCache {
    pub blocks_used: u64,
    pub blocks_free: u64,
    pub bytes: u64,
    pub queries: u64,
    pub hits: u64,
    /// Prompt tokens reused, from RAM and from the SSD tier.
    pub hit_tokens: u64,
    /// Each loaded model's RAM tier, by model id.
    pub models: BTreeMap<String, PrefixCache>,
}

/// `GET /admin/api/cache`: the SSD tier, and the RAM tier of every loaded model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct CacheState {
    #[serde(flatten)]
    pub ssd: SsdCache,
    pub ram: RamCache,
}

/// `GET /admin/api/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ModelList {
    pub models: Vec<ModelStatus>,
}

/// A discovered model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ModelStatus {
    pub id: String,
    pub path: String,
    /// `mlx` or `gguf`.
    pub format: String,
    pub state: ModelState,
    /// 0..1, only while loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub progress: Option<f64>,
    /// Why it is incomplete or why its last load failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub reason: Option<String>,
    pub size_bytes: u64,
    pub estimated_memory_bytes: u64,
    pub context_length: u64,
    pub pinned: bool,
    pub default: bool,
    pub aliases: Vec<String>,
    /// The sampling a request gets for each setting it leaves out.
    pub sampling_defaults: SamplingDefaults,
    /// What the model serves: text generation, or vectors (`POST /v1/embeddings`).
    pub kind: ModelKind,
}

/// What a model serves; values this app does not know yet read as `Other`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Chat and text completions, the Messages and Responses APIs.
    #[default]
    Chat,
    /// Embeddings only (`POST /v1/embeddings`).
    Embedding,
    #[serde(other)]
    // Not a value on the wire: what this build reads for values it does not know.
    #[cfg_attr(test, ts(skip))]
    Other,
}

/// A model's default sampling: its `[models."id"]` settings, else its
/// `generation_config.json`'s recommendation. An absent setting falls to the API's default
/// (temperature 1, top_p 1, no top-k, min-p or repetition penalty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct SamplingDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub min_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub repetition_penalty: Option<f64>,
}

/// A model's state; values this app does not know yet read as `Other`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
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
    // Not a value on the wire: what this build reads for values it does not know.
    #[cfg_attr(test, ts(skip))]
    Other,
}

impl ModelState {
    /// The wire name (`available`, `loading`, …; `other` for states this build does not know).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Available => "available",
            ModelState::Loading => "loading",
            ModelState::Loaded => "loaded",
            ModelState::Unloading => "unloading",
            ModelState::Incomplete => "incomplete",
            ModelState::Failed => "failed",
            ModelState::Other => "other",
        }
    }

    /// Whether the model can be loaded (and so chosen as the default or pinned).
    pub fn usable(self) -> bool {
        !matches!(self, ModelState::Incomplete)
    }
}

/// The runtime settings: `GET /admin/api/settings`, the answer of `PATCH` (or `POST`) to it,
/// and the `settings_changed` event's `settings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct Settings {
    /// Default idle TTL: 0 unloads after each request, negative never.
    pub idle_ttl_secs: i64,
    /// `"24GiB"`, `"75%"` or bytes; `null`: total RAM minus the reserve.
    pub memory_budget: Option<String>,
    pub memory_reserve: String,
    pub memory_pressure_threshold: String,
    /// KV counted per model, in tokens (0: its context length).
    pub kv_reserve_tokens: u64,
    /// Model-name patterns → model ids.
    pub aliases: BTreeMap<String, String>,
    /// Read-only: the budget in bytes.
    pub budget_bytes: u64,
}

/// `POST /admin/api/models/{load,unload,pin,unpin}`: the model after the action (`unloaded`
/// only from `unload`: whether it was loaded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ModelAnswer {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub unloaded: Option<bool>,
    pub model: Option<ModelStatus>,
}

/// `POST /admin/api/models/default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct DefaultAnswer {
    pub ok: bool,
    pub default_model: String,
}

/// `POST /admin/api/models/rescan` (`changed`: models were found, changed or gone) and
/// `POST /admin/api/cache` (`changed`: the switch moved; `ssd_cache`: the tier after it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ChangedAnswer {
    pub ok: bool,
    pub changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub ssd_cache: Option<SsdCache>,
}

/// `GET /admin/api/serving` (without `ok`) and `POST /admin/api/serving/{start,stop}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ServingAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub ok: Option<bool>,
    pub serving: bool,
}

/// `POST /admin/api/shutdown` (202): the daemon drains for `grace_secs`, then exits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(default)]
pub struct ShutdownAnswer {
    pub ok: bool,
    pub stopping: bool,
    pub grace_secs: u64,
}

/// One admin event (`GET /admin/api/events`): `{"type", "seq", "time", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
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
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    MemoryPressure,
    Budget,
    Ttl,
    #[serde(other)]
    // Not a value on the wire: what this build reads for values it does not know.
    #[cfg_attr(test, ts(skip))]
    Other,
}

impl EvictReason {
    /// The wire name (`memory_pressure`, `budget`, `ttl`).
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::MemoryPressure => "memory_pressure",
            EvictReason::Budget => "budget",
            EvictReason::Ttl => "ttl",
            EvictReason::Other => "other",
        }
    }
}

/// The event types of docs/ADMIN_API.md. Unknown types (a newer daemon) read as `Unknown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
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
        /// Not sent for a `removed` model.
        #[serde(default, skip_serializing_if = "is_zero")]
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
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
        settings: Settings,
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
        #[serde(default)]
        ram: Option<RamCache>,
    },
    /// The client fell behind and missed `missed` events: refetch the state.
    Lagged {
        #[serde(default)]
        missed: u64,
    },
    #[serde(other)]
    // Not a value on the wire: what this build reads for values it does not know.
    #[cfg_attr(test, ts(skip))]
    Unknown,
}

impl EventKind {
    /// The event's `type`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ModelLoaded { .. } => "model_loaded",
            EventKind::ModelUnloaded { .. } => "model_unloaded",
            EventKind::ModelEvicted { .. } => "model_evicted",
            EventKind::LoadFailed { .. } => "load_failed",
            EventKind::ModelDiscovered { .. } => "model_discovered",
            EventKind::ModelRemoved { .. } => "model_removed",
            EventKind::ModelPinned { .. } => "model_pinned",
            EventKind::ModelUnpinned { .. } => "model_unpinned",
            EventKind::DefaultChanged { .. } => "default_changed",
            EventKind::ServingChanged { .. } => "serving_changed",
            EventKind::SettingsChanged { .. } => "settings_changed",
            EventKind::CacheToggled { .. } => "cache_toggled",
            EventKind::CacheStats { .. } => "cache_stats",
            EventKind::Lagged { .. } => "lagged",
            EventKind::Unknown => "unknown",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
                        dir: Some("/k".into()),
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
                    ram: Some(RamCache {
                        hits: 1,
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
