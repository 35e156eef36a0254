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
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Notify};
use wuwei_api::{
    CacheState, ChangedAnswer, DefaultAnswer, DeviceStatus, Event, EventKind, Memory, MlxMemory,
    ModelAnswer, ModelList, ModelStatus, ServingAnswer, Settings, ShutdownAnswer, SsdCache, Status,
    SystemMemory,
};

use crate::config::Config;
use crate::memory;
use crate::registry::{event_json, validate_id, wire_name, Registry, RuntimeSettings};
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

/// `status.device`: what the models run on.
fn device_status(weights: crate::model::WeightsMode) -> DeviceStatus {
    let d = crate::device::info();
    DeviceStatus {
        backend: wire_name(d.backend),
        name: d.name.clone(),
        memory_bytes: d.memory_bytes,
        activations: wire_name(crate::device::activations()),
        weights: wire_name(weights),
    }
}

async fn status(State(s): State<AdminState>) -> Json<Status> {
    let r = &s.registry;
    let sys = memory::system_memory();
    let mlx = memory::mlx_memory();
    let loaded = r.loaded_statuses();
    let counted: u64 = loaded
        .iter()
        .map(|m| m.weights_bytes + m.kv_reserved_bytes)
        .sum();
    let serving = r.serving();
    Json(Status {
        serving,
        state: if serving { "serving" } else { "stopped" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        host: s.host.to_string(),
        port: s.port,
        uptime_secs: r.uptime().as_secs_f64(),
        // Which daemon answers: a client that sees the pid change knows the daemon restarted
        // (event `seq` numbers start again at 1).
        pid: std::process::id(),
        models_dirs: r
            .model_dirs()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect(),
        device: device_status(r.weights_mode()),
        memory: Memory {
            system: SystemMemory {
                total_bytes: sys.total,
                used_bytes: sys.used,
                available_bytes: sys.available,
                // Not reported by the OS interface we use; the app reads it natively on macOS.
                wired_bytes: None,
            },
            mlx: MlxMemory {
                active_bytes: mlx.active,
                cache_bytes: mlx.cache,
                peak_bytes: mlx.peak,
            },
            budget_bytes: r.budget(),
            counted_bytes: counted,
            pressure_threshold_bytes: r.pressure_threshold().of(sys.total),
        },
        default_model: r.default_model(),
        loaded,
        ssd_cache: r.ssd_cache_status(),
    })
}

async fn models(State(s): State<AdminState>) -> Json<ModelList> {
    Json(ModelList {
        models: s.registry.model_statuses(),
    })
}

fn model_status(r: &Registry, id: &str) -> Option<ModelStatus> {
    r.model_statuses().into_iter().find(|m| m.id == id)
}

/// `{"ok": true, "model": …}` after an action on `id`.
fn model_answer(r: &Registry, id: &str, unloaded: Option<bool>) -> Json<ModelAnswer> {
    Json(ModelAnswer {
        ok: true,
        unloaded,
        model: model_status(r, id),
    })
}

async fn load(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<ModelAnswer>, ApiError> {
    let id = checked(&body)?;
    s.registry.load(id).await?;
    Ok(model_answer(&s.registry, id, None))
}

async fn unload(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<ModelAnswer>, ApiError> {
    let id = checked(&body)?;
    let unloaded = s.registry.unload(id).await?;
    Ok(model_answer(&s.registry, id, Some(unloaded)))
}

async fn pin(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<ModelAnswer>, ApiError> {
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
    Ok(model_answer(&s.registry, id, None))
}

async fn unpin(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<ModelAnswer>, ApiError> {
    let id = checked(&body)?;
    s.registry.pin(id, false)?;
    Ok(model_answer(&s.registry, id, None))
}

async fn set_default(
    State(s): State<AdminState>,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<DefaultAnswer>, ApiError> {
    let id = checked(&body)?;
    s.registry.set_default(id)?;
    Ok(Json(DefaultAnswer {
        ok: true,
        default_model: id.into(),
    }))
}

async fn rescan(State(s): State<AdminState>) -> Json<ChangedAnswer> {
    Json(ChangedAnswer {
        ok: true,
        changed: s.registry.rescan(),
        ssd_cache: None,
    })
}

async fn serving(State(s): State<AdminState>) -> Json<ServingAnswer> {
    Json(ServingAnswer {
        ok: None,
        serving: s.registry.serving(),
    })
}

async fn start(State(s): State<AdminState>) -> Json<ServingAnswer> {
    s.registry.set_serving(true);
    Json(ServingAnswer {
        ok: Some(true),
        serving: true,
    })
}

async fn stop(State(s): State<AdminState>) -> Json<ServingAnswer> {
    s.registry.set_serving(false);
    Json(ServingAnswer {
        ok: Some(true),
        serving: false,
    })
}

/// Ends the daemon the way SIGTERM does: no new connections, running streams get
/// `shutdown_grace_secs`, exit 0 (which a launchd login item does not restart). For the
/// menu-bar app's "Quit and stop the daemon" when the daemon is not its child.
async fn shutdown(State(s): State<AdminState>) -> (StatusCode, Json<ShutdownAnswer>) {
    tracing::info!("shutdown asked through the admin API");
    // notify_one keeps the request if the server is not waiting yet.
    s.stop.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(ShutdownAnswer {
            ok: true,
            stopping: true,
            grace_secs: s.grace_secs,
        }),
    )
}

async fn cache(State(s): State<AdminState>) -> Json<CacheState> {
    Json(CacheState {
        ssd: s.registry.ssd_cache_status(),
        ram: s.registry.ram_cache_status(),
    })
}

/// The 409 of `POST /cache {"enabled": true}` without an SSD tier: the error, and the tier.
#[derive(Serialize)]
struct Unavailable {
    #[serde(flatten)]
    error: serde_json::Value,
    ssd_cache: SsdCache,
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
    let answer = |changed, state| {
        Json(ChangedAnswer {
            ok: true,
            changed,
            ssd_cache: Some(state),
        })
        .into_response()
    };
    let Some(ssd) = r.ssd_cache() else {
        if !body.enabled {
            return answer(false, r.ssd_cache_status());
        }
        let error = ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "the SSD cache is not available: no cache folder is configured or prefix caching is off (kv_cache)",
        )
        .with_code("ssd_cache_unavailable")
        .body();
        let body = Unavailable {
            error,
            ssd_cache: r.ssd_cache_status(),
        };
        return (StatusCode::CONFLICT, Json(body)).into_response();
    };
    let changed = ssd.set_enabled(body.enabled);
    let state = r.ssd_cache_status();
    if changed {
        r.emit(EventKind::CacheToggled {
            enabled: Some(body.enabled),
            ssd_cache: Some(state.clone()),
        });
    }
    answer(changed, state)
}

/// How often `cache_stats` events may go out.
const CACHE_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends a live-only `cache_stats` event (SSD and RAM tiers) whenever their numbers changed,
/// at most once per second, so that gauges follow the event stream without polling. Not kept
/// in the replay history (it would crowd out the events that matter).
pub async fn publish_cache_stats(registry: Arc<Registry>) {
    let mut last = None;
    let mut tick = tokio::time::interval(CACHE_STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (registry.ssd_cache_status(), registry.ram_cache_status());
        if last.as_ref() != Some(&now) {
            registry.emit_live(EventKind::CacheStats {
                ssd_cache: Some(now.0.clone()),
                ram: Some(now.1.clone()),
            });
            last = Some(now);
        }
    }
}

async fn settings(State(s): State<AdminState>) -> Json<Settings> {
    Json(s.registry.settings_snapshot())
}

async fn update_settings(
    State(s): State<AdminState>,
    ApiJson(change): ApiJson<RuntimeSettings>,
) -> Result<Json<Settings>, ApiError> {
    Ok(Json(s.registry.update_settings(change)?))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Replay the remembered events with a larger `seq` first (0: all remembered).
    since: Option<u64>,
}

/// `id: <seq>`, `event: <type>`, `data: <event>` (`time` left out of the stream's own
/// `lagged` notice, which no clock stamped).
fn event_frame(seq: u64, time: Option<u64>, kind: &EventKind) -> Bytes {
    let data = event_json(seq, time, kind);
    let name = kind.name();
    Bytes::from(format!("id: {seq}\nevent: {name}\ndata: {data}\n\n"))
}

fn stamped_frame(event: &Event) -> Bytes {
    event_frame(event.seq, Some(event.time), &event.kind)
}

async fn events(State(s): State<AdminState>, Query(q): Query<EventsQuery>) -> Response {
    let (past, rx) = s.registry.subscribe(q.since);
    let replay = futures_util::stream::iter(past.iter().map(stamped_frame).collect::<Vec<_>>());
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
            Err(_) => keep_alive_frame(),
            Ok(Ok(event)) => stamped_frame(&event),
            Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                event_frame(0, None, &EventKind::Lagged { missed })
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
