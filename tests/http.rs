//! The HTTP API of a running agent (docs/api.md): every GET route, tracing a real process on
//! request with the token, the error answers, and the token rules.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace_integration::{
    free_port, memtrace_binary, wait_for, Agent, AgentSpec, Memops, Reply, TempDir,
};
use serde_json::Value;

const TOKEN: &str = "http-test-token-0123456789";

/// A JSON object with at least these keys.
fn has_keys(value: &Value, keys: &[&str], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {value:#}"));
    for key in keys {
        assert!(
            object.contains_key(*key),
            "{what}: no {key:?} in {:?}",
            object.keys().collect::<Vec<_>>()
        );
    }
}

/// An error answer: `status` with `{"error": "...", "status": status}`.
fn is_error(reply: &Reply, status: u16, what: &str) -> String {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    assert!(
        reply.content_type.starts_with("application/json"),
        "{what}: content type {:?}",
        reply.content_type
    );
    let json = reply.json();
    assert_eq!(json["status"], status, "{what}: {json}");
    json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message: {json}"))
        .to_string()
}

fn pids(processes: &Value) -> Vec<u64> {
    processes
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn routes_tracing_and_errors_with_a_token() {
    let data = TempDir::new("http");
    let Some(agent) = Agent::start(&AgentSpec::new("", data.path()).token(TOKEN)) else {
        return;
    };
    let mut w = Memops::start();
    let pid = w.pid();
    let trace = format!("/api/memory/trace/{pid}");

    // State-changing requests need the token, even on loopback.
    let reply = agent.request("POST", &trace, None);
    is_error(&reply, 401, "POST trace without a token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"memtrace\"")
    );
    is_error(
        &agent.request("POST", &trace, Some("wrong-token")),
        401,
        "POST trace with a wrong token",
    );
    is_error(
        &agent.request("POST", "/api/memory/analyze", None),
        401,
        "POST analyze without a token",
    );
    let reply = agent.request("POST", &trace, Some(TOKEN));
    assert_eq!(
        reply.status,
        200,
        "POST trace: {}\n{}",
        reply.text(),
        agent.stderr_tail(30)
    );
    let json = reply.json();
    assert_eq!(
        (json["pid"].as_u64(), json["traced"].as_bool()),
        (Some(u64::from(pid)), Some(true)),
        "{json}"
    );

    // 20 blocks of 50 000 bytes, 5 freed: 750 000 live bytes in 15 blocks, from memops' main.
    assert_eq!(w.run("mallocn 0 20 50000"), 20);
    assert_eq!(w.run("freen 0 5"), 5);

    let process = wait_for(
        Duration::from_secs(20),
        "the traced heap to show 750000 live bytes",
        || agent.stderr_tail(30),
        || {
            let process = agent.process_json(pid)?;
            (process["snapshot"]["heapLiveBytes"] == 750_000).then_some(process)
        },
    );
    has_keys(
        &process,
        &["snapshot", "pattern", "consumers", "libraries"],
        "GET /processes/{pid}",
    );
    let snapshot = &process["snapshot"];
    assert_eq!(snapshot["pid"], pid);
    assert_eq!(snapshot["comm"], "memops");
    assert_eq!(snapshot["heapTraced"], true);
    assert_eq!(
        (
            &snapshot["heapLiveCount"],
            &snapshot["heapTotalAllocs"],
            &snapshot["heapTotalFrees"],
            &snapshot["heapUnknownFrees"]
        ),
        (
            &Value::from(15),
            &Value::from(20),
            &Value::from(5),
            &Value::from(0)
        ),
        "{snapshot:#}"
    );
    assert_eq!(process["traced"], true);

    let consumers = agent.get_json(&format!("/api/memory/consumers?pid={pid}"));
    assert_eq!(
        pids(&consumers["processes"]),
        [u64::from(pid)],
        "{consumers:#}"
    );
    let from_main = consumers["consumers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "malloc" && c["name"] == "main")
        .unwrap_or_else(|| panic!("no malloc consumer `main`: {consumers:#}"));
    assert_eq!(
        (
            &from_main["allocatedMemory"],
            &from_main["activeAllocations"]
        ),
        (&Value::from(750_000), &Value::from(15))
    );
    assert_eq!(
        (&from_main["pid"], &from_main["comm"]),
        (&Value::from(pid), &Value::from("memops"))
    );

    let reply = agent.request(
        "GET",
        &format!("/api/memory/report?format=flamegraph&pid={pid}"),
        None,
    );
    assert_eq!(reply.status, 200, "flamegraph: {}", reply.text());
    assert_eq!(reply.content_type, "image/svg+xml");
    let svg = reply.text();
    assert!(
        svg.contains("<svg") && svg.contains("main"),
        "not a flame graph of memops: {}",
        &svg[..svg.len().min(500)]
    );
    let reply = agent.request(
        "GET",
        &format!("/api/memory/report?format=pprof&pid={pid}"),
        None,
    );
    assert_eq!(reply.status, 200, "pprof: {}", reply.text());
    assert_eq!(reply.body[..2], [0x1f, 0x8b], "a gzipped profile");
    assert!(reply
        .header("content-disposition")
        .is_some_and(|d| d.contains(&format!("memtrace-{pid}.pb.gz"))));

    // Every GET route answers 200 with its documented shape. The listing routes read the latest
    // snapshot: wait for one that has memops.
    wait_for(
        Duration::from_secs(10),
        "a snapshot with memops",
        || agent.stderr_tail(20),
        || {
            pids(&agent.get_json("/api/memory/processes"))
                .contains(&u64::from(pid))
                .then_some(())
        },
    );
    let status = agent.get_json("/api/memory/status");
    has_keys(
        &status,
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
        "status",
    );
    assert_eq!(status["isMonitoring"], true);
    assert!(
        status["tracedPids"]
            .as_array()
            .is_some_and(|p| p.contains(&Value::from(pid))),
        "{status:#}"
    );
    has_keys(
        &status["lastSnapshot"],
        &[
            "timestamp",
            "memTotalBytes",
            "memAvailableBytes",
            "processes",
        ],
        "status.lastSnapshot",
    );
    let history = agent.get_json("/api/memory/history?count=5");
    let history = history.as_array().expect("history is an array");
    assert!(
        (1..=5).contains(&history.len()),
        "{} snapshots",
        history.len()
    );
    for snapshot in history {
        has_keys(
            snapshot,
            &[
                "timestamp",
                "memTotalBytes",
                "memAvailableBytes",
                "processes",
            ],
            "history[]",
        );
    }
    assert!(
        history
            .windows(2)
            .all(|w| w[0]["timestamp"].as_u64() < w[1]["timestamp"].as_u64()),
        "oldest first"
    );
    has_keys(
        &agent.get_json("/api/memory/alerts"),
        &["active", "recent"],
        "alerts",
    );
    let growth = agent.get_json("/api/memory/growth?minutes=5");
    has_keys(&growth, &["minutes", "from", "to", "processes"], "growth");
    assert_eq!(growth["minutes"], 5);
    let export = agent.request("GET", "/api/memory/export", None);
    assert_eq!(export.status, 200);
    assert!(export
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment; filename=\"memtrace-export-")));
    has_keys(
        &export.json(),
        &["exportedAt", "snapshots", "alerts", "patterns", "consumers"],
        "export",
    );
    let report = agent.get_json("/api/memory/report");
    has_keys(
        &report,
        &[
            "generatedAt",
            "summary",
            "patterns",
            "topProcesses",
            "alerts",
        ],
        "report",
    );
    has_keys(
        &report["summary"],
        &["processes", "tracedProcesses", "activeAlerts"],
        "report.summary",
    );
    assert!(
        report["summary"]["tracedProcesses"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{:#}",
        report["summary"]
    );
    let text = agent.request("GET", "/api/memory/report?format=text", None);
    assert_eq!(
        (text.status, text.content_type.as_str()),
        (200, "text/plain; charset=utf-8")
    );
    assert!(
        text.text().starts_with("memtrace report"),
        "{}",
        text.text()
    );
    let all = agent.get_json("/api/memory/consumers");
    has_keys(&all, &["consumers"], "consumers");
    assert!(
        all["consumers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["pid"] == pid)),
        "{all:#}"
    );
    let health = agent.get_json("/health");
    has_keys(&health, &["status", "memory"], "health");
    assert!(
        matches!(health["status"].as_str(), Some("healthy" | "warning")),
        "{health}"
    );
    assert_eq!(health["memory"]["monitoring"], true);
    let metrics = agent.request("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let metrics = metrics.text();
    // Series are keyed by identity (command name and cgroup), the pid is on the info series.
    let cgroup = agent.process_json(pid).expect("memops is known")["snapshot"]["cgroup"]
        .as_str()
        .expect("a cgroup")
        .to_string();
    assert!(
        metrics.contains(&format!(
            "memtrace_traced_process_info{{cgroup=\"{cgroup}\",comm=\"memops\",container=\"\",pid=\"{pid}\",reason=\"requested\"}} 1"
        )),
        "{metrics}"
    );
    let series = |name: &str| {
        let labels = format!("{{cgroup=\"{cgroup}\",comm=\"memops\",container=\"\"}} ");
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|l| l.strip_prefix(labels.as_str()))
            })
            .unwrap_or_else(|| panic!("no {name}{labels}in:\n{metrics}"))
    };
    assert_eq!(series("memtrace_process_heap_live_bytes"), "750000");
    assert_eq!(series("memtrace_process_heap_live_allocations"), "15");
    assert_eq!(series("memtrace_process_heap_traced"), "1");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("memtrace_agent_rss_bytes ")),
        "{metrics}"
    );
    let dashboard = agent.request("GET", "/api/memory/dashboard", None);
    assert_eq!(dashboard.status, 200);
    assert!(
        dashboard.content_type.starts_with("text/html"),
        "{}",
        dashboard.content_type
    );
    assert!(dashboard
        .header("content-security-policy")
        .is_some_and(|c| c.starts_with("default-src 'self'")));
    assert!(dashboard.text().contains("/api/memory/dashboard/app.js"));

    let analysis = agent.request("POST", "/api/memory/analyze", Some(TOKEN));
    assert_eq!(analysis.status, 200, "{}", analysis.text());
    assert!(analysis.json().is_array());

    // Stop tracing: with the token only, and only what is traced.
    is_error(
        &agent.request("DELETE", &trace, None),
        401,
        "DELETE trace without a token",
    );
    let reply = agent.request("DELETE", &trace, Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["traced"], false);
    is_error(
        &agent.request("DELETE", &trace, Some(TOKEN)),
        404,
        "DELETE trace of an untraced process",
    );
    let status = agent.get_json("/api/memory/status");
    assert!(
        !status["tracedPids"]
            .as_array()
            .is_some_and(|p| p.contains(&Value::from(pid))),
        "{status:#}"
    );

    // Bad parameters.
    for path in [
        "/api/memory/history?count=abc",
        "/api/memory/history?count=0",
        "/api/memory/growth?minutes=-1",
        "/api/memory/processes/notapid",
        "/api/memory/processes/0",
        "/api/memory/report?format=nope",
        "/api/memory/report?format=pprof",
        "/api/memory/consumers?pid=x",
    ] {
        let message = is_error(&agent.request("GET", path, None), 400, path);
        assert!(!message.is_empty());
    }
    let message = is_error(
        &agent.request("GET", "/api/memory/history?count=abc", None),
        400,
        "count=abc",
    );
    assert_eq!(
        message,
        "count must be an integer from 1 to 10000, not \"abc\""
    );
    is_error(
        &agent.request("POST", "/api/memory/alerts/nope/resolve", Some(TOKEN)),
        404,
        "resolve an unknown alert",
    );
    is_error(
        &agent.request("GET", "/api/memory/nothing-here", None),
        404,
        "unknown route",
    );
    is_error(
        &agent.request("DELETE", "/api/memory/status", Some(TOKEN)),
        405,
        "wrong method",
    );
    is_error(
        &agent.request("POST", "/api/memory/trace/4194304", Some(TOKEN)),
        404,
        "trace a process that does not exist",
    );
    is_error(
        &agent.request(
            "POST",
            &format!("/api/memory/trace/{}", agent.pid()),
            Some(TOKEN),
        ),
        400,
        "trace the agent itself",
    );

    assert_eq!(w.exit(), 0);
    agent.stop();
}

#[test]
fn without_a_token_state_changing_requests_are_refused() {
    let data = TempDir::new("http-no-token");
    let Some(agent) = Agent::start(&AgentSpec::new("", data.path())) else {
        return;
    };
    let w = Memops::start();
    for (method, path) in [
        ("POST", format!("/api/memory/trace/{}", w.pid())),
        ("DELETE", format!("/api/memory/trace/{}", w.pid())),
        ("POST", "/api/memory/analyze".to_string()),
        ("POST", "/api/memory/alerts/nope/resolve".to_string()),
    ] {
        // Even with a token in the request: the agent has none to compare it with.
        for token in [None, Some(TOKEN)] {
            let message = is_error(
                &agent.request(method, &path, token),
                403,
                &format!("{method} {path}"),
            );
            assert!(message.starts_with("no token is configured"), "{message}");
        }
    }
    // Reading stays open on loopback.
    assert_eq!(agent.get_json("/api/memory/status")["isMonitoring"], true);
    assert!(agent.get_json("/api/memory/status")["tracedPids"]
        .as_array()
        .is_some_and(Vec::is_empty));
    agent.stop();
}

#[test]
fn non_loopback_listener_without_a_token_refuses_to_start() {
    // Refused before any probe is loaded: no privileges needed.
    let data = TempDir::new("http-remote");
    let listen = format!("0.0.0.0:{}", free_port());
    let mut child = Command::new(memtrace_binary())
        .args(["agent", "--listen", &listen, "--data-dir"])
        .arg(data.path())
        .env_remove("MEMTRACE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memtrace runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for memtrace") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("memtrace output");
            panic!(
                "memtrace agent --listen {listen} without a token still runs after 10 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr =
        std::io::read_to_string(child.stderr.take().expect("stderr piped")).expect("stderr");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!("refusing to listen on {listen}")) && stderr.contains("token"),
        "{stderr}"
    );
    assert!(!stderr.contains("memtrace agent running"), "{stderr}");
}
