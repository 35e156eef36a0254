// The admin API's types (docs/ADMIN_API.md), generated from api/src/types.rs: do not edit.
// After changing the Rust types: WUWEI_WRITE_TS=1 cargo test -p wuwei-api typescript

export type Status = { serving: boolean, 
/**
 * `serving` or `stopped`.
 */
state: string, version: string, host: string, port: number, uptime_secs: number, 
/**
 * The daemon's process id (0 from a daemon too old to say): a new pid means it restarted.
 */
pid: number, 
/**
 * The folders searched for models.
 */
models_dirs: Array<string>, 
/**
 * What the models run on.
 */
device: DeviceStatus, memory: Memory, default_model: string | null, loaded: Array<LoadedStatus>, ssd_cache: SsdCache, };

export type DeviceStatus = { 
/**
 * `cpu`, `metal` or `cuda`.
 */
backend: string, name: string, 
/**
 * Memory the device offers models (Metal: the recommended working set; CUDA: device
 * memory); `null` on the CPU, where the budget comes from RAM.
 */
memory_bytes: number | null, 
/**
 * `checkpoint` (the model's own dtype, what GPUs run) or `float32` (the CPU's lever).
 */
activations: string, 
/**
 * The configured weights mode (`auto`, `native`, `dequantized`); each loaded model's
 * settled mode is in `loaded[].weights_mode`.
 */
weights: string, };

export type Memory = { system: SystemMemory, mlx: MlxMemory, 
/**
 * The models' memory budget.
 */
budget_bytes: number, 
/**
 * What loaded models are counted for (weights + reserved KV).
 */
counted_bytes: number, 
/**
 * Available memory below which idle models are unloaded.
 */
pressure_threshold_bytes: number, };

export type SystemMemory = { total_bytes: number, used_bytes: number, available_bytes: number, 
/**
 * `null` through the portable interface.
 */
wired_bytes: number | null, };

export type MlxMemory = { active_bytes: number, cache_bytes: number, peak_bytes: number, };

export type LoadedStatus = { id: string, memory_bytes: number, weights_bytes: number, 
/**
 * `native` or `dequantized`.
 */
weights_mode: string, kv_bytes: number, kv_reserved_bytes: number, 
/**
 * The format running sequences' KV and its prefix-cache blocks are stored in when
 * quantized (`kv_bits`), as `affine-q8g64` (bits and group size); `null`: as computed.
 */
kv_quantization: string | null, running: number, waiting: number, pinned: boolean, idle_ttl_secs: number, 
/**
 * Unix ms.
 */
last_used: number, 
/**
 * Unix ms.
 */
loaded_at: number, unloading: boolean, 
/**
 * The model's RAM tier of the KV prefix cache; `null` when prefix caching is off.
 */
prefix_cache: PrefixCache | null, };

export type PrefixCache = { 
/**
 * Token positions per block.
 */
block_size: number, 
/**
 * Blocks cached in RAM.
 */
blocks_used: number, 
/**
 * Of those, blocks held by running sequences.
 */
blocks_referenced: number, 
/**
 * Blocks that still fit the RAM budget.
 */
blocks_free: number, bytes: number, budget_bytes: number, evictions: number, 
/**
 * Admissions that looked up a prefix.
 */
queries: number, 
/**
 * Admissions that reused one.
 */
hits: number, 
/**
 * Prompt tokens reused from RAM.
 */
hit_tokens_ram: number, 
/**
 * Prompt tokens read back from the SSD tier.
 */
hit_tokens_ssd: number, };

export type SsdCache = { 
/**
 * Reads and writes happen now.
 */
enabled: boolean, 
/**
 * Whether this daemon has an SSD cache at all; the toggle means nothing while false.
 */
available: boolean, 
/**
 * The cache folder; `null` when not available.
 */
dir: string | null, 
/**
 * The startup index scan is still running (blocks not yet seen are misses).
 */
scanning: boolean, 
/**
 * Block files on disk.
 */
bytes_used: number, 
/**
 * The size cap in force.
 */
cap_bytes: number, 
/**
 * Block files on disk.
 */
blocks: number, 
/**
 * Blocks read back and served.
 */
hits: number, 
/**
 * Blocks looked up (missing from RAM) and not served from disk.
 */
misses: number, 
/**
 * hits / (hits + misses); `null` before the first lookup.
 */
hit_rate: number | null, 
/**
 * Blocks written.
 */
writes: number, 
/**
 * Not written: queue full, tier off, or no room on disk.
 */
writes_dropped: number, 
/**
 * Writes that failed (read-only folder, disk full…).
 */
write_errors: number, 
/**
 * Reads that failed on I/O.
 */
read_errors: number, 
/**
 * Reads that ran past the read timeout (recomputed instead).
 */
read_timeouts: number, 
/**
 * Files that failed the checksum or header checks: deleted, never served.
 */
corrupt_dropped: number, 
/**
 * Files removed by the size cap.
 */
evictions: number, 
/**
 * write_errors + read_errors.
 */
errors: number, 
/**
 * The most recent I/O error.
 */
last_error: string | null, };

export type RamCache = { blocks_used: number, blocks_free: number, bytes: number, queries: number, hits: number, 
/**
 * Prompt tokens reused, from RAM and from the SSD tier.
 */
hit_tokens: number, 
/**
 * Each loaded model's RAM tier, by model id.
 */
models: { [key in string]: PrefixCache }, };

export type CacheState = { ram: RamCache, 
/**
 * Reads and writes happen now.
 */
enabled: boolean, 
/**
 * Whether this daemon has an SSD cache at all; the toggle means nothing while false.
 */
available: boolean, 
/**
 * The cache folder; `null` when not available.
 */
dir: string | null, 
/**
 * The startup index scan is still running (blocks not yet seen are misses).
 */
scanning: boolean, 
/**
 * Block files on disk.
 */
bytes_used: number, 
/**
 * The size cap in force.
 */
cap_bytes: number, 
/**
 * Block files on disk.
 */
blocks: number, 
/**
 * Blocks read back and served.
 */
hits: number, 
/**
 * Blocks looked up (missing from RAM) and not served from disk.
 */
misses: number, 
/**
 * hits / (hits + misses); `null` before the first lookup.
 */
hit_rate: number | null, 
/**
 * Blocks written.
 */
writes: number, 
/**
 * Not written: queue full, tier off, or no room on disk.
 */
writes_dropped: number, 
/**
 * Writes that failed (read-only folder, disk full…).
 */
write_errors: number, 
/**
 * Reads that failed on I/O.
 */
read_errors: number, 
/**
 * Reads that ran past the read timeout (recomputed instead).
 */
read_timeouts: number, 
/**
 * Files that failed the checksum or header checks: deleted, never served.
 */
corrupt_dropped: number, 
/**
 * Files removed by the size cap.
 */
evictions: number, 
/**
 * write_errors + read_errors.
 */
errors: number, 
/**
 * The most recent I/O error.
 */
last_error: string | null, };

export type ModelList = { models: Array<ModelStatus>, };

export type ModelStatus = { id: string, path: string, 
/**
 * `mlx` or `gguf`.
 */
format: string, state: ModelState, 
/**
 * 0..1, only while loading.
 */
progress?: number, 
/**
 * Why it is incomplete or why its last load failed.
 */
reason?: string, size_bytes: number, estimated_memory_bytes: number, context_length: number, pinned: boolean, default: boolean, aliases: Array<string>, 
/**
 * The sampling a request gets for each setting it leaves out.
 */
sampling_defaults: SamplingDefaults, 
/**
 * What the model serves: text generation, or vectors (`POST /v1/embeddings`).
 */
kind: ModelKind, };

export type SamplingDefaults = { temperature?: number, top_p?: number, top_k?: number, min_p?: number, repetition_penalty?: number, };

export type ModelState = "available" | "loading" | "loaded" | "unloading" | "incomplete" | "failed";

export type ModelKind = "chat" | "embedding";

export type Settings = { 
/**
 * Default idle TTL: 0 unloads after each request, negative never.
 */
idle_ttl_secs: number, 
/**
 * `"24GiB"`, `"75%"` or bytes; `null`: total RAM minus the reserve.
 */
memory_budget: string | null, memory_reserve: string, memory_pressure_threshold: string, 
/**
 * KV counted per model, in tokens (0: its context length).
 */
kv_reserve_tokens: number, 
/**
 * Model-name patterns → model ids.
 */
aliases: { [key in string]: string }, 
/**
 * Read-only: the budget in bytes.
 */
budget_bytes: number, };

export type ModelAnswer = { ok: boolean, unloaded?: boolean, model: ModelStatus | null, };

export type DefaultAnswer = { ok: boolean, default_model: string, };

export type ChangedAnswer = { ok: boolean, changed: boolean, ssd_cache?: SsdCache, };

export type ServingAnswer = { ok?: boolean, serving: boolean, };

export type ShutdownAnswer = { ok: boolean, stopping: boolean, grace_secs: number, };

export type Event = { seq: number, 
/**
 * Unix ms.
 */
time: number, } & ({ "type": "model_loaded", model: string, memory_bytes: number, weights_mode: string | null, } | { "type": "model_unloaded", model: string, 
/**
 * `manual`, or `removed` when its files went away.
 */
reason: string | null, 
/**
 * Not sent for a `removed` model.
 */
freed_bytes?: number, } | { "type": "model_evicted", model: string, reason: EvictReason, freed_bytes: number, } | { "type": "load_failed", model: string, error: string, } | { "type": "model_discovered", model: string, 
/**
 * The reason, when it is incomplete.
 */
incomplete?: string, } | { "type": "model_removed", model: string, } | { "type": "model_pinned", model: string, } | { "type": "model_unpinned", model: string, } | { "type": "default_changed", model: string, } | { "type": "serving_changed", serving: boolean, } | { "type": "settings_changed", settings: Settings, } | { "type": "cache_toggled", enabled: boolean | null, ssd_cache: SsdCache | null, } | { "type": "cache_stats", ssd_cache: SsdCache | null, ram: RamCache | null, } | { "type": "lagged", missed: number, });

export type EventKind = { "type": "model_loaded", model: string, memory_bytes: number, weights_mode: string | null, } | { "type": "model_unloaded", model: string, 
/**
 * `manual`, or `removed` when its files went away.
 */
reason: string | null, 
/**
 * Not sent for a `removed` model.
 */
freed_bytes?: number, } | { "type": "model_evicted", model: string, reason: EvictReason, freed_bytes: number, } | { "type": "load_failed", model: string, error: string, } | { "type": "model_discovered", model: string, 
/**
 * The reason, when it is incomplete.
 */
incomplete?: string, } | { "type": "model_removed", model: string, } | { "type": "model_pinned", model: string, } | { "type": "model_unpinned", model: string, } | { "type": "default_changed", model: string, } | { "type": "serving_changed", serving: boolean, } | { "type": "settings_changed", settings: Settings, } | { "type": "cache_toggled", enabled: boolean | null, ssd_cache: SsdCache | null, } | { "type": "cache_stats", ssd_cache: SsdCache | null, ram: RamCache | null, } | { "type": "lagged", missed: number, };

export type EvictReason = "memory_pressure" | "budget" | "ttl";
