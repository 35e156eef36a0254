//! Serves the web dashboard (the built `ui/dist`) at `/` and `/assets/*`.
//!
//! The files are read from a folder found at run time, not embedded, so building the daemon
//! never needs npm. The folder is the first of: `WUWEI_UI_DIR`; `ui/` or `ui/dist/` next to
//! the binary; `../share/wuwei/ui` next to the binary; `ui/dist` in a parent folder of the
//! binary (a checkout's `target/debug/wuwei`); `ui/dist` of the source tree the daemon was
//! built from. Without one, `/` answers a short page that says how to build it.
//!
//! The dashboard is static and holds no secrets: it is open like `/health`, and it sends the
//! API key itself (asked from the user) to the admin API.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::extract::Path as UrlPath;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::errors::ApiError;

/// The dashboard's routes; merged into the daemon's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{*path}", get(asset))
}

/// The folder holding the built dashboard (`index.html` + `assets/`), looked up once.
fn ui_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let found = candidates()
            .into_iter()
            .find(|d| d.join("index.html").is_file());
        match &found {
            Some(dir) => tracing::info!("dashboard served from {}", dir.display()),
            None => tracing::info!("no built dashboard found (run `npm run build` in ui/)"),
        }
        found
    })
    .as_deref()
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("WUWEI_UI_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("ui"));
        dirs.push(exe_dir.join("ui").join("dist"));
        dirs.push(exe_dir.join("..").join("share").join("wuwei").join("ui"));
        dirs.extend(exe_dir.ancestors().map(|a| a.join("ui").join("dist")));
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("ui")
            .join("dist"),
    );
    dirs
}

async fn index() -> Response {
    let Some(dir) = ui_dir() else {
        return (StatusCode::OK, Html(MISSING_PAGE)).into_response();
    };
    match tokio::fs::read(dir.join("index.html")).await {
        Ok(bytes) => file_response("index.html", bytes),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("cannot read {}: {e}", dir.join("index.html").display()),
        )
        .into_response(),
    }
}

async fn asset(UrlPath(path): UrlPath<String>) -> Response {
    if !is_safe_asset_path(&path) {
        return ApiError::not_found(format!("no dashboard asset {path:?}")).into_response();
    }
    let Some(dir) = ui_dir() else {
        return ApiError::not_found("the dashboard is not built").into_response();
    };
    let file = dir.join("assets").join(&path);
    match tokio::fs::read(&file).await {
        Ok(bytes) => file_response(&path, bytes),
        Err(_) => ApiError::not_found(format!("no dashboard asset {path:?}")).into_response(),
    }
}

/// Only plain relative names below `assets/`: no `..`, no absolute paths, no odd characters.
fn is_safe_asset_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn file_response(name: &str, bytes: Vec<u8>) -> Response {
    // Vite puts a content hash in asset names, so they can be cached for good; the index
    // names the current ones, so it must not be.
    let cache = if name == "index.html" {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    (
        [
            (header::CONTENT_TYPE, content_type(name)),
            (header::CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response()
}

const MISSING_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Wuwei</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto">
<h1>Wuwei is running</h1>
<p>The dashboard is not built. From the source tree run:</p>
<pre>cd ui &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p>or point <code>WUWEI_UI_DIR</code> at a folder holding the built <code>index.html</code>.
The APIs are available meanwhile: <code>/v1</code>, <code>/admin/api/status</code>,
<code>/health</code>, <code>/metrics</code>.</p>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_paths_stay_inside_the_folder() {
        assert!(is_safe_asset_path("index-AbC_12.js"));
        assert!(is_safe_asset_path("fonts/a.woff2"));
        for bad in [
            "",
            "../secret",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "%2e%2e",
            ".",
        ] {
            assert!(!is_safe_asset_path(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("x.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
