//! Automatic drill-down: a process that grows while its heap is not traced gets a leak (or growth)
//! alert; the agent then traces its heap for a bounded window, puts the consumers it found into
//! the alert's context, and detaches. Driven through the agent's own `Pipeline::tick`.

use std::time::{Duration, Instant};

use memtrace::{
    agent::{Now, Pipeline},
    api::TraceBudget,
    config::Config,
    probes::budget::Phase,
};
use memtrace_integration::{can_trace, Grower};

/// Pattern alerts at once, one-second snapshots and analyses, drill-downs of `window` seconds.
fn config(window: u64) -> Config {
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
    config.drilldown.window = window;
    config.drilldown.max_processes = 2;
    config
}

#[test]
fn growing_process_is_drilled_into() {
    if !can_trace() {
        return;
    }
    let mut pipeline = Pipeline::start(config(3)).expect("agent starts");

    let child = Grower::start(&[]);
    let pid = child.pid();
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
    // A sleeping grower makes few allocator calls: traced all the time, its figures complete.
    child.stop();
}

/// Ticks the pipeline until `check` holds (panics with the intake's view after `timeout`).
fn tick_until<T>(
    pipeline: &mut Pipeline,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Pipeline) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        pipeline.tick(Now::current());
        if let Some(value) = check(pipeline) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; intake: {:#?}; alerts: {:#?}",
            pipeline.shared.intake.load(),
            pipeline.shared.core.load().alerts.active
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn budget_of(pipeline: &Pipeline, pid: u32) -> Option<TraceBudget> {
    let intake = pipeline.shared.intake.load();
    let traced = intake.traced.iter().find(|t| t.pid == pid)?;
    Some(traced.budget.clone())
}

/// Issue 12 item 3: a growing process that mallocs and frees as fast as it can is drilled into
/// (its growth raises the alert), measured for half a second, found over the drill-down's budget,
/// and sampled: detached, traced again for a window, the figures marked partial.
#[test]
fn a_busy_process_drilled_into_is_sampled_within_its_budget() {
    if !can_trace() {
        return;
    }
    let mut config = config(60);
    // Traced, the busy grower makes a few hundred thousand calls a second at ~2 µs each (about
    // half a core or more): 10% of a core is a fraction of it, and a pause of a few seconds.
    config.drilldown.cpu_budget = 0.1;
    let mut pipeline = Pipeline::start(config).expect("agent starts");
    let child = Grower::start(&["busy"]);
    let pid = child.pid();

    // Drilled into, measured, then paused: sampled.
    let sampled = tick_until(
        &mut pipeline,
        Duration::from_secs(60),
        "a sampled drill-down",
        |p| budget_of(p, pid).filter(|b| b.phase == Phase::SampleOff),
    );
    assert!(pipeline.shared.intake.load().drilldown(pid).is_some());
    assert!(sampled.partial, "{sampled:#?}");
    let rate = sampled.calls_per_second.expect("a measured rate");
    let reason = sampled.reason.clone().expect("a reason");
    assert!(reason.contains("over the budget of 10%"), "{reason}");
    assert!(reason.contains("figures are partial"), "{reason}");
    // The measured cost is over the budget, the average under sampling within it.
    assert!(rate * sampled.per_call_ns * 1e-9 > 0.1, "{sampled:#?}");
    let added = sampled.added_cores.expect("added CPU");
    assert!(added <= 0.1 + 1e-9, "{sampled:#?}");
    assert!(sampled.duty > 0.0 && sampled.duty < 1.0, "{sampled:#?}");
    // Between windows the heap is not traced (no probes: no cost).
    let paused = pipeline
        .intake
        .session()
        .accounting
        .process(pid)
        .expect("state");
    assert!(!paused.heap_traced);

    // The next window attaches again: its heap figures start afresh, since that attach.
    let window = tick_until(
        &mut pipeline,
        Duration::from_secs(60),
        "a sampling window",
        |p| budget_of(p, pid).filter(|b| b.phase == Phase::SampleOn),
    );
    assert_eq!(window.windows, 1, "{window:#?}");
    assert!(window.partial);
    let state = pipeline
        .intake
        .session()
        .accounting
        .process(pid)
        .expect("state");
    assert!(state.heap_traced && !state.heap_from_start);
    assert!(
        state.attach_baseline.is_some_and(|(_, heap)| heap == 0),
        "a fresh heap: {:?}, live {} in {} allocations",
        state.attach_baseline,
        state.heap.live_bytes,
        state.heap.total_allocs
    );
    child.stop();
}

/// Issue 12 item 3: with a budget the busy process cannot fit even by sampling, the drill-down
/// lets it go after measuring it, with the reason in the intake's list of refusals.
#[test]
fn a_drilldown_far_over_its_budget_is_refused_with_the_reason() {
    if !can_trace() {
        return;
    }
    let mut config = config(60);
    config.drilldown.cpu_budget = 0.001;
    let mut pipeline = Pipeline::start(config).expect("agent starts");
    let child = Grower::start(&["busy"]);
    let pid = child.pid();
    let mut drilled = false;
    let refusal = tick_until(&mut pipeline, Duration::from_secs(60), "a refusal", |p| {
        let intake = p.shared.intake.load();
        drilled |= intake.drilldown(pid).is_some();
        intake.refusals.iter().find(|r| r.pid == pid).cloned()
    });
    assert!(drilled, "measured as a drill-down first");
    assert!(
        refusal.reason.contains("the budget of 0.1%"),
        "{refusal:#?}"
    );
    assert!(
        refusal.reason.contains("even sampling would trace"),
        "{refusal:#?}"
    );
    let intake = pipeline.shared.intake.load();
    assert!(!intake.is_traced(pid) && intake.drilldown(pid).is_none());
    assert_eq!(intake.traces_refused, 1);
    assert!(!pipeline
        .intake
        .session()
        .accounting
        .process(pid)
        .is_some_and(|p| p.heap_traced));
    child.stop();
}
