//! What web pages may do with the daemon. A server on 127.0.0.1 is reachable from every page
//! the user's browser opens: a page can fire requests at it without reading the answers
//! (cross-site request forgery: stop serving, load models, change settings, burn the CPU), and
//! through DNS rebinding (a hostile name that resolves to 127.0.0.1) its requests become
//! same-origin and their answers readable. Two checks close both:
//!
//! * listening on loopback, the `Host` header must name loopback, so a rebound name is refused;
//! * a request that carries an `Origin` (browsers add one to every cross-origin request and to
//!   every POST) must come from the daemon's own origin, a loopback origin (the dashboard, the
//!   app's webview, a web UI the user runs locally) or one the config allows.
//!
//! SDKs, curl and Claude Code send no `Origin` and are unaffected. Allowed origins also get
//! CORS headers, so a local web UI on another port can read the answers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use super::errors::ApiError;

/// The rules of one daemon.
#[derive(Debug, Clone)]
pub struct BrowserGuard {
    /// Whether the daemon listens on loopback only (then `Host` must be loopback too).
    loopback_only: bool,
    /// Configured origins, lowercased, without a trailing slash; `*` allows any.
    allowed: Arc<[String]>,
}

impl BrowserGuard {
    pub fn new(listen_host: &str, allowed_origins: &[String]) -> Self {
        Self {
            loopback_only: is_loopback_host(listen_host),
            allowed: allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Why a request may not proceed, if it may not.
    fn refuse(&self, headers: &HeaderMap) -> Option<ApiError> {
        let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or(""));
        if self.loopback_only {
            if let Some(host) = host {
                if !is_loopback_host(strip_port(host)) {
                    return Some(forbidden(
                        "host_not_allowed",
                        format!(
                            "this server listens on loopback and answers only to a loopback host name (localhost, 127.0.0.1, [::1]), not {host:?}"
                        ),
                    ));
                }
            }
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if self.origin_allowed(&origin, host) {
            return None;
        }
        Some(forbidden(
            "origin_not_allowed",
            format!(
                "requests from web pages of {origin:?} are not allowed; add the origin to `allowed_origins` (WUWEI_ALLOWED_ORIGINS) to let them use this server"
            ),
        ))
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.allowed.iter().any(|a| a == "*" || a == origin) {
            return true;
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false; // "null" (sandboxed frames, file: pages) and anything malformed
        };
        if !matches!(scheme, "http" | "https" | "tauri") || authority.contains(['/', '@']) {
            return false;
        }
        // The daemon's own pages (the dashboard), whatever name it was reached by.
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        is_loopback_host(strip_port(authority))
    }
}

/// Refuses what [`BrowserGuard`] refuses, with 403 in OpenAI's error shape (the Anthropic
/// layer outside rewrites it for `/v1/messages`).
pub async fn guard(State(g): State<BrowserGuard>, request: Request, next: Next) -> Response {
    match g.refuse(request.headers()) {
        Some(err) => {
            tracing::warn!(
                method = %request.method(),
                path = %request.uri().path(),
                reason = err.code.unwrap_or(""),
                "refused a browser request"
            );
            err.into_response()
        }
        None => next.run(request).await,
    }
}

/// CORS for the origins the guard lets through (it runs first, so mirroring is safe).
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods(AllowMethods::mirror_request())
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(600))
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 and ::1 (bracketed or not).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `name:port` → `name`; `[::1]:port` → `[::1]`; a bare IPv6 address stays whole.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(g: &BrowserGuard, host: Option<&str>, origin: Option<&str>) -> Option<&'static str> {
        g.refuse(&headers(host, origin)).map(|e| e.code.unwrap())
    }

    #[test]
    fn loopback_daemon_answers_only_loopback_names() {
        let g = BrowserGuard::new("127.0.0.1", &[]);
        for host in [
            "127.0.0.1:8686",
            "localhost:8686",
            "localhost",
            "[::1]:8686",
            "127.1.2.3",
            "app.localhost:1",
        ] {
            assert_eq!(code(&g, Some(host), None), None, "{host}");
        }
        for host in [
            "evil.example:8686",
            "evil.example",
            "192.168.1.5:8686",
            "127.0.0.1.evil.example",
            "localhost.evil.example:8686",
        ] {
            assert_eq!(
                code(&g, Some(host), None),
                Some("host_not_allowed"),
                "{host}"
            );
        }
        // HTTP/1.0 clients may send no Host; browsers always do.
        assert_eq!(code(&g, None, None), None);
    }

    #[test]
    fn origins_loopback_own_and_configured() {
        let g = BrowserGuard::new("127.0.0.1", &["https://Chat.Example.com/".to_string()]);
        let host = Some("127.0.0.1:8686");
        for origin in [
            "http://127.0.0.1:8686",
            "http://localhost:3000",
            "https://localhost",
            "http://[::1]:5173",
            "tauri://localhost",
            "http://tauri.localhost",
            "https://chat.example.com",
        ] {
            assert_eq!(code(&g, host, Some(origin)), None, "{origin}");
        }
        for origin in [
            "https://evil.example",
            "null",
            "file://",
            "http://127.0.0.1.evil.example",
            "https://chat.example.com:444",
            "ftp://localhost",
            "http://user@localhost",
            "",
        ] {
            assert_eq!(
                code(&g, host, Some(origin)),
                Some("origin_not_allowed"),
                "{origin}"
            );
        }
    }

    #[test]
    fn network_daemon_accepts_its_own_origin_and_any_host() {
        let g = BrowserGuard::new("0.0.0.0", &[]);
        assert_eq!(code(&g, Some("192.168.1.5:8686"), None), None);
        assert_eq!(
            code(
                &g,
                Some("192.168.1.5:8686"),
                Some("http://192.168.1.5:8686")
            ),
            None
        );
        assert_eq!(
            code(
                &g,
                Some("192.168.1.5:8686"),
                Some("http://192.168.1.9:8686")
            ),
            Some("origin_not_allowed")
        );
        let any = BrowserGuard::new("0.0.0.0", &["*".to_string()]);
        assert_eq!(
            code(
                &any,
                Some("192.168.1.5:8686"),
                Some("https://anything.example")
            ),
            None
        );
    }

    #[test]
    fn ports_are_stripped_carefully() {
        assert_eq!(strip_port("localhost:8686"), "localhost");
        assert_eq!(strip_port("[::1]:8686"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        assert!(
            is_loopback_host("::1") && is_loopback_host("[::1]") && is_loopback_host("LOCALHOST.")
        );
        assert!(!is_loopback_host("0.0.0.0") && !is_loopback_host("localhost.example"));
    }
}
