//! What the HTTP side needs from the agent: the [`Backend`] trait, its errors, the events it streams
//! and the figures it hands to `/metrics`.
//!
//! The methods are synchronous and return owned data; handlers that may take long (analysis,
//! export, reports, tracing changes, metrics) call them on the blocking thread pool.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::{
    analysis::{PatternType, ProcessPattern},
    events::Kind,
    snapshot::{HostSnapshot, ProcessSnapshot},
};

/// Why the backend could not do what a request asked. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// 404: no such process, alert, ...
    #[error("{0}")]
    NotFound(String),
    /// 400: the request cannot be carried out as asked (e.g. tracing a kernel thread).
    #[error("{0}")]
    BadRequest(String),
    /// 503: the agent cannot answer now (e.g. not monitoring yet, no data).
    #[error("{0}")]
    Unavailable(String),
    /// 500: something failed inside the agent.
    #[error("{0}")]
    Internal(String),
}

/// One message of the live stream (`/api/memory/ws`), serialized as `{"type": ..., "data": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum StreamEvent {
    /// A host snapshot was taken.
    #[serde(rename = "snapshot")]
    Snapshot(Arc<HostSnapshot>),
    /// An alert was raised (the alert's JSON).
    #[serde(rename = "alert:created")]
    AlertCreated(Value),
    /// An alert was resolved, by hand or automatically (the alert's JSON).
    #[serde(rename = "alert:resolved")]
    AlertResolved(Value),
    /// The analysis found a confident pattern for a process (boxed: a pattern is much larger than
    /// the other events).
    #[serde(rename = "pattern:detected")]
    PatternDetected(Box<ProcessPattern>),
}

/// The agent as the HTTP side sees it. JSON values are returned where their types live in modules
/// the HTTP side does not depend on (alerts, consumers, reports); their shapes are in `docs/api.md`.
pub trait Backend: Send + Sync + 'static {
    /// `{ isMonitoring, startedAt, uptimeSeconds, lastSnapshot: HostSnapshot | null, activeAlerts,
    /// tracedPids: [..], mallocAll, eventsReceived, eventsLost }`.
    fn status(&self) -> Value;
    /// The last `count` host snapshots, oldest first.
    fn history(&self, count: usize) -> Vec<HostSnapshot>;
    /// Per-process growth over the last `minutes`: start and end RSS and heap, delta bytes, MB/min.
    fn growth(&self, minutes: u32) -> Value;
    /// Runs the pattern analysis now over the snapshots held in memory.
    fn analyze(&self) -> Vec<ProcessPattern>;
    /// `{ active: [Alert], recent: [Alert] }`.
    fn alerts(&self) -> Value;
    /// Resolves an active alert by hand; returns the resolved alert.
    fn resolve_alert(&self, id: &str) -> Result<Value, BackendError>;
    /// Top memory consumers (libraries and call sites), of one process or of all.
    fn consumers(&self, pid: Option<u32>) -> Value;
    /// The processes of the latest snapshot.
    fn processes(&self) -> Vec<ProcessSnapshot>;
    /// One process: `{ snapshot, pattern, consumers, libraries }`, `None` when unknown.
    fn process(&self, pid: u32) -> Option<Value>;
    /// Starts tracing the malloc family of a process (a drill-down).
    fn trace_start(&self, pid: u32) -> Result<Value, BackendError>;
    /// Stops tracing the malloc family of a process.
    fn trace_stop(&self, pid: u32) -> Result<Value, BackendError>;
    /// Everything held in memory (snapshots, alerts, patterns, consumers) for download.
    fn export(&self) -> Value;
    /// The report as JSON.
    fn report_json(&self) -> Value;
    /// The report as plain text.
    fn report_text(&self) -> String;
    /// A flame graph (SVG) of live allocations by stack, of one process or of all traced ones.
    fn flamegraph_svg(&self, pid: Option<u32>) -> Result<String, BackendError>;
    /// Live allocations of a process as a gzipped pprof profile.
    fn pprof(&self, pid: u32) -> Result<Vec<u8>, BackendError>;
    /// The figures behind `/metrics`.
    fn metrics(&self) -> MetricsInput;
    /// A receiver of the live stream. Each WebSocket client gets its own.
    fn subscribe(&self) -> broadcast::Receiver<StreamEvent>;
}

/// Default number of processes, and of libraries, that get their own series in `/metrics`.
pub const DEFAULT_METRICS_TOP_K: usize = 50;

/// Everything `/metrics` reports, gathered by the backend at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsInput {
    /// Every process the agent accounts for. The `top_k` largest by RSS get their own series; the
    /// rest are summed into one `pid="other"` series.
    pub processes: Vec<ProcessMetrics>,
    /// How many processes get their own series.
    pub top_k: usize,
    /// How many (process, library) pairs get their own `memtrace_library_live_bytes` series, the
    /// largest by live bytes; the rest are summed into `library="other"`. The libraries come from
    /// each process's `ProcessSnapshot::libraries`.
    pub top_k_libraries: usize,
    /// Active alerts by type and severity.
    pub alerts_active: Vec<AlertCount>,
    /// Alerts not raised because of the hourly limit.
    pub alerts_suppressed_total: u64,
    /// Kernel events decoded, by kind (indexed by `Kind::index`).
    pub events_by_kind: [u64; Kind::ALL.len()],
    /// Kernel events lost (ring buffer full, in-flight map full).
    pub events_lost_total: u64,
    /// Consumers dropped from the consumer table when it was full.
    pub consumers_evicted_total: u64,
    pub webhook_sent_total: u64,
    pub webhook_failures_total: u64,
    /// Processes whose malloc family is traced on request (drill-downs).
    pub drilldowns_active: u64,
    /// The agent's own CPU time (user + system).
    pub agent_cpu_seconds_total: f64,
    /// The agent's own resident set size.
    pub agent_rss_bytes: u64,
    /// Per eBPF program: run time and run count (from `kernel.bpf_stats_enabled`; zero when off).
    pub bpf_programs: Vec<BpfProgramStats>,
}

impl Default for MetricsInput {
    fn default() -> Self {
        Self {
            processes: Vec::new(),
            top_k: DEFAULT_METRICS_TOP_K,
            top_k_libraries: DEFAULT_METRICS_TOP_K,
            alerts_active: Vec::new(),
            alerts_suppressed_total: 0,
            events_by_kind: [0; Kind::ALL.len()],
            events_lost_total: 0,
            consumers_evicted_total: 0,
            webhook_sent_total: 0,
            webhook_failures_total: 0,
            drilldowns_active: 0,
            agent_cpu_seconds_total: 0.0,
            agent_rss_bytes: 0,
            bpf_programs: Vec::new(),
        }
    }
}

/// One process in `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessMetrics {
    /// Its latest figures (and its libraries).
    pub snapshot: ProcessSnapshot,
    /// Container id derived from its cgroup, or empty.
    pub container: String,
    /// Growth rate of its RSS, where known.
    pub growth_rate_bytes_per_second: Option<f64>,
    /// Its current pattern, where one was detected.
    pub pattern: Option<PatternMetric>,
}

/// The current pattern of a process: its type and confidence (0-100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatternMetric {
    pub kind: PatternType,
    pub confidence: f64,
}

/// Number of active alerts of one type (`threshold`, `pattern`, `leak`, `spike`) and severity
/// (`info`, `warning`, `critical`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertCount {
    pub kind: String,
    pub severity: String,
    pub count: u64,
}

/// Cost of one eBPF program.
#[derive(Clone, Debug, PartialEq)]
pub struct BpfProgramStats {
    pub program: String,
    pub run_time_seconds_total: f64,
    pub runs_total: u64,
}
