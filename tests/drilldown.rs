//! Automatic drill-down: a process that grows while its heap is not traced gets a leak (or growth)
//! alert; the agent then traces its heap for a bounded window and puts the consumers it found into
//! the alert's context, and detaches.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use memtrace::{
    agent::{Agent, AgentOptions, DrilldownOptions},
    config::Config,
    events::{self, PipelineStats},
    probes::ProbeOptions,
};
use memtrace_integration::{session, workload};

#[test]
fn growing_process_is_drilled_into() {
    // Make sure this machine can load the object (fails under CI=true when it cannot).
    if session().is_none() {
        return;
    }
    let mut config = Config::default();
    config.pattern_detection.window_size = 12;
    config.pattern_detection.min_data_points = 5;
    // Only pattern alerts: no threshold alerts from whatever else runs on the host.
    config.thresholds.rss_mb = 1e9;
    config.thresholds.external_mb = 1e9;
    config.thresholds.external_ratio = 1e9;
    config.thresholds.growth_rate_mb = 1e9;
    config.alerting.channels.clear();
    // The grower grows for 25 s from its start: no start-up grace, growth alerts at once.
    config.alerting.pattern_for = 0;
    config.alerting.grace_period = 0;
    let options = AgentOptions {
        pids: Vec::new(),
        malloc_all: false,
        top: 0,
        probes: ProbeOptions::default(),
        history: 100,
        drilldown: DrilldownOptions {
            enabled: true,
            window: Duration::from_secs(3),
            max_processes: 2,
        },
        persist: false,
        bpf_stats: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (agent, _, mut ring) = runtime
        .block_on(Agent::start(config, options))
        .expect("agent starts");
    let stats = PipelineStats::default();

    let mut child = Command::new(workload("grower"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("grower");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drilled = false;
    let found = loop {
        let mut batch = Vec::new();
        events::drain(&mut ring, &mut batch, &stats);
        agent.apply(&batch);
        agent.snapshot().expect("snapshot");
        agent.analyze().expect("analysis");
        drilled |= agent.state().expect("state").drilldowns.contains_key(&pid);
        agent.finish_drilldowns().expect("drill-downs");
        let state = agent.state().expect("state");
        let alert = state
            .engine
            .active()
            .into_iter()
            .find(|a| a.context.pid == pid)
            .cloned();
        let done = alert
            .as_ref()
            .and_then(|a| a.context.top_consumers.clone())
            .is_some()
            && !state.drilldowns.contains_key(&pid);
        drop(state);
        if done {
            break alert;
        }
        assert!(
            Instant::now() < deadline,
            "no drill-down result for pid {pid} in time (drilled: {drilled})"
        );
        // Snapshots are taken at this cadence (the agent's interval in this test).
        std::thread::sleep(Duration::from_millis(300));
    };
    let alert = found.expect("alert");
    assert!(drilled, "the heap of pid {pid} was traced for a window");
    let consumers = alert
        .context
        .top_consumers
        .expect("consumers in the alert context");
    let top = &consumers[0];
    assert_eq!(top["name"], "grow_leak", "{consumers:#}");
    assert_eq!(top["category"], "grower");
    assert!(top["allocatedMemory"].as_u64().unwrap_or(0) >= 1 << 20);
    assert_eq!(alert.context.library.as_deref(), Some("grower"));
    // Detached after the window.
    let state = agent.state().expect("state");
    assert!(
        !state.accounting.process(pid).is_some_and(|p| p.heap_traced),
        "heap tracing ended with the window"
    );
    drop(state);
    let _ = child.stdin.as_mut().map(|s| s.write_all(b"\n"));
    let _ = child.wait();
    drop(agent);
    let _ = Arc::<()>::default;
}
