//! Reads never block collection: while a traced process allocates as fast as it can, clients
//! hammer the heaviest GET routes (consumers, process detail, export, the text report, the flame
//! graph, /metrics). No kernel event may be lost and no snapshot skipped.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use memtrace_integration::{wait_for, workload, Agent, AgentSpec, TempDir};

struct Churn(Child);

impl Drop for Churn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn churn() -> Churn {
    let mut child = Command::new(workload("churn"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("churn starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("churn says ready");
    assert_eq!(line.trim(), "ready");
    Churn(child)
}

/// Guards: heavy reads during fast allocation lose no event and delay no snapshot (issue 9).
#[test]
fn heavy_reads_during_fast_allocation_lose_nothing() {
    let churn = churn();
    let pid = churn.0.id();
    let data = TempDir::new("load");
    let mut spec = AgentSpec::new(
        // The whole churn traced all the time: a budget of all the cores it could use.
        "[monitor]\nanalysisInterval = 2\n[alerting]\nchannels = []\n[probes]\ncpuBudget = 64\n",
        data.path(),
    );
    spec.args = vec!["--pid".into(), pid.to_string()];
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    let agent = Arc::new(agent);
    // Tracing is on and events flow.
    wait_for(
        Duration::from_secs(30),
        "the churn process's consumers",
        || agent.stderr_tail(20),
        || {
            let consumers = agent.get_json(&format!("/api/memory/consumers?pid={pid}"));
            (consumers["consumers"].as_array()?.len() >= 16).then_some(())
        },
    );
    let status = agent.get_json("/api/memory/status");
    let events_before = status["eventsReceived"].as_u64().expect("eventsReceived");
    let started_ms = status["lastSnapshot"]["timestamp"]
        .as_u64()
        .expect("a snapshot");

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let routes = [
        format!("/api/memory/consumers?pid={pid}"),
        format!("/api/memory/processes/{pid}"),
        "/api/memory/export".to_string(),
        "/api/memory/report?format=text".to_string(),
        format!("/api/memory/report?format=flamegraph&pid={pid}"),
        "/metrics".to_string(),
        "/api/memory/consumers".to_string(),
        "/api/memory/history?count=10000".to_string(),
    ];
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (agent, stop, answered, routes) = (
                Arc::clone(&agent),
                Arc::clone(&stop),
                Arc::clone(&answered),
                routes.clone(),
            );
            std::thread::spawn(move || {
                let mut i = client;
                while !stop.load(Ordering::Relaxed) {
                    let route = &routes[i % routes.len()];
                    let reply = agent.request("GET", route, None);
                    assert_eq!(reply.status, 200, "GET {route}: {}", reply.text());
                    answered.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let burst = Duration::from_secs(15);
    let began = Instant::now();
    std::thread::sleep(burst);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client failed");
    }
    let elapsed = began.elapsed();

    let status = agent.get_json("/api/memory/status");
    let events = status["eventsReceived"].as_u64().expect("eventsReceived") - events_before;
    assert_eq!(status["eventsLost"], 0, "kernel events lost: {status}");
    assert!(
        events > 10_000,
        "the traced process kept allocating: {events} events"
    );
    let answered = answered.load(Ordering::Relaxed);
    assert!(
        answered >= 40,
        "only {answered} heavy answers in {elapsed:?}"
    );
    let metrics = agent.request("GET", "/metrics", None).text();
    let lost: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("memtrace_events_lost_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("memtrace_events_lost_total");
    assert_eq!(lost, 0.0, "events lost (ring buffer or in-flight map full)");

    assert_eq!(status["snapshotsDropped"], 0, "{status}");

    // Snapshots every second all through the burst: none skipped. (The analysis side may still be
    // finishing the last ones, e.g. symbolizing a large program it drilled into: wait for it.)
    let burst_end_ms = started_ms + elapsed.as_millis() as u64;
    let stamps: Vec<u64> = wait_for(
        Duration::from_secs(60),
        "the analysis side to catch up with the burst",
        || agent.stderr_tail(30),
        || {
            let history = agent.get_json("/api/memory/history?count=10000");
            let stamps: Vec<u64> = history
                .as_array()?
                .iter()
                .filter_map(|s| s["timestamp"].as_u64())
                .filter(|&t| t >= started_ms)
                .collect();
            (stamps.last().copied()? >= burst_end_ms).then_some(stamps)
        },
    );
    let stamps: Vec<u64> = stamps.into_iter().filter(|&t| t <= burst_end_ms).collect();
    let gaps: Vec<u64> = stamps.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        stamps.len() as u64 >= elapsed.as_secs() - 1,
        "{} snapshots over {elapsed:?} at a 1 s interval: {gaps:?}\n{}",
        stamps.len(),
        agent.stderr_tail(30)
    );
    assert!(
        gaps.iter().all(|&gap| gap < 2_000),
        "a snapshot was skipped or delayed (gaps in ms: {gaps:?})"
    );
    drop(churn);
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.stop(),
        Err(_) => panic!("the agent is still shared"),
    }
}
