//! The routes and their handlers. Parameters are checked here (400 on anything malformed or out of
//! range); the backend only sees valid values.

use std::{collections::HashMap, str::FromStr, sync::Arc};

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, HeaderValue, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use super::{assets, auth, metrics, ws, ApiError, AppState, Backend};
use crate::api;

/// Default and bounds of `?count=` of `/history`.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 10_000;
/// Default and bounds of `?minutes=` of `/growth` (up to a week).
const GROWTH_DEFAULT: u32 = 30;
const GROWTH_MAX: u32 = 10_080;
/// Linux's `PID_MAX_LIMIT`.
const PID_MAX: u32 = 4_194_304;

pub(super) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api/memory/status", get(status))
        .route("/api/memory/history", get(history))
        .route("/api/memory/growth", get(growth))
        .route("/api/memory/analyze", post(analyze))
        .route("/api/memory/alerts", get(alerts))
        .route("/api/memory/alerts/{id}/resolve", post(resolve_alert))
        .route("/api/memory/consumers", get(consumers))
        .route("/api/memory/processes", get(processes))
        .route("/api/memory/processes/{pid}", get(process))
        .route(
            "/api/memory/trace/{pid}",
            post(trace_start).delete(trace_stop),
        )
        .route("/api/memory/export", get(export))
        .route("/api/memory/report", get(report))
        .route(auth::WS_PATH, get(ws::upgrade))
        .route("/debug/pprof/targets", get(pprof_targets))
        .route("/debug/pprof/{profile}", get(pprof_scrape))
        .route("/api/memory/dashboard", get(assets::index))
        .route("/api/memory/dashboard/", get(assets::index))
        .route("/api/memory/dashboard/{*file}", get(assets::file))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::from_fn(auth::answer_headers))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the routes are listed in docs/api.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query parameters, or 400 when the query string cannot be decoded.
fn params(query: Params) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {}", e.body_text())))
}

/// An integer parameter in `min..=max`, `default` when absent.
fn int_param<T>(
    params: &HashMap<String, String>,
    name: &str,
    default: Option<T>,
    min: T,
    max: T,
) -> Result<Option<T>, ApiError>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let Some(raw) = params.get(name) else {
        return Ok(default);
    };
    match raw.trim().parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(Some(value)),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be an integer from {min} to {max}, not {raw:?}"
        ))),
    }
}

fn pid_param(params: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    int_param(params, "pid", None, 1, PID_MAX)
}

fn parse_pid(path: Result<Path<String>, PathRejection>) -> Result<u32, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match raw.parse::<u32>() {
        Ok(pid) if (1..=PID_MAX).contains(&pid) => Ok(pid),
        _ => Err(ApiError::bad_request(format!(
            "pid must be an integer from 1 to {PID_MAX}, not {raw:?}"
        ))),
    }
}

/// Runs a backend call on the blocking pool (analysis, reports, exports and tracing changes may
/// take a while).
async fn blocking<T, F>(state: &AppState, call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Backend) -> T + Send + 'static,
{
    let backend: Arc<dyn Backend> = state.backend.clone();
    tokio::task::spawn_blocking(move || call(backend.as_ref()))
        .await
        .map_err(|e| {
            log::error!("an HTTP backend call failed: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
}

async fn health(State(state): State<AppState>) -> Json<api::Health> {
    Json(state.backend.health())
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, ApiError> {
    let input = blocking(&state, |b| b.metrics()).await?;
    let text = metrics::render(&input).map_err(|e| {
        log::error!("rendering /metrics: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

async fn status(State(state): State<AppState>) -> Json<api::Status> {
    Json(state.backend.status())
}

async fn history(State(state): State<AppState>, query: Params) -> Result<Response, ApiError> {
    let params = params(query)?;
    let count = int_param(&params, "count", Some(HISTORY_DEFAULT), 1, HISTORY_MAX)?
        .unwrap_or(HISTORY_DEFAULT);
    Ok(Json(state.backend.history(count)).into_response())
}

async fn growth(
    State(state): State<AppState>,
    query: Params,
) -> Result<Json<api::Growth>, ApiError> {
    let params = params(query)?;
    let minutes = int_param(&params, "minutes", Some(GROWTH_DEFAULT), 1, GROWTH_MAX)?
        .unwrap_or(GROWTH_DEFAULT);
    Ok(Json(blocking(&state, move |b| b.growth(minutes)).await?))
}

async fn analyze(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(blocking(&state, |b| b.analyze()).await??).into_response())
}

async fn alerts(State(state): State<AppState>) -> Json<api::Alerts> {
    Json(state.backend.alerts())
}

async fn resolve_alert(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<api::Alert>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "alert id must be 1 to 128 letters, digits, '_', '-' or '.', not {id:?}"
        )));
    }
    Ok(Json(
        blocking(&state, move |b| b.resolve_alert(&id)).await??,
    ))
}

async fn consumers(
    State(state): State<AppState>,
    query: Params,
) -> Result<Json<api::Consumers>, ApiError> {
    let pid = pid_param(&params(query)?)?;
    Ok(Json(state.backend.consumers(pid)))
}

async fn processes(State(state): State<AppState>) -> Response {
    Json(state.backend.processes()).into_response()
}

async fn process(
    State(state): State<AppState>,
    pid: Result<Path<String>, PathRejection>,
) -> Result<Json<api::ProcessDetail>, ApiError> {
    let pid = parse_pid(pid)?;
    blocking(&state, move |b| b.process(pid))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no process with pid {pid}")))
}

async fn trace_start(
    State(state): State<AppState>,
    pid: Result<Path<String>, PathRejection>,
) -> Result<Json<api::TraceStarted>, ApiError> {
    let pid = parse_pid(pid)?;
    Ok(Json(blocking(&state, move |b| b.trace_start(pid)).await??))
}

async fn trace_stop(
    State(state): State<AppState>,
    pid: Result<Path<String>, PathRejection>,
) -> Result<Json<api::TraceStopped>, ApiError> {
    let pid = parse_pid(pid)?;
    Ok(Json(blocking(&state, move |b| b.trace_stop(pid)).await??))
}

async fn export(State(state): State<AppState>) -> Result<Response, ApiError> {
    let data = blocking(&state, |b| b.export()).await?;
    let disposition = format!(
        "attachment; filename=\"memtrace-export-{}.json\"",
        crate::os::clock::now_ms()
    );
    let mut response = Json(data).into_response();
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `?format=` of `/report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Json,
    Text,
    Flamegraph,
    Pprof,
}

fn report_format(params: &HashMap<String, String>) -> Result<ReportFormat, ApiError> {
    Ok(match params.get("format").map(String::as_str) {
        None | Some("json") => ReportFormat::Json,
        Some("text") => ReportFormat::Text,
        Some("flamegraph") => ReportFormat::Flamegraph,
        Some("pprof") => ReportFormat::Pprof,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be json, text, flamegraph or pprof, not {other:?}"
            )))
        }
    })
}

/// The query parameters of the routes, as [`check_query`] reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryParams {
    /// `?count=` of `/history`.
    pub count: usize,
    /// `?minutes=` of `/growth`.
    pub minutes: u32,
    /// `?pid=` of `/consumers` and `/report`.
    pub pid: Option<u32>,
    /// `?format=` of `/report`.
    pub format: &'static str,
}

/// Decodes a query string with the handlers' extractor and checks every parameter the routes read
/// with the handlers' own functions. `Err` is the message answered with 400. A pure function, for
/// the fuzz target `http_query` (`fuzz/`) and tests.
pub fn check_query(query: &str) -> Result<QueryParams, String> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e| format!("malformed request target: {e}"))?;
    let checked = (|| {
        let params = params(Query::try_from_uri(&uri))?;
        let count = int_param(&params, "count", Some(HISTORY_DEFAULT), 1, HISTORY_MAX)?
            .unwrap_or(HISTORY_DEFAULT);
        let minutes = int_param(&params, "minutes", Some(GROWTH_DEFAULT), 1, GROWTH_MAX)?
            .unwrap_or(GROWTH_DEFAULT);
        let pid = pid_param(&params)?;
        let format = match report_format(&params)? {
            ReportFormat::Json => "json",
            ReportFormat::Text => "text",
            ReportFormat::Flamegraph => "flamegraph",
            ReportFormat::Pprof => "pprof",
        };
        Ok::<_, ApiError>(QueryParams {
            count,
            minutes,
            pid,
            format,
        })
    })();
    checked.map_err(|e| e.message)
}

async fn report(State(state): State<AppState>, query: Params) -> Result<Response, ApiError> {
    let params = params(query)?;
    let format = report_format(&params)?;
    let pid = pid_param(&params)?;
    match format {
        ReportFormat::Json => Ok(Json(blocking(&state, |b| b.report()).await?).into_response()),
        ReportFormat::Text => {
            let text = blocking(&state, |b| crate::reports::text(&b.report())).await?;
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        ReportFormat::Flamegraph => {
            let svg = blocking(&state, move |b| b.flamegraph_svg(pid)).await??;
            // An SVG can carry scripts: keep them from running when the file is opened from here.
            Ok((
                [
                    (header::CONTENT_TYPE, "image/svg+xml"),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; style-src 'unsafe-inline'",
                    ),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                svg,
            )
                .into_response())
        }
        ReportFormat::Pprof => {
            let Some(pid) = pid else {
                return Err(ApiError::bad_request("format=pprof needs ?pid="));
            };
            let profile = blocking(&state, move |b| b.pprof(pid)).await??;
            let disposition = format!("attachment; filename=\"memtrace-{pid}.pb.gz\"");
            let mut response = (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                profile,
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            Ok(response)
        }
    }
}

/// `GET /debug/pprof/heap?pid=N` and `/debug/pprof/allocs?pid=N`: a traced process's memory in the
/// form Parca and Pyroscope scrape (Go's `net/http/pprof`).
async fn pprof_scrape(
    State(state): State<AppState>,
    profile: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Response, ApiError> {
    let Path(name) = profile.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let kind = crate::reports::HeapProfile::from_endpoint(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no profile {name:?}: memtrace serves heap and allocs"
        ))
    })?;
    let params = params(query)?;
    crate::reports::check_scrape_query(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(pid) = pid_param(&params)? else {
        return Err(ApiError::bad_request(
            "?pid= is needed: the process whose memory to profile",
        ));
    };
    let profile = blocking(&state, move |b| b.heap_profile(pid, kind)).await??;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::reports::PPROF_CONTENT_TYPE),
        )],
        profile,
    )
        .into_response())
}

/// `GET /debug/pprof/targets`: the traced processes as Prometheus HTTP service discovery, with this
/// agent's address as the scraper reached it.
async fn pprof_targets(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ApiError::bad_request("a Host header is needed"))?
        .to_string();
    let processes = state.backend.profiled_processes();
    let groups = crate::reports::scrape_targets(
        &host,
        processes.iter().map(|(pid, comm)| (*pid, comm.as_str())),
    );
    Ok(Json(groups).into_response())
}

#[cfg(test)]
mod check_query_tests {
    use super::*;

    /// The pure query check the fuzz target `http_query` drives reads what the handlers read, with
    /// their defaults and bounds.
    #[test]
    fn check_query_reads_the_routes_parameters() {
        assert_eq!(
            check_query(""),
            Ok(QueryParams {
                count: HISTORY_DEFAULT,
                minutes: GROWTH_DEFAULT,
                pid: None,
                format: "json",
            })
        );
        assert_eq!(
            check_query("count=7&minutes=%2060&pid=42&format=pprof&other=x"),
            Ok(QueryParams {
                count: 7,
                minutes: 60,
                pid: Some(42),
                format: "pprof",
            })
        );
        for bad in [
            "count=0",
            "count=10001",
            "minutes=-1",
            "pid=0",
            "pid=4194305",
            "format=xml",
        ] {
            assert!(check_query(bad).is_err(), "{bad}");
        }
        let err = check_query("pid=%FF").unwrap_err();
        assert!(err.contains("pid must be an integer"), "{err}");
        let err = check_query("a b").unwrap_err();
        assert!(err.contains("malformed request target"), "{err}");
    }
}
