//! The agent's HTTP side: the REST API of the origin monitor (`/api/memory/...`), the live
//! WebSocket stream, the embedded dashboard, `/health` and Prometheus `/metrics`, built on the
//! [`Backend`] trait that the agent implements.
//!
//! Security (see `docs/api.md`): a bearer token is required on every state-changing request and,
//! when the listener is not on a loopback address, on every request; without a configured token
//! state-changing requests are refused and [`serve`] refuses a non-loopback address. There is no
//! CORS; the WebSocket checks `Origin`, and a loopback listener only answers loopback `Host` names
//! (against DNS rebinding).

mod assets;
mod auth;
mod backend;
mod metrics;
#[cfg(test)]
mod mock;
mod routes;
#[cfg(test)]
mod tests;
mod ws;

use std::{
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json, Router,
};
use tokio::{net::TcpListener, sync::watch};

pub use self::{
    assets::ASSETS,
    backend::{
        AlertCount, AlertMetrics, Backend, BackendError, BpfProgramStats, MetricsInput,
        PatternMetric, ProcessMetrics, StoreMetrics, TracedMetric, WebhookMetrics,
        DEFAULT_METRICS_TOP_K,
    },
    metrics::{render as render_metrics, Identity, MetricsError, MetricsState, Selection, TopK},
    routes::{check_query, QueryParams},
};
pub use crate::api::StreamEvent;

/// How the router guards its routes.
#[derive(Clone, Default)]
pub struct HttpConfig {
    /// The bearer token. `None` (or empty): state-changing requests are refused.
    pub token: Option<String>,
    /// Whether the listener is on a loopback address. When false every request needs the token.
    /// The default (false) is the strict one.
    pub loopback: bool,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("loopback", &self.loopback)
            .finish()
    }
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to listen on {0}, which is not a loopback address, without a token: set \
         monitor.token, MEMTRACE_TOKEN or monitor.tokenFile, or listen on 127.0.0.1"
    )]
    NonLoopbackWithoutToken(SocketAddr),
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// State shared by the handlers.
#[derive(Clone)]
struct AppState {
    backend: Arc<dyn Backend>,
    /// Non-empty when configured.
    token: Option<Arc<str>>,
    loopback: bool,
    /// Set to true when the server shuts down; WebSocket streams then close.
    shutdown: Arc<watch::Sender<bool>>,
}

/// Whether an address is a loopback one (IPv4-mapped IPv6 included).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The router with every route, for a listener described by `config`.
pub fn router(backend: Arc<dyn Backend>, config: HttpConfig) -> Router {
    router_with_shutdown(backend, config, Arc::new(watch::channel(false).0))
}

fn router_with_shutdown(
    backend: Arc<dyn Backend>,
    config: HttpConfig,
    shutdown: Arc<watch::Sender<bool>>,
) -> Router {
    let token = config.token.filter(|t| !t.trim().is_empty()).map(Arc::from);
    let state = AppState {
        backend,
        token,
        loopback: config.loopback,
        shutdown,
    };
    routes::routes(state)
}

/// Binds `listen` and serves until `shutdown` completes. Refuses a non-loopback address without a
/// token.
pub async fn serve(
    listen: SocketAddr,
    token: Option<String>,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    check_listen(listen, token.as_deref())?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| HttpError::Bind(listen, e))?;
    serve_listener(listener, token, backend, shutdown).await
}

/// Open connections at most; more are closed at once (each holds a descriptor and buffers).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's whole header within this time, or the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request header accepted (the connection is closed beyond it).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long open connections are given to finish when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves on a bound listener (e.g. one bound to port 0) until `shutdown` completes. The same
/// checks as [`serve`] apply to the listener's address.
///
/// Connections are bounded: at most [`MAX_CONNECTIONS`] at once, a request header must arrive
/// whole within [`HEADER_READ_TIMEOUT`] and be at most [`MAX_HEADER_BYTES`]; on shutdown, open
/// connections get [`SHUTDOWN_GRACE`] to finish, then are closed, so a slow client never holds the
/// agent up.
pub async fn serve_listener(
    listener: TcpListener,
    token: Option<String>,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    let local = listener.local_addr().map_err(HttpError::LocalAddr)?;
    check_listen(local, token.as_deref())?;
    let loopback = is_loopback(local.ip());
    if loopback && !has_token(token.as_deref()) {
        log::info!(
            "no token configured: state-changing requests (analyze, resolve, trace) are refused; \
             set monitor.token, MEMTRACE_TOKEN or monitor.tokenFile to enable them"
        );
    }
    let stop = Arc::new(watch::channel(false).0);
    let app = router_with_shutdown(backend, HttpConfig { token, loopback }, stop.clone());
    log::info!("HTTP API on http://{local}/api/memory/status, dashboard on http://{local}/api/memory/dashboard");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    let mut refused_logged = false;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    log::warn!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !refused_logged {
                log::warn!(
                    "{MAX_CONNECTIONS} connections open: closing new ones (from {peer}) until some end"
                );
                refused_logged = true;
            }
            continue;
        };
        refused_logged = false;
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        request
                    },
                )
                .service(app.clone()),
        );
        let mut stopped = stop.subscribe();
        connections.spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        log::debug!("connection from {peer}: {err}");
                    }
                }
                () = stopping(&mut stopped) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
        });
    }
    stop.send_replace(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::debug!("closing the HTTP connections still open");
        connections.abort_all();
    }
    Ok(())
}

/// Returns once the server is stopping.
async fn stopping(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

fn has_token(token: Option<&str>) -> bool {
    token.is_some_and(|t| !t.trim().is_empty())
}

fn check_listen(listen: SocketAddr, token: Option<&str>) -> Result<(), HttpError> {
    if !is_loopback(listen.ip()) && !has_token(token) {
        return Err(HttpError::NonLoopbackWithoutToken(listen));
    }
    Ok(())
}

/// An error answered as `{"error": message, "status": code}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> Self {
        let status = match &err {
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BackendError::Conflict(_) => StatusCode::CONFLICT,
            BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BackendError::Internal(_) => {
                log::error!("HTTP request failed: {err}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "status": self.status.as_u16() });
        (self.status, Json(body)).into_response()
    }
}
