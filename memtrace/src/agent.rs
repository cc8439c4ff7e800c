//! `memtrace agent`: the long-lived daemon. Host-wide accounting from the syscall and process
//! tracepoints and the kernel's RSS counters; malloc-family tracing for chosen processes (and, for
//! a bounded window, for processes that start to grow: drill-down); snapshots, pattern analysis,
//! alerts, persistence, and the state the HTTP side reads.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{
    accounting::{Accounting, Procfs},
    alerts::{channels::Dispatcher, AlertEngine, AlertEvent},
    analysis::{analyze_snapshots, PatternConfig, ProcessPattern},
    attribution::{AttributionConfig, Attributor, ConsumerReport},
    config::Config,
    events::{self, Kind, PipelineStats},
    os::clock::monotonic_seconds,
    probes::{allocator_of, host_libc, KernelStacks, ProbeError, ProbeOptions, Probes},
    snapshot::HostSnapshot,
    store::{Store, UtcDate},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("starting the ring buffer reader")]
    Reader(#[source] std::io::Error),
    #[error("the probe loader task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("opening the data directory")]
    Store(#[from] crate::store::StoreError),
    #[error("starting the alert channels")]
    Channels(#[from] crate::alerts::channels::ChannelError),
    #[error("the agent's state lock was poisoned by a panic")]
    Poisoned,
}

/// What the agent does, beyond its configuration file.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub pids: Vec<u32>,
    pub malloc_all: bool,
    pub top: usize,
    pub probes: ProbeOptions,
    /// Snapshots kept in memory (the data directory keeps them all, within retention).
    pub history: usize,
    /// Automatic drill-down: trace a growing process's heap for a bounded window.
    pub drilldown: DrilldownOptions,
    /// Persist snapshots, alerts and consumers in the data directory.
    pub persist: bool,
    /// Turn on the kernel's BPF run-time statistics while running (for the agent's own cost).
    pub bpf_stats: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrilldownOptions {
    pub enabled: bool,
    #[serde(rename = "windowSeconds", serialize_with = "as_seconds")]
    pub window: Duration,
    pub max_processes: usize,
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Default for DrilldownOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            max_processes: 2,
        }
    }
}

/// Something that happened, for WebSocket clients and other subscribers.
pub use crate::http::StreamEvent as AgentEvent;
pub use crate::os::clock::now_ms;

/// A process whose heap the agent traces for a while because it grew.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drilldown {
    pub pid: u32,
    pub comm: String,
    pub started_at: u64,
    pub ends_at: u64,
    pub reason: String,
    /// The alert whose context receives the consumers found.
    pub alert_id: Option<String>,
    #[serde(skip)]
    deadline: Option<Instant>,
}

/// Mutable state of the agent, behind one lock.
pub struct State {
    pub accounting: Accounting,
    pub attributor: Attributor,
    pub history: VecDeque<Arc<HostSnapshot>>,
    pub engine: AlertEngine,
    pub patterns: HashMap<u32, ProcessPattern>,
    pub reports: HashMap<u32, ConsumerReport>,
    /// Processes traced on request (CLI or API).
    pub traced: BTreeSet<u32>,
    pub drilldowns: HashMap<u32, Drilldown>,
    pub drilldowns_total: u64,
    pub last_pids: HashSet<u32>,
    pub last_prune_day: Option<UtcDate>,
}

/// The running agent: shared by the collection loop and the HTTP side.
pub struct Agent {
    pub config: Config,
    pub options: AgentOptions,
    state: Mutex<State>,
    probes: Mutex<Probes>,
    pub stats: Arc<PipelineStats>,
    events: broadcast::Sender<AgentEvent>,
    dispatcher: Dispatcher,
    store: Option<Arc<Store>>,
    pub started_at: u64,
    started: Instant,
}

impl Agent {
    /// Loads the probes, attaches what the options ask for, restores persisted state.
    pub async fn start(
        config: Config,
        options: AgentOptions,
    ) -> Result<
        (
            Arc<Self>,
            events::Batch,
            aya::maps::RingBuf<aya::maps::MapData>,
        ),
        AgentError,
    > {
        let probe_options = options.probes.clone();
        let mut probes = tokio::task::spawn_blocking(move || Probes::load(&probe_options))
            .await
            .map_err(AgentError::Join)??;
        let tracking = &config.tracking;
        let mut accounting = Accounting::new(Box::new(Procfs)).with_operations(
            tracking.min_allocation_size,
            if tracking.enabled {
                tracking.max_operations as usize
            } else {
                0
            },
        );
        if options.malloc_all {
            log::warn!(
                "--malloc-all: every malloc and free of every process now costs a uprobe hit (about 0.5 µs); \
                 allocation-heavy programs will run many times slower"
            );
            probes.attach_allocator(&host_libc()?)?;
            accounting.set_trace_all(true);
        }
        let mut traced = BTreeSet::new();
        for &pid in &options.pids {
            let target = allocator_of(pid)?;
            accounting.state(pid);
            let report = probes.attach_allocator(&target)?;
            accounting.set_traced(pid, true);
            traced.insert(pid);
            log::info!(
                "tracing the malloc family of pid {pid} in {} ({} functions)",
                target.path.display(),
                report.attached.len()
            );
        }
        if options.bpf_stats {
            probes.enable_stats()?;
            log::info!(
                "BPF run-time statistics on while the agent runs (a few ns per program run)"
            );
        }
        let ring = probes.take_ring_buffer()?;

        let store = if options.persist {
            let store = Store::open(&config.monitor.data_dir, config.retention.clone())?;
            log::info!("data directory: {}", config.monitor.data_dir.display());
            Some(Arc::new(store))
        } else {
            None
        };
        let mut engine = AlertEngine::new(&config.thresholds, &config.alerting);
        let mut history = VecDeque::new();
        if let Some(store) = &store {
            match store.load_alerts() {
                Ok(alerts) => {
                    let active = alerts.iter().filter(|a| !a.resolved).count();
                    engine.restore(alerts);
                    if active > 0 {
                        log::info!("restored {active} active alerts");
                    }
                }
                Err(err) => log::warn!("restoring alerts: {}", chain(&err)),
            }
            match store.load_recent_snapshots(options.history) {
                Ok(snapshots) => history.extend(snapshots.into_iter().map(Arc::new)),
                Err(err) => log::warn!("restoring snapshots: {}", chain(&err)),
            }
        }
        let dispatcher = Dispatcher::with_external_url(
            &config.alerting,
            Some(config.external_url()),
            store
                .clone()
                .map(|s| s as Arc<dyn crate::alerts::AlertSink>),
        )?;
        let attribution = AttributionConfig {
            max_consumers: config.tracking.max_consumers as usize,
            stack_trace_depth: config.tracking.stack_trace_depth as usize,
            suspicious_size: config.tracking.suspicious_size,
            max_consumer_size: config.tracking.max_consumer_size,
            leak_age_seconds: config.tracking.leak_age,
            wrappers: config.tracking.wrappers.clone(),
            ..AttributionConfig::default()
        };
        let (events, _) = broadcast::channel(256);
        let agent = Arc::new(Self {
            options,
            state: Mutex::new(State {
                accounting,
                attributor: Attributor::new(attribution),
                history,
                engine,
                patterns: HashMap::new(),
                reports: HashMap::new(),
                traced,
                drilldowns: HashMap::new(),
                drilldowns_total: 0,
                last_pids: HashSet::new(),
                last_prune_day: None,
            }),
            config,
            probes: Mutex::new(probes),
            stats: Arc::new(PipelineStats::default()),
            events,
            dispatcher,
            store,
            started_at: now_ms(),
            started: Instant::now(),
        });
        Ok((agent, Vec::new(), ring))
    }

    pub fn state(&self) -> Result<MutexGuard<'_, State>, AgentError> {
        self.state.lock().map_err(|_| AgentError::Poisoned)
    }

    pub fn probes(&self) -> Result<MutexGuard<'_, Probes>, AgentError> {
        self.probes.lock().map_err(|_| AgentError::Poisoned)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn publish(&self, event: AgentEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn dispatch(&self, events: Vec<AlertEvent>) {
        for event in events {
            self.dispatcher.send(&event);
            let value = serde_json::to_value(event.alert()).unwrap_or(Value::Null);
            self.publish(match event {
                AlertEvent::Created(_) => AgentEvent::AlertCreated(value),
                AlertEvent::Resolved(_) => AgentEvent::AlertResolved(value),
            });
        }
    }

    /// Applies a batch of kernel events.
    pub fn apply(&self, batch: &events::Batch) {
        if let Ok(mut state) = self.state.lock() {
            state.accounting.apply_batch(batch);
            state.accounting.refresh_dirty_modules();
        }
    }

    /// Takes a host snapshot: kernel figures for every process, attribution for traced ones;
    /// keeps, persists and publishes it, and checks thresholds.
    pub fn snapshot(&self) -> Result<Arc<HostSnapshot>, AgentError> {
        let now = now_ms();
        let mut state = self.state()?;
        let mut snapshot = state.accounting.host_snapshot(now);
        let traced: Vec<u32> = snapshot
            .processes
            .iter()
            .filter(|p| p.heap_traced)
            .map(|p| p.pid)
            .collect();
        if !traced.is_empty() {
            let probes = self.probes()?;
            let stacks = probes.stacks()?;
            let mut stacks = KernelStacks(stacks);
            let now_s = monotonic_seconds();
            let State {
                accounting,
                attributor,
                reports,
                ..
            } = &mut *state;
            for pid in &traced {
                if let Some(process) = accounting.process(*pid) {
                    reports.insert(*pid, attributor.report(process, &mut stacks, now_s));
                }
            }
        }
        for process in &mut snapshot.processes {
            if let Some(report) = state.reports.get(&process.pid) {
                process.libraries = report.libraries.clone();
            }
        }
        let snapshot = Arc::new(snapshot);
        state.history.push_back(snapshot.clone());
        while state.history.len() > self.options.history.max(1) {
            state.history.pop_front();
        }

        // Processes gone since the last snapshot: their alerts resolve, caches go.
        let alive: HashSet<u32> = snapshot.processes.iter().map(|p| p.pid).collect();
        let gone: Vec<u32> = state.last_pids.difference(&alive).copied().collect();
        let mut alert_events = Vec::new();
        for pid in gone {
            alert_events.extend(state.engine.process_gone(pid, now));
            state.attributor.forget(pid);
            state.reports.remove(&pid);
            state.patterns.remove(&pid);
            state.traced.remove(&pid);
            state.drilldowns.remove(&pid);
        }
        state.last_pids = alive;
        for process in &snapshot.processes {
            alert_events.extend(state.engine.check_thresholds(process, now));
        }
        let operations = state.accounting.take_new_operations();
        let consumers = consumers_document(&state.reports);
        let prune =
            self.store.is_some() && state.last_prune_day != Some(UtcDate::from_unix_ms(now));
        if prune {
            state.last_prune_day = Some(UtcDate::from_unix_ms(now));
        }
        drop(state);
        self.dispatch(alert_events);

        if let Some(store) = &self.store {
            if let Err(err) = store.append_snapshot(&snapshot) {
                log::warn!("saving the snapshot: {}", chain(&err));
            }
            let day = UtcDate::from_unix_ms(now);
            if !operations.is_empty() {
                let lines: Vec<Value> = operations
                    .iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .collect();
                if let Err(err) = store.append_operations(day, &lines) {
                    log::warn!("saving operations: {}", chain(&err));
                }
            }
            if consumers["processes"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
            {
                if let Err(err) = store.write_consumers(day, &consumers) {
                    log::warn!("saving consumers: {}", chain(&err));
                }
            }
            if prune {
                match store.prune(now) {
                    Ok(report) => log::debug!("retention: {report:?}"),
                    Err(err) => log::warn!("applying retention: {}", chain(&err)),
                }
            }
        }
        self.publish(AgentEvent::Snapshot(snapshot.clone()));
        Ok(snapshot)
    }

    /// Pattern analysis over the history: patterns per process, pattern/leak/spike alerts, and
    /// drill-down into growing processes whose heap is not traced.
    pub fn analyze(&self) -> Result<Vec<ProcessPattern>, AgentError> {
        let now = now_ms();
        let pd = &self.config.pattern_detection;
        let config = PatternConfig {
            window_size: pd.window_size as usize,
            min_data_points: pd.min_data_points as usize,
            confidence_threshold: pd.confidence_threshold,
            growth_rate_mb: self.config.thresholds.growth_rate_mb,
            ..PatternConfig::default()
        };
        let mut state = self.state()?;
        let history: Vec<HostSnapshot> = state.history.iter().map(|s| (**s).clone()).collect();
        let patterns = analyze_snapshots(&history, &config);
        let latest: HashMap<u32, &crate::snapshot::ProcessSnapshot> = history
            .last()
            .map(|s| s.processes.iter().map(|p| (p.pid, p)).collect())
            .unwrap_or_default();
        state.patterns = patterns.iter().map(|p| (p.pid, p.clone())).collect();
        let State {
            engine, reports, ..
        } = &mut *state;
        let outcome = crate::alerts::rules::apply_patterns(
            engine,
            &patterns,
            &latest,
            reports,
            std::process::id(),
            now,
        );
        let alert_events = outcome.events;
        let detected = outcome.detected;
        let drill: Vec<_> = outcome
            .drill
            .into_iter()
            .map(|d| (d.pid, d.comm, d.reason, d.alert_id))
            .collect();
        drop(state);
        self.dispatch(alert_events);
        for pattern in detected {
            self.publish(AgentEvent::PatternDetected(Box::new(pattern)));
        }
        if self.options.drilldown.enabled {
            for (pid, comm, reason, alert_id) in drill {
                if let Err(err) = self.start_drilldown(pid, comm, reason, alert_id) {
                    log::info!("drill-down into pid {pid} not started: {err}");
                }
            }
        }
        Ok(patterns)
    }

    fn start_drilldown(
        &self,
        pid: u32,
        comm: String,
        reason: String,
        alert_id: Option<String>,
    ) -> Result<(), String> {
        let mut state = self.state().map_err(|e| e.to_string())?;
        if state.drilldowns.contains_key(&pid) || state.traced.contains(&pid) {
            return Ok(());
        }
        if state.drilldowns.len() >= self.options.drilldown.max_processes {
            return Err(format!(
                "{} drill-downs already running (the cap)",
                state.drilldowns.len()
            ));
        }
        let target = allocator_of(pid).map_err(|e| chain(&e))?;
        state.accounting.state(pid);
        self.probes()
            .map_err(|e| e.to_string())?
            .attach_allocator(&target)
            .map_err(|e| chain(&e))?;
        state.accounting.set_traced(pid, true);
        let now = now_ms();
        let window = self.options.drilldown.window;
        log::info!("drill-down: tracing the heap of pid {pid} ({comm}) for {window:?}: {reason}");
        state.drilldowns.insert(
            pid,
            Drilldown {
                pid,
                comm,
                started_at: now,
                ends_at: now + window.as_millis() as u64,
                reason,
                alert_id,
                deadline: Some(Instant::now() + window),
            },
        );
        state.drilldowns_total += 1;
        Ok(())
    }

    /// Ends drill-downs whose window is over: their consumers go into the alert's context.
    pub fn finish_drilldowns(&self) -> Result<(), AgentError> {
        let mut state = self.state()?;
        let due: Vec<Drilldown> = state
            .drilldowns
            .values()
            .filter(|d| d.deadline.is_some_and(|t| Instant::now() >= t))
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let probes = self.probes()?;
        let mut stacks = KernelStacks(probes.stacks()?);
        let now_s = monotonic_seconds();
        let mut finished = Vec::new();
        for drill in due {
            state.drilldowns.remove(&drill.pid);
            let report = {
                let State {
                    accounting,
                    attributor,
                    ..
                } = &mut *state;
                accounting
                    .process(drill.pid)
                    .map(|p| attributor.report(p, &mut stacks, now_s))
            };
            if let Some(report) = report {
                log::info!(
                    "drill-down of pid {} ({}) done: {} consumers, top: {}",
                    drill.pid,
                    drill.comm,
                    report.consumers.len(),
                    report
                        .consumers
                        .first()
                        .map(|c| format!(
                            "{} in {} ({} live bytes)",
                            c.name, c.category, c.allocated_memory
                        ))
                        .unwrap_or_default()
                );
                finished.push((drill.clone(), report.clone()));
                state.reports.insert(drill.pid, report);
            }
            state.accounting.set_traced(drill.pid, false);
        }
        let mut probes = probes;
        for (drill, _) in &finished {
            probes.detach_allocator(Some(drill.pid));
        }
        drop(probes);
        let mut updated = Vec::new();
        for (drill, report) in finished {
            if let Some(id) = drill.alert_id {
                let top = serde_json::to_value(report.consumers.iter().take(5).collect::<Vec<_>>())
                    .unwrap_or(Value::Null);
                updated.extend(state.engine.annotate(
                    &id,
                    top,
                    report.libraries.first().map(|l| l.library.clone()),
                ));
            }
        }
        drop(state);
        for alert in updated {
            if let Some(store) = &self.store {
                if let Err(err) = store.append_alert(&alert) {
                    log::warn!("saving alert {}: {}", alert.id, chain(&err));
                }
            }
            self.publish(AgentEvent::AlertCreated(
                serde_json::to_value(&alert).unwrap_or(Value::Null),
            ));
        }
        Ok(())
    }

    /// Starts tracing a process's heap on request.
    pub fn trace_start(&self, pid: u32) -> Result<Value, AgentError> {
        if pid == std::process::id() {
            return Err(AgentError::Probe(ProbeError::SelfTrace(pid)));
        }
        let target = allocator_of(pid)?;
        let mut state = self.state()?;
        state.accounting.state(pid);
        let report = self.probes()?.attach_allocator(&target)?;
        state.accounting.set_traced(pid, true);
        state.traced.insert(pid);
        state.drilldowns.remove(&pid);
        log::info!("tracing the malloc family of pid {pid} on request");
        Ok(
            json!({ "pid": pid, "traced": true, "library": target.path, "attached": report.attached, "missing": report.missing }),
        )
    }

    /// Stops tracing a process's heap.
    pub fn trace_stop(&self, pid: u32) -> Result<Value, AgentError> {
        let mut state = self.state()?;
        let was = self.probes()?.detach_allocator(Some(pid));
        state.accounting.set_traced(pid, false);
        state.traced.remove(&pid);
        state.drilldowns.remove(&pid);
        Ok(json!({ "pid": pid, "traced": false, "wasTraced": was }))
    }

    /// Resolves an alert by hand.
    pub fn resolve_alert(&self, id: &str) -> Result<Option<Value>, AgentError> {
        let mut state = self.state()?;
        let resolved = state.engine.resolve(id, now_ms());
        drop(state);
        match resolved {
            Ok(alert) => {
                let value = serde_json::to_value(&alert).unwrap_or(Value::Null);
                self.dispatch(vec![AlertEvent::Resolved(alert)]);
                Ok(Some(value))
            }
            Err(_) => Ok(None),
        }
    }

    /// Kernel counters summed over CPUs.
    pub fn kernel_counters(&self) -> [u64; memtrace_common::COUNTERS_LEN as usize] {
        self.probes
            .lock()
            .ok()
            .and_then(|p| p.counters().ok())
            .unwrap_or_default()
    }

    pub fn events_received(&self) -> u64 {
        self.stats
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn events_by_kind(&self) -> Vec<(Kind, u64)> {
        Kind::ALL
            .iter()
            .map(|k| (*k, self.stats.kind_count(*k)))
            .collect()
    }

    pub fn webhook_stats(&self) -> crate::alerts::channels::WebhookStats {
        self.dispatcher.webhook_stats()
    }
}

fn consumers_document(reports: &HashMap<u32, ConsumerReport>) -> Value {
    let mut processes: Vec<&ConsumerReport> = reports.values().collect();
    processes.sort_by_key(|r| r.pid);
    json!({ "timestamp": now_ms(), "processes": processes })
}

pub use crate::error_chain as chain;

/// Runs the agent until SIGINT or SIGTERM: collection, snapshots, analysis, drill-downs; `serve`
/// runs the HTTP side alongside.
pub async fn run<F, Fut>(config: Config, options: AgentOptions, serve: F) -> Result<(), AgentError>
where
    F: FnOnce(Arc<dyn crate::http::Backend>, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (agent, _, ring) = Agent::start(config, options).await?;
    let (tx, mut rx) = mpsc::channel::<events::Batch>(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(events::reader(
        ring,
        tx,
        agent.stats.clone(),
        stop_rx.clone(),
    ));
    let applier_agent = agent.clone();
    let applier = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            applier_agent.apply(&batch);
        }
    });
    let server = tokio::spawn(serve(
        agent.clone() as Arc<dyn crate::http::Backend>,
        stop_rx.clone(),
    ));

    log::info!(
        "memtrace agent running (pid {}): snapshots every {:?}, analysis every {:?}",
        std::process::id(),
        agent.config.monitor.snapshot_interval(),
        agent.config.monitor.analysis_interval()
    );
    let mut snapshots = tokio::time::interval(agent.config.monitor.snapshot_interval());
    let mut analysis = tokio::time::interval(agent.config.monitor.analysis_interval());
    analysis.tick().await;
    // Both listeners exist for the whole loop, so a signal that arrives while a snapshot or an
    // analysis runs is not lost.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Reader)?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(AgentError::Reader)?;
    loop {
        tokio::select! {
            _ = snapshots.tick() => {
                let worker = agent.clone();
                let top = agent.options.top;
                match tokio::task::spawn_blocking(move || worker.snapshot()).await {
                    Ok(Ok(snapshot)) => log_summary(&snapshot, top, &agent),
                    Ok(Err(err)) => log::warn!("snapshot: {}", chain(&err)),
                    Err(err) => log::warn!("snapshot task: {err}"),
                }
                if let Err(err) = agent.finish_drilldowns() {
                    log::warn!("drill-downs: {}", chain(&err));
                }
            }
            _ = analysis.tick() => {
                let worker = agent.clone();
                match tokio::task::spawn_blocking(move || worker.analyze()).await {
                    Ok(Ok(patterns)) => log::debug!("analysis: {} processes", patterns.len()),
                    Ok(Err(err)) => log::warn!("analysis: {}", chain(&err)),
                    Err(err) => log::warn!("analysis task: {err}"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("shutting down: draining events, flushing data, detaching probes");
    let _ = stop_tx.send(true);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => log::warn!("ring buffer reader: {err}"),
        Err(err) => log::warn!("ring buffer reader task: {err}"),
    }
    let _ = applier.await;
    let _ = server.await;
    if let Ok(agent) = Arc::try_unwrap(agent) {
        agent.dispatcher.shutdown(Duration::from_secs(2));
    }
    Ok(())
}

fn log_summary(snapshot: &HostSnapshot, top: usize, agent: &Agent) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let lost = agent.kernel_counters()[memtrace_common::COUNTER_RINGBUF_DROPS as usize];
    log::info!(
        "host: {:.0} MiB available of {:.0} MiB; {} processes; events {} received, {} lost",
        mib(snapshot.mem_available_bytes),
        mib(snapshot.mem_total_bytes),
        snapshot.processes.len(),
        agent.events_received(),
        lost,
    );
    for p in snapshot.processes.iter().take(top) {
        let heap = if p.heap_traced {
            format!(
                " heap {:.1} MiB ({} live)",
                mib(p.heap_live_bytes),
                p.heap_live_count
            )
        } else {
            String::new()
        };
        log::info!(
            "  {:>7} {:<16} rss {:>8.1} MiB (anon {:.1}, file {:.1}) mmap anon {:.1} file {:.1} brk {:.1}{heap}",
            p.pid,
            p.comm,
            mib(p.rss_bytes),
            mib(p.rss_anon_bytes),
            mib(p.rss_file_bytes),
            mib(p.mapped_anon_bytes),
            mib(p.mapped_file_bytes),
            mib(p.brk_bytes),
        );
    }
}
