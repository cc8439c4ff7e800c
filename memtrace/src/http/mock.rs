//! A [`Backend`] with canned data, for tests of the routes (parameters, tokens, headers, the
//! WebSocket) without the eBPF agent. Its answers are the same typed structs the agent returns, so
//! their shapes cannot drift from the agent's.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::broadcast;

use super::backend::{
    AlertCount, AlertMetrics, Backend, BackendError, BpfProgramStats, MetricsInput, PatternMetric,
    ProcessMetrics, TracedMetric, WebhookMetrics,
};
use crate::{
    accounting::SiteClass,
    alerts::{
        AlertContext, AlertType, PendingAlert, ResolvedBy, Severity as AlertSeverity, Trigger,
    },
    analysis::{Metric, Pattern, PatternType, ProcessPattern, Severity},
    api::{
        Alert, Alerts, Consumers, DrilldownSettings, Export, Growth, GrowthRow, Health,
        HealthMemory, HealthStatus, ProcessDetail, ProcessRow, Report, ReportHistory, ReportHost,
        ReportSummary, Status, StreamEvent, Suppressed, SuppressedProcess, TraceBudget,
        TraceStarted, TraceStopped,
    },
    attribution::{Consumer, ConsumerMetadata, ConsumerReport},
    config::Config,
    events::Kind,
    snapshot::{HostSnapshot, LibrarySnapshot, ProcessSnapshot},
};

/// The id of the mock's one active alert.
pub const MOCK_ALERT_ID: &str = "alert_1700000000000_abc123def";
/// Timestamp (ms) of the mock's snapshot.
pub const MOCK_TIMESTAMP: u64 = 1_700_000_000_000;
/// A gzip stream of nothing: what the mock returns as a pprof profile.
pub const MOCK_PPROF: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

#[derive(Debug, Default)]
struct MockState {
    resolved: BTreeSet<String>,
    traced: BTreeSet<u32>,
}

/// Canned data: three processes (`node` traced, `postgres`, and one whose command name has a
/// quote and a backslash), one active alert, one leak pattern.
pub struct MockBackend {
    snapshot: HostSnapshot,
    events: broadcast::Sender<StreamEvent>,
    state: Mutex<MockState>,
}

impl Default for MockBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MockBackend {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(16);
        Self {
            snapshot: mock_snapshot(),
            events,
            state: Mutex::new(MockState {
                resolved: BTreeSet::new(),
                traced: BTreeSet::from([100]),
            }),
        }
    }

    /// Sends an event to every subscriber; returns how many there are.
    pub fn publish(&self, event: StreamEvent) -> usize {
        self.events.send(event).unwrap_or(0)
    }

    /// The number of live subscribers (WebSocket clients).
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }

    /// The canned host snapshot.
    pub fn snapshot(&self) -> &HostSnapshot {
        &self.snapshot
    }

    fn state(&self) -> MutexGuard<'_, MockState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alert(&self, resolved: bool) -> Alert {
        let node = self.snapshot.processes.first().cloned().unwrap_or_default();
        Alert {
            id: MOCK_ALERT_ID.to_string(),
            timestamp: MOCK_TIMESTAMP,
            kind: AlertType::Threshold,
            severity: AlertSeverity::Warning,
            message: "pid 100 (node): External memory (95.2MB) exceeds threshold (80MB)".into(),
            metrics: serde_json::to_value(node).unwrap_or_default(),
            context: AlertContext {
                trigger: Trigger::ExternalMemoryThreshold,
                threshold: Some(80.0),
                recommendations: vec!["Check for native module memory leaks".into()],
                pid: 100,
                comm: "node".into(),
                container: String::new(),
                library: None,
                top_consumers: None,
                pattern: None,
            },
            resolved,
            resolved_at: resolved.then_some(MOCK_TIMESTAMP + 1000),
            resolved_by: resolved.then_some(ResolvedBy::Manual),
        }
    }

    fn active_alerts(&self) -> Vec<Alert> {
        if self.state().resolved.contains(MOCK_ALERT_ID) {
            Vec::new()
        } else {
            vec![self.alert(false)]
        }
    }

    fn pattern() -> ProcessPattern {
        ProcessPattern {
            pid: 100,
            comm: "node".to_string(),
            metric: Metric::HeapLive,
            pattern: Pattern {
                kind: PatternType::Leak,
                confidence: 85.0,
                growth_rate: 3.2,
                duration: 15.5,
                severity: Severity::High,
                recommendation: "Investigate external memory consumers - potential memory leak"
                    .to_string(),
                confident: true,
                r2: 0.97,
                samples: 20,
                current_bytes: 64 << 20,
                doubling_minutes: None,
                spike_score: None,
                spike_bytes: None,
                spike_kind: None,
                spike_at: None,
                spike_base_bytes: None,
                forecast_minutes_to_limit: Some(120.0),
                limit_bytes: Some(1 << 30),
            },
            libraries: Vec::new(),
        }
    }

    fn report_of(&self, p: &ProcessSnapshot) -> ConsumerReport {
        ConsumerReport {
            pid: p.pid,
            comm: p.comm.clone(),
            libraries: p.libraries.clone(),
            consumers: p
                .libraries
                .iter()
                .map(|l| Consumer {
                    id: format!("malloc:{}:main", l.library),
                    name: "main".into(),
                    kind: SiteClass::Malloc,
                    category: l.library.clone(),
                    allocated_memory: l.live_bytes,
                    peak_memory: l.peak_bytes,
                    total_calls: l.calls,
                    active_allocations: 3,
                    average_size: l.live_bytes / 3,
                    stack_trace: vec!["main (node+0x1234)".into()],
                    metadata: ConsumerMetadata {
                        operation: "main".into(),
                        sites: 1,
                        suspicious: false,
                        over_limit: false,
                        skipped_frames: 1,
                        allocator_internal: false,
                    },
                })
                .collect(),
            ..ConsumerReport::default()
        }
    }

    fn consumers_of(&self, pid: Option<u32>) -> Consumers {
        let processes: Vec<ConsumerReport> = self
            .snapshot
            .processes
            .iter()
            .filter(|p| p.heap_traced && pid.is_none_or(|pid| p.pid == pid))
            .map(|p| self.report_of(p))
            .collect();
        let consumers = processes
            .iter()
            .flat_map(|r| {
                r.consumers.iter().map(|c| crate::api::ProcessConsumer {
                    pid: r.pid,
                    comm: r.comm.clone(),
                    consumer: c.clone(),
                })
            })
            .collect();
        Consumers {
            timestamp: MOCK_TIMESTAMP,
            processes,
            consumers,
        }
    }

    fn growth_of(&self, minutes: u32) -> Growth {
        let processes = self
            .snapshot
            .processes
            .iter()
            .map(|p| {
                let heap = p.heap_traced.then_some(p.heap_live_bytes);
                GrowthRow {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    start_rss_bytes: p.rss_bytes - (1 << 20),
                    end_rss_bytes: p.rss_bytes,
                    delta_rss_bytes: 1 << 20,
                    start_heap_bytes: heap.map(|h| h - (1 << 20)),
                    end_heap_bytes: heap,
                    delta_heap_bytes: heap.map(|_| 1 << 20),
                    rss_growth_mb_per_minute: 1.0 / f64::from(minutes),
                    heap_growth_mb_per_minute: heap.map(|_| 1.0 / f64::from(minutes)),
                    minutes: f64::from(minutes),
                }
            })
            .collect();
        Growth {
            minutes,
            from: Some(MOCK_TIMESTAMP - u64::from(minutes) * 60_000),
            to: Some(MOCK_TIMESTAMP),
            processes,
        }
    }

    fn alerts_now(&self) -> Alerts {
        let resolved = self.state().resolved.contains(MOCK_ALERT_ID);
        Alerts {
            active: self.active_alerts(),
            recent: vec![self.alert(resolved)],
            pending: vec![PendingAlert {
                pid: 100,
                comm: "node".to_string(),
                trigger: Trigger::LeakDetected,
                severity: AlertSeverity::Warning,
                message: "node (pid 100): heap grows 2 MB/min".to_string(),
                since: MOCK_TIMESTAMP - 60_000,
                fires_at: MOCK_TIMESTAMP + 240_000,
                suppressed: false,
            }],
            suppressed: Suppressed {
                total: 2,
                by_type: [(AlertType::Pattern, 2)].into_iter().collect(),
                by_process: vec![SuppressedProcess {
                    comm: "node".to_string(),
                    container: String::new(),
                    count: 2,
                }],
                other: 0,
            },
        }
    }
}

/// A process measured at 1,000 allocator calls a second: traced all the time.
fn mock_budget() -> TraceBudget {
    use crate::probes::budget::{Budget, Meter, DEFAULT_PER_CALL_NS};
    let mut meter = Meter::new(Budget::explicit(), DEFAULT_PER_CALL_NS, 0, 0);
    meter.step(500, 500);
    TraceBudget::of(&meter)
}

fn mock_snapshot() -> HostSnapshot {
    let mut node = ProcessSnapshot {
        pid: 100,
        comm: "node".to_string(),
        cgroup: "/system.slice/node.service".to_string(),
        rss_bytes: 200 << 20,
        rss_anon_bytes: 150 << 20,
        rss_file_bytes: 45 << 20,
        rss_shmem_bytes: 5 << 20,
        swap_bytes: 0,
        heap_traced: true,
        heap_live_bytes: 64 << 20,
        heap_live_count: 1000,
        heap_peak_bytes: 70 << 20,
        heap_total_allocs: 5000,
        heap_total_frees: 4000,
        heap_unknown_frees: 0,
        mapped_anon_bytes: 32 << 20,
        mapped_file_bytes: 8 << 20,
        brk_bytes: 4 << 20,
        external_basis: None,
        external_bytes: None,
        external_ratio: None,
        external_growth_bytes: None,
        start_time_ms: None,
        container: String::new(),
        limit_bytes: None,
        libraries: vec![
            LibrarySnapshot {
                library: "/usr/lib/libcrypto.so.3".to_string(),
                live_bytes: 40 << 20,
                peak_bytes: 41 << 20,
                calls: 900,
            },
            LibrarySnapshot {
                library: "/usr/bin/node".to_string(),
                live_bytes: 24 << 20,
                peak_bytes: 30 << 20,
                calls: 4100,
            },
        ],
    };
    node.derive_external();
    let postgres = ProcessSnapshot {
        pid: 200,
        comm: "postgres".to_string(),
        cgroup: format!(
            "/system.slice/docker-0123456789ab{}.scope",
            "cdef0123456789abcdef0123456789abcdef0123456789abcdef"
        ),
        container: "0123456789ab".to_string(),
        rss_bytes: 100 << 20,
        rss_anon_bytes: 60 << 20,
        rss_file_bytes: 20 << 20,
        rss_shmem_bytes: 20 << 20,
        swap_bytes: 1 << 20,
        mapped_anon_bytes: 16 << 20,
        brk_bytes: 1 << 20,
        ..ProcessSnapshot::default()
    };
    let odd = ProcessSnapshot {
        pid: 300,
        comm: "we\"ird\\comm".to_string(),
        cgroup: "/user.slice/user-1000.slice/session-2.scope".to_string(),
        rss_bytes: 10 << 20,
        rss_anon_bytes: 8 << 20,
        rss_file_bytes: 2 << 20,
        ..ProcessSnapshot::default()
    };
    HostSnapshot {
        timestamp: MOCK_TIMESTAMP,
        mem_total_bytes: 16 << 30,
        mem_available_bytes: 8 << 30,
        processes: vec![node, postgres, odd],
    }
}

impl Backend for MockBackend {
    fn health(&self) -> Health {
        let alerts = self.active_alerts().len();
        Health {
            status: if alerts > 0 {
                HealthStatus::Warning
            } else {
                HealthStatus::Healthy
            },
            reason: None,
            memory: HealthMemory {
                alerts,
                monitoring: true,
            },
        }
    }

    fn status(&self) -> Status {
        let traced: Vec<u32> = self.state().traced.iter().copied().collect();
        let active_alerts = self.active_alerts().len();
        Status {
            is_monitoring: true,
            started_at: MOCK_TIMESTAMP - 60_000,
            uptime_seconds: 60,
            last_snapshot: Some(Arc::new(self.snapshot.clone())),
            active_alerts,
            traced_pids: traced,
            traced: Vec::new(),
            malloc_all: false,
            drilldowns: Vec::new(),
            drilldown_options: DrilldownSettings {
                enabled: true,
                window_seconds: 60,
                max_processes: 2,
                cpu_budget: 0.05,
            },
            trace_refusals: Vec::new(),
            events_received: 12345,
            events_lost: 0,
            snapshots_dropped: 0,
            failures: crate::api::Failures::default(),
            snapshot_interval: 30,
            analysis_interval: 120,
            pid: 1,
        }
    }

    fn history(&self, count: usize) -> Vec<Arc<HostSnapshot>> {
        (0..count.min(3) as u64)
            .rev()
            .map(|age| {
                Arc::new(HostSnapshot {
                    timestamp: MOCK_TIMESTAMP - age * 30_000,
                    ..self.snapshot.clone()
                })
            })
            .collect()
    }

    fn growth(&self, minutes: u32) -> Growth {
        self.growth_of(minutes)
    }

    fn analyze(&self) -> Result<Vec<ProcessPattern>, BackendError> {
        Ok(vec![Self::pattern()])
    }

    fn alerts(&self) -> Alerts {
        self.alerts_now()
    }

    fn resolve_alert(&self, id: &str) -> Result<Alert, BackendError> {
        if id != MOCK_ALERT_ID {
            return Err(BackendError::NotFound(format!("no alert with id {id}")));
        }
        if !self.state().resolved.insert(id.to_string()) {
            return Err(BackendError::BadRequest(format!(
                "alert {id} is already resolved"
            )));
        }
        let alert = self.alert(true);
        self.publish(StreamEvent::AlertResolved(alert.clone()));
        Ok(alert)
    }

    fn consumers(&self, pid: Option<u32>) -> Consumers {
        self.consumers_of(pid)
    }

    fn processes(&self) -> Vec<ProcessRow> {
        self.snapshot
            .processes
            .iter()
            .map(|p| ProcessRow {
                snapshot: p.clone(),
                pattern: (p.pid == 100).then(|| Self::pattern().pattern),
            })
            .collect()
    }

    fn process(&self, pid: u32) -> Option<ProcessDetail> {
        let snapshot = self.snapshot.processes.iter().find(|p| p.pid == pid)?;
        let traced = self.state().traced.contains(&pid);
        let report = snapshot.heap_traced.then(|| self.report_of(snapshot));
        Some(ProcessDetail {
            snapshot: snapshot.clone(),
            exited: false,
            pattern: (pid == 100).then(Self::pattern),
            consumers: report.as_ref().map(|r| r.consumers.clone()),
            libraries: snapshot.libraries.clone(),
            leaks: report.map(|r| r.leaks),
            traced,
            drilldown: None,
            container: String::new(),
        })
    }

    fn trace_start(&self, pid: u32) -> Result<TraceStarted, BackendError> {
        if !self.snapshot.processes.iter().any(|p| p.pid == pid) {
            return Err(BackendError::NotFound(format!(
                "process {pid} does not exist"
            )));
        }
        self.state().traced.insert(pid);
        Ok(TraceStarted {
            pid,
            traced: true,
            library: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
            attached: vec!["malloc".into(), "free".into()],
            missing: Vec::new(),
            placements: Vec::new(),
            budget: mock_budget(),
        })
    }

    fn trace_stop(&self, pid: u32) -> Result<TraceStopped, BackendError> {
        if !self.state().traced.remove(&pid) {
            return Err(BackendError::NotFound(format!("pid {pid} is not traced")));
        }
        Ok(TraceStopped {
            pid,
            traced: false,
            was_traced: true,
        })
    }

    fn export(&self) -> Export {
        Export {
            exported_at: MOCK_TIMESTAMP,
            config: Config::default(),
            snapshots: self.history(3),
            alerts: self.alerts_now(),
            patterns: vec![Self::pattern()],
            consumers: self.consumers_of(None),
            operations: Vec::new(),
        }
    }

    fn report(&self) -> Report {
        let traced = self.state().traced.len();
        Report {
            generated_at: MOCK_TIMESTAMP,
            history: ReportHistory {
                from: Some(MOCK_TIMESTAMP - 60_000),
                to: Some(MOCK_TIMESTAMP),
                snapshots: 3,
            },
            host: ReportHost {
                mem_total_bytes: self.snapshot.mem_total_bytes,
                mem_available_bytes: self.snapshot.mem_available_bytes,
            },
            summary: ReportSummary {
                processes: self.snapshot.processes.len(),
                traced_processes: traced,
                active_alerts: self.active_alerts().len(),
                snapshots: 3,
            },
            growth: self.growth_of(60),
            patterns: vec![Self::pattern()],
            alerts: self.alerts_now(),
            consumers: self.consumers_of(None),
            top_processes: self.snapshot.processes.clone(),
        }
    }

    fn flamegraph_svg(&self, pid: Option<u32>) -> Result<String, BackendError> {
        if pid.is_some_and(|pid| pid != 100) {
            return Err(BackendError::NotFound(format!(
                "pid {} is not traced",
                pid.unwrap_or_default()
            )));
        }
        Ok(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\"/></svg>"
                .to_string(),
        )
    }

    fn pprof(&self, pid: u32) -> Result<Vec<u8>, BackendError> {
        if pid != 100 {
            return Err(BackendError::NotFound(format!("pid {pid} is not traced")));
        }
        Ok(MOCK_PPROF.to_vec())
    }

    fn heap_profile(
        &self,
        pid: u32,
        _kind: crate::reports::HeapProfile,
    ) -> Result<Vec<u8>, BackendError> {
        self.pprof(pid)
    }

    fn profiled_processes(&self) -> Vec<(u32, String)> {
        vec![(100, "node".into())]
    }

    fn metrics(&self) -> MetricsInput {
        let processes = self
            .snapshot
            .processes
            .iter()
            .map(|p| ProcessMetrics {
                snapshot: p.clone(),
                growth_rate_bytes_per_second: Some(if p.pid == 100 { 55_924.05 } else { 0.0 }),
                pattern: (p.pid == 100).then_some(PatternMetric {
                    kind: PatternType::Leak,
                    confidence: 85.0,
                }),
            })
            .collect();
        let mut events_by_kind = [0; Kind::ALL.len()];
        for (i, count) in events_by_kind.iter_mut().enumerate() {
            *count = 100 * (i as u64 + 1);
        }
        let mut active = Vec::new();
        for kind in ["threshold", "pattern", "leak", "spike"] {
            for severity in ["info", "warning", "critical"] {
                active.push(AlertCount {
                    kind: kind.to_string(),
                    severity: severity.to_string(),
                    count: if (kind, severity) == ("threshold", "warning") {
                        self.active_alerts().len() as u64
                    } else {
                        0
                    },
                });
            }
        }
        MetricsInput {
            processes,
            last_snapshot_ms: Some(self.snapshot.timestamp),
            traced: self
                .state()
                .traced
                .iter()
                .map(|&pid| TracedMetric {
                    pid,
                    reason: "requested".to_string(),
                })
                .collect(),
            alerts: Some(AlertMetrics {
                active,
                suppressed: AlertType::ALL
                    .iter()
                    .map(|kind| {
                        let count = u64::from(*kind == AlertType::Pattern) * 2;
                        (kind.as_str().to_string(), count)
                    })
                    .collect(),
            }),
            events_by_kind,
            events_lost_total: 7,
            consumers_evicted_total: 3,
            webhook: Some(WebhookMetrics {
                sent_total: 5,
                failures_total: 1,
                dropped_total: 0,
                resent_total: 0,
            }),
            drilldowns_active: Some(0),
            agent_cpu_seconds_total: 1.25,
            agent_rss_bytes: 30 << 20,
            bpf_programs: vec![
                BpfProgramStats {
                    program: "malloc_return".to_string(),
                    run_time_seconds_total: 0.5,
                    runs_total: 1_000_000,
                },
                BpfProgramStats {
                    program: "sys_enter_mmap".to_string(),
                    run_time_seconds_total: 0.01,
                    runs_total: 2000,
                },
            ],
            ..MetricsInput::default()
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.events.subscribe()
    }
}
