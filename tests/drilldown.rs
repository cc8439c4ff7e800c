//! Automatic drill-down: a process that grows while its heap is not traced gets a leak (or growth)
//! alert; the agent then traces its heap for a bounded window, puts the consumers it found into
//! the alert's context, and detaches. Driven through the agent's own `Pipeline::tick`.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace::{
    agent::{Now, Pipeline},
    config::Config,
};
use memtrace_integration::{can_trace, workload};

#[test]
fn growing_process_is_drilled_into() {
    if !can_trace() {
        return;
    }
    let mut config = Config::default();
    config.monitor.snapshot_interval = 1;
    config.monitor.analysis_interval = 1;
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
    config.agent.persist = false;
    config.agent.history = 100;
    config.drilldown.window = 3;
    config.drilldown.max_processes = 2;
    let mut pipeline = Pipeline::start(config).expect("agent starts");

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
    let alert = loop {
        pipeline.tick(Now::current());
        drilled |= pipeline.shared.intake.load().drilldown(pid).is_some();
        let core = pipeline.shared.core.load();
        let alert = core
            .alerts
            .active
            .iter()
            .find(|a| a.context.pid == pid)
            .cloned();
        let done = alert
            .as_ref()
            .is_some_and(|a| a.context.top_consumers.is_some())
            && pipeline.shared.intake.load().drilldown(pid).is_none();
        if done {
            break alert.expect("alert");
        }
        assert!(
            Instant::now() < deadline,
            "no drill-down result for pid {pid} in time (drilled: {drilled}); alerts: {:#?}; \
             reports: {:?}; intake: {:?}",
            core.alerts.active,
            core.reports.keys().collect::<Vec<_>>(),
            pipeline.shared.intake.load()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
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
    assert!(
        !pipeline
            .intake
            .session()
            .accounting
            .process(pid)
            .is_some_and(|p| p.heap_traced),
        "heap tracing ended with the window"
    );
    assert!(!pipeline.shared.intake.load().is_traced(pid));
    let _ = child.stdin.as_mut().map(|s| s.write_all(b"\n"));
    let _ = child.wait();
}
