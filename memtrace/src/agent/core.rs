//! The core half of the agent: everything derived from what the intake collects. Attribution
//! (symbolizing stacks into consumers), the snapshot history, pattern analysis, alerts and their
//! delivery, persistence. It runs on its own thread, so symbolizing a large binary or a slow disk
//! delays only the core, never event intake.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{mpsc, Arc},
    time::Duration,
};

use serde::Serialize;

use super::{
    intake::{Collected, DrilldownEnded, IntakeCommand},
    view::CoreView,
    Now, Shared,
};
use crate::{
    accounting::Operation,
    alerts::{
        rules::{self, DrillRequest},
        AlertEngine, AlertError, AlertEvent,
    },
    analysis::{analyze_snapshots, ProcessPattern},
    api::{Alert, Alerts, ConsumerReport, StreamEvent},
    attribution::{Attributor, StackSource},
    os::clock,
    snapshot::{HostSnapshot, ProcessSnapshot},
    store::UtcDate,
};

/// Alerts listed in `recent`.
const RECENT_ALERTS: usize = 200;
/// Exited processes whose last figures are kept.
const EXITED_KEPT: usize = 64;

/// Messages to the core.
pub enum CoreMessage {
    Collected(Box<Collected>),
    DrilldownEnded(DrilldownEnded),
    Resolve {
        id: String,
        reply: mpsc::SyncSender<Result<Alert, AlertError>>,
    },
    Analyze {
        reply: mpsc::SyncSender<Vec<ProcessPattern>>,
    },
    /// Sent by the intake when it stops (after everything it collected).
    Stop,
}

pub struct Core {
    shared: Arc<Shared>,
    history: VecDeque<Arc<HostSnapshot>>,
    engine: AlertEngine,
    patterns: HashMap<u32, ProcessPattern>,
    last_analysis: Option<u64>,
    reports: BTreeMap<u32, Arc<ConsumerReport>>,
    attributor: Attributor,
    stacks: Box<dyn StackSource + Send>,
    operations: VecDeque<Operation>,
    exited: VecDeque<ProcessSnapshot>,
    last_pids: HashSet<u32>,
    last_prune_day: Option<UtcDate>,
    next_analysis_ms: u64,
}

/// The day's consumers file (`memory-consumers/consumers_YYYY-MM-DD.json`).
#[derive(Serialize)]
struct ConsumersFile<'a> {
    timestamp: u64,
    processes: Vec<&'a ConsumerReport>,
}

impl Core {
    /// A core over `shared`, with alerts and recent snapshots restored from the data directory.
    /// The first analysis is due one analysis interval from `now`.
    pub fn start(shared: Arc<Shared>, stacks: Box<dyn StackSource + Send>, now: Now) -> Self {
        let config = Arc::clone(&shared.config);
        let mut engine = AlertEngine::new(&config.thresholds, &config.alerting);
        let mut history = VecDeque::new();
        let mut gone = Vec::new();
        if let Some(store) = &shared.store {
            match store.load_alerts() {
                Ok(alerts) => {
                    let active = alerts.iter().filter(|a| !a.resolved).count();
                    engine.restore(alerts);
                    if active > 0 {
                        log::info!("restored {active} active alerts");
                    }
                    // Processes that exited while the agent was not running (or whose pid another
                    // process has now): their alerts are resolved at once.
                    gone = engine.resolve_gone(
                        |a| {
                            crate::os::procfs::process_alive_since(
                                a.context.pid,
                                &a.context.comm,
                                a.timestamp,
                            )
                        },
                        now.wall_ms,
                    );
                    if !gone.is_empty() {
                        log::info!(
                            "resolved {} restored alerts: their process is gone",
                            gone.len()
                        );
                    }
                }
                Err(err) => log::warn!("restoring alerts: {}", crate::error_chain(&err)),
            }
            match store.load_recent_snapshots(config.agent.history) {
                Ok(snapshots) => history.extend(snapshots.into_iter().map(Arc::new)),
                Err(err) => log::warn!("restoring snapshots: {}", crate::error_chain(&err)),
            }
        }
        let core = Self {
            attributor: Attributor::new(config.tracking.clone()),
            shared,
            history,
            engine,
            patterns: HashMap::new(),
            last_analysis: None,
            reports: BTreeMap::new(),
            stacks,
            operations: VecDeque::new(),
            exited: VecDeque::new(),
            last_pids: HashSet::new(),
            last_prune_day: None,
            next_analysis_ms: now
                .mono_ms
                .saturating_add(config.monitor.analysis_interval.saturating_mul(1000)),
        };
        core.dispatch(gone);
        core.publish();
        core
    }

    /// Handles one message (`Stop` does nothing here: the thread loop ends on it).
    pub fn handle(&mut self, message: CoreMessage, now: Now) {
        match message {
            CoreMessage::Collected(collected) => {
                self.on_collected(*collected);
            }
            CoreMessage::DrilldownEnded(ended) => self.on_drilldown_ended(ended, now),
            CoreMessage::Resolve { id, reply } => {
                let _ = reply.send(self.resolve(&id, now));
            }
            CoreMessage::Analyze { reply } => {
                // An analysis on request asks for no drill-down: that stays the periodic one's.
                let (patterns, _) = self.analyze(now);
                let _ = reply.send(patterns);
            }
            CoreMessage::Stop => {}
        }
    }

    /// Attributes, keeps, persists and publishes a snapshot, and checks the thresholds.
    pub fn on_collected(&mut self, collected: Collected) -> Arc<HostSnapshot> {
        let Collected {
            at,
            mut snapshot,
            inputs,
            operations,
            exited,
        } = collected;
        let began = std::time::Instant::now();
        let config = Arc::clone(&self.shared.config);
        let now_s = clock::monotonic_seconds();
        for input in &inputs {
            let report = self.attributor.report(input, self.stacks.as_mut(), now_s);
            self.reports.insert(input.pid, Arc::new(report));
        }
        for process in &mut snapshot.processes {
            if let Some(report) = self.reports.get(&process.pid) {
                process.libraries = report.libraries.clone();
            }
        }
        let snapshot = Arc::new(snapshot);
        self.history.push_back(Arc::clone(&snapshot));
        while self.history.len() > config.agent.history.max(1) {
            self.history.pop_front();
        }
        for process in exited {
            if !self
                .exited
                .iter()
                .any(|p| p.pid == process.pid && p.comm == process.comm)
            {
                if self.exited.len() == EXITED_KEPT {
                    self.exited.pop_front();
                }
                self.exited.push_back(process);
            }
        }

        // Processes gone since the last snapshot: their alerts resolve, what was kept of them goes.
        let alive: HashSet<u32> = snapshot.processes.iter().map(|p| p.pid).collect();
        let mut events = Vec::new();
        for pid in self.last_pids.difference(&alive) {
            events.extend(self.engine.process_gone(*pid, at.wall_ms));
            self.attributor.forget(*pid);
            self.reports.remove(pid);
            self.patterns.remove(pid);
        }
        self.last_pids = alive;
        for process in &snapshot.processes {
            events.extend(self.engine.check_thresholds(process, at.wall_ms));
        }

        let max_operations = config.tracking.max_operations as usize;
        for operation in &operations {
            if self.operations.len() >= max_operations {
                self.operations.pop_front();
            }
            self.operations.push_back(operation.clone());
        }
        let attributed = began.elapsed();
        self.persist(&snapshot, &operations, at.wall_ms);
        let persisted = began.elapsed();
        self.dispatch(events);
        log_summary(&snapshot, &self.reports, config.agent.top);
        self.shared
            .publish(StreamEvent::Snapshot(Arc::clone(&snapshot)));
        self.publish();
        log::debug!(
            "core: snapshot handled in {:?} (attribution and thresholds {:?}, persistence {:?})",
            began.elapsed(),
            attributed,
            persisted.saturating_sub(attributed)
        );
        snapshot
    }

    fn persist(&mut self, snapshot: &HostSnapshot, operations: &[Operation], now_ms: u64) {
        let Some(store) = self.shared.store.clone() else {
            return;
        };
        if let Err(err) = store.append_snapshot(snapshot) {
            log::warn!("saving the snapshot: {}", crate::error_chain(&err));
        }
        let day = UtcDate::from_unix_ms(now_ms);
        if !operations.is_empty() {
            let lines: Vec<serde_json::Value> = operations
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect();
            if let Err(err) = store.append_operations(day, &lines) {
                log::warn!("saving operations: {}", crate::error_chain(&err));
            }
        }
        if !self.reports.is_empty() {
            let file = ConsumersFile {
                timestamp: now_ms,
                processes: self.reports.values().map(|r| &**r).collect(),
            };
            match serde_json::to_value(&file) {
                Ok(document) => {
                    if let Err(err) = store.write_consumers(day, &document) {
                        log::warn!("saving consumers: {}", crate::error_chain(&err));
                    }
                }
                Err(err) => log::warn!("encoding consumers: {err}"),
            }
        }
        if self.last_prune_day != Some(day) {
            self.last_prune_day = Some(day);
            match store.prune(now_ms) {
                Ok(report) => log::debug!("retention: {report:?}"),
                Err(err) => log::warn!("applying retention: {}", crate::error_chain(&err)),
            }
        }
    }

    /// Runs the analysis if its interval is over; returns the drill-downs it asks for.
    pub fn analyze_if_due(&mut self, now: Now) -> Option<Vec<DrillRequest>> {
        if now.mono_ms < self.next_analysis_ms {
            return None;
        }
        let interval = self
            .shared
            .config
            .monitor
            .analysis_interval
            .saturating_mul(1000);
        self.next_analysis_ms = self
            .next_analysis_ms
            .saturating_add(interval)
            .max(now.mono_ms.saturating_add(interval / 2));
        let (patterns, drill) = self.analyze(now);
        log::debug!("analysis: {} processes", patterns.len());
        Some(if self.shared.config.drilldown.enabled {
            drill
        } else {
            Vec::new()
        })
    }

    /// Pattern analysis over the history: patterns per process, pattern/leak/spike alerts, and
    /// the growing processes whose heap is not traced (drill-down candidates).
    pub fn analyze(&mut self, now: Now) -> (Vec<ProcessPattern>, Vec<DrillRequest>) {
        let config = Arc::clone(&self.shared.config);
        let patterns = analyze_snapshots(self.history.make_contiguous(), &config.pattern());
        self.patterns = patterns.iter().map(|p| (p.pid, p.clone())).collect();
        self.last_analysis = Some(now.wall_ms);
        let latest: HashMap<u32, &ProcessSnapshot> = self
            .history
            .back()
            .map(|s| s.processes.iter().map(|p| (p.pid, p)).collect())
            .unwrap_or_default();
        let outcome = rules::apply_patterns(
            &mut self.engine,
            &patterns,
            &latest,
            &self.reports,
            std::process::id(),
            now.wall_ms,
        );
        self.dispatch(outcome.events);
        for pattern in outcome.detected {
            self.shared.publish(StreamEvent::PatternDetected(pattern));
        }
        self.publish();
        (patterns, outcome.drill)
    }

    /// A drill-down ended: its consumers go into the alert that started it.
    pub fn on_drilldown_ended(&mut self, ended: DrilldownEnded, now: Now) {
        let Some(input) = ended.input else {
            return;
        };
        let report =
            self.attributor
                .report(&input, self.stacks.as_mut(), clock::monotonic_seconds());
        log::info!(
            "drill-down of pid {} ({}) done: {} consumers, top: {}",
            ended.pid,
            ended.comm,
            report.consumers.len(),
            report
                .top_consumers(1)
                .first()
                .map(|c| format!(
                    "{} in {} ({} live bytes)",
                    c.name, c.category, c.allocated_memory
                ))
                .unwrap_or_default()
        );
        let top = serde_json::to_value(report.top_consumers(5)).unwrap_or(serde_json::Value::Null);
        let library = report.libraries.first().map(|l| l.library.clone());
        self.reports.insert(ended.pid, Arc::new(report));
        if let Some(id) = ended.alert_id {
            if let Some(alert) = self.engine.annotate(&id, top, library) {
                if let Some(store) = &self.shared.store {
                    if let Err(err) = store.append_alert(&alert) {
                        log::warn!("saving alert {}: {}", alert.id, crate::error_chain(&err));
                    }
                }
                self.shared.publish(StreamEvent::AlertCreated(alert));
            }
        }
        let _ = now;
        self.publish();
    }

    /// Resolves an alert by hand.
    pub fn resolve(&mut self, id: &str, now: Now) -> Result<Alert, AlertError> {
        let alert = self.engine.resolve(id, now.wall_ms)?;
        self.dispatch(vec![AlertEvent::Resolved(alert.clone())]);
        self.publish();
        Ok(alert)
    }

    fn dispatch(&self, events: Vec<AlertEvent>) {
        for event in events {
            self.shared.dispatcher.send(&event);
            self.shared.publish(match event {
                AlertEvent::Created(alert) => StreamEvent::AlertCreated(alert),
                AlertEvent::Resolved(alert) => StreamEvent::AlertResolved(alert),
            });
        }
    }

    /// Publishes the core's view.
    pub fn publish(&self) {
        self.shared.core.store(Arc::new(CoreView {
            history: self.history.iter().cloned().collect(),
            patterns: self.patterns.clone(),
            last_analysis: self.last_analysis,
            alerts: Alerts {
                active: self.engine.active().into_iter().cloned().collect(),
                recent: self
                    .engine
                    .all_recent(RECENT_ALERTS)
                    .into_iter()
                    .cloned()
                    .collect(),
                pending: self.engine.pending(),
                suppressed: self.engine.suppressed().into(),
            },
            reports: self.reports.clone(),
            exited: self.exited.iter().cloned().collect(),
            operations: Arc::new(self.operations.iter().cloned().collect()),
        }));
    }

    /// The core thread: handles what the intake and the HTTP side send, and runs the analysis at
    /// its interval, until the intake says stop.
    pub fn run(
        mut self,
        messages: &mpsc::Receiver<CoreMessage>,
        to_intake: &mpsc::Sender<IntakeCommand>,
    ) {
        loop {
            let now = Now::current();
            let wait = self.next_analysis_ms.saturating_sub(now.mono_ms).max(1);
            match messages.recv_timeout(Duration::from_millis(wait)) {
                Ok(CoreMessage::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(message) => {
                    let now = Now::current();
                    self.shared.health.core_busy(Some(now));
                    self.handle(message, now);
                    self.shared.health.core_busy(None);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = Now::current();
            self.shared.health.core_busy(Some(now));
            let requests = self.analyze_if_due(now);
            self.shared.health.core_busy(None);
            if let Some(requests) = requests {
                // Only what the intake can take: not traced yet, and room under the cap.
                let intake = self.shared.intake.load();
                let room = self
                    .shared
                    .config
                    .drilldown
                    .max_processes
                    .saturating_sub(intake.drilldowns.len());
                let requests: Vec<DrillRequest> = requests
                    .into_iter()
                    .filter(|r| !intake.is_traced(r.pid))
                    .take(room)
                    .collect();
                for request in requests {
                    // The allocator's files are read here, not by the intake.
                    let prepared = Box::new(crate::probes::prepare(
                        request.pid,
                        self.shared.config.probes.entry_probes,
                    ));
                    if to_intake
                        .send(IntakeCommand::Drilldown(request, prepared))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    }
}

/// One line per snapshot at info; the largest processes at debug.
fn log_summary(snapshot: &HostSnapshot, reports: &BTreeMap<u32, Arc<ConsumerReport>>, top: usize) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let traced = snapshot.processes.iter().filter(|p| p.heap_traced).count();
    let largest = snapshot.processes.first();
    log::info!(
        "snapshot: {} processes ({traced} traced), {:.0} of {:.0} MiB available; largest {}",
        snapshot.processes.len(),
        mib(snapshot.mem_available_bytes),
        mib(snapshot.mem_total_bytes),
        largest.map_or_else(
            || "-".to_string(),
            |p| format!("{} ({}) {:.1} MiB", p.comm, p.pid, mib(p.rss_bytes))
        ),
    );
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for p in snapshot.processes.iter().take(top) {
        let heap = if p.heap_traced {
            format!(
                " heap {:.1} MiB ({} live, {} consumers)",
                mib(p.heap_live_bytes),
                p.heap_live_count,
                reports.get(&p.pid).map_or(0, |r| r.consumers.len())
            )
        } else {
            String::new()
        };
        log::debug!(
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap as StdHashMap;

    use super::*;
    use crate::{
        accounting::{modules::Modules, SiteKey, SiteStats},
        alerts::{AlertType, ResolvedBy},
        analysis::PatternType,
        attribution::AttributionInput,
        config::Config,
    };

    const MIB: u64 = 1024 * 1024;
    const T0: u64 = 1_700_000_000_000;

    fn config() -> Config {
        let mut config = Config::default();
        config.monitor.snapshot_interval = 1;
        config.monitor.analysis_interval = 10;
        config.agent.history = 30;
        config.agent.persist = false;
        config.alerting.channels.clear();
        // Pattern alerts only, at once (the for: durations are the alert engine's, tested there).
        config.thresholds.rss_mb = 1e9;
        config.thresholds.growth_rate_mb = 1e9;
        config.alerting.pattern_for = 0;
        config
    }

    fn core(config: Config) -> Core {
        let shared = Shared::for_tests(config);
        let stacks: StdHashMap<i64, Vec<u64>> = StdHashMap::new();
        Core::start(shared, Box::new(stacks), now(0))
    }

    fn now(second: u64) -> Now {
        Now {
            wall_ms: T0 + second * 1000,
            mono_ms: 1_000_000 + second * 1000,
        }
    }

    fn process(pid: u32, comm: &str, rss: u64) -> ProcessSnapshot {
        ProcessSnapshot {
            pid,
            comm: comm.into(),
            rss_bytes: rss,
            ..ProcessSnapshot::default()
        }
    }

    fn collected(second: u64, processes: Vec<ProcessSnapshot>) -> Collected {
        let at = now(second);
        Collected {
            at,
            snapshot: HostSnapshot {
                timestamp: at.wall_ms,
                mem_total_bytes: 64 << 30,
                mem_available_bytes: 32 << 30,
                processes,
            },
            inputs: Vec::new(),
            operations: Vec::new(),
            exited: Vec::new(),
        }
    }

    /// A leak (10 MiB kept every second) and a flat process, for 12 snapshots.
    fn feed_growth(core: &mut Core) {
        for s in 0..12 {
            core.on_collected(collected(
                s,
                vec![
                    process(10, "leaker", 100 * MIB + s * 10 * MIB),
                    process(11, "flat", 50 * MIB),
                ],
            ));
        }
    }

    #[test]
    fn snapshots_are_kept_published_and_bounded() {
        let mut core = core(config());
        let mut stream = core.shared.events.subscribe();
        for s in 0..40 {
            core.on_collected(collected(s, vec![process(1, "a", MIB)]));
        }
        let view = core.shared.core.load();
        assert_eq!(view.history.len(), 30, "agent.history");
        assert_eq!(
            view.history[0].timestamp,
            T0 + 10_000,
            "the oldest go first"
        );
        assert_eq!(view.last_snapshot().map(|s| s.timestamp), Some(T0 + 39_000));
        let mut snapshots = 0;
        while let Ok(event) = stream.try_recv() {
            snapshots += usize::from(matches!(event, StreamEvent::Snapshot(_)));
        }
        assert_eq!(snapshots, 40, "every snapshot is streamed");
    }

    #[test]
    fn growth_raises_an_alert_and_asks_for_a_drilldown() {
        let mut core = core(config());
        feed_growth(&mut core);
        assert!(
            core.analyze_if_due(now(5)).is_none(),
            "not due before the interval"
        );
        let drill = core.analyze_if_due(now(12)).expect("due after 10 s");
        let view = core.shared.core.load();
        let leaker = &view.patterns[&10].pattern;
        assert!(leaker.kind.is_growth() && leaker.confident, "{leaker:?}");
        assert_eq!(view.patterns[&11].pattern.kind, PatternType::Stable);
        assert_eq!(view.alerts.active.len(), 1, "{:?}", view.alerts.active);
        let alert = &view.alerts.active[0];
        assert_eq!(alert.context.pid, 10);
        assert!(matches!(alert.kind, AlertType::Leak | AlertType::Pattern));
        assert_eq!(drill.len(), 1);
        assert_eq!(drill[0].pid, 10);
        assert_eq!(drill[0].alert_id.as_deref(), Some(alert.id.as_str()));
        // The next analysis asks again (the drill-down may not have had room), for the same alert.
        let again = core.analyze_if_due(now(23)).expect("due");
        assert_eq!(again[0].alert_id.as_deref(), Some(alert.id.as_str()));
        assert_eq!(core.shared.core.load().alerts.active.len(), 1, "one alert");
    }

    #[test]
    fn conditions_waiting_for_their_duration_are_published_as_pending() {
        let mut config = config();
        config.alerting.pattern_for = 60;
        let mut core = core(config);
        feed_growth(&mut core);
        core.analyze(now(12));
        let view = core.shared.core.load();
        assert!(view.alerts.active.is_empty(), "{:?}", view.alerts.active);
        let pending = &view.alerts.pending;
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!((pending[0].pid, pending[0].comm.as_str()), (10, "leaker"));
        assert_eq!(pending[0].fires_at, pending[0].since + 60_000);
        assert!(!pending[0].suppressed);
        assert_eq!(view.alerts.suppressed, Default::default());
    }

    #[test]
    fn alerts_held_back_by_a_budget_are_counted_by_type_and_identity() {
        let mut config = config();
        config.alerting.max_alerts_per_process_per_hour = 1;
        let mut core = core(config);
        // Two leaking processes of one identity (command name, no container).
        for s in 0..12 {
            core.on_collected(collected(
                s,
                vec![
                    process(10, "leaker", 100 * MIB + s * 10 * MIB),
                    process(12, "leaker", 100 * MIB + s * 10 * MIB),
                ],
            ));
        }
        core.analyze(now(12));
        let view = core.shared.core.load();
        assert_eq!(view.alerts.active.len(), 1, "{:?}", view.alerts.active);
        let suppressed = &view.alerts.suppressed;
        assert_eq!(suppressed.total, 1, "{suppressed:?}");
        let kind = view.alerts.active[0].kind;
        assert_eq!(suppressed.by_type.get(&kind), Some(&1), "{suppressed:?}");
        assert_eq!(suppressed.by_process.len(), 1, "{suppressed:?}");
        let by = &suppressed.by_process[0];
        assert_eq!(
            (by.comm.as_str(), by.container.as_str(), by.count),
            ("leaker", "", 1)
        );
        // The held-back condition stays pending, marked.
        let held: Vec<_> = view
            .alerts
            .pending
            .iter()
            .filter(|p| p.suppressed)
            .collect();
        assert_eq!(held.len(), 1, "{:?}", view.alerts.pending);
    }

    #[test]
    fn a_process_that_is_gone_has_its_alerts_resolved() {
        let mut core = core(config());
        feed_growth(&mut core);
        core.analyze(now(12));
        assert_eq!(core.shared.core.load().alerts.active.len(), 1);
        core.on_collected(collected(13, vec![process(11, "flat", 50 * MIB)]));
        let view = core.shared.core.load();
        assert!(view.alerts.active.is_empty());
        let resolved = &view.alerts.recent[0];
        assert!(resolved.resolved);
        assert_eq!(resolved.resolved_by, Some(ResolvedBy::Auto));
        assert!(!view.patterns.contains_key(&10));
    }

    #[test]
    fn a_drilldown_puts_its_consumers_into_the_alert() {
        let mut core = core(config());
        feed_growth(&mut core);
        let drill = core.analyze(now(12)).1;
        let alert_id = drill[0].alert_id.clone();
        let site = |caller: u64, live_bytes: u64| SiteStats {
            key: SiteKey {
                class: crate::accounting::SiteClass::Malloc,
                stack_id: -1,
                caller,
            },
            live_bytes,
            live_count: 1,
            peak_bytes: live_bytes,
            total_calls: 1,
            total_bytes: live_bytes,
        };
        let input = AttributionInput {
            pid: 10,
            start_time: 1,
            comm: "leaker".into(),
            heap_traced: true,
            sites: vec![(0, site(0x1000, 30 * MIB)), (1, site(0x2000, MIB))],
            overflowed_sites: 0,
            modules: Arc::new(Modules::default()),
            old_allocations: Vec::new(),
        };
        core.on_drilldown_ended(
            DrilldownEnded {
                pid: 10,
                comm: "leaker".into(),
                alert_id,
                input: Some(input),
            },
            now(15),
        );
        let view = core.shared.core.load();
        let alert = &view.alerts.active[0];
        let top = alert.context.top_consumers.as_ref().expect("consumers");
        assert_eq!(top[0]["allocatedMemory"], 30 * MIB);
        assert_eq!(view.reports[&10].consumers.len(), 2);
        assert_eq!(view.consumers(Some(10)).consumers[0].pid, 10);
    }

    #[test]
    fn resolving_by_hand_twice_is_refused() {
        let mut core = core(config());
        feed_growth(&mut core);
        core.analyze(now(12));
        let id = core.shared.core.load().alerts.active[0].id.clone();
        let alert = core.resolve(&id, now(13)).expect("resolved");
        assert_eq!(alert.resolved_by, Some(ResolvedBy::Manual));
        assert!(matches!(
            core.resolve(&id, now(14)),
            Err(AlertError::AlreadyResolved(_))
        ));
        assert!(matches!(
            core.resolve("alert_0_nope", now(14)),
            Err(AlertError::NotFound(_))
        ));
    }
}
