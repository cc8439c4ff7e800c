//! The agent's answers, typed: every JSON body of the REST API, the WebSocket stream's events and
//! the JSON report. The agent builds these, the HTTP side serializes them, the text report and the
//! dashboard read their fields, and `docs/api.md` is checked against them in a test (each JSON
//! example there must parse into the type it documents and serialize back with the same fields).
//!
//! JSON is camelCase. Byte counts are bytes; times are milliseconds since the Unix epoch unless the
//! name says otherwise; MB is 1024 * 1024 bytes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::{
    accounting::Operation,
    alerts::{budget::SuppressedCounts, Alert, AlertType, PendingAlert},
    analysis::{Pattern, ProcessPattern},
    attribution::{Consumer, ConsumerReport, LeakGroup},
    snapshot::{HostSnapshot, LibrarySnapshot, ProcessSnapshot},
};

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    pub status: HealthStatus,
    /// Why the agent is degraded (`null` otherwise).
    pub reason: Option<String>,
    pub memory: HealthMemory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Collecting, no active alert.
    Healthy,
    /// Collecting, at least one alert active.
    Warning,
    /// A part of the agent stopped working (see `reason`): its figures are not current.
    Degraded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthMemory {
    /// Active alerts.
    pub alerts: usize,
    /// Whether events are being collected.
    pub monitoring: bool,
}

/// `GET /api/memory/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Status {
    pub is_monitoring: bool,
    /// When the agent started.
    pub started_at: u64,
    pub uptime_seconds: u64,
    /// The latest host snapshot, `null` before the first.
    pub last_snapshot: Option<Arc<HostSnapshot>>,
    pub active_alerts: usize,
    /// Processes whose malloc family is traced (on request, by configuration or drill-down).
    pub traced_pids: Vec<u32>,
    /// The same processes with why and since when.
    pub traced: Vec<TracedProcess>,
    /// Every process's malloc family is traced (`agent.mallocAll`).
    pub malloc_all: bool,
    /// Drill-downs running now.
    pub drilldowns: Vec<Drilldown>,
    pub drilldown_options: DrilldownSettings,
    /// Processes let go because tracing them would cost more than their CPU budget, most recent
    /// last (at most 20).
    pub trace_refusals: Vec<TraceRefusal>,
    /// Kernel events read from the ring buffer since start.
    pub events_received: u64,
    /// Kernel events lost (ring buffer full) since start.
    pub events_lost: u64,
    /// Snapshots not taken because the agent's analysis side was still busy with earlier ones
    /// (symbolizing a large program, a slow disk) and its queue was full.
    pub snapshots_dropped: u64,
    /// What failed since start without stopping the agent (each also in `/metrics`).
    pub failures: Failures,
    /// Seconds between snapshots (`monitor.snapshotInterval`).
    pub snapshot_interval: u64,
    /// Seconds between analyses (`monitor.analysisInterval`).
    pub analysis_interval: u64,
    /// The agent's own process id.
    pub pid: u32,
}

/// Failures the agent lives with, counted since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failures {
    /// Alert events the webhook did not accept after every retry.
    pub webhook_failures: u64,
    /// Alert events dropped from the webhook's full queue.
    pub webhook_dropped: u64,
    /// Writes to the data directory that failed.
    pub store_write_failures: u64,
    /// Corrupted, partial or over-long lines of data files skipped when read.
    pub store_skipped_lines: u64,
}

/// Why a process's heap is traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceReason {
    /// Listed in `agent.pids` / `--pid`.
    Configured,
    /// `POST /api/memory/trace/{pid}`.
    Requested,
    /// The agent saw it grow and traces it for `drilldown.window` seconds.
    Drilldown,
}

/// A process whose malloc family is traced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracedProcess {
    pub pid: u32,
    pub comm: String,
    pub reason: TraceReason,
    /// When tracing started.
    pub since: u64,
    /// The object whose allocator functions are probed (as the agent opens it).
    pub library: String,
    /// The allocator functions attached.
    pub functions: Vec<String>,
    /// Where each function's entry probe sits (the first instruction the kernel emulates, when
    /// that is safe: see docs/trace.md).
    pub placements: Vec<crate::probes::placement::Placement>,
    /// What tracing costs the process against its CPU budget.
    pub budget: TraceBudget,
}

/// The CPU budget of one traced process: its allocator call rate measured while traced, what
/// that costs it, and what the agent does about it (docs/trace.md, "What tracing costs a
/// process").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceBudget {
    /// `measuring` (the first half second, no decision yet), `tracing` (all the time, within the
    /// budget), `sample-on` / `sample-off` (over the budget: traced in windows, now in one or
    /// between two).
    pub phase: crate::probes::budget::Phase,
    /// The CPU tracing may add to the process, in cores (`drilldown.cpuBudget` or
    /// `probes.cpuBudget`).
    pub budget_cores: f64,
    /// The CPU one traced allocator call costs (measured by `cargo xtask bench`), ns.
    pub per_call_ns: f64,
    /// Allocator calls per second measured while traced (`null` while measuring).
    pub calls_per_second: Option<f64>,
    /// The CPU tracing adds on average, in cores, sampling included (`null` while measuring).
    pub added_cores: Option<f64>,
    /// The share of time traced when sampling (1 otherwise).
    pub duty: f64,
    /// The heap figures cover only the traced windows: each window's figures start afresh when
    /// its probes attach (`externalBasis: "since-attach"`).
    pub partial: bool,
    /// Sampling windows traced so far.
    pub windows: u64,
    /// The latest decision, in words.
    pub reason: Option<String>,
}

impl TraceBudget {
    pub fn of(meter: &crate::probes::budget::Meter) -> Self {
        use crate::probes::budget::Decision;
        let (added_cores, duty) = match meter.decision() {
            None => (None, 1.0),
            Some(Decision::Allow { added_cores, .. }) => (Some(*added_cores), 1.0),
            Some(Decision::Sample {
                added_cores, duty, ..
            }) => (Some(*added_cores), *duty),
            Some(Decision::Refuse { .. }) => (Some(0.0), 0.0),
        };
        Self {
            phase: meter.phase(),
            budget_cores: meter.budget().cores,
            per_call_ns: meter.per_call_ns(),
            calls_per_second: meter.rate(),
            added_cores,
            duty,
            partial: meter.partial(),
            windows: meter.windows(),
            reason: meter.decision().map(|d| d.reason().to_string()),
        }
    }
}

/// A process the agent did not trace, or stopped tracing, because its allocator calls would cost
/// it more than its budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceRefusal {
    pub pid: u32,
    pub comm: String,
    /// Why it was traced.
    pub trace_reason: TraceReason,
    /// When it was let go.
    pub at: u64,
    pub reason: String,
}

/// A drill-down: a growing process whose heap is traced for a bounded window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Drilldown {
    pub pid: u32,
    pub comm: String,
    pub started_at: u64,
    pub ends_at: u64,
    /// The growth that started it (`leak growth at 3.20 MB/min`).
    pub reason: String,
    /// The alert whose context receives the consumers found.
    pub alert_id: Option<String>,
}

/// The `[drilldown]` settings in effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrilldownSettings {
    pub enabled: bool,
    pub window_seconds: u64,
    pub max_processes: usize,
    /// The CPU a drill-down may add to its process, in cores.
    pub cpu_budget: f64,
}

/// One row of `GET /api/memory/processes`: a process of the latest snapshot and its current
/// pattern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessRow {
    #[serde(flatten)]
    pub snapshot: ProcessSnapshot,
    /// The pattern of its most concerning metric at the last analysis (`null` before one).
    pub pattern: Option<Pattern>,
}

/// `GET /api/memory/processes/{pid}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessDetail {
    /// Its figures at the latest snapshot (its last ones if it exited).
    pub snapshot: ProcessSnapshot,
    /// True when the process has exited: the figures are its last.
    pub exited: bool,
    pub pattern: Option<ProcessPattern>,
    /// Consumers of its traced heap (`null` when never traced).
    pub consumers: Option<Vec<Consumer>>,
    pub libraries: Vec<LibrarySnapshot>,
    /// Allocations still live after `tracking.leakAge`, by consumer (`null` when never traced).
    pub leaks: Option<Vec<LeakGroup>>,
    /// Whether its malloc family is traced now.
    pub traced: bool,
    pub drilldown: Option<Drilldown>,
    /// Container id from its cgroup, or "".
    pub container: String,
}

/// `GET /api/memory/growth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Growth {
    /// The window asked for.
    pub minutes: u32,
    /// First and last snapshot of the window (`null` without snapshots).
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// Largest RSS growth first.
    pub processes: Vec<GrowthRow>,
}

/// Growth of one process over the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrowthRow {
    pub pid: u32,
    pub comm: String,
    pub start_rss_bytes: u64,
    pub end_rss_bytes: u64,
    pub delta_rss_bytes: i64,
    /// Live heap at the start and end of the window (`null` when not traced).
    pub start_heap_bytes: Option<u64>,
    pub end_heap_bytes: Option<u64>,
    pub delta_heap_bytes: Option<i64>,
    /// MB per minute over the span the process was seen in the window.
    pub rss_growth_mb_per_minute: f64,
    pub heap_growth_mb_per_minute: Option<f64>,
    /// Minutes the process was seen in the window.
    pub minutes: f64,
}

/// `GET /api/memory/alerts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Alerts {
    /// Active alerts, newest first.
    pub active: Vec<Alert>,
    /// Active and resolved alerts, newest first (at most 200).
    pub recent: Vec<Alert>,
    /// Conditions seen true that have not alerted (yet): waiting for their `for:`, the grace
    /// period of a new process, or a budget. Oldest first.
    pub pending: Vec<PendingAlert>,
    /// Alert candidates held back by a budget since the agent started.
    pub suppressed: Suppressed,
}

/// Alert candidates held back by a budget, each episode (a condition from when it was first held
/// back until it clears or alerts) counted once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suppressed {
    pub total: u64,
    /// By alert type (`threshold`, `pattern`, `leak`, `spike`), only types with a count.
    pub by_type: std::collections::BTreeMap<AlertType, u64>,
    /// By process identity, largest first (at most 100); `other` sums the rest.
    pub by_process: Vec<SuppressedProcess>,
    pub other: u64,
}

/// Suppressed candidates of one process identity (command name and container, so that a
/// restarted process keeps its count).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuppressedProcess {
    pub comm: String,
    /// Empty for a process outside containers.
    pub container: String,
    pub count: u64,
}

impl From<SuppressedCounts> for Suppressed {
    fn from(c: SuppressedCounts) -> Self {
        Self {
            total: c.total,
            by_type: c.by_type.into_iter().collect(),
            by_process: c
                .by_process
                .into_iter()
                .map(|(id, count)| SuppressedProcess {
                    comm: id.comm,
                    container: id.container,
                    count,
                })
                .collect(),
            other: c.other,
        }
    }
}

/// `GET /api/memory/consumers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consumers {
    /// When the consumers were computed (the latest snapshot).
    pub timestamp: u64,
    /// Per traced process: libraries, consumers and the leak view.
    pub processes: Vec<ConsumerReport>,
    /// Every consumer of every process, largest live bytes first.
    pub consumers: Vec<ProcessConsumer>,
}

/// A consumer with its process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConsumer {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub consumer: Consumer,
}

/// `POST /api/memory/trace/{pid}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceStarted {
    pub pid: u32,
    pub traced: bool,
    /// The object whose allocator functions are probed.
    pub library: String,
    pub attached: Vec<String>,
    /// Optional allocator functions this allocator lacks.
    pub missing: Vec<String>,
    /// Where each function's entry probe sits.
    pub placements: Vec<crate::probes::placement::Placement>,
    /// The budget's decision after the first half second of tracing.
    pub budget: TraceBudget,
}

/// `DELETE /api/memory/trace/{pid}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceStopped {
    pub pid: u32,
    pub traced: bool,
    pub was_traced: bool,
}

/// `GET /api/memory/export`: everything held in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Export {
    pub exported_at: u64,
    /// The configuration in effect (the token is never included; the webhook URL's credentials and
    /// path are masked).
    pub config: crate::config::Config,
    /// Snapshots held in memory, oldest first.
    pub snapshots: Vec<Arc<HostSnapshot>>,
    pub alerts: Alerts,
    pub patterns: Vec<ProcessPattern>,
    pub consumers: Consumers,
    /// Recent allocations of at least `tracking.minAllocationSize`, oldest first.
    pub operations: Vec<Operation>,
}

/// `GET /api/memory/report` (JSON; `format=text` renders the same for a terminal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    pub generated_at: u64,
    /// The history the report covers.
    pub history: ReportHistory,
    pub host: ReportHost,
    pub summary: ReportSummary,
    /// Growth over the last hour of history.
    pub growth: Growth,
    /// Every process's pattern, concerning ones first (confident and not stable, by severity).
    pub patterns: Vec<ProcessPattern>,
    pub alerts: Alerts,
    pub consumers: Consumers,
    /// The ten largest processes by RSS.
    pub top_processes: Vec<ProcessSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportHistory {
    /// First and last snapshot in memory (`null` without snapshots).
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub snapshots: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportHost {
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportSummary {
    pub processes: usize,
    pub traced_processes: usize,
    pub active_alerts: usize,
    pub snapshots: usize,
}

/// One message of the live stream (`/api/memory/ws`), serialized as `{"type": ..., "data": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum StreamEvent {
    /// A host snapshot was taken.
    #[serde(rename = "snapshot")]
    Snapshot(Arc<HostSnapshot>),
    /// An alert was raised, or an active alert got new context (a drill-down's consumers).
    #[serde(rename = "alert:created")]
    AlertCreated(Alert),
    /// An alert was resolved, by hand or automatically.
    #[serde(rename = "alert:resolved")]
    AlertResolved(Alert),
    /// The analysis found a confident pattern for a process.
    #[serde(rename = "pattern:detected")]
    PatternDetected(ProcessPattern),
}

/// The body of every error answer: `{"error": "...", "status": 400}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
    /// The HTTP status code, repeated.
    pub status: u16,
}

#[cfg(test)]
mod tests {
    //! `docs/api.md` against these types: every block marked ` ```json api=Name ` must parse into
    //! the type `Name` and serialize back with exactly the same fields, recursively. A block may
    //! stand for a documented type with `{"$ref": "Name"}`.

    use std::collections::HashMap;

    use serde::{de::DeserializeOwned, Serialize};
    use serde_json::Value;

    use super::*;

    const DOC: &str = include_str!("../../docs/api.md");

    fn round_trip<T: Serialize + DeserializeOwned>(example: &Value) -> Result<Value, String> {
        let typed: T = serde_json::from_value(example.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(&typed).map_err(|e| e.to_string())
    }

    /// Parses `example` as the API type `name` and serializes it back.
    fn typed(name: &str, example: &Value) -> Result<Value, String> {
        match name {
            "ErrorBody" => round_trip::<ErrorBody>(example),
            "Health" => round_trip::<Health>(example),
            "Status" => round_trip::<Status>(example),
            "HostSnapshot" => round_trip::<HostSnapshot>(example),
            "ProcessSnapshot" => round_trip::<ProcessSnapshot>(example),
            "History" => round_trip::<Vec<HostSnapshot>>(example),
            "Growth" => round_trip::<Growth>(example),
            "Analyze" => round_trip::<Vec<ProcessPattern>>(example),
            "ProcessPattern" => round_trip::<ProcessPattern>(example),
            "Alert" => round_trip::<Alert>(example),
            "Alerts" => round_trip::<Alerts>(example),
            "Consumers" => round_trip::<Consumers>(example),
            "ConsumerReport" => round_trip::<ConsumerReport>(example),
            "Consumer" => round_trip::<Consumer>(example),
            "Processes" => round_trip::<Vec<ProcessRow>>(example),
            "ProcessDetail" => round_trip::<ProcessDetail>(example),
            "TraceStarted" => round_trip::<TraceStarted>(example),
            "TraceStopped" => round_trip::<TraceStopped>(example),
            "Export" => round_trip::<Export>(example),
            "Config" => round_trip::<crate::config::Config>(example),
            "Operation" => round_trip::<Operation>(example),
            "Report" => round_trip::<Report>(example),
            "StreamEvent" => round_trip::<StreamEvent>(example),
            other => Err(format!("no API type named {other}")),
        }
    }

    /// The ` ```json api=Name ` blocks of the document, in order.
    fn blocks(doc: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let Some(name) = line.trim().strip_prefix("```json api=") else {
                continue;
            };
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push((name.trim().to_string(), body.join("\n")));
        }
        out
    }

    /// Replaces `{"$ref": "Name"}` with the documented example of `Name`.
    fn resolve(value: &Value, examples: &HashMap<String, Value>, depth: usize) -> Value {
        assert!(depth < 16, "$ref cycle in docs/api.md");
        match value {
            Value::Object(map) => {
                if let (1, Some(Value::String(name))) = (map.len(), map.get("$ref")) {
                    let target = examples
                        .get(name)
                        .unwrap_or_else(|| panic!("docs/api.md: $ref to undocumented {name}"));
                    return resolve(target, examples, depth + 1);
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), resolve(v, examples, depth + 1)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| resolve(v, examples, depth + 1))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Differences between the fields of the documented example and of the typed answer.
    fn field_differences(path: &str, doc: &Value, typed: &Value, out: &mut Vec<String>) {
        match (doc, typed) {
            (Value::Object(d), Value::Object(t)) => {
                for key in d.keys().filter(|k| !t.contains_key(*k)) {
                    out.push(format!("{path}.{key}: documented, not in the answer"));
                }
                for key in t.keys().filter(|k| !d.contains_key(*k)) {
                    out.push(format!("{path}.{key}: in the answer, not documented"));
                }
                for (key, value) in d {
                    if let Some(other) = t.get(key) {
                        field_differences(&format!("{path}.{key}"), value, other, out);
                    }
                }
            }
            (Value::Array(d), Value::Array(t)) => {
                for (i, (a, b)) in d.iter().zip(t).enumerate() {
                    field_differences(&format!("{path}[{i}]"), a, b, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn docs_api_examples_match_the_typed_answers() {
        let blocks = blocks(DOC);
        assert!(
            blocks.len() >= 20,
            "docs/api.md has {} typed examples",
            blocks.len()
        );
        let mut examples: HashMap<String, Value> = HashMap::new();
        for (name, body) in &blocks {
            let value: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("docs/api.md: the {name} example is not JSON: {e}"));
            // The first example of a name is the one `$ref` points at.
            examples.entry(name.clone()).or_insert(value);
        }
        let mut problems = Vec::new();
        for (name, body) in &blocks {
            let value: Value = serde_json::from_str(body).unwrap_or_default();
            let value = resolve(&value, &examples, 0);
            match typed(name, &value) {
                Ok(back) => field_differences(name, &value, &back, &mut problems),
                Err(e) => problems.push(format!("{name}: does not parse: {e}")),
            }
        }
        assert!(
            problems.is_empty(),
            "docs/api.md and the API types disagree:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn every_answer_type_is_documented() {
        let names: Vec<String> = blocks(DOC).into_iter().map(|(n, _)| n).collect();
        for name in [
            "ErrorBody",
            "Health",
            "Status",
            "HostSnapshot",
            "ProcessSnapshot",
            "History",
            "Growth",
            "Analyze",
            "Alerts",
            "Alert",
            "Consumers",
            "Processes",
            "ProcessDetail",
            "TraceStarted",
            "TraceStopped",
            "Export",
            "Report",
            "StreamEvent",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "docs/api.md has no `json api={name}` example"
            );
        }
    }
}
