//! The agent against hostile or broken surroundings: slow HTTP clients, a traced process that puts
//! a FIFO where its executable was, processes that exit while traced, secrets in the
//! configuration, tokens given with stray whitespace.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use memtrace_integration::{wait_for, workload, Agent, AgentSpec, Grower, Memops, TempDir};

const TOKEN: &str = "hardening-token";

fn agent(config: &str, data: &TempDir) -> Option<Agent> {
    Agent::start(&AgentSpec::new(config, data.path()).token(TOKEN))
}

/// Guards issue 11 item 2: a client that sends its header a byte at a time is cut off after the
/// header read timeout; beyond the connection cap new connections are closed at once; and neither
/// holds up the agent's exit.
#[test]
fn slow_clients_are_cut_off_and_do_not_hold_the_exit() {
    let data = TempDir::new("slow");
    let Some(agent) = agent("", &data) else {
        return;
    };
    let address = format!("127.0.0.1:{}", agent.port);
    // Clients trickling a header: one byte every 2 s, never finishing.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&address).expect("connects"))
        .collect();
    let started = Instant::now();
    let mut closed = vec![false; slow.len()];
    while closed.iter().any(|c| !c) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slow clients still connected after 30 s (the header timeout is 10 s)"
        );
        for (stream, closed) in slow.iter_mut().zip(closed.iter_mut()) {
            if *closed {
                continue;
            }
            if stream.write_all(b"G").is_err() {
                *closed = true;
                continue;
            }
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => *closed = true,
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => *closed = true,
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "closed before the header timeout: {:?}",
        started.elapsed()
    );

    // Past the cap (256 open connections), a new connection is closed at once.
    let idle: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(&address).expect("connects"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = TcpStream::connect(&address).expect("the kernel still accepts");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let read = extra.read(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "a connection beyond the cap was kept: {read:?}"
    );
    drop(idle);
    // Room again: the API answers.
    wait_for(
        Duration::from_secs(15),
        "the API to answer once the idle connections are gone",
        || agent.stderr_tail(20),
        || {
            agent
                .http("GET", "/health", None)
                .ok()
                .filter(|r| r.status == 200)
        },
    );

    // A slow client open while the agent stops does not hold it up.
    let _lingering = TcpStream::connect(&address).expect("connects");
    let stopping = Instant::now();
    agent.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the agent took {:?} to stop with a client open",
        stopping.elapsed()
    );
}

/// A copy of the `memops` workload run from `dir`, driven like `Memops`.
struct Copied {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Copied {
    fn start(path: &std::path::Path) -> Self {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the copy starts");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn run(&mut self, command: &str) -> u64 {
        writeln!(self.stdin, "{command}").expect("sent");
        self.stdin.flush().expect("flushed");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reply");
        line.trim()
            .strip_prefix("ok ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{command}: {line:?}"))
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Guards issue 11 item 1: a traced process that replaces its executable file with a FIFO (which
/// blocks whoever opens it) cannot hang the agent: it keeps answering, keeps taking snapshots and
/// stops on SIGINT.
#[test]
fn a_fifo_in_place_of_the_executable_does_not_hang_the_agent() {
    let data = TempDir::new("fifo");
    let Some(agent) = agent("", &data) else {
        return;
    };
    let dir = TempDir::new("fifo-bin");
    let program = dir.path().join("memops-copy");
    std::fs::copy(workload("memops"), &program).expect("copy the workload");
    let mut w = Copied::start(&program);
    let pid = w.child.id();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Replaced by a FIFO while the agent holds the old path in the process's modules.
    std::fs::remove_file(&program).expect("remove");
    let path = std::ffi::CString::new(program.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    assert_eq!(w.run("mallocn 0 10 100000"), 10);
    // Snapshots go on and the consumers are attributed (without names from the gone file).
    let consumers = wait_for(
        Duration::from_secs(30),
        "the copy's consumers",
        || agent.stderr_tail(30),
        || {
            let c = agent.get_json(&format!("/api/memory/consumers?pid={pid}"));
            let total: u64 = c["consumers"]
                .as_array()?
                .iter()
                .filter(|c| c["type"] == "malloc")
                .filter_map(|c| c["allocatedMemory"].as_u64())
                .sum();
            (total >= 1_000_000).then_some(c)
        },
    );
    assert!(consumers["consumers"].is_array());
    let before = agent.get_json("/api/memory/status")["lastSnapshot"]["timestamp"]
        .as_u64()
        .expect("a snapshot");
    wait_for(
        Duration::from_secs(10),
        "two more snapshots",
        || agent.stderr_tail(30),
        || {
            let now = agent.get_json("/api/memory/status")["lastSnapshot"]["timestamp"].as_u64()?;
            (now >= before + 2000).then_some(())
        },
    );
    let health = agent.get_json("/health");
    assert_ne!(health["status"], "degraded", "{health}");
    drop(w);
    agent.stop();
}

/// Open BPF link descriptors of a process: one per attached tracepoint or uprobe.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().contains("bpf_link"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits for the agent's BPF links to be `before` again: uprobes are detached in the background
/// (the kernel takes ~130 ms a link).
fn links_back_to(agent_pid: u32, before: usize, agent: &Agent) {
    wait_for(
        Duration::from_secs(15),
        "the uprobes to go",
        || {
            format!(
                "{} links, {before} before\n{}",
                bpf_links(agent_pid),
                agent.stderr_tail(20)
            )
        },
        || (bpf_links(agent_pid) == before).then_some(()),
    );
}

/// Guards issue 11 item 5: a traced process's probes go when it exits, so a process that later
/// gets its pid is never shown as traced; the tracings are counted.
#[test]
fn probes_go_with_their_process() {
    let data = TempDir::new("lifecycle");
    let Some(agent) = agent("", &data) else {
        return;
    };
    let agent_pid = agent.pid();
    let before = bpf_links(agent_pid);
    let mut w = Memops::start();
    let pid = w.pid();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let attached = bpf_links(agent_pid);
    assert!(
        attached > before,
        "uprobes attached: {before} -> {attached}"
    );
    assert_eq!(w.run("mallocn 0 4 1000"), 4);
    assert_eq!(w.exit(), 0);
    let status = wait_for(
        Duration::from_secs(15),
        "the exited process to be untraced",
        || agent.stderr_tail(30),
        || {
            let status = agent.get_json("/api/memory/status");
            let traced = status["tracedPids"].as_array()?;
            traced.is_empty().then_some(status)
        },
    );
    assert_eq!(status["traced"], serde_json::json!([]), "{status}");
    links_back_to(agent_pid, before, &agent);
    let metrics = agent.request("GET", "/metrics", None).text();
    for event in ["started", "stopped"] {
        let line = format!("memtrace_heap_traces_total{{event=\"{event}\"}} 1");
        assert!(metrics.contains(&line), "no {line:?} in /metrics");
    }
    agent.stop();
}

/// Guards issue 11 item 8: the webhook URL's credentials and secret path never leave the agent.
#[test]
fn exports_mask_the_webhook_secret() {
    let data = TempDir::new("secrets");
    let config =
        "[alerting]\nwebhookUrl = \"http://hook-user:hook-pass@127.0.0.1:9/services/SECRET\"\n";
    let Some(agent) = agent(config, &data) else {
        return;
    };
    let export = agent.request("GET", "/api/memory/export", None).text();
    assert!(!export.contains("hook-pass"), "the password leaked");
    assert!(!export.contains("SECRET"), "the secret path leaked");
    let json: serde_json::Value = serde_json::from_str(&export).expect("JSON");
    assert_eq!(
        json["config"]["alerting"]["webhookUrl"],
        "http://hook-user:***@127.0.0.1:9/***"
    );
    agent.stop();
}

/// Guards issue 11 item 9: a blank `MEMTRACE_TOKEN` counts as unset; a padded one is trimmed.
#[test]
fn tokens_are_trimmed_and_blank_is_unset() {
    let data = TempDir::new("tokens");
    let mut spec = AgentSpec::new("", data.path());
    spec.env = vec![("MEMTRACE_TOKEN".into(), "   ".into())];
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    let reply = agent.request("POST", "/api/memory/analyze", Some("anything"));
    assert_eq!(reply.status, 403, "no token configured: {}", reply.text());
    agent.stop();

    let data = TempDir::new("tokens-padded");
    let mut spec = AgentSpec::new("", data.path());
    spec.env = vec![("MEMTRACE_TOKEN".into(), "  padded-token \t".into())];
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    let reply = agent.request("POST", "/api/memory/analyze", Some("padded-token"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    agent.stop();
}

/// Guards issue 12 item 3 through the API: a request to trace a process whose allocator calls
/// would cost it far more than `probes.cpuBudget` is answered 409 with the reason once measured,
/// the process is listed in the status's refusals and counted in /metrics, and its probes are
/// gone; a quiet process is traced all the time, within the budget, with the decision in the
/// answer.
#[test]
fn a_trace_request_over_the_cpu_budget_is_refused_with_the_reason() {
    let data = TempDir::new("budget");
    let Some(agent) = agent("[probes]\ncpuBudget = 0.001\n", &data) else {
        return;
    };
    let agent_pid = agent.pid();
    let before = bpf_links(agent_pid);
    let busy = Grower::start(&["busy"]);
    let pid = busy.pid();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 409, "{}", reply.text());
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains(&format!("not tracing pid {pid}")), "{error}");
    assert!(error.contains("allocator calls/s"), "{error}");
    assert!(error.contains("the budget of 0.1%"), "{error}");
    let status = agent.get_json("/api/memory/status");
    let refusals = status["traceRefusals"].as_array().expect("refusals");
    let refusal = refusals.iter().find(|r| r["pid"] == pid).expect("listed");
    assert_eq!(refusal["traceReason"], "requested");
    let reason = refusal["reason"].as_str().expect("a reason");
    assert!(error.ends_with(reason), "{error} / {reason}");
    assert!(!status["tracedPids"]
        .as_array()
        .is_some_and(|t| t.iter().any(|p| p == pid)));
    links_back_to(agent_pid, before, &agent);
    let metrics = agent.request("GET", "/metrics", None).text();
    let line = "memtrace_heap_traces_total{event=\"refused\"} 1";
    assert!(metrics.contains(line), "no {line:?} in /metrics");

    // A quiet process (memops waits for commands) fits: traced all the time.
    let memops = Memops::start();
    let reply = agent.request(
        "POST",
        &format!("/api/memory/trace/{}", memops.pid()),
        Some(TOKEN),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let budget = &reply.json()["budget"];
    assert_eq!(budget["phase"], "tracing", "{budget:#}");
    assert_eq!(budget["partial"], false, "{budget:#}");
    assert_eq!(budget["budgetCores"], 0.001, "{budget:#}");
    assert!(
        budget["reason"]
            .as_str()
            .is_some_and(|r| r.contains("within the budget of 0.1%")),
        "{budget:#}"
    );
    agent.stop();
}
