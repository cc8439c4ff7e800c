//! The agent's `/metrics` as Prometheus sees it: `promtool check metrics` on a real agent's
//! output, `promtool check rules` and `promtool test rules` on the shipped alerting rules, a real
//! Prometheus server scraping the agent with its bearer token, as deploy/prometheus does, the same
//! server scraping an agent every second while 200 short-lived processes come and go, and a real
//! Alertmanager applying the shipped inhibit rules.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use memtrace_integration::{
    free_port, http, http_client, peer_program, wait_for, workload, Agent, AgentSpec, Memops,
    TempDir,
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

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// A server (Prometheus, Alertmanager) with its log file, killed on drop.
struct Server {
    child: Child,
    log: PathBuf,
    /// `127.0.0.1:port` of its web listener.
    web: String,
    client: ureq::Agent,
}

impl Server {
    fn start(program: &Path, args: &[String], dir: &Path, web: String) -> Self {
        let log = dir.join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        // The server dies with the test, even one killed outright.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Self {
            child: command.spawn().expect("the server starts"),
            log,
            web,
            client: http_client(),
        }
    }

    /// Starts Prometheus with `config` (scraping every second), its data in `dir`.
    fn prometheus(program: &Path, config: &Path, dir: &Path) -> Self {
        let web = format!("127.0.0.1:{}", free_port());
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={web}"),
        ];
        Self::start(program, &args, dir, web)
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- server log (last 30 lines) ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// `GET path` answered 200 with JSON, `None` otherwise (not up yet).
    fn get(&self, path: &str) -> Option<Value> {
        let reply = http(
            &self.client,
            "GET",
            &format!("http://{}{path}", self.web),
            None,
        )
        .ok()
        .filter(|r| r.status == 200)?;
        Some(reply.json())
    }

    /// The result of an instant PromQL query (at `time`, Unix seconds, or now).
    fn query_at(&self, q: &str, time: Option<f64>) -> Option<Vec<Value>> {
        let at = time.map(|t| format!("&time={t:.3}")).unwrap_or_default();
        let json = self.get(&format!("/api/v1/query?query={}{at}", encode(q)))?;
        (json["status"] == "success").then(|| {
            json["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    }

    fn query(&self, q: &str) -> Option<Vec<Value>> {
        self.query_at(q, None)
    }

    /// Every series matching `selector` with a sample between `start` and `end` (Unix seconds).
    fn series(&self, selector: &str, start: f64, end: f64) -> Vec<BTreeMap<String, String>> {
        let json = self
            .get(&format!(
                "/api/v1/series?match%5B%5D={}&start={start:.3}&end={end:.3}",
                encode(selector)
            ))
            .unwrap_or_else(|| panic!("series {selector}: no answer\n{}", self.log()));
        assert_eq!(json["status"], "success", "{json:#}");
        json["data"]
            .as_array()
            .expect("a list of series")
            .iter()
            .map(|labels| {
                labels
                    .as_object()
                    .expect("label sets")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first sample value of a query result.
fn sample(result: &[Value]) -> f64 {
    result
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample in {result:?}"))
}

/// A prometheus.yml scraping the agent at `port` every second (with the token in `token_file`
/// when given), loading `rules` when given.
fn prometheus_config(port: u16, token_file: Option<&Path>, rules: Option<&Path>) -> String {
    let rules = rules
        .map(|r| format!("rule_files:\n  - {}\n", r.display()))
        .unwrap_or_default();
    let auth = token_file
        .map(|t| {
            format!(
                "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                t.display()
            )
        })
        .unwrap_or_default();
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rules}\
         scrape_configs:\n  - job_name: memtrace\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /metrics\n{auth}\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
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
    let cgroup = agent.process_json(pid).expect("memops is known")["snapshot"]["cgroup"]
        .as_str()
        .expect("a cgroup")
        .to_string();
    assert!(cgroup.starts_with('/'), "memops' cgroup {cgroup:?}");

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
        prometheus_config(
            agent.port,
            Some(&token_file),
            Some(&rules_dir.join("memtrace-rules.yml")),
        ),
    )
    .expect("prometheus.yml");
    promtool(
        &promtool_bin,
        &["check", "config", &config.display().to_string()],
        dir.path(),
        b"",
    );
    let server = Server::prometheus(&prometheus_bin, &config, dir.path());
    let context = || format!("{}\n{}", server.log(), agent.stderr_tail(15));

    let agent_rss = wait_for(
        Duration::from_secs(60),
        "memtrace_agent_rss_bytes in Prometheus",
        context,
        || {
            server
                .query("memtrace_agent_rss_bytes")
                .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(agent_rss.len(), 1, "{agent_rss:?}");
    assert_eq!(agent_rss[0]["metric"]["job"], "memtrace");
    let rss = sample(&agent_rss);
    assert!(rss > 1e6, "the agent's RSS is {rss} bytes");
    let build = server.query("memtrace_build_info").expect("query answered");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    // The figures are those of the last second's snapshot.
    let age = sample(
        &server
            .query("time() - memtrace_last_snapshot_timestamp_seconds")
            .expect("query answered"),
    );
    assert!((-1.0..10.0).contains(&age), "last snapshot {age} s old");

    // The traced process: its pid on the info series, its exact heap on its identity's series.
    let info = wait_for(
        Duration::from_secs(30),
        "memops' info series in Prometheus",
        context,
        || {
            server
                .query(&format!("memtrace_traced_process_info{{pid=\"{pid}\"}}"))
                .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(info[0]["metric"]["comm"], "memops");
    assert_eq!(info[0]["metric"]["cgroup"], cgroup.as_str());
    assert_eq!(info[0]["metric"]["reason"], "requested");
    let selector = format!("{{comm=\"memops\", cgroup=\"{cgroup}\"}}");
    let heap = wait_for(
        Duration::from_secs(30),
        "memops' heap series in Prometheus",
        context,
        || {
            server
                .query(&format!("memtrace_process_heap_live_bytes{selector}"))
                .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(heap[0]["value"][1], "40960", "{heap:?}");
    // The join the API documentation shows: the identity's traced heap with its pid.
    let joined = server
        .query(
            "memtrace_process_heap_live_bytes * on (job, instance, comm, cgroup) group_right \
             memtrace_traced_process_info",
        )
        .expect("query answered");
    assert!(
        joined
            .iter()
            .any(|r| r["metric"]["pid"] == pid.to_string().as_str() && r["value"][1] == "40960"),
        "{joined:?}"
    );
    // No series other than the info one has a pid.
    let with_pid = server
        .query("count by (__name__) ({__name__=~\"memtrace_.+\", pid!=\"\"})")
        .expect("query answered");
    assert_eq!(with_pid.len(), 1, "{with_pid:?}");
    assert_eq!(
        with_pid[0]["metric"]["__name__"],
        "memtrace_traced_process_info"
    );
    let processes = server
        .query("memtrace_process_rss_bytes")
        .expect("query answered");
    assert!(processes.len() > 1, "{processes:?}");

    // The scrape itself is healthy, and the rules were loaded.
    let targets = server.get("/api/v1/targets").expect("targets");
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target:#}");
    let rules = server.get("/api/v1/rules").expect("rules");
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

/// A `memops` run under another command name (through a symbolic link: the kernel names a
/// process after the file it executes); exits by itself on drop.
struct Churner(Option<Memops>);

impl Churner {
    fn start(link: &Path) -> Self {
        Self(Some(Memops::start_at(link)))
    }

    fn memops(&mut self) -> &mut Memops {
        self.0.as_mut().expect("running until dropped")
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Memops::pid)
    }

    /// Maps and touches `bytes` of anonymous memory (resident at once).
    fn touch(&mut self, bytes: u64) {
        assert_eq!(
            self.memops().run(&format!("mmap 0 {bytes} anon")),
            1,
            "mmap of {bytes} bytes"
        );
    }
}

impl Drop for Churner {
    fn drop(&mut self) {
        if let Some(memops) = self.0.take() {
            memops.exit();
        }
    }
}

/// The samples of a `/metrics` text: name, labels, value (escapes of label values undone).
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut s) = rest.strip_prefix('{') {
            while let Some((key, after)) = s.split_once("=\"") {
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("a closed label value") {
                        (_, '\\') => match chars.next().expect("an escape") {
                            (_, 'n') => value.push('\n'),
                            (_, c) => value.push(c),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key.to_string(), value);
                s = &after[end + 1..];
                s = s.strip_prefix(',').unwrap_or(s);
                if let Some(after_labels) = s.strip_prefix('}') {
                    s = after_labels;
                    break;
                }
            }
            rest = s;
        }
        let value: f64 = rest.trim().parse().expect("a numeric value");
        samples.push((name, labels, value));
    }
    samples
}

/// The bound of the churn test: the identities with series of their own over a window shorter
/// than `leaveAfter`. At most 2K are members at any time (K in the top K, and those on their way
/// out), and a member keeps its place until it has been out of the top K for `leaveAfter`, so each
/// of the 2K places changes hands at most once in the window: at most 4K identities, plus `other`
/// (`http::metrics::TopK`).
const CHURN_K: usize = 10;
const CHURN_LEAVE_AFTER_S: u64 = 120;
const CHURN_ENTER_AFTER_S: u64 = 10;
/// Series one identity can have: 9 always (processes, rss, rss anon/file/shmem, swap, mapped
/// anon and file, brk), 5 with a traced heap, a growth rate, and one pattern series per pattern
/// type it went through (5 types).
const SERIES_PER_IDENTITY: usize = 9 + 5 + 1 + 5;

/// Guards issue 14's "a real Prometheus over a churning host": 200 processes that start and exit
/// within 45 s (150 of them under command names of their own, half of all touching 32 MiB), an
/// agent with `topK = 10` scraped every second. Per-process series are keyed by identity and
/// chosen with hysteresis, so the churn stays in `other`: no churning identity gets series, the
/// only pid is the one traced process's, and the distinct series stay under the bound above,
/// where a pid label made each process that reached the top K a new set of series.
#[test]
fn a_churning_host_keeps_the_series_bounded() {
    let Some(prometheus_bin) = peer_program(
        "prometheus",
        &["/usr/bin/prometheus"],
        "to scrape the agent over a churning host",
    ) else {
        return;
    };
    let data = TempDir::new("prometheus-churn-agent");
    let config = format!(
        "[metrics]\ntopK = {CHURN_K}\ntopKLibraries = {CHURN_K}\nmargin = 0.2\n\
         enterAfter = {CHURN_ENTER_AFTER_S}\nleaveAfter = {CHURN_LEAVE_AFTER_S}\n\
         [drilldown]\nenabled = false\n"
    );
    let Some(agent) = Agent::start(&AgentSpec::new(&config, data.path()).token(TOKEN)) else {
        return;
    };
    // One process traced by request: the one pid /metrics may show.
    let mut traced = Memops::start();
    let traced_pid = traced.pid();
    let reply = agent.request(
        "POST",
        &format!("/api/memory/trace/{traced_pid}"),
        Some(TOKEN),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(traced.run("mallocn 0 10 4096"), 10);

    let dir = TempDir::new("prometheus-churn");
    let prometheus_yml = dir.path().join("prometheus.yml");
    std::fs::write(&prometheus_yml, prometheus_config(agent.port, None, None))
        .expect("prometheus.yml");
    let server = Server::prometheus(&prometheus_bin, &prometheus_yml, dir.path());
    let context = || format!("{}\n{}", server.log(), agent.stderr_tail(15));
    wait_for(
        Duration::from_secs(60),
        "a first scrape of the agent",
        context,
        || {
            server
                .query("memtrace_build_info")
                .filter(|r| !r.is_empty())
        },
    );
    let start = unix_now() - 1.0;

    // The churn: one process every 200 ms, each living 1 to 2.5 s. Every fourth one runs under
    // the same name ("mtchurn-same": one identity whose pids keep changing, two or three of them
    // alive at a time with 96 MiB each), the others under names of their own, every other one
    // of those touching 32 MiB: more than most processes here, so that a top K keyed by pid
    // would give each of them series.
    let links = TempDir::new("prometheus-churn-links");
    let memops = workload("memops");
    let link = |name: &str| {
        let path = links.path().join(name);
        if !path.exists() {
            std::os::unix::fs::symlink(&memops, &path).expect("symlink to memops");
        }
        path
    };
    const CHURN: u32 = 200;
    const BIG: u64 = 32 << 20;
    let began = Instant::now();
    let mut alive: Vec<(Instant, Churner)> = Vec::new();
    let mut pids = BTreeSet::new();
    for i in 0..CHURN {
        let due = began + Duration::from_millis(200 * u64::from(i));
        while Instant::now() < due {
            alive.retain(|(until, _)| *until > Instant::now());
            std::thread::sleep(Duration::from_millis(10));
        }
        let same = i % 4 == 3;
        let name = if same {
            "mtchurn-same".to_string()
        } else {
            format!("mtchurn-{i:03}")
        };
        let mut churner = Churner::start(&link(&name));
        pids.insert(churner.pid());
        let lifetime = if same {
            churner.touch(3 * BIG);
            2000 + u64::from(i * 37 % 500)
        } else {
            if i % 2 == 0 {
                churner.touch(BIG);
            }
            1000 + u64::from(i * 37 % 1500)
        };
        alive.push((Instant::now() + Duration::from_millis(lifetime), churner));
    }
    while !alive.is_empty() {
        alive.retain(|(until, _)| *until > Instant::now());
        std::thread::sleep(Duration::from_millis(10));
    }
    let churn_seconds = began.elapsed().as_secs_f64();

    // The peak: four processes of names of their own, 32 MiB each, alive together (for less than
    // enterAfter). A snapshot with all four is exported in full: every byte and every process of
    // the snapshot is in the series, the four in "other", none under its own name.
    let peak: Vec<Churner> = (0..4)
        .map(|i| {
            let mut churner = Churner::start(&link(&format!("mtchurn-peak{i}")));
            churner.touch(BIG);
            churner
        })
        .collect();
    let peak_started = Instant::now();
    let peak_pids: BTreeSet<u32> = peak.iter().map(Churner::pid).collect();
    pids.extend(&peak_pids);
    let (text, snapshot) = wait_for(
        Duration::from_secs(8),
        "a snapshot with the four peak processes, exported",
        || agent.stderr_tail(15),
        || {
            let text = agent.request("GET", "/metrics", None).text();
            let samples = parse_metrics(&text);
            let at = samples
                .iter()
                .find(|(name, _, _)| name == "memtrace_last_snapshot_timestamp_seconds")?
                .2;
            let history = agent.get_json("/api/memory/history?count=20");
            let snapshot = history
                .as_array()?
                .iter()
                .find(|s| s["timestamp"].as_f64() == Some((at * 1000.0).round()))?
                .clone();
            let big = snapshot["processes"]
                .as_array()?
                .iter()
                .filter(|p| {
                    p["pid"]
                        .as_u64()
                        .is_some_and(|pid| peak_pids.contains(&(pid as u32)))
                        && p["rssBytes"].as_u64().is_some_and(|rss| rss >= BIG)
                })
                .count();
            (big == peak_pids.len()).then_some((text, snapshot))
        },
    );
    assert!(
        peak_started.elapsed() < Duration::from_secs(CHURN_ENTER_AFTER_S),
        "the peak check took {:?}: longer than enterAfter",
        peak_started.elapsed()
    );
    let samples = parse_metrics(&text);
    let sum = |name: &str| -> f64 {
        samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    };
    let processes = snapshot["processes"].as_array().expect("processes");
    let snapshot_rss: u64 = processes
        .iter()
        .map(|p| p["rssBytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(sum("memtrace_process_rss_bytes"), snapshot_rss as f64);
    assert_eq!(sum("memtrace_processes"), processes.len() as f64);
    let other = |name: &str| -> f64 {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name && labels.get("cgroup").map(String::as_str) == Some("other")
            })
            .map_or(0.0, |s| s.2)
    };
    assert!(
        other("memtrace_process_rss_bytes") >= (4 * BIG) as f64,
        "other holds {} bytes",
        other("memtrace_process_rss_bytes")
    );
    assert!(other("memtrace_processes") >= 4.0);
    assert!(
        !text.contains("comm=\"mtchurn-peak"),
        "a peak process got series of its own:\n{text}"
    );
    drop(peak);

    // A few more scrapes after the last exit, then the whole run as Prometheus stored it.
    let settle = unix_now() + 3.0;
    while unix_now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = unix_now();
    let window = end - start;
    let series = server.series("{__name__=~\"memtrace_.+\"}", start, end);
    let label_values = |label: &str| -> BTreeSet<String> {
        series
            .iter()
            .filter_map(|s| s.get(label).cloned())
            .collect()
    };
    let series_pids = label_values("pid");
    let identities: BTreeSet<(String, String)> = series
        .iter()
        .filter(|s| s["__name__"] == "memtrace_process_rss_bytes")
        .map(|s| {
            (
                s["comm"].clone(),
                s.get("cgroup").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let identity_series = series
        .iter()
        .filter(|s| s["__name__"].starts_with("memtrace_process") && s.contains_key("comm"))
        .count();
    let library_series = series
        .iter()
        .filter(|s| s["__name__"] == "memtrace_library_live_bytes")
        .count();
    let churn_named: Vec<&BTreeMap<String, String>> = series
        .iter()
        .filter(|s| {
            s.get("comm")
                .is_some_and(|c| c.starts_with("mtchurn-") && c != "mtchurn-same")
        })
        .collect();
    let same_rss = series
        .iter()
        .filter(|s| {
            s["__name__"] == "memtrace_process_rss_bytes"
                && s.get("comm").map(String::as_str) == Some("mtchurn-same")
        })
        .count();
    let same_processes = server
        .query_at(
            &format!(
                "max_over_time(memtrace_processes{{comm=\"mtchurn-same\"}}[{}s])",
                window.ceil() as u64
            ),
            Some(end),
        )
        .expect("query answered");
    let max_at_once = sample(
        &server
            .query_at(
                &format!(
                    "max_over_time(count(memtrace_process_rss_bytes)[{}s:1s])",
                    window.ceil() as u64
                ),
                Some(end),
            )
            .expect("query answered"),
    );
    let other_max = sample(
        &server
            .query_at(
                &format!(
                    "max_over_time(memtrace_processes{{cgroup=\"other\"}}[{}s])",
                    window.ceil() as u64
                ),
                Some(end),
            )
            .expect("query answered"),
    );
    eprintln!(
        "churn: {} processes ({} pids) in {churn_seconds:.1} s (+4 at the peak), a window of \
         {window:.1} s scraped every second: {} distinct memtrace_* series, {} pid label values, \
         {} identities \
         with series (bound {}), {identity_series} per-identity series (bound {}), \
         {library_series} library series, at most {max_at_once} identities at once, \
         up to {other_max} processes in other; mtchurn-same: {same_rss} RSS series, up to {:?} \
         processes in it",
        CHURN,
        pids.len(),
        series.len(),
        series_pids.len(),
        identities.len(),
        4 * CHURN_K + 1,
        (4 * CHURN_K + 1) * SERIES_PER_IDENTITY,
        same_processes.first().map(|r| r["value"][1].clone()),
    );

    // The only pid is the traced process's: the 204 churning pids are on no series.
    assert_eq!(
        series_pids,
        BTreeSet::from([traced_pid.to_string()]),
        "pids on memtrace series"
    );
    // No process of a name of its own lived long enough to get series; the shared name has at
    // most one set (not one per pid).
    assert!(churn_named.is_empty(), "{churn_named:#?}");
    assert!(same_rss <= 1, "mtchurn-same has {same_rss} RSS series");
    if same_rss == 1 {
        // It made the top K: one set of series for all its pids.
        assert!(sample(&same_processes) >= 2.0, "{same_processes:?}");
    }
    assert!(
        identities.len() <= 4 * CHURN_K + 1,
        "{} identities had series: {identities:#?}",
        identities.len()
    );
    assert!(identity_series <= (4 * CHURN_K + 1) * SERIES_PER_IDENTITY);
    assert!(library_series <= 4 * CHURN_K + 1, "{library_series}");
    assert!(max_at_once <= (2 * CHURN_K + 1) as f64, "{max_at_once}");
    assert!(other_max >= 4.0, "{other_max}");

    drop(server);
    assert_eq!(traced.exit(), 0);
    agent.stop();
}

/// An alert in Alertmanager: its alertname, severity, cgroup and pid.
type AlertKey = (String, String, String, String);
/// Its state (`active`, `suppressed`) and the number of alerts inhibiting it.
type AlertState = (String, usize);

/// The shipped alertmanager.yml in a real Alertmanager: with the warning and the critical alert
/// of one rule firing for one identity (as `memtrace-rules.test.yml` shows they do), only the
/// critical one is active; the warning of another identity (same name, another cgroup) is not
/// touched; `MemtraceAgentAlertsActive` is inhibited by type, and the alerts the agent posts
/// itself (`alerting.webhookFormat = "alertmanager"`, labelled by pid) by process.
#[test]
fn alertmanager_inhibits_the_warning_of_an_identity_with_a_critical_alert() {
    let Some(alertmanager_bin) = peer_program(
        "prometheus-alertmanager",
        &["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"],
        "to check the shipped inhibit rules",
    ) else {
        return;
    };
    let Some(amtool) = peer_program(
        "amtool",
        &["/usr/bin/amtool"],
        "to check the shipped Alertmanager configuration",
    ) else {
        return;
    };
    let config = repo_root().join("deploy/prometheus/alertmanager.yml");
    let check = Command::new(&amtool)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("amtool runs");
    assert!(
        check.status.success(),
        "amtool check-config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let dir = TempDir::new("alertmanager");
    let web = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &alertmanager_bin,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", dir.path().display()),
            format!("--web.listen-address={web}"),
            // No high-availability gossip.
            "--cluster.listen-address=".to_string(),
        ],
        dir.path(),
        web,
    );
    wait_for(
        Duration::from_secs(30),
        "Alertmanager ready",
        || server.log(),
        || server.get("/api/v2/status"),
    );

    let app = "/system.slice/app.service";
    let batch = "/system.slice/batch.service";
    let external = |severity: &str, cgroup: &str| {
        format!(
            r#"{{"labels": {{"alertname": "MemtraceExternalMemoryHigh", "severity": "{severity}",
                "job": "memtrace", "instance": "h1", "comm": "node", "cgroup": "{cgroup}"}},
               "annotations": {{"summary": "test"}}}}"#
        )
    };
    let agent_alerts = |severity: &str| {
        format!(
            r#"{{"labels": {{"alertname": "MemtraceAgentAlertsActive", "severity": "{severity}",
                "instance": "h1", "type": "threshold"}}, "annotations": {{"summary": "test"}}}}"#
        )
    };
    // As the agent posts its own alerts (alerting.webhookFormat = "alertmanager"): per process.
    let posted_by_agent = |severity: &str, pid: u32| {
        format!(
            r#"{{"labels": {{"alertname": "MemtraceRssThreshold", "severity": "{severity}",
                "type": "threshold", "trigger": "rss_threshold", "pid": "{pid}", "comm": "node",
                "instance": "h1", "job": "memtrace"}}, "annotations": {{"summary": "test"}}}}"#
        )
    };
    let alerts = format!(
        "[{}, {}, {}, {}, {}, {}, {}, {}]",
        external("warning", app),
        external("critical", app),
        external("warning", batch),
        agent_alerts("warning"),
        agent_alerts("critical"),
        posted_by_agent("critical", 41),
        posted_by_agent("warning", 41),
        posted_by_agent("warning", 42),
    );
    let posted = server
        .client
        .post(format!("http://{}/api/v2/alerts", server.web))
        .header("Content-Type", "application/json")
        .send(alerts.as_str())
        .expect("alerts posted");
    assert_eq!(posted.status().as_u16(), 200);

    let states = || -> Option<BTreeMap<AlertKey, AlertState>> {
        let alerts = server.get("/api/v2/alerts")?;
        let states: BTreeMap<_, _> = alerts
            .as_array()?
            .iter()
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
                (
                    (
                        label("alertname"),
                        label("severity"),
                        label("cgroup"),
                        label("pid"),
                    ),
                    (
                        a["status"]["state"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        a["status"]["inhibitedBy"].as_array().map_or(0, Vec::len),
                    ),
                )
            })
            .collect();
        (states.len() == 8 && states.values().filter(|(s, _)| s == "suppressed").count() == 3)
            .then_some(states)
    };
    let states = wait_for(
        Duration::from_secs(30),
        "the three warnings inhibited",
        || format!("{:#?}\n{}", server.get("/api/v2/alerts"), server.log()),
        states,
    );
    let key = |alertname: &str, severity: &str, cgroup: &str, pid: &str| {
        (
            alertname.to_string(),
            severity.to_string(),
            cgroup.to_string(),
            pid.to_string(),
        )
    };
    let ext = "MemtraceExternalMemoryHigh";
    let own = "MemtraceAgentAlertsActive";
    let rss = "MemtraceRssThreshold";
    assert_eq!(
        states[&key(ext, "warning", app, "")],
        ("suppressed".into(), 1)
    );
    assert_eq!(states[&key(ext, "critical", app, "")], ("active".into(), 0));
    assert_eq!(
        states[&key(ext, "warning", batch, "")],
        ("active".into(), 0)
    );
    assert_eq!(
        states[&key(own, "warning", "", "")],
        ("suppressed".into(), 1)
    );
    assert_eq!(states[&key(own, "critical", "", "")], ("active".into(), 0));
    assert_eq!(
        states[&key(rss, "critical", "", "41")],
        ("active".into(), 0)
    );
    assert_eq!(
        states[&key(rss, "warning", "", "41")],
        ("suppressed".into(), 1)
    );
    // Another process of the same name: its own warning stands.
    assert_eq!(states[&key(rss, "warning", "", "42")], ("active".into(), 0));
}
