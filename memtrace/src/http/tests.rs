//! Route tests on the mock backend: answers and their shapes, parameter checks, the token, the
//! `Host` and `Origin` checks, and a WebSocket round trip on a real socket.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};
use tower::ServiceExt as _;

use super::{
    mock::{MockBackend, MOCK_ALERT_ID, MOCK_PPROF, MOCK_TIMESTAMP},
    router, serve, serve_listener, HttpConfig, HttpError, StreamEvent,
};

const TOKEN: &str = "s3cret-token";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ascii header")
    }

    /// Asserts an error answer: this status and `{"error": "...", "status": code}`.
    fn assert_error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let json = self.json();
        assert_eq!(json["status"], status.as_u16(), "{json}");
        let message = json["error"].as_str().expect("error message").to_string();
        assert!(!message.is_empty());
        message
    }
}

fn app(token: Option<&str>, loopback: bool) -> (Router, Arc<MockBackend>) {
    let backend = Arc::new(MockBackend::new());
    let config = HttpConfig {
        token: token.map(str::to_string),
        loopback,
    };
    (router(backend.clone(), config), backend)
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn call(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(app, request.body(Body::empty()).expect("request")).await
}

async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Method::GET, uri, &[]).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_keys(json: &Value, keys: &[&str]) {
    for key in keys {
        assert!(json.get(key).is_some(), "no {key:?} in {json}");
    }
}

#[tokio::test]
async fn get_routes_answer_with_their_shapes() {
    let (app, _) = app(None, true);

    let status = get(&app, "/api/memory/status").await;
    assert_eq!(status.status, StatusCode::OK);
    assert!(status
        .header(header::CONTENT_TYPE)
        .starts_with("application/json"));
    let json = status.json();
    assert_keys(
        &json,
        &[
            "isMonitoring",
            "startedAt",
            "uptimeSeconds",
            "lastSnapshot",
            "activeAlerts",
            "tracedPids",
            "mallocAll",
            "eventsReceived",
            "eventsLost",
        ],
    );
    assert_eq!(
        json["lastSnapshot"]["processes"][0]["rssBytes"],
        200u64 << 20
    );

    let history = get(&app, "/api/memory/history").await;
    assert_eq!(history.status, StatusCode::OK);
    let snapshots = history.json();
    let snapshots = snapshots.as_array().expect("array");
    assert_eq!(snapshots.len(), 3);
    assert_keys(
        &snapshots[0],
        &[
            "timestamp",
            "memTotalBytes",
            "memAvailableBytes",
            "processes",
        ],
    );
    assert!(snapshots[0]["timestamp"].as_u64() < snapshots[2]["timestamp"].as_u64());
    let two = get(&app, "/api/memory/history?count=2").await.json();
    assert_eq!(two.as_array().map(Vec::len), Some(2));

    let alerts = get(&app, "/api/memory/alerts").await.json();
    assert_keys(&alerts, &["active", "recent"]);
    assert_eq!(alerts["active"][0]["id"], MOCK_ALERT_ID);

    let growth = get(&app, "/api/memory/growth?minutes=60").await.json();
    assert_keys(&growth, &["minutes", "from", "to", "processes"]);
    assert_eq!(growth["minutes"], 60);
    assert_keys(
        &growth["processes"][0],
        &[
            "pid",
            "startRssBytes",
            "endRssBytes",
            "deltaRssBytes",
            "rssGrowthMbPerMinute",
        ],
    );
    assert_eq!(get(&app, "/api/memory/growth").await.json()["minutes"], 30);

    let consumers = get(&app, "/api/memory/consumers").await.json();
    assert_eq!(consumers["consumers"].as_array().map(Vec::len), Some(2));
    let none = get(&app, "/api/memory/consumers?pid=200").await.json();
    assert_eq!(none["consumers"].as_array().map(Vec::len), Some(0));

    let processes = get(&app, "/api/memory/processes").await.json();
    assert_eq!(processes.as_array().map(Vec::len), Some(3));
    assert_keys(
        &processes[0],
        &["pid", "comm", "rssBytes", "heapTraced", "libraries"],
    );

    let process = get(&app, "/api/memory/processes/100").await;
    assert_eq!(process.status, StatusCode::OK);
    let process = process.json();
    assert_keys(&process, &["snapshot", "pattern", "consumers", "libraries"]);
    assert_eq!(process["pattern"]["pattern"]["type"], "leak");

    let export = get(&app, "/api/memory/export").await;
    assert_eq!(export.status, StatusCode::OK);
    let disposition = export.header(header::CONTENT_DISPOSITION);
    assert!(
        disposition.starts_with("attachment; filename=\"memtrace-export-")
            && disposition.ends_with(".json\""),
        "{disposition}"
    );
    assert_keys(
        &export.json(),
        &["snapshots", "alerts", "patterns", "consumers"],
    );

    let health = get(&app, "/health").await.json();
    assert_eq!(health["status"], "warning");
    assert_eq!(health["memory"]["alerts"], 1);
    assert_eq!(health["memory"]["monitoring"], true);

    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics
        .header(header::CONTENT_TYPE)
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(metrics.body).expect("utf-8");
    assert!(text.contains("memtrace_process_rss_bytes{"), "{text}");
}

#[tokio::test]
async fn report_formats() {
    let (app, _) = app(None, true);

    let json = get(&app, "/api/memory/report").await;
    assert_eq!(json.status, StatusCode::OK);
    assert_keys(&json.json(), &["generatedAt", "summary", "patterns"]);
    assert_eq!(
        get(&app, "/api/memory/report?format=json").await.status,
        StatusCode::OK
    );

    let text = get(&app, "/api/memory/report?format=text").await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(
        text.header(header::CONTENT_TYPE),
        "text/plain; charset=utf-8"
    );
    assert!(String::from_utf8_lossy(&text.body).starts_with("memtrace report"));

    for uri in [
        "/api/memory/report?format=flamegraph",
        "/api/memory/report?format=flamegraph&pid=100",
    ] {
        let svg = get(&app, uri).await;
        assert_eq!(svg.status, StatusCode::OK, "{uri}");
        assert_eq!(svg.header(header::CONTENT_TYPE), "image/svg+xml");
        assert!(svg.body.starts_with(b"<svg"));
    }
    get(&app, "/api/memory/report?format=flamegraph&pid=200")
        .await
        .assert_error(StatusCode::NOT_FOUND);

    let pprof = get(&app, "/api/memory/report?format=pprof&pid=100").await;
    assert_eq!(pprof.status, StatusCode::OK);
    assert_eq!(
        pprof.header(header::CONTENT_TYPE),
        "application/octet-stream"
    );
    assert!(pprof
        .header(header::CONTENT_DISPOSITION)
        .contains("memtrace-100.pb.gz"));
    assert_eq!(pprof.body, MOCK_PPROF);
    assert_eq!(&pprof.body[..2], &[0x1f, 0x8b]);

    let message = get(&app, "/api/memory/report?format=pprof")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    assert!(message.contains("pid"), "{message}");
    get(&app, "/api/memory/report?format=pdf")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn dashboard_is_served_with_a_strict_policy() {
    let (app, _) = app(None, true);
    for uri in ["/api/memory/dashboard", "/api/memory/dashboard/"] {
        let page = get(&app, uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_eq!(
            page.header(header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let csp = page.header(header::CONTENT_SECURITY_POLICY);
        assert!(
            csp.starts_with("default-src 'self'; connect-src 'self'"),
            "{csp}"
        );
        assert!(String::from_utf8_lossy(&page.body).contains("<html"));
        assert!(page
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }
    for (path, content_type, bytes) in super::ASSETS {
        let reply = get(&app, &format!("/api/memory/dashboard/{path}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.header(header::CONTENT_TYPE), *content_type);
        assert_eq!(reply.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(reply.body, *bytes);
    }
    for path in ["app.js", "style.css", "vendor/chart.umd.min.js"] {
        assert!(super::ASSETS.iter().any(|(p, _, _)| *p == path), "{path}");
    }
    get(&app, "/api/memory/dashboard/nope.js")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    get(&app, "/api/memory/dashboard/../../Cargo.toml")
        .await
        .assert_error(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_parameters_are_400_json() {
    let (app, _) = app(Some(TOKEN), true);
    for uri in [
        "/api/memory/history?count=abc",
        "/api/memory/history?count=0",
        "/api/memory/history?count=-1",
        "/api/memory/history?count=10001",
        "/api/memory/history?count=1.5",
        "/api/memory/growth?minutes=0",
        "/api/memory/growth?minutes=10081",
        "/api/memory/growth?minutes=x",
        "/api/memory/consumers?pid=abc",
        "/api/memory/consumers?pid=0",
        "/api/memory/consumers?pid=99999999999",
        "/api/memory/report?format=text&pid=-3",
        "/api/memory/processes/abc",
        "/api/memory/processes/0",
        "/api/memory/processes/4194305",
        "/api/memory/history?count=%ZZ",
    ] {
        let message = get(&app, uri).await.assert_error(StatusCode::BAD_REQUEST);
        assert!(!message.is_empty(), "{uri}");
    }
    // Boundaries are accepted.
    for uri in [
        "/api/memory/history?count=1",
        "/api/memory/history?count=10000",
        "/api/memory/growth?minutes=1",
        "/api/memory/growth?minutes=10080",
        "/api/memory/history?unknown=1",
    ] {
        assert_eq!(get(&app, uri).await.status, StatusCode::OK, "{uri}");
    }
    let auth = bearer(TOKEN);
    let auth = [("authorization", auth.as_str())];
    for uri in ["/api/memory/trace/abc", "/api/memory/trace/0"] {
        call(&app, Method::POST, uri, &auth)
            .await
            .assert_error(StatusCode::BAD_REQUEST);
        call(&app, Method::DELETE, uri, &auth)
            .await
            .assert_error(StatusCode::BAD_REQUEST);
    }
    call(
        &app,
        Method::POST,
        "/api/memory/alerts/bad%20id/resolve",
        &auth,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_things_are_404_json() {
    let (app, _) = app(None, true);
    get(&app, "/nope").await.assert_error(StatusCode::NOT_FOUND);
    get(&app, "/api/memory/nope")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    let message = get(&app, "/api/memory/processes/999")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    assert!(message.contains("999"), "{message}");
    // A GET-only route with another read method.
    call(&app, Method::PUT, "/api/memory/status", &[])
        .await
        .assert_error(StatusCode::FORBIDDEN);
    let (with_token, _) = self::app(Some(TOKEN), true);
    let auth = bearer(TOKEN);
    call(
        &with_token,
        Method::PUT,
        "/api/memory/status",
        &[("authorization", &auth)],
    )
    .await
    .assert_error(StatusCode::METHOD_NOT_ALLOWED);
}

/// Every state-changing route, with the status the mock gives it when allowed.
const STATE_CHANGING: [(Method, &str); 4] = [
    (Method::POST, "/api/memory/analyze"),
    (Method::POST, "/api/memory/trace/200"),
    (Method::DELETE, "/api/memory/trace/100"),
    (
        Method::POST,
        "/api/memory/alerts/alert_1700000000000_abc123def/resolve",
    ),
];

#[tokio::test]
async fn state_changing_requests_without_a_configured_token_are_403() {
    let (app, _) = app(None, true);
    for (method, uri) in STATE_CHANGING {
        let message = call(&app, method.clone(), uri, &[])
            .await
            .assert_error(StatusCode::FORBIDDEN);
        assert!(
            message.contains("set a token (monitor.token, MEMTRACE_TOKEN or monitor.tokenFile)"),
            "{message}"
        );
        // A token presented to an agent without one changes nothing.
        let auth = bearer("anything");
        call(&app, method, uri, &[("authorization", &auth)])
            .await
            .assert_error(StatusCode::FORBIDDEN);
    }
    // An empty configured token is no token.
    let (empty, _) = self::app(Some("  "), true);
    call(
        &empty,
        Method::POST,
        "/api/memory/analyze",
        &[("authorization", "Bearer ")],
    )
    .await
    .assert_error(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn state_changing_requests_need_the_right_token() {
    let (app, backend) = app(Some(TOKEN), true);
    for (method, uri) in STATE_CHANGING {
        let missing = call(&app, method.clone(), uri, &[]).await;
        missing.assert_error(StatusCode::UNAUTHORIZED);
        assert!(missing
            .header(header::WWW_AUTHENTICATE)
            .starts_with("Bearer"));
        for wrong in ["s3cret-tokem", "s3cret-token2", "s3cret", ""] {
            let auth = bearer(wrong);
            call(&app, method.clone(), uri, &[("authorization", &auth)])
                .await
                .assert_error(StatusCode::UNAUTHORIZED);
        }
        // The query token is only for the WebSocket.
        call(&app, method.clone(), &format!("{uri}?token={TOKEN}"), &[])
            .await
            .assert_error(StatusCode::UNAUTHORIZED);
        let auth = bearer(TOKEN);
        let ok = call(&app, method.clone(), uri, &[("authorization", &auth)]).await;
        assert_eq!(
            ok.status,
            StatusCode::OK,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&ok.body)
        );
    }
    // What the calls did.
    let auth = bearer(TOKEN);
    let auth = [("authorization", auth.as_str())];
    let status = get(&app, "/api/memory/status").await.json();
    assert_eq!(status["tracedPids"], serde_json::json!([200]));
    assert_eq!(status["activeAlerts"], 0);
    assert_eq!(get(&app, "/health").await.json()["status"], "healthy");
    let alerts = get(&app, "/api/memory/alerts").await.json();
    assert_eq!(alerts["recent"][0]["resolved"], true);
    let analysis = call(&app, Method::POST, "/api/memory/analyze", &auth)
        .await
        .json();
    assert_eq!(analysis[0]["pattern"]["type"], "leak");
    assert_eq!(analysis[0]["pid"], 100);
    // Backend errors keep their status.
    call(
        &app,
        Method::POST,
        "/api/memory/alerts/alert_1700000000000_abc123def/resolve",
        &auth,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST);
    call(
        &app,
        Method::POST,
        "/api/memory/alerts/alert_0_nope/resolve",
        &auth,
    )
    .await
    .assert_error(StatusCode::NOT_FOUND);
    call(&app, Method::POST, "/api/memory/trace/999", &auth)
        .await
        .assert_error(StatusCode::NOT_FOUND);
    call(&app, Method::DELETE, "/api/memory/trace/100", &auth)
        .await
        .assert_error(StatusCode::NOT_FOUND);
    drop(backend);
}

#[tokio::test]
async fn non_loopback_listeners_need_the_token_on_every_request() {
    let (app, _) = app(Some(TOKEN), false);
    let auth = bearer(TOKEN);
    // The dashboard's static files hold no data and load without the token (a browser cannot add
    // a header to a page load); the API calls they make need it.
    for uri in ["/api/memory/dashboard", "/api/memory/dashboard/app.js"] {
        assert_eq!(get(&app, uri).await.status, StatusCode::OK, "{uri}");
    }
    for uri in [
        "/api/memory/status",
        "/health",
        "/metrics",
        "/api/memory/history",
        "/nope",
    ] {
        get(&app, uri).await.assert_error(StatusCode::UNAUTHORIZED);
        let wrong = bearer("nope");
        call(&app, Method::GET, uri, &[("authorization", &wrong)])
            .await
            .assert_error(StatusCode::UNAUTHORIZED);
        let ok = call(&app, Method::GET, uri, &[("authorization", &auth)]).await;
        let expected = if uri == "/nope" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(ok.status, expected, "{uri}");
    }
    // No Host check off loopback: the name is whatever the network calls this host.
    let ok = call(
        &app,
        Method::GET,
        "/api/memory/status",
        &[("authorization", &auth), ("host", "memtrace.lan:9000")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    get(&app, &format!("/api/memory/status?token={TOKEN}"))
        .await
        .assert_error(StatusCode::UNAUTHORIZED);
    // The WebSocket takes the token in the query: past the guard, the request fails only for not
    // being a real upgrade.
    let ws = get(&app, &format!("/api/memory/ws?token={TOKEN}")).await;
    assert!(
        ws.status != StatusCode::UNAUTHORIZED && ws.status != StatusCode::FORBIDDEN,
        "{}",
        ws.status
    );
    get(&app, "/api/memory/ws?token=wrong")
        .await
        .assert_error(StatusCode::UNAUTHORIZED);

    // Without a token nothing is answered.
    let (open, _) = self::app(None, false);
    let message = get(&open, "/api/memory/status")
        .await
        .assert_error(StatusCode::FORBIDDEN);
    assert!(message.contains("MEMTRACE_TOKEN"), "{message}");
}

#[tokio::test]
async fn loopback_listeners_only_answer_loopback_host_names() {
    let (app, _) = app(None, true);
    for host in [
        "localhost:9000",
        "127.0.0.1:9000",
        "[::1]:9000",
        "localhost",
    ] {
        let reply = call(&app, Method::GET, "/api/memory/status", &[("host", host)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
    }
    for host in [
        "evil.example:9000",
        "192.168.1.10:9000",
        "localhost.evil.example",
    ] {
        call(&app, Method::GET, "/api/memory/status", &[("host", host)])
            .await
            .assert_error(StatusCode::FORBIDDEN);
    }
}

fn ws_handshake_headers(origin: Option<&str>) -> Vec<(&str, &str)> {
    let mut headers = vec![
        ("host", "127.0.0.1:9000"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    headers
}

#[tokio::test]
async fn websocket_refuses_foreign_origins() {
    let (app, _) = app(None, true);
    for origin in [
        "http://evil.example",
        "http://evil.example:9000",
        "http://localhost:9001",
        "null",
    ] {
        let reply = call(
            &app,
            Method::GET,
            "/api/memory/ws",
            &ws_handshake_headers(Some(origin)),
        )
        .await;
        let message = reply.assert_error(StatusCode::FORBIDDEN);
        assert!(message.contains("origin"), "{message}");
    }
    // Same origin, or none: past the check (the upgrade itself needs a real connection).
    for origin in [
        Some("http://127.0.0.1:9000"),
        Some("http://localhost:9000"),
        None,
    ] {
        let reply = call(
            &app,
            Method::GET,
            "/api/memory/ws",
            &ws_handshake_headers(origin),
        )
        .await;
        assert_ne!(reply.status, StatusCode::FORBIDDEN, "{origin:?}");
    }
}

#[tokio::test]
async fn serve_refuses_non_loopback_addresses_without_a_token() {
    let backend = Arc::new(MockBackend::new());
    for token in [None, Some(String::new()), Some(" ".to_string())] {
        let result = serve(
            "0.0.0.0:0".parse().expect("addr"),
            token,
            backend.clone(),
            async {},
        )
        .await;
        assert!(
            matches!(result, Err(HttpError::NonLoopbackWithoutToken(_))),
            "{result:?}"
        );
    }
    let result = serve(
        "[::]:0".parse().expect("addr"),
        None,
        backend.clone(),
        async {},
    )
    .await;
    assert!(
        matches!(result, Err(HttpError::NonLoopbackWithoutToken(_))),
        "{result:?}"
    );
    // Loopback without a token is fine (and stops with its shutdown future).
    let result = serve("127.0.0.1:0".parse().expect("addr"), None, backend, async {
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}

/// Waits for a condition, at most `deadline` from now.
async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_text<S>(client: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no error");
        match message {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("JSON text frame")
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_streams_events_then_closes_on_shutdown() {
    let backend = Arc::new(MockBackend::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(
        listener,
        None,
        backend.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    // A foreign page is refused at the handshake.
    let mut foreign = format!("ws://{addr}/api/memory/ws")
        .into_client_request()
        .expect("request");
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected a 403, got {other:?}"),
    }

    let mut request = format!("ws://{addr}/api/memory/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", format!("http://{addr}").parse().expect("header"));
    let (mut client, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    wait_until("the subscription", Duration::from_secs(10), || {
        backend.subscribers() == 1
    })
    .await;

    let snapshot = Arc::new(backend.snapshot().clone());
    assert_eq!(backend.publish(StreamEvent::Snapshot(snapshot)), 1);
    let message = next_text(&mut client).await;
    assert_eq!(message["type"], "snapshot");
    assert_eq!(message["data"]["timestamp"], MOCK_TIMESTAMP);
    assert_eq!(message["data"]["processes"][0]["comm"], "node");

    let mut alert = super::Backend::alerts(backend.as_ref()).active[0].clone();
    alert.id = "alert_1".into();
    backend.publish(StreamEvent::AlertCreated(alert.clone()));
    let message = next_text(&mut client).await;
    assert_eq!(message["type"], "alert:created");
    assert_eq!(message["data"]["id"], "alert_1");

    // Client messages are ignored.
    client
        .send(tungstenite::Message::text("hello"))
        .await
        .expect("send");

    // More events than the channel holds, faster than the stream task can run (this test's
    // runtime has one thread): the client is told how many it missed, then gets the rest.
    for i in 0..40 {
        let mut resolved = alert.clone();
        resolved.id = format!("alert_{i}");
        backend.publish(StreamEvent::AlertResolved(resolved));
    }
    let lagged = next_text(&mut client).await;
    assert_eq!(lagged["type"], "lagged", "{lagged}");
    assert_eq!(lagged["data"]["skipped"], 24);
    for i in 24..40 {
        let message = next_text(&mut client).await;
        assert_eq!(message["type"], "alert:resolved");
        assert_eq!(message["data"]["id"], format!("alert_{i}"));
    }

    // Server shutdown closes the stream with "going away".
    stop_tx.send(()).expect("server running");
    let close = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("a close frame within 10 s")
            .expect("stream open")
            .expect("no error");
        if let tungstenite::Message::Close(frame) = message {
            break frame;
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    // The client answers the close; the connection then ends.
    while let Some(Ok(_)) = client.next().await {}
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops within 10 s")
        .expect("server task")
        .expect("server result");
    wait_until("the unsubscription", Duration::from_secs(10), || {
        backend.subscribers() == 0
    })
    .await;
}

#[tokio::test]
async fn websocket_client_close_ends_the_stream() {
    let backend = Arc::new(MockBackend::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(
        listener,
        None,
        backend.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/memory/ws"))
        .await
        .expect("connect");
    wait_until("the subscription", Duration::from_secs(10), || {
        backend.subscribers() == 1
    })
    .await;
    client.close(None).await.expect("close");
    // The server answers the close frame.
    let reply = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("an answer within 10 s");
    assert!(
        matches!(reply, Some(Ok(tungstenite::Message::Close(_))) | None),
        "{reply:?}"
    );
    wait_until("the unsubscription", Duration::from_secs(10), || {
        backend.subscribers() == 0
    })
    .await;
    stop_tx.send(()).expect("server running");
    server.await.expect("server task").expect("server result");
}

#[tokio::test]
async fn pprof_scrape_routes_and_targets() {
    let (app, _) = app(None, true);
    let heap = get(&app, "/debug/pprof/heap?pid=100").await;
    assert_eq!(heap.status, StatusCode::OK);
    assert_eq!(
        heap.header(header::CONTENT_TYPE),
        "application/octet-stream"
    );
    assert_eq!(heap.body, MOCK_PPROF);
    assert_eq!(
        get(&app, "/debug/pprof/allocs?pid=100&gc=1").await.status,
        StatusCode::OK
    );
    let message = get(&app, "/debug/pprof/heap?pid=100&seconds=30")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    assert!(message.contains("seconds=30"), "{message}");
    get(&app, "/debug/pprof/heap?pid=100&debug=1")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    get(&app, "/debug/pprof/heap")
        .await
        .assert_error(StatusCode::BAD_REQUEST);
    get(&app, "/debug/pprof/heap?pid=200")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    get(&app, "/debug/pprof/goroutine?pid=100")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    let targets = call(
        &app,
        Method::GET,
        "/debug/pprof/targets",
        &[("host", "127.0.0.1:10000")],
    )
    .await;
    assert_eq!(targets.status, StatusCode::OK);
    let json = targets.json();
    assert_eq!(json[0]["targets"][0], "127.0.0.1:10000");
    assert_eq!(json[0]["labels"]["__param_pid"], "100");
    assert_eq!(json[0]["labels"]["service_name"], "node");
}

/// Guards: two `Host` headers are refused; every answer has `nosniff`; every 401 the challenge.
#[tokio::test]
async fn headers_every_answer_carries() {
    let (app, _) = app(Some(TOKEN), true);
    let two_hosts = call(
        &app,
        Method::GET,
        "/api/memory/status",
        &[("host", "127.0.0.1:1"), ("host", "evil.example")],
    )
    .await;
    two_hosts.assert_error(StatusCode::BAD_REQUEST);
    for (method, uri, token) in [
        (Method::GET, "/api/memory/status", None),
        (Method::GET, "/api/memory/nope", None),
        (Method::POST, "/api/memory/analyze", None),
        (Method::POST, "/api/memory/analyze", Some("wrong")),
        (Method::PUT, "/api/memory/status", None),
        (Method::GET, "/api/memory/dashboard", None),
    ] {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let reply = call(&app, method.clone(), uri, &headers).await;
        assert_eq!(
            reply.header(header::X_CONTENT_TYPE_OPTIONS),
            "nosniff",
            "{method} {uri}"
        );
        if reply.status == StatusCode::UNAUTHORIZED {
            assert!(
                reply.header(header::WWW_AUTHENTICATE).starts_with("Bearer"),
                "{method} {uri}"
            );
        }
    }
}
