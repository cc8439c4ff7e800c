//! The agent's `/metrics` as Prometheus sees it: `promtool check metrics` on a real agent's
//! output, `promtool check rules` and `promtool test rules` on the shipped alerting rules, and a
//! real Prometheus server scraping the agent with its bearer token, as deploy/prometheus does.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use memtrace_integration::{
    free_port, http, http_client, peer_program, wait_for, Agent, AgentSpec, Memops, TempDir,
};
use serde_json::Value;

const TOKEN: &str = "prometheus-test-token-42";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

/// Runs `promtool args...` (with `stdin` on its standard input) and checks it succeeds.
fn promtool(promtool: &Path, args: &[&str], dir: &Path, stdin: &[u8]) -> String {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin)
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- Prometheus log (last 30 lines) ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let Some(promtool_bin) = peer_program(
        "promtool",
        &["/usr/bin/promtool"],
        "to check /metrics and the alerting rules",
    ) else {
        return;
    };
    let Some(prometheus_bin) = peer_program(
        "prometheus",
        &["/usr/bin/prometheus"],
        "to scrape the agent",
    ) else {
        return;
    };
    let root = repo_root();
    let rules_dir = root.join("deploy/prometheus");
    promtool(
        &promtool_bin,
        &["check", "rules", "memtrace-rules.yml"],
        &rules_dir,
        b"",
    );
    promtool(
        &promtool_bin,
        &["test", "rules", "memtrace-rules.test.yml"],
        &rules_dir,
        b"",
    );

    // Beyond loopback the agent answers reads with the token only: Prometheus must send it.
    let data = TempDir::new("prometheus-agent");
    let mut spec = AgentSpec::new("", data.path()).token(TOKEN);
    spec.listen_ip = Some("0.0.0.0".into());
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    assert_eq!(
        agent.request("GET", "/metrics", None).status,
        401,
        "a listener beyond loopback needs the token for /metrics"
    );

    // A traced process, for the heap series: 10 blocks of 4096 bytes.
    let mut w = Memops::start();
    let pid = w.pid();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(w.run("mallocn 0 10 4096"), 10);
    wait_for(
        Duration::from_secs(20),
        "memops' heap at the agent",
        || agent.stderr_tail(20),
        || (agent.process_json(pid)?["snapshot"]["heapLiveBytes"] == 40960).then_some(()),
    );

    let metrics = agent.request("GET", "/metrics", Some(TOKEN));
    assert_eq!(metrics.status, 200);
    promtool(
        &promtool_bin,
        &["check", "metrics"],
        &rules_dir,
        &metrics.body,
    );

    // Prometheus: scrape every second, bearer token from a file, the shipped rules loaded.
    let dir = TempDir::new("prometheus");
    let token_file = dir.path().join("memtrace-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: memtrace\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /metrics\n    \
             authorization:\n      type: Bearer\n      credentials_file: {token}\n    \
             static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            rules = rules_dir.join("memtrace-rules.yml").display(),
            token = token_file.display(),
            port = agent.port,
        ),
    )
    .expect("prometheus.yml");
    promtool(
        &promtool_bin,
        &["check", "config", &config.display().to_string()],
        dir.path(),
        b"",
    );
    let web = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("prometheus.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let server = Prometheus {
        child: Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("prometheus starts"),
        log,
    };
    let client = http_client();
    let query = |q: &str| -> Option<Vec<Value>> {
        let url = format!("http://{web}/api/v1/query?query={q}");
        let reply = http(&client, "GET", &url, None)
            .ok()
            .filter(|r| r.status == 200)?;
        let json = reply.json();
        (json["status"] == "success").then(|| {
            json["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    };
    let context = || format!("{}\n{}", server.log(), agent.stderr_tail(15));

    let agent_rss = wait_for(
        Duration::from_secs(60),
        "memtrace_agent_rss_bytes in Prometheus",
        context,
        || query("memtrace_agent_rss_bytes").filter(|r| !r.is_empty()),
    );
    assert_eq!(agent_rss.len(), 1, "{agent_rss:?}");
    assert_eq!(agent_rss[0]["metric"]["job"], "memtrace");
    let rss: f64 = agent_rss[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a sample value");
    assert!(rss > 1e6, "the agent's RSS is {rss} bytes");

    // Per-process series, with their labels: memops' exact heap.
    let heap = wait_for(
        Duration::from_secs(30),
        "memops' heap series in Prometheus",
        context,
        || {
            query(&format!(
                "memtrace_process_heap_live_bytes%7Bpid=%22{pid}%22%7D"
            ))
            .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(heap[0]["metric"]["comm"], "memops");
    assert_eq!(heap[0]["value"][1], "40960");
    let processes = query("memtrace_process_rss_bytes").expect("query answered");
    assert!(processes.len() > 1, "{processes:?}");
    let pid_label = pid.to_string();
    assert!(
        processes
            .iter()
            .any(|p| p["metric"]["pid"] == pid_label.as_str()),
        "{processes:?}"
    );

    // The scrape itself is healthy, and the rules were loaded.
    let targets = http(
        &client,
        "GET",
        &format!("http://{web}/api/v1/targets"),
        None,
    )
    .expect("targets")
    .json();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target:#}");
    let rules = http(&client, "GET", &format!("http://{web}/api/v1/rules"), None)
        .expect("rules")
        .json();
    assert!(
        rules["data"]["groups"]
            .as_array()
            .is_some_and(|g| !g.is_empty()),
        "{rules:#}"
    );

    drop(server);
    assert_eq!(w.exit(), 0);
    agent.stop();
}
