//! Metric names and the helpers that record them, in one place. The scheduler calls the
//! `record_*`/`set_*` helpers; `/metrics` renders them through the Prometheus exporter.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests being decoded (gauge, label `model`).
pub const REQUESTS_RUNNING: &str = "wuwei_requests_running";
/// Requests queued for a decoding slot (gauge, label `model`).
pub const REQUESTS_WAITING: &str = "wuwei_requests_waiting";
/// Prompt tokens processed (counter, label `model`).
pub const PROMPT_TOKENS: &str = "wuwei_prompt_tokens_total";
/// Prompt tokens whose KV came from the prefix cache (counter, label `model`).
pub const CACHED_PROMPT_TOKENS: &str = "wuwei_cached_prompt_tokens_total";
/// Tokens generated (counter, label `model`).
pub const GENERATION_TOKENS: &str = "wuwei_generation_tokens_total";
/// Seconds from submission to the first generated token (histogram, label `model`).
pub const TIME_TO_FIRST_TOKEN: &str = "wuwei_time_to_first_token_seconds";
/// Seconds between consecutive generated tokens of one request (histogram, label `model`).
pub const INTER_TOKEN_LATENCY: &str = "wuwei_inter_token_latency_seconds";
/// Sequences in one decoding step (histogram, label `model`).
pub const BATCH_SIZE: &str = "wuwei_batch_size";
/// Bytes held by the KV caches of running sequences (gauge, label `model`).
pub const KV_CACHE_BYTES: &str = "wuwei_kv_cache_bytes";
/// Fraction of the KV cache in use, 0..1 (gauge, label `model`).
pub const KV_CACHE_USAGE: &str = "wuwei_kv_cache_usage_ratio";
/// Prefix-cache lookups at admission (counter, label `model`).
pub const PREFIX_QUERIES: &str = "wuwei_prefix_cache_queries_total";
/// Lookups that reused at least one block (counter, label `model`).
pub const PREFIX_HITS: &str = "wuwei_prefix_cache_hits_total";
/// Prompt tokens reused, by tier (counter, labels `model`, `tier` = `ram` | `ssd`).
pub const PREFIX_HIT_TOKENS: &str = "wuwei_prefix_cache_hit_tokens_total";
/// KV blocks in the RAM pool (gauge, label `model`).
pub const KV_BLOCKS_USED: &str = "wuwei_kv_blocks_used";
/// KV blocks that still fit in the RAM budget (gauge, label `model`).
pub const KV_BLOCKS_FREE: &str = "wuwei_kv_blocks_free";
/// KV blocks evicted from RAM (counter, label `model`).
pub const KV_BLOCK_EVICTIONS: &str = "wuwei_kv_block_evictions_total";
/// SSD tier: blocks written (counter).
pub const SSD_WRITES: &str = "wuwei_kv_ssd_writes_total";
/// SSD tier: writes that failed (read-only folder, disk full…) (counter).
pub const SSD_WRITE_ERRORS: &str = "wuwei_kv_ssd_write_errors_total";
/// SSD tier: blocks dropped because the write queue was full or the tier was off (counter).
pub const SSD_DROPS: &str = "wuwei_kv_ssd_dropped_total";
/// SSD tier: blocks read back on a hit (counter).
pub const SSD_READ_HITS: &str = "wuwei_kv_ssd_read_blocks_total";
/// SSD tier: blocks looked up on admission, i.e. missing from RAM (counter).
pub const SSD_LOOKUPS: &str = "wuwei_kv_ssd_lookup_blocks_total";
/// SSD tier: reads that failed or ran past the deadline (counter).
pub const SSD_READ_FAILURES: &str = "wuwei_kv_ssd_read_failures_total";
/// SSD tier: the part of the read failures that ran past the deadline (counter).
pub const SSD_READ_TIMEOUTS: &str = "wuwei_kv_ssd_read_timeouts_total";
/// SSD tier: files rejected by the checksum or header checks, deleted (counter).
pub const SSD_CHECKSUM_FAILURES: &str = "wuwei_kv_ssd_checksum_failures_total";
/// SSD tier: files evicted by the size cap (counter).
pub const SSD_EVICTIONS: &str = "wuwei_kv_ssd_evictions_total";
/// SSD tier: bytes on disk (gauge).
pub const SSD_BYTES: &str = "wuwei_kv_ssd_bytes";
/// SSD tier: 1 when on (gauge).
pub const SSD_ENABLED: &str = "wuwei_kv_ssd_enabled";
/// Generations cancelled (client gone or shutdown) (counter, label `model`).
pub const CANCELLATIONS: &str = "wuwei_cancellations_total";
pub const PREEMPTIONS: &str = "wuwei_preemptions_total";
/// Finished generations by reason (counter, labels `model`, `reason`).
pub const GENERATIONS_FINISHED: &str = "wuwei_generations_finished_total";
/// HTTP requests by route and status (counter, labels `path`, `method`, `status`).
pub const HTTP_REQUESTS: &str = "wuwei_http_requests_total";
/// HTTP request duration until the response head (histogram, label `path`).
pub const HTTP_REQUEST_DURATION: &str = "wuwei_http_request_duration_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    [
        (TIME_TO_FIRST_TOKEN, LATENCY_BUCKETS),
        (INTER_TOKEN_LATENCY, LATENCY_BUCKETS),
        (HTTP_REQUEST_DURATION, LATENCY_BUCKETS),
        (BATCH_SIZE, BATCH_BUCKETS),
    ]
    .into_iter()
    .fold(builder, |b, (name, buckets)| {
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .expect("bucket lists are non-empty constants")
    })
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle. If another
/// recorder is already installed (embedding), metrics render empty rather than failing.
pub fn prometheus_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| match builder().install_recorder() {
            Ok(handle) => {
                describe();
                handle
            }
            Err(err) => {
                tracing::warn!("metrics recorder not installed: {err}");
                builder().build_recorder().handle()
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(REQUESTS_RUNNING, "Requests being decoded");
    describe_gauge!(REQUESTS_WAITING, "Requests waiting for a decoding slot");
    describe_counter!(PROMPT_TOKENS, Unit::Count, "Prompt tokens processed");
    describe_counter!(
        CACHED_PROMPT_TOKENS,
        Unit::Count,
        "Prompt tokens served from the prefix cache"
    );
    describe_counter!(GENERATION_TOKENS, Unit::Count, "Tokens generated");
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from submission to the first token"
    );
    describe_histogram!(
        INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time between consecutive tokens"
    );
    describe_histogram!(BATCH_SIZE, "Sequences per decoding step");
    describe_gauge!(KV_CACHE_USAGE, "Fraction of the KV cache in use");
    describe_counter!(CANCELLATIONS, Unit::Count, "Generations cancelled");
    describe_counter!(
        PREEMPTIONS,
        Unit::Count,
        "Running sequences paused (KV freed, recomputed later) because the batch outgrew the KV budget"
    );
    describe_counter!(GENERATIONS_FINISHED, Unit::Count, "Generations finished");
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests by route and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP time to response head"
    );
}

pub fn set_requests_running(model: &str, n: usize) {
    gauge!(REQUESTS_RUNNING, "model" => model.to_string()).set(n as f64);
}

pub fn set_requests_waiting(model: &str, n: usize) {
    gauge!(REQUESTS_WAITING, "model" => model.to_string()).set(n as f64);
}

pub fn add_prompt_tokens(model: &str, tokens: usize, cached: usize) {
    counter!(PROMPT_TOKENS, "model" => model.to_string()).increment(tokens as u64);
    counter!(CACHED_PROMPT_TOKENS, "model" => model.to_string()).increment(cached as u64);
}

pub fn add_generation_tokens(model: &str, tokens: usize) {
    counter!(GENERATION_TOKENS, "model" => model.to_string()).increment(tokens as u64);
}

pub fn record_time_to_first_token(model: &str, elapsed: Duration) {
    histogram!(TIME_TO_FIRST_TOKEN, "model" => model.to_string()).record(elapsed.as_secs_f64());
}

pub fn record_inter_token_latency(model: &str, elapsed: Duration) {
    histogram!(INTER_TOKEN_LATENCY, "model" => model.to_string()).record(elapsed.as_secs_f64());
}

pub fn record_batch_size(model: &str, sequences: usize) {
    histogram!(BATCH_SIZE, "model" => model.to_string()).record(sequences as f64);
}

pub fn set_kv_cache_usage(model: &str, ratio: f64) {
    gauge!(KV_CACHE_USAGE, "model" => model.to_string()).set(ratio);
}

pub fn set_kv_cache_bytes(model: &str, bytes: usize) {
    gauge!(KV_CACHE_BYTES, "model" => model.to_string()).set(bytes as f64);
}

/// One admission lookup that reused `cached` prompt tokens, `from_ssd` of them read from disk.
pub fn record_prefix_lookup(model: &str, cached: usize, from_ssd: usize) {
    counter!(PREFIX_QUERIES, "model" => model.to_string()).increment(1);
    if cached > 0 {
        counter!(PREFIX_HITS, "model" => model.to_string()).increment(1);
    }
    counter!(PREFIX_HIT_TOKENS, "model" => model.to_string(), "tier" => "ram")
        .increment((cached - from_ssd) as u64);
    counter!(PREFIX_HIT_TOKENS, "model" => model.to_string(), "tier" => "ssd")
        .increment(from_ssd as u64);
}

pub fn add_cancellation(model: &str) {
    counter!(CANCELLATIONS, "model" => model.to_string()).increment(1);
}

pub fn add_preemption(model: &str) {
    counter!(PREEMPTIONS, "model" => model.to_string()).increment(1);
}

/// `reason` is a short label such as `stop`, `length`, `tool_calls`, `cancelled`, `error`.
pub fn add_generation_finished(model: &str, reason: &'static str) {
    counter!(GENERATIONS_FINISHED, "model" => model.to_string(), "reason" => reason).increment(1);
}

pub fn record_http_request(path: &str, method: &str, status: u16, elapsed: Duration) {
    counter!(
        HTTP_REQUESTS,
        "path" => path.to_string(),
        "method" => method.to_string(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!(HTTP_REQUEST_DURATION, "path" => path.to_string()).record(elapsed.as_secs_f64());
}
