//! The dashboard end to end: a real agent (with a token) tracing a real process, and the
//! dashboard's Playwright script (memtrace/dashboard/e2e.mjs) driving it in headless Chromium:
//! page and charting library load, WebSocket, chart points, process table, resolving an alert,
//! forced analysis, no CSP violation, and a full-page screenshot kept in the target directory.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace_integration::{
    memtrace_binary, peer_program, wait_for, Agent, AgentSpec, Memops, TempDir,
};

const TOKEN: &str = "dashboard-test-token-7";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

#[test]
fn dashboard_end_to_end_in_headless_chromium() {
    let Some(node) = peer_program(
        "node",
        &["/usr/bin/node"],
        "to run the dashboard's end-to-end script",
    ) else {
        return;
    };
    let Some(chromium) = peer_program(
        "chromium",
        &["/usr/bin/chromium"],
        "for the dashboard's end-to-end test",
    ) else {
        return;
    };
    let dashboard = repo_root().join("memtrace/dashboard");
    if !dashboard.join("node_modules/playwright-core").is_dir() {
        let Some(npm) = peer_program(
            "npm",
            &["/usr/bin/npm"],
            "to install playwright-core for the dashboard test",
        ) else {
            return;
        };
        let out = Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dashboard)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}",
            dashboard.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A 1 MiB RSS threshold, without a for: duration, gives the dashboard active alerts to show
    // and resolve.
    let config = "[thresholds]\nrssMB = 1\nfor = 0\n\n[alerting]\nchannels = [\"file\"]\n\
                  maxAlertsPerHour = 50\nmaxAlertsPerTypePerHour = 50\n";
    let data = TempDir::new("dashboard");
    let Some(agent) = Agent::start(&AgentSpec::new(config, data.path()).token(TOKEN)) else {
        return;
    };
    let mut w = Memops::start();
    let pid = w.pid();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(w.run("mallocn 0 64 65536"), 64);
    wait_for(
        Duration::from_secs(20),
        "an active alert and two snapshots",
        || agent.stderr_tail(20),
        || {
            let alerts = agent.get_json("/api/memory/alerts")["active"]
                .as_array()
                .map_or(0, Vec::len);
            let history = agent
                .get_json("/api/memory/history?count=2")
                .as_array()
                .map_or(0, Vec::len);
            (alerts > 0 && history >= 2).then_some(())
        },
    );

    let target_dir = memtrace_binary()
        .parent()
        .expect("target dir")
        .to_path_buf();
    let screenshot = target_dir.join("dashboard-e2e.png");
    let _ = std::fs::remove_file(&screenshot);
    let log = TempDir::new("dashboard-e2e");
    let out_path = log.path().join("e2e.out");
    let mut child = Command::new(node)
        .arg("e2e.mjs")
        .current_dir(&dashboard)
        .env("MEMTRACE_URL", &agent.url)
        .env("MEMTRACE_TOKEN", TOKEN)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .env("MEMTRACE_E2E_TIMEOUT", "30")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "e2e.mjs still running after 240 s:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                agent.stderr_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr =
        std::io::read_to_string(child.stderr.take().expect("stderr piped")).unwrap_or_default();
    let output = std::fs::read_to_string(&out_path).expect("e2e output");
    let context = format!(
        "--- e2e.mjs output ---\n{output}--- e2e.mjs stderr ---\n{stderr}\n{}",
        agent.stderr_tail(20)
    );
    assert!(status.success(), "e2e.mjs failed ({status}):\n{context}");
    let summary = output.lines().last().unwrap_or_default();
    let counts: Vec<u32> = summary
        .strip_prefix("e2e: ")
        .and_then(|s| s.strip_suffix(" failed"))
        .map(|s| {
            s.split(" passed, ")
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        counts.len(),
        2,
        "no `e2e: N passed, M failed` line:\n{context}"
    );
    assert_eq!(counts[1], 0, "{context}");
    // Every check of the script ran, the alert resolution included.
    assert!(
        counts[0] >= 12,
        "only {} checks passed:\n{context}",
        counts[0]
    );

    // The alert resolved in the page is resolved by hand at the agent.
    let resolved = output
        .lines()
        .find_map(|l| l.strip_prefix("ok   resolve an active alert — alert "))
        .unwrap_or_else(|| panic!("no alert resolved:\n{context}"))
        .trim()
        .to_string();
    let alerts = agent.get_json("/api/memory/alerts");
    let alert = alerts["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == resolved.as_str())
        .unwrap_or_else(|| panic!("alert {resolved} not among the recent ones: {alerts:#}"));
    assert_eq!(
        (&alert["resolved"], &alert["resolvedBy"]),
        (&true.into(), &"manual".into()),
        "{alert:#}"
    );
    assert!(!alerts["active"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["id"] == resolved.as_str()));

    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        screenshot.display()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
    assert_eq!(w.exit(), 0);
    agent.stop();
}
