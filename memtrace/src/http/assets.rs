//! The dashboard's static files, embedded in the binary from `memtrace/dashboard/dist/`.
//! `GET /api/memory/dashboard` answers `index.html`, `GET /api/memory/dashboard/{file}` the others.
//! The page must refer to its files by absolute path (`/api/memory/dashboard/app.js`), since it is
//! served at a path without a trailing slash.

use axum::{
    extract::Path,
    http::{header, HeaderName},
    response::{IntoResponse, Response},
};

use super::ApiError;

/// `(path under /api/memory/dashboard/, content type, bytes)`.
pub static ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../dashboard/dist/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/dist/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/dist/style.css"),
    ),
    (
        "vendor/chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/dist/vendor/chart.umd.min.js"),
    ),
];

/// The policy of the page: its own scripts, styles and images, and connections (fetch and
/// WebSocket) only to this server; no framing by other sites.
pub(super) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'";

fn asset(path: &str) -> Option<Response> {
    let &(_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut headers: Vec<(HeaderName, &str)> = vec![
        (header::CONTENT_TYPE, content_type),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    if content_type.starts_with("text/html") {
        headers.push((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY));
        headers.push((header::X_FRAME_OPTIONS, "DENY"));
        headers.push((header::REFERRER_POLICY, "no-referrer"));
    }
    let mut response = bytes.into_response();
    for (name, value) in headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    Some(response)
}

pub(super) async fn index() -> Result<Response, ApiError> {
    asset("index.html").ok_or_else(|| ApiError::not_found("the dashboard is not embedded"))
}

pub(super) async fn file(Path(file): Path<String>) -> Result<Response, ApiError> {
    asset(&file).ok_or_else(|| ApiError::not_found(format!("no dashboard file {file:?}")))
}
