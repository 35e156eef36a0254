//! The daemon's HTTP layer: routes, authentication, limits, health, metrics and shutdown.
//! Protocol adapters translate to the canonical [`crate::core`] types and back.

pub mod anthropic;
pub mod browser_guard;
pub mod dashboard;
pub mod embeddings;
pub mod errors;
pub mod generation;
pub mod models;
pub mod openai;
pub mod output_format;
pub mod responses;
pub mod sse;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::Config;
use crate::core::{Backend, Health};
use crate::metrics;
use errors::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub api_key: Option<Arc<str>>,
    pub max_body_bytes: usize,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The Responses API's kept responses (`previous_response_id`).
    pub responses: Arc<responses::ResponseStore>,
}

/// All routes. `/health` and `/metrics` are open; `/v1/*` needs the API key when one is set.
pub fn router(backend: Arc<dyn Backend>, cfg: &Config) -> Router {
    router_with_admin(backend, cfg, None)
}

/// [`router`] plus the admin API nested at `/admin/api`, behind the same API key as `/v1`.
pub fn router_with_admin(
    backend: Arc<dyn Backend>,
    cfg: &Config,
    admin: Option<Router<AppState>>,
) -> Router {
    let state = AppState {
        backend,
        api_key: cfg.api_key.as_deref().map(Arc::from),
        max_body_bytes: cfg.max_body_bytes,
        metrics: metrics::prometheus_handle(),
        responses: Arc::new(responses::ResponseStore::default()),
    };
    let api = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{id}", get(models::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens));
    let api = match admin {
        Some(admin) => api.nest("/admin/api", admin),
        None => api,
    };
    let api = api.route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_api_key,
    ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::router())
        .merge(api)
        // A route layer runs after routing, so it sees the matched path (a bounded label).
        .route_layer(middleware::from_fn(record_http_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // axum's own limit is replaced by tower-http's, whose 413 gets a JSON body below.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), json_413))
        // Web pages: CORS for the origins the guard (outside it) lets through.
        .layer(browser_guard::cors())
        .layer(middleware::from_fn_with_state(
            browser_guard::BrowserGuard::new(&cfg.host, &cfg.allowed_origins),
            browser_guard::guard,
        ))
        // Outermost: every error on an Anthropic route (auth, limits, routing) in its shape.
        .layer(middleware::from_fn(anthropic::anthropic_error_shape))
        .with_state(state)
}

/// Serves until SIGTERM/SIGINT, then stops accepting, lets running requests go on for
/// `shutdown_grace_secs`, and returns `Ok(())`.
pub async fn serve(cfg: Config, backend: Arc<dyn Backend>) -> anyhow::Result<()> {
    serve_with_admin(cfg, backend, None, std::future::pending()).await
}

/// [`serve`] with the admin API; `asked` resolving (the admin API's shutdown call) stops it
/// like a signal does.
pub async fn serve_with_admin(
    cfg: Config,
    backend: Arc<dyn Backend>,
    admin: Option<Router<AppState>>,
    asked: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = asked => {}
        }
    };
    serve_on_with_admin(listener, cfg, backend, admin, stop).await
}

/// [`serve`] on a bound listener, stopping when `shutdown` resolves (tests, embedding).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    cfg: Config,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_on_with_admin(listener, cfg, backend, None, shutdown).await
}

/// [`serve_on`] with the admin API.
pub async fn serve_on_with_admin(
    listener: tokio::net::TcpListener,
    cfg: Config,
    backend: Arc<dyn Backend>,
    admin: Option<Router<AppState>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = router_with_admin(backend, &cfg, admin);
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; {grace:?} for running requests");
        let _ = stopping_tx.send(true);
    };
    let upkeep_handle = metrics::prometheus_handle();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let deadline = async move {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        _ = deadline => {
            // Dropping the server drops open streams, which cancels their generations.
            tracing::warn!("grace period over; closing remaining connections");
            Ok(())
        }
    };
    upkeep.abort();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

async fn health(State(state): State<AppState>) -> Response {
    match state.backend.health() {
        Health::Ok => Json(json!({"status": "ok"})).into_response(),
        Health::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    metrics::record_http_request("unmatched", request.method().as_str(), 404, Duration::ZERO);
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "method {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The key a client sent: `Authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.api_key {
        let ok = presented_key(request.headers()).is_some_and(|k| same_key(k, expected));
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// tower-http answers an over-long body with a plain-text 413; clients expect our JSON error.
async fn json_413(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return ApiError::body_too_large(state.max_body_bytes).into_response();
    }
    response
}

async fn record_http_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics::record_http_request(
        &path,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
