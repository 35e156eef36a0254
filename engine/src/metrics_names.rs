//! Names of the Prometheus metrics the engine records (through the `metrics` crate; the HTTP
//! layer installs the exporter and serves them at `/metrics`).

pub const RUNNING: &str = "wuwei_requests_running";
pub const WAITING: &str = "wuwei_requests_waiting";
pub const PROMPT_TOKENS: &str = "wuwei_prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "wuwei_generation_tokens_total";
pub const TTFT_SECONDS: &str = "wuwei_time_to_first_token_seconds";
pub const ITL_SECONDS: &str = "wuwei_inter_token_latency_seconds";
pub const BATCH_SIZE: &str = "wuwei_batch_size";
pub const KV_BYTES: &str = "wuwei_kv_cache_bytes";
pub const CANCELLED: &str = "wuwei_requests_cancelled_total";
