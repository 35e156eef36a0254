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
use tokio::sync::broadcast;

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
}

/// The admin routes, to be nested at `/admin/api` (works with any outer router state).
pub fn router<S: Clone + Send + Sync + 'static>(
    registry: Arc<Registry>,
    cfg: &Config,
) -> Router<S> {
    let state = AdminState {
        registry,
        host: Arc::from(cfg.host.as_str()),
        port: cfg.port,
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

fn ssd_cache() -> Value {
    // Placeholder until the SSD KV cache lands.
    json!({
        "enabled": false,
        "available": false,
        "bytes_used": 0,
        "cap_bytes": 0,
        "hit_rate": null,
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
        "ssd_cache": ssd_cache(),
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
    s.registry.pin(id, true)?;
    // Pinned models are kept loaded: load it now.
    s.registry.load(id).await?;
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

async fn cache() -> Json<Value> {
    Json(ssd_cache())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheBody {
    enabled: bool,
}

/// The SSD cache does not exist yet: turning it off is a no-op, turning it on is 501.
async fn set_cache(ApiJson(body): ApiJson<CacheBody>) -> Response {
    if !body.enabled {
        return Json(json!({"ok": true, "ssd_cache": ssd_cache()})).into_response();
    }
    let mut err = ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "server_error",
        "the SSD cache is not available in this build",
    )
    .with_code("not_implemented")
    .body();
    err["ssd_cache"] = ssd_cache();
    (StatusCode::NOT_IMPLEMENTED, Json(err)).into_response()
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
