//! Who may do what: the bearer token, the `Host` check of loopback listeners and the WebSocket's
//! `Origin` check. Every refusal is logged with the method, the path and the peer's address.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Query, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::{is_loopback, ApiError, AppState};

/// The path of the WebSocket stream, the only one that also takes the token as `?token=`.
pub(super) const WS_PATH: &str = "/api/memory/ws";

const NO_TOKEN: &str = "no token is configured: set a token (monitor.token, MEMTRACE_TOKEN or \
                        monitor.tokenFile) to enable state-changing requests";
const NO_TOKEN_REMOTE: &str = "no token is configured: set a token (monitor.token, \
                               MEMTRACE_TOKEN or monitor.tokenFile) to answer requests on a \
                               non-loopback address";

/// Compares a presented token with the configured one without an early exit on the first
/// differing byte (the length may leak).
pub(super) fn token_matches(presented: &str, expected: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `?token=` of a request's query.
fn query_token(request: &Request) -> Option<String> {
    let Query(params) =
        Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
    params.get("token").cloned()
}

fn peer(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown peer".to_string(), |c| c.0.to_string())
}

fn refuse(method: &Method, path: &str, peer: &str, status: StatusCode, reason: &str) -> Response {
    log::warn!("refused {method} {path} from {peer}: {reason}");
    let mut response = ApiError::new(status, reason).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"memtrace\""),
        );
    }
    response
}

/// Whether a `Host` header value names this machine's loopback interface (`localhost`,
/// `127.x.x.x`, `[::1]`, with or without a port).
fn is_loopback_host(host: &str) -> bool {
    let name = split_host_port(host).0;
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Splits `host[:port]` (IPv6 in brackets) into the host and the port, if any.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let (host, rest) = authority.split_at(end + 1);
                (host, rest.strip_prefix(':'))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

/// Middleware in front of every route: the `Host` check on loopback listeners, then the token.
pub(super) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();

    // One `Host` only: with two, one check could read one and a proxy act on the other.
    if request.headers().get_all(header::HOST).iter().count() > 1 {
        let peer = peer(request.extensions());
        return refuse(
            &method,
            &path,
            &peer,
            StatusCode::BAD_REQUEST,
            "more than one Host header",
        );
    }

    if state.loopback {
        let host = request
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}"));
        if let Some(host) = host {
            if !is_loopback_host(host) {
                let reason = format!(
                    "this agent listens on a loopback address and only answers requests for \
                     localhost, 127.0.0.1 or [::1], not {host:?}"
                );
                let peer = peer(request.extensions());
                return refuse(&method, &path, &peer, StatusCode::FORBIDDEN, &reason);
            }
        }
    }

    let state_changing = !matches!(method, Method::GET | Method::HEAD);
    if !state_changing && state.loopback {
        return next.run(request).await;
    }
    // The dashboard's own files hold no data: a browser cannot add a bearer header to a page load,
    // so they are served without the token; every API call the page then makes carries it.
    if !state_changing
        && (path == "/api/memory/dashboard" || path.starts_with("/api/memory/dashboard/"))
    {
        return next.run(request).await;
    }
    let Some(expected) = state.token.as_deref() else {
        let reason = if state_changing {
            NO_TOKEN
        } else {
            NO_TOKEN_REMOTE
        };
        let peer = peer(request.extensions());
        return refuse(&method, &path, &peer, StatusCode::FORBIDDEN, reason);
    };
    let presented = match bearer(request.headers()) {
        Some(token) => Some(token.to_string()),
        None if path == WS_PATH => query_token(&request),
        None => None,
    };
    match presented {
        Some(token) if token_matches(&token, expected) => next.run(request).await,
        Some(_) => {
            let peer = peer(request.extensions());
            refuse(
                &method,
                &path,
                &peer,
                StatusCode::UNAUTHORIZED,
                "wrong token",
            )
        }
        None => {
            let peer = peer(request.extensions());
            let reason = "this request needs the token: send `Authorization: Bearer <token>`";
            refuse(&method, &path, &peer, StatusCode::UNAUTHORIZED, reason)
        }
    }
}

/// Headers every answer carries: `X-Content-Type-Options: nosniff` (no answer is ever read as
/// another type than the one it says), and on every 401 the `WWW-Authenticate` challenge.
pub(super) async fn answer_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"memtrace\""),
        );
    }
    response
}

/// Extractor that lets a request through when its `Origin` is absent (not a browser) or the
/// origin of this server: the same `host:port` as its `Host` header, or `localhost`/`127.0.0.1`/
/// `[::1]` on the same port. Browsers send `Origin` on WebSocket handshakes, and nothing else
/// (no CORS) stops a foreign page from opening one.
pub(super) struct SameOrigin;

impl<S: Send + Sync> FromRequestParts<S> for SameOrigin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(Self);
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin = origin.to_str().unwrap_or("\u{fffd}");
        if same_origin(origin, host) {
            return Ok(Self);
        }
        let reason = format!("WebSocket connections from origin {origin:?} are not allowed");
        let peer = peer(&parts.extensions);
        Err(refuse(
            &parts.method,
            parts.uri.path(),
            &peer,
            StatusCode::FORBIDDEN,
            &reason,
        ))
    }
}

fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    if authority.contains(['/', '@', '?', '#']) {
        return false;
    }
    if authority.eq_ignore_ascii_case(host) {
        return true;
    }
    let (origin_host, origin_port) = split_host_port(authority);
    let (_, host_port) = split_host_port(host);
    let origin_host = origin_host.trim_start_matches('[').trim_end_matches(']');
    let local = origin_host.eq_ignore_ascii_case("localhost")
        || origin_host == "127.0.0.1"
        || origin_host == "::1";
    local && origin_port.is_some() && origin_port == host_port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cres", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn loopback_host_names() {
        for host in [
            "localhost",
            "localhost:9000",
            "LOCALHOST:1",
            "app.localhost:80",
            "127.0.0.1",
            "127.0.0.1:9000",
            "127.1.2.3:9000",
            "[::1]:9000",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:9000",
            "10.0.0.1:9000",
            "[::2]:9000",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn origins() {
        let host = Some("127.0.0.1:9000");
        assert!(same_origin("http://127.0.0.1:9000", host));
        assert!(same_origin("http://localhost:9000", host));
        assert!(same_origin("https://127.0.0.1:9000", host));
        assert!(same_origin("http://[::1]:9000", host));
        assert!(same_origin(
            "http://memtrace.lan:9000",
            Some("memtrace.lan:9000")
        ));
        assert!(!same_origin("http://evil.example:9000", host));
        assert!(!same_origin("http://localhost:9001", host));
        assert!(!same_origin("http://localhost", host));
        assert!(!same_origin("null", host));
        assert!(!same_origin("file://", host));
        assert!(!same_origin("http://127.0.0.1:9000", None));
        assert!(!same_origin("http://user@127.0.0.1:9000", host));
    }
}
