//! A [`Backend`] with canned data, for tests of the HTTP side (and of clients such as the
//! dashboard) without the eBPF agent. Its JSON has the shapes documented in `docs/api.md`.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::backend::{
    AlertCount, Backend, BackendError, BpfProgramStats, MetricsInput, PatternMetric,
    ProcessMetrics, StreamEvent,
};
use crate::{
    analysis::{Metric, Pattern, PatternType, ProcessPattern, Severity},
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

    fn alert(&self, resolved: bool) -> Value {
        let node = self.snapshot.processes.first().cloned().unwrap_or_default();
        json!({
            "id": MOCK_ALERT_ID,
            "timestamp": MOCK_TIMESTAMP,
            "type": "threshold",
            "severity": "warning",
            "message": "pid 100 (node): External memory (95.2MB) exceeds threshold (80MB)",
            "metrics": node,
            "context": {
                "trigger": "external_memory_threshold",
                "threshold": 80.0,
                "recommendations": ["Check for native module memory leaks"],
                "pid": 100,
                "comm": "node",
            },
            "resolved": resolved,
        })
    }

    fn active_alerts(&self) -> Vec<Value> {
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

    fn consumer_list(&self, pid: Option<u32>) -> Vec<Value> {
        self.snapshot
            .processes
            .iter()
            .filter(|p| pid.is_none_or(|pid| p.pid == pid))
            .flat_map(|p| {
                p.libraries.iter().map(move |l| {
                    json!({
                        "id": format!("{}:{}", p.pid, l.library),
                        "name": l.library,
                        "type": "library",
                        "category": "Libraries",
                        "pid": p.pid,
                        "comm": p.comm,
                        "allocatedMemory": l.live_bytes,
                        "peakMemory": l.peak_bytes,
                        "totalCalls": l.calls,
                        "activeAllocations": 3,
                        "stackTrace": ["malloc (libc.so.6)", "main (node)"],
                        "metadata": { "averageSize": l.live_bytes / 3 },
                    })
                })
            })
            .collect()
    }
}

fn mock_snapshot() -> HostSnapshot {
    let mut node = ProcessSnapshot {
        pid: 100,
        comm: "node".to_string(),
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
    fn status(&self) -> Value {
        let active = self.active_alerts().len();
        let traced: Vec<u32> = self.state().traced.iter().copied().collect();
        json!({
            "isMonitoring": true,
            "startedAt": MOCK_TIMESTAMP - 60_000,
            "uptimeSeconds": 60,
            "lastSnapshot": self.snapshot,
            "activeAlerts": active,
            "tracedPids": traced,
            "mallocAll": false,
            "eventsReceived": 12345,
            "eventsLost": 0,
        })
    }

    fn history(&self, count: usize) -> Vec<HostSnapshot> {
        (0..count.min(3) as u64)
            .rev()
            .map(|age| HostSnapshot {
                timestamp: MOCK_TIMESTAMP - age * 30_000,
                ..self.snapshot.clone()
            })
            .collect()
    }

    fn growth(&self, minutes: u32) -> Value {
        let processes: Vec<Value> = self
            .snapshot
            .processes
            .iter()
            .map(|p| {
                let heap = p.heap_traced.then_some(p.heap_live_bytes);
                json!({
                    "pid": p.pid,
                    "comm": p.comm,
                    "startRssBytes": p.rss_bytes - (1 << 20),
                    "endRssBytes": p.rss_bytes,
                    "deltaRssBytes": 1 << 20,
                    "startHeapBytes": heap.map(|h| h - (1 << 20)),
                    "endHeapBytes": heap,
                    "deltaHeapBytes": heap.map(|_| 1 << 20),
                    "rssGrowthMbPerMinute": 1.0 / f64::from(minutes),
                    "heapGrowthMbPerMinute": heap.map(|_| 1.0 / f64::from(minutes)),
                })
            })
            .collect();
        json!({
            "minutes": minutes,
            "from": MOCK_TIMESTAMP - u64::from(minutes) * 60_000,
            "to": MOCK_TIMESTAMP,
            "processes": processes,
        })
    }

    fn analyze(&self) -> Vec<ProcessPattern> {
        vec![Self::pattern()]
    }

    fn alerts(&self) -> Value {
        let resolved = self.state().resolved.contains(MOCK_ALERT_ID);
        let recent = if resolved {
            vec![self.alert(true)]
        } else {
            Vec::new()
        };
        json!({ "active": self.active_alerts(), "recent": recent })
    }

    fn resolve_alert(&self, id: &str) -> Result<Value, BackendError> {
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

    fn consumers(&self, pid: Option<u32>) -> Value {
        json!({ "consumers": self.consumer_list(pid) })
    }

    fn processes(&self) -> Vec<ProcessSnapshot> {
        self.snapshot.processes.clone()
    }

    fn process(&self, pid: u32) -> Option<Value> {
        let snapshot = self.snapshot.processes.iter().find(|p| p.pid == pid)?;
        let pattern = (pid == 100).then(Self::pattern);
        Some(json!({
            "snapshot": snapshot,
            "pattern": pattern,
            "consumers": self.consumer_list(Some(pid)),
            "libraries": snapshot.libraries,
        }))
    }

    fn trace_start(&self, pid: u32) -> Result<Value, BackendError> {
        if !self.snapshot.processes.iter().any(|p| p.pid == pid) {
            return Err(BackendError::NotFound(format!("no process with pid {pid}")));
        }
        if !self.state().traced.insert(pid) {
            return Err(BackendError::BadRequest(format!(
                "pid {pid} is already traced"
            )));
        }
        Ok(json!({ "pid": pid, "traced": true }))
    }

    fn trace_stop(&self, pid: u32) -> Result<Value, BackendError> {
        if !self.state().traced.remove(&pid) {
            return Err(BackendError::NotFound(format!("pid {pid} is not traced")));
        }
        Ok(json!({ "pid": pid, "traced": false }))
    }

    fn export(&self) -> Value {
        json!({
            "exportedAt": MOCK_TIMESTAMP,
            "snapshots": self.history(3),
            "alerts": self.alerts(),
            "patterns": self.analyze(),
            "consumers": self.consumer_list(None),
        })
    }

    fn report_json(&self) -> Value {
        json!({
            "generatedAt": MOCK_TIMESTAMP,
            "summary": {
                "processes": self.snapshot.processes.len(),
                "tracedProcesses": self.state().traced.len(),
                "activeAlerts": self.active_alerts().len(),
            },
            "patterns": self.analyze(),
            "topProcesses": self.snapshot.processes,
            "alerts": self.alerts(),
        })
    }

    fn report_text(&self) -> String {
        "memtrace report\n\npid 100 (node): leak, 3.2 MB/min, confidence 85%\n".to_string()
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

    fn metrics(&self) -> MetricsInput {
        let processes = self
            .snapshot
            .processes
            .iter()
            .map(|p| ProcessMetrics {
                snapshot: p.clone(),
                container: if p.pid == 200 {
                    "0123456789ab".to_string()
                } else {
                    String::new()
                },
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
        MetricsInput {
            processes,
            alerts_active: vec![AlertCount {
                kind: "threshold".to_string(),
                severity: "warning".to_string(),
                count: self.active_alerts().len() as u64,
            }],
            alerts_suppressed_total: 2,
            events_by_kind,
            events_lost_total: 7,
            consumers_evicted_total: 3,
            webhook_sent_total: 5,
            webhook_failures_total: 1,
            drilldowns_active: self.state().traced.len() as u64,
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

/// The mock as the router takes it.
pub fn mock_backend() -> Arc<MockBackend> {
    Arc::new(MockBackend::new())
}
