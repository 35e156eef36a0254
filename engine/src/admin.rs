//! The admin API under `/admin/api` (see docs/ADMIN_API.md): what the daemon is doing, the
//! models it knows, actions on them, and a server-sent-events stream of state changes. The
//! menu-bar app, the dashboard and the `wuwei ls|ps|load|…` commands are its clients. It sits
//! behind the same API key as `/v1`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use crate::config::Config;
use crate::memory;
use crate::registry::{validate_id, Registry, RuntimeSettings};
use crate::server::errors::{ApiError, ApiJson};
use crate::server::sse::{keep_alive_frame, sse_response};

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    host: Arc<str>,
    port: u16,
    /// Notified by `POST /shutdown`; the server stops as on SIGTERM.
    stop: Arc<Notify>,
    grace_secs: u64,
}

/// The admin routes, to be nested at `/admin/api` (works with any outer router state).
pub fn router<S: Clone + Send + Sync + 'static>(
    registry: Arc<Registry>,
    cfg: &Config,
    shutdown_requested: Arc<Notify>,
) -> Router<S> {
    let state = AdminState {
        registry,
        host: Arc::from(cfg.host.as_str()),
        port: cfg.port,
        stop: shutdown_requested,
        grace_secs: cfg.shutdown_grace_secs,
    };
    Router::new()
        .route("/status", get(status))
        .route("/models", get(models))
        .route("/models/load", post(load))
        .route("/models/unload", post(unload))
        .route("/models/pin", post(pin))
        .route("/models/unpin", post(unpin))
        .route("/models/default", post(set_default))
        .route("/models/rescan", post(rescan))
        .route("/serving", get(serving))
        .route("/serving/start", post(start))
        .route("/serving/stop", post(stop))
        .route("/cache", get(cache).post(set_cache))
        .route(
            "/settings",
            get(settings).patch(update_settings).post(update_settings),
        )
        .route("/events", get(events))
        .route("/shutdown", post(shutdown))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelBody {
    model: String,
}

fn checked(body: &ModelBody) -> Result<&str, ApiError> {
    validate_id(&body.model).map_err(|e| ApiError::invalid("model", e.to_string()))?;
    Ok(&body.model)
}

/// The SSD tier of the KV prefix cache as `status.ssd_cache`, `GET /cache` and the
/// `cache_toggled`/`cache_stats` events show it. Counters run since the daemon started.
pub fn ssd_cache(r: &Registry) -> Value {
    let Some(ssd) = r.ssd_cache() else {
        // No folder configured, or prefix caching off: nothing to switch.
        return json!({
            "enabled": false,
            "available": false,
            "dir": null,
            "scanning": false,
            "bytes_used": 0,
            "cap_bytes": 0,
            "blocks": 0,
            "hits": 0,
            "misses": 0,
            "hit_rate": null,
            "writes": 0,
            "writes_dropped": 0,
            "write_errors": 0,
            "read_errors": 0,
            "read_timeouts": 0,
            "corrupt_dropped": 0,
            "evictions": 0,
            "errors": 0,
            "last_error": null,
        });
    };
    let st = ssd.stats();
    json!({
        "enabled": st.enabled,
        "available": true,
        "dir": ssd.dir(),
        "scanning": st.scanning,
        "bytes_used": st.bytes,
        "cap_bytes": st.cap_bytes,
        "blocks": st.files,
        "hits": st.read_hits,
        "misses": st.misses(),
        "hit_rate": st.hit_rate(),
        "writes": st.writes,
        "writes_dropped": st.dropped,
        "write_errors": st.write_errors,
        "read_errors": st.read_failures - st.read_timeouts,
        "read_timeouts": st.read_timeouts,
        "corrupt_dropped": st.checksum_failures,
        "evictions": st.evictions,
        "errors": st.errors(),
        "last_error": ssd.last_error(),
    })
}

/// The RAM tier of every loaded model, with totals.
fn ram_cache(r: &Registry) -> Value {
    let mut models = serde_json::Map::new();
    let (mut used, mut free, mut bytes, mut hit_tokens, mut queries, mut hits) = (0, 0, 0, 0, 0, 0);
    for m in r.loaded_statuses() {
        if let Some(p) = m.prefix_cache {
            used += p.blocks_used;
            free += p.blocks_free;
            bytes += p.bytes;
            hit_tokens += p.hit_tokens_ram + p.hit_tokens_ssd;
            queries += p.queries;
            hits += p.hits;
            models.insert(m.id, json!(p));
        }
    }
    json!({
        "blocks_used": used,
        "blocks_free": free,
        "bytes": bytes,
        "queries": queries,
        "hits": hits,
        "hit_tokens": hit_tokens,
        "models": models,
    })
}

/// `status.device` (wuwei_api::DeviceStatus).
fn device_status(weights: crate::model::WeightsMode) -> Value {
    let d = crate::device::info();
    json!({
        "backend": d.backend,
        "name": d.name,
        "memory_bytes": d.memory_bytes,
        "activations": crate::device::activations(),
        "weights": weights,
    })
}

async fn status(State(s): State<AdminState>) -> Json<Value> {
    let r = &s.registry;
    let sys = memory::system_memory();
    let mlx = memory::mlx_memory();
    let loaded = r.loaded_statuses();
    let counted: u64 = loaded
        .iter()
        .map(|m| m.weights_bytes + m.kv_reserved_bytes)
        .sum();
    let settings = r.settings_snapshot();
    let threshold: memory::Amount = settings["memory_pressure_threshold"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(memory::Amount::Bytes(0));
    Json(json!({
        "serving": r.serving(),
        "state": if r.serving() { "serving" } else { "stopped" },
        "version": env!("CARGO_PKG_VERSION"),
        "host": &*s.host,
        "port": s.port,
        "uptime_secs": r.uptime().as_secs_f64(),
        // Which daemon answers: a client that sees the pid change knows the daemon restarted
        // (event `seq` numbers start again at 1).
        "pid": std::process::id(),
        "models_dirs": r.model_dirs(),
        "device": device_status(r.weights_mode()),
        "memory": {
            "system": {
                "total_bytes": sys.total,
                "used_bytes": sys.used,
                "available_bytes": sys.available,
                // Not reported by the OS interface we use; the app reads it natively on macOS.
                "wired_bytes": null,
            },
            "mlx": {
                "active_bytes": mlx.active,
                "cache_bytes": mlx.cache,
                "peak_bytes": mlx.peak,
            },
            "budget_bytes": r.budget(),
            "counted_bytes": counted,
            "pressure_threshold_bytes": threshold.of(sys.total),
        },
        "default_model": r.default_model(),
        "loaded": loaded,
        "ssd_cache": ssd_cache(r),
    }))
}

async fn models(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({ "models": s.registry.model_statuses() }))
}

fn model_status(r: &Registry, id: &str) -> Value {
    r.model_statuses()
        .into_iter()
        .find(|m| m.id == id)
        .map_or(Value::Null, |m| json!(m))
}

async fn load(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = checked(&body)?;
    s.registry.load(id).await?;
    Ok(Json(
        json!({"ok": true, "model": model_status(&s.registry, id)}),
    ))
}

async fn unload(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = checked(&body)?;
    let unloaded = s.registry.unload(id).await?;
    Ok(Json(
        json!({"ok": true, "unloaded": unloaded, "model": model_status(&s.registry, id)}),
    ))
}

async fn pin(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = checked(&body)?;
    let newly = s.registry.pin(id, true)?;
    // Pinned models are kept loaded: load it now. A pin whose model cannot load (507, a broken
    // folder) is taken back, so no model shows pinned that is not kept loaded.
    if let Err(e) = s.registry.load(id).await {
        if newly {
            s.registry.pin(id, false)?;
        }
        return Err(e.into());
    }
    Ok(Json(
        json!({"ok": true, "model": model_status(&s.registry, id)}),
    ))
}

async fn unpin(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = checked(&body)?;
    s.registry.pin(id, false)?;
    Ok(Json(
        json!({"ok": true, "model": model_status(&s.registry, id)}),
    ))
}

async fn set_default(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = checked(&body)?;
    s.registry.set_default(id)?;
    Ok(Json(json!({"ok": true, "default_model": id})))
}

async fn rescan(State(s): State<AdminState>) -> Json<Value> {
    let changed = s.registry.rescan();
    Json(json!({"ok": true, "changed": changed}))
}

async fn serving(State(s): State<AdminState>) -> Json<Value> {
    Json(json!({"serving": s.registry.serving()}))
}

async fn start(State(s): State<AdminState>) -> Json<Value> {
    s.registry.set_serving(true);
    Json(json!({"ok": true, "serving": true}))
}

async fn stop(State(s): State<AdminState>) -> Json<Value> {
    s.registry.set_serving(false);
    Json(json!({"ok": true, "serving": false}))
}

/// Ends the daemon the way SIGTERM does: no new connections, running streams get
/// `shutdown_grace_secs`, exit 0 (which a launchd login item does not restart). For the
/// menu-bar app's "Quit and stop the daemon" when the daemon is not its child.
async fn shutdown(State(s): State<AdminState>) -> (StatusCode, Json<Value>) {
    tracing::info!("shutdown asked through the admin API");
    // notify_one keeps the request if the server is not waiting yet.
    s.stop.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(json!({"ok": true, "stopping": true, "grace_secs": s.grace_secs})),
    )
}

async fn cache(State(s): State<AdminState>) -> Json<Value> {
    let mut v = ssd_cache(&s.registry);
    v["ram"] = ram_cache(&s.registry);
    Json(v)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheBody {
    enabled: bool,
}

/// Switches the SSD tier at once (writes and reads stop or resume; nothing restarts). Lasts
/// until the daemon restarts: the config (`kv_ssd`, `WUWEI_KV_SSD`) decides at start, and
/// the config file is never rewritten behind the user's back.
async fn set_cache(State(s): State<AdminState>, ApiJson(body): ApiJson<CacheBody>) -> Response {
    let r = &s.registry;
    let Some(ssd) = r.ssd_cache() else {
        if !body.enabled {
            return Json(json!({"ok": true, "changed": false, "ssd_cache": ssd_cache(r)}))
                .into_response();
        }
        let mut err = ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "the SSD cache is not available: no cache folder is configured or prefix caching is off (kv_cache)",
        )
        .with_code("ssd_cache_unavailable")
        .body();
        err["ssd_cache"] = ssd_cache(r);
        return (StatusCode::CONFLICT, Json(err)).into_response();
    };
    let changed = ssd.set_enabled(body.enabled);
    let state = ssd_cache(r);
    if changed {
        r.emit(
            "cache_toggled",
            json!({"enabled": body.enabled, "ssd_cache": state.clone()}),
        );
    }
    Json(json!({"ok": true, "changed": changed, "ssd_cache": state})).into_response()
}

/// How often `cache_stats` events may go out.
const CACHE_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends a live-only `cache_stats` event (SSD and RAM tiers) whenever their numbers changed,
/// at most once per second, so that gauges follow the event stream without polling. Not kept
/// in the replay history (it would crowd out the events that matter).
pub async fn publish_cache_stats(registry: Arc<Registry>) {
    let mut last = Value::Null;
    let mut tick = tokio::time::interval(CACHE_STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = json!({"ssd_cache": ssd_cache(&registry), "ram": ram_cache(&registry)});
        if now != last {
            registry.emit_live("cache_stats", now.clone());
            last = now;
        }
    }
}

async fn settings(State(s): State<AdminState>) -> Json<Value> {
    Json(s.registry.settings_snapshot())
}

async fn update_settings(
    State(s): State<AdminState>,
    ApiJson(change): ApiJson<RuntimeSettings>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.registry.update_settings(change)?))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Replay the remembered events with a larger `seq` first (0: all remembered).
    since: Option<u64>,
}

fn event_frame(event: &Value) -> Bytes {
    let kind = event["type"].as_str().unwrap_or("message");
    let seq = event["seq"].as_u64().unwrap_or(0);
    Bytes::from(format!("id: {seq}\nevent: {kind}\ndata: {event}\n\n"))
}

async fn events(State(s): State<AdminState>, Query(q): Query<EventsQuery>) -> Response {
    let (past, rx) = s.registry.subscribe(q.since);
    let replay = futures_util::stream::iter(past.iter().map(event_frame).collect::<Vec<_>>());
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Err(_) => keep_alive_frame(),
            Ok(Ok(event)) => event_frame(&event),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                event_frame(&json!({"type": "lagged", "seq": 0, "missed": n}))
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
        };
        Some((frame, rx))
    });
    use futures_util::StreamExt;
    // An opening comment so clients see the stream is up before the first event.
    let hello = futures_util::stream::once(async { keep_alive_frame() });
    sse_response(hello.chain(replay).chain(live))
}
