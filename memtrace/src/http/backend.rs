//! What the HTTP side needs from the agent: the [`Backend`] trait, its errors, and the figures it
//! hands to `/metrics`. Answers are the typed structs of [`crate::api`].
//!
//! Reads answer from the agent's published views at once; commands (analyze, resolve, trace) are
//! carried out by the agent's threads, and handlers call them on the blocking thread pool.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::metrics::Selection;
use crate::{
    analysis::{PatternType, ProcessPattern},
    api::{
        Alert, Alerts, Consumers, Export, Growth, Health, HostSnapshot, ProcessDetail, ProcessRow,
        Report, Status, StreamEvent, TraceStarted, TraceStopped,
    },
    events::Kind,
    reports::HeapProfile,
    snapshot::ProcessSnapshot,
};

/// Why the backend could not do what a request asked. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// 404: no such process, alert, ...
    #[error("{0}")]
    NotFound(String),
    /// 400: the request cannot be carried out as asked (e.g. resolving an alert twice).
    #[error("{0}")]
    BadRequest(String),
    /// 409: carrying the request out would break a limit the agent keeps (e.g. tracing a process
    /// whose allocator calls would cost it more than its CPU budget).
    #[error("{0}")]
    Conflict(String),
    /// 503: the agent cannot answer now (e.g. its collection stopped, or it is too busy).
    #[error("{0}")]
    Unavailable(String),
    /// 500: something failed inside the agent.
    #[error("{0}")]
    Internal(String),
}

/// The agent as the HTTP side sees it.
pub trait Backend: Send + Sync + 'static {
    /// `/health`: healthy, warning (an alert is active) or degraded (with the reason).
    fn health(&self) -> Health;
    fn status(&self) -> Status;
    /// The last `count` host snapshots, oldest first.
    fn history(&self, count: usize) -> Vec<Arc<HostSnapshot>>;
    /// Per-process growth over the last `minutes`.
    fn growth(&self, minutes: u32) -> Growth;
    /// Runs the pattern analysis now over the snapshots held in memory.
    fn analyze(&self) -> Result<Vec<ProcessPattern>, BackendError>;
    fn alerts(&self) -> Alerts;
    /// Resolves an active alert by hand; returns the resolved alert.
    fn resolve_alert(&self, id: &str) -> Result<Alert, BackendError>;
    /// Top memory consumers (libraries and call sites), of one process or of all.
    fn consumers(&self, pid: Option<u32>) -> Consumers;
    /// The processes of the latest snapshot, with their patterns.
    fn processes(&self) -> Vec<ProcessRow>;
    /// One process, `None` when unknown.
    fn process(&self, pid: u32) -> Option<ProcessDetail>;
    /// Starts tracing the malloc family of a process.
    fn trace_start(&self, pid: u32) -> Result<TraceStarted, BackendError>;
    /// Stops tracing the malloc family of a process.
    fn trace_stop(&self, pid: u32) -> Result<TraceStopped, BackendError>;
    /// Everything held in memory, for download.
    fn export(&self) -> Export;
    /// The report (JSON; the text report renders the same).
    fn report(&self) -> Report;
    /// A flame graph (SVG) of live allocations by stack, of one process or of all traced ones.
    fn flamegraph_svg(&self, pid: Option<u32>) -> Result<String, BackendError>;
    /// Live allocations of a process as a gzipped pprof profile.
    fn pprof(&self, pid: u32) -> Result<Vec<u8>, BackendError>;
    /// The profile Parca and Pyroscope scrape (`/debug/pprof/heap` or `allocs`) of a process.
    fn heap_profile(&self, pid: u32, kind: HeapProfile) -> Result<Vec<u8>, BackendError>;
    /// Traced processes (with consumers) as `(pid, comm)`, for scrape target discovery.
    fn profiled_processes(&self) -> Vec<(u32, String)>;
    /// The figures behind `/metrics`.
    fn metrics(&self) -> MetricsInput;
    /// A receiver of the live stream. Each WebSocket client gets its own.
    fn subscribe(&self) -> broadcast::Receiver<StreamEvent>;
}

/// Default number of process identities, and of libraries, that get their own series in
/// `/metrics` (`metrics.topK`, `metrics.topKLibraries`).
pub const DEFAULT_METRICS_TOP_K: usize = 50;

/// Everything `/metrics` reports, gathered by the backend at scrape time. A part that does not
/// apply (`None`, or an empty list) has no series at all rather than series stuck at 0.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsInput {
    /// Every process of the latest snapshot. Series are keyed by identity (command name and
    /// cgroup, see [`Identity`](super::metrics::Identity)), summed over its processes.
    pub processes: Vec<ProcessMetrics>,
    /// Time of the snapshot `processes` come from (ms since the Unix epoch); `None` before the
    /// first snapshot.
    pub last_snapshot_ms: Option<u64>,
    /// Which identities and libraries get their own series, as the agent's
    /// [`MetricsState`](super::metrics::MetricsState) chose them across snapshots. `None`: the
    /// `top_k` / `top_k_libraries` largest of this input alone (no memory between scrapes).
    pub selection: Option<Selection>,
    /// How many identities get their own series when `selection` is `None`; the rest are summed
    /// into one `comm="other"` series.
    pub top_k: usize,
    /// How many (identity, library) pairs get their own `memtrace_library_live_bytes` series when
    /// `selection` is `None`, the largest by live bytes; the rest are summed into
    /// `library="other"`. The libraries come from each process's `ProcessSnapshot::libraries`.
    pub top_k_libraries: usize,
    /// Processes traced by configuration, on request or by a drill-down (not those traced by
    /// `agent.mallocAll`): the only series with a `pid` label, `memtrace_traced_process_info`.
    pub traced: Vec<TracedMetric>,
    /// Alert counts; `None` when alerting is off (`alerting.enabled = false`).
    pub alerts: Option<AlertMetrics>,
    /// Kernel events decoded, by kind (indexed by `Kind::index`).
    pub events_by_kind: [u64; Kind::ALL.len()],
    /// Kernel events lost (ring buffer full, in-flight map full).
    pub events_lost_total: u64,
    /// Consumers dropped from the consumer table when it was full.
    pub consumers_evicted_total: u64,
    /// Webhook deliveries; `None` without an active webhook (`alerting.webhookUrl`).
    pub webhook: Option<WebhookMetrics>,
    /// Data directory failures; `None` when nothing is written (`agent.persist = false`).
    pub store: Option<StoreMetrics>,
    /// Snapshots not taken because the analysis side was behind.
    pub snapshots_dropped_total: u64,
    /// Heap tracings of a process started and stopped (requests, drill-downs, exits).
    pub heap_traces_started_total: u64,
    pub heap_traces_stopped_total: u64,
    /// Processes let go, and switched to sampling, for their CPU budget.
    pub heap_traces_refused_total: u64,
    pub heap_traces_sampled_total: u64,
    /// Processes whose malloc family is traced by a drill-down now; `None` when drill-downs are
    /// off (`drilldown.enabled = false`).
    pub drilldowns_active: Option<u64>,
    /// The agent's own CPU time (user + system), seconds.
    pub agent_cpu_seconds_total: f64,
    /// The agent's own resident set size, bytes.
    pub agent_rss_bytes: u64,
    /// Per eBPF program: run time and run count. Empty while the kernel's BPF statistics are off
    /// (`kernel.bpf_stats_enabled`, `agent.bpfStats`), and programs that never ran are left out.
    pub bpf_programs: Vec<BpfProgramStats>,
}

impl Default for MetricsInput {
    fn default() -> Self {
        Self {
            processes: Vec::new(),
            last_snapshot_ms: None,
            selection: None,
            top_k: DEFAULT_METRICS_TOP_K,
            top_k_libraries: DEFAULT_METRICS_TOP_K,
            traced: Vec::new(),
            alerts: None,
            events_by_kind: [0; Kind::ALL.len()],
            events_lost_total: 0,
            consumers_evicted_total: 0,
            webhook: None,
            store: None,
            snapshots_dropped_total: 0,
            heap_traces_started_total: 0,
            heap_traces_stopped_total: 0,
            heap_traces_refused_total: 0,
            heap_traces_sampled_total: 0,
            drilldowns_active: None,
            agent_cpu_seconds_total: 0.0,
            agent_rss_bytes: 0,
            bpf_programs: Vec::new(),
        }
    }
}

/// One process in `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessMetrics {
    /// Its latest figures (with its cgroup and libraries).
    pub snapshot: ProcessSnapshot,
    /// Growth rate of its RSS (bytes per second), where known.
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

/// A process traced by configuration, on request or by a drill-down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedMetric {
    pub pid: u32,
    /// Why: `configured`, `requested` or `drilldown`.
    pub reason: String,
}

/// Active and suppressed alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertMetrics {
    /// Active alerts by type and severity (every combination, 0 when none, so that rules see a
    /// value).
    pub active: Vec<AlertCount>,
    /// Alert candidates held back by a budget, by type (`threshold`, `pattern`, `leak`, `spike`,
    /// every type, 0 when none).
    pub suppressed: Vec<(String, u64)>,
}

/// Number of active alerts of one type (`threshold`, `pattern`, `leak`, `spike`) and severity
/// (`info`, `warning`, `critical`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertCount {
    pub kind: String,
    pub severity: String,
    pub count: u64,
}

/// Webhook deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookMetrics {
    pub sent_total: u64,
    /// Not accepted after the retries.
    pub failures_total: u64,
    /// Dropped from the webhook's full queue (or still queued at shutdown).
    pub dropped_total: u64,
    /// Firing alerts posted again (`alerting.webhookResendInterval`, Alertmanager format).
    pub resent_total: u64,
}

/// Failures of the data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Writes that failed (snapshots, alerts, consumers, retention).
    pub write_failures_total: u64,
    /// Corrupted, partial or over-long lines of data files skipped when reading them.
    pub skipped_lines_total: u64,
}

/// Cost of one eBPF program.
#[derive(Clone, Debug, PartialEq)]
pub struct BpfProgramStats {
    pub program: String,
    /// Seconds.
    pub run_time_seconds_total: f64,
    pub runs_total: u64,
}
