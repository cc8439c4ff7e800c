//! The running agent as the HTTP side sees it: `impl Backend for Agent`.

use std::{collections::HashMap, sync::Arc};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::{
    agent::{chain, now_ms, Agent, AgentError, State},
    analysis::{PatternType, ProcessPattern},
    attribution::ConsumerReport,
    http::{
        AlertCount, Backend, BackendError, BpfProgramStats, MetricsInput, PatternMetric,
        ProcessMetrics, StreamEvent,
    },
    os::clock::monotonic_seconds,
    probes::{KernelStacks, ProbeError},
    reports,
    snapshot::{HostSnapshot, ProcessSnapshot},
};

fn internal(err: AgentError) -> BackendError {
    match err {
        AgentError::Probe(ProbeError::NoProcess(pid)) => {
            BackendError::NotFound(format!("process {pid} does not exist"))
        }
        AgentError::Probe(
            err @ (ProbeError::SelfTrace(_)
            | ProbeError::NoAllocator { .. }
            | ProbeError::Unreadable { .. }),
        ) => BackendError::BadRequest(chain(&err)),
        other => BackendError::Internal(chain(&other)),
    }
}

/// The `consumers` JSON of one process report.
fn consumers_json(report: &ConsumerReport) -> Value {
    serde_json::to_value(report).unwrap_or(Value::Null)
}

impl Agent {
    fn last_snapshot(&self, state: &State) -> Option<Arc<HostSnapshot>> {
        state.history.back().cloned()
    }

    /// Attribution of a traced process now (or its last report when it is gone).
    fn fresh_report(
        &self,
        state: &mut State,
        pid: u32,
    ) -> Result<Option<ConsumerReport>, AgentError> {
        if state.accounting.process(pid).is_some_and(|p| p.heap_traced) {
            let probes = self.probes()?;
            let mut stacks = KernelStacks(probes.stacks()?);
            let State {
                accounting,
                attributor,
                reports,
                ..
            } = state;
            if let Some(process) = accounting.process(pid) {
                let report = attributor.report(process, &mut stacks, monotonic_seconds());
                reports.insert(pid, report.clone());
                return Ok(Some(report));
            }
        }
        Ok(state.reports.get(&pid).cloned())
    }

    fn growth_json(state: &State, minutes: u32) -> Value {
        let Some(last) = state.history.back() else {
            return json!({ "minutes": minutes, "from": null, "to": null, "processes": [] });
        };
        let since = last.timestamp.saturating_sub(u64::from(minutes) * 60_000);
        let window: Vec<&Arc<HostSnapshot>> = state
            .history
            .iter()
            .filter(|s| s.timestamp >= since)
            .collect();
        let mut first: HashMap<u32, (u64, &ProcessSnapshot)> = HashMap::new();
        for snapshot in &window {
            for p in &snapshot.processes {
                first.entry(p.pid).or_insert((snapshot.timestamp, p));
            }
        }
        let mut processes: Vec<Value> = last
            .processes
            .iter()
            .filter_map(|p| {
                let (t0, p0) = first.get(&p.pid)?;
                let minutes_span = (last.timestamp.saturating_sub(*t0)) as f64 / 60_000.0;
                let rate = |delta: i64| {
                    if minutes_span > 0.0 {
                        delta as f64 / (1024.0 * 1024.0) / minutes_span
                    } else {
                        0.0
                    }
                };
                let delta_rss = p.rss_bytes as i64 - p0.rss_bytes as i64;
                let heap = p
                    .heap_traced
                    .then_some((p0.heap_live_bytes, p.heap_live_bytes));
                Some(json!({
                    "pid": p.pid,
                    "comm": p.comm,
                    "startRssBytes": p0.rss_bytes,
                    "endRssBytes": p.rss_bytes,
                    "deltaRssBytes": delta_rss,
                    "startHeapBytes": heap.map(|h| h.0),
                    "endHeapBytes": heap.map(|h| h.1),
                    "deltaHeapBytes": heap.map(|h| h.1 as i64 - h.0 as i64),
                    "rssGrowthMbPerMinute": rate(delta_rss),
                    "heapGrowthMbPerMinute": heap.map(|h| rate(h.1 as i64 - h.0 as i64)),
                    "minutes": minutes_span,
                }))
            })
            .collect();
        processes.sort_by(|a, b| {
            b["deltaRssBytes"]
                .as_i64()
                .cmp(&a["deltaRssBytes"].as_i64())
        });
        json!({ "minutes": minutes, "from": window.first().map(|s| s.timestamp), "to": last.timestamp, "processes": processes })
    }

    fn consumers_document(&self, state: &mut State, pid: Option<u32>) -> Value {
        let pids: Vec<u32> = match pid {
            Some(pid) => vec![pid],
            None => {
                let mut pids: Vec<u32> = state.reports.keys().copied().collect();
                pids.extend(
                    state
                        .accounting
                        .processes()
                        .filter(|p| p.heap_traced)
                        .map(|p| p.pid),
                );
                pids.sort_unstable();
                pids.dedup();
                pids
            }
        };
        let mut processes = Vec::new();
        let mut flat = Vec::new();
        for pid in pids {
            match self.fresh_report(state, pid) {
                Ok(Some(report)) => {
                    for consumer in &report.consumers {
                        let mut value = serde_json::to_value(consumer).unwrap_or(Value::Null);
                        value["pid"] = json!(report.pid);
                        value["comm"] = json!(report.comm);
                        flat.push(value);
                    }
                    processes.push(consumers_json(&report));
                }
                Ok(None) => {}
                Err(err) => log::warn!("consumers of pid {pid}: {}", chain(&err)),
            }
        }
        json!({ "timestamp": now_ms(), "processes": processes, "consumers": flat })
    }

    fn alerts_json(state: &State) -> Value {
        json!({ "active": state.engine.active(), "recent": state.engine.all_recent(200) })
    }

    fn patterns_sorted(state: &State) -> Vec<ProcessPattern> {
        let mut patterns: Vec<ProcessPattern> = state.patterns.values().cloned().collect();
        patterns.sort_by(|a, b| {
            b.pattern
                .confidence
                .total_cmp(&a.pattern.confidence)
                .then(a.pid.cmp(&b.pid))
        });
        patterns
    }
}

impl Backend for Agent {
    fn status(&self) -> Value {
        let Ok(state) = self.state() else {
            return json!({ "isMonitoring": false, "error": "state unavailable" });
        };
        let mut traced: Vec<u32> = state.traced.iter().copied().collect();
        traced.extend(state.drilldowns.keys());
        traced.sort_unstable();
        let drilldowns: Vec<&crate::agent::Drilldown> = state.drilldowns.values().collect();
        json!({
            "isMonitoring": true,
            "startedAt": self.started_at,
            "uptimeSeconds": self.uptime().as_secs(),
            "lastSnapshot": self.last_snapshot(&state),
            "activeAlerts": state.engine.active().len(),
            "tracedPids": traced,
            "mallocAll": self.options.malloc_all,
            "drilldowns": drilldowns,
            "drilldownOptions": self.options.drilldown,
            "eventsReceived": self.events_received(),
            "eventsLost": self.kernel_counters()[memtrace_common::COUNTER_RINGBUF_DROPS as usize],
            "snapshotInterval": self.config.monitor.snapshot_interval,
            "analysisInterval": self.config.monitor.analysis_interval,
            "pid": std::process::id(),
        })
    }

    fn history(&self, count: usize) -> Vec<HostSnapshot> {
        let Ok(state) = self.state() else {
            return Vec::new();
        };
        let skip = state.history.len().saturating_sub(count);
        state
            .history
            .iter()
            .skip(skip)
            .map(|s| (**s).clone())
            .collect()
    }

    fn growth(&self, minutes: u32) -> Value {
        match self.state() {
            Ok(state) => Self::growth_json(&state, minutes),
            Err(_) => json!({ "minutes": minutes, "processes": [] }),
        }
    }

    fn analyze(&self) -> Vec<ProcessPattern> {
        match Agent::analyze(self) {
            Ok(patterns) => patterns,
            Err(err) => {
                log::warn!("forced analysis: {}", chain(&err));
                Vec::new()
            }
        }
    }

    fn alerts(&self) -> Value {
        match self.state() {
            Ok(state) => Self::alerts_json(&state),
            Err(_) => json!({ "active": [], "recent": [] }),
        }
    }

    fn resolve_alert(&self, id: &str) -> Result<Value, BackendError> {
        match Agent::resolve_alert(self, id).map_err(internal)? {
            Some(alert) => Ok(alert),
            None => Err(BackendError::NotFound(format!(
                "no active alert with id {id}"
            ))),
        }
    }

    fn consumers(&self, pid: Option<u32>) -> Value {
        match self.state() {
            Ok(mut state) => self.consumers_document(&mut state, pid),
            Err(_) => json!({ "processes": [], "consumers": [] }),
        }
    }

    fn processes(&self) -> Vec<ProcessSnapshot> {
        let Ok(state) = self.state() else {
            return Vec::new();
        };
        self.last_snapshot(&state)
            .map(|s| s.processes.clone())
            .unwrap_or_default()
    }

    fn process(&self, pid: u32) -> Option<Value> {
        let mut state = self.state().ok()?;
        let snapshot = state.accounting.snapshot(pid).or_else(|| {
            state
                .accounting
                .exited()
                .rev()
                .find(|p| p.pid == pid)
                .cloned()
        })?;
        let report = self.fresh_report(&mut state, pid).ok().flatten();
        let mut snapshot = snapshot;
        if let Some(report) = &report {
            snapshot.libraries = report.libraries.clone();
        }
        Some(json!({
            "snapshot": snapshot,
            "pattern": state.patterns.get(&pid),
            "consumers": report.as_ref().map(|r| &r.consumers),
            "libraries": snapshot.libraries,
            "leaks": report.as_ref().map(|r| &r.leaks),
            "traced": state.traced.contains(&pid) || state.drilldowns.contains_key(&pid) || self.options.malloc_all,
            "drilldown": state.drilldowns.get(&pid),
            "container": crate::os::cgroup::container_of(pid),
        }))
    }

    fn trace_start(&self, pid: u32) -> Result<Value, BackendError> {
        Agent::trace_start(self, pid).map_err(internal)
    }

    fn trace_stop(&self, pid: u32) -> Result<Value, BackendError> {
        let traced = self.state().map_err(internal)?.traced.contains(&pid)
            || self
                .state()
                .map_err(internal)?
                .drilldowns
                .contains_key(&pid);
        if !traced {
            return Err(BackendError::NotFound(format!("pid {pid} is not traced")));
        }
        Agent::trace_stop(self, pid).map_err(internal)
    }

    fn export(&self) -> Value {
        let Ok(mut state) = self.state() else {
            return json!({ "error": "state unavailable" });
        };
        let consumers = self.consumers_document(&mut state, None);
        let operations: Vec<&crate::accounting::Operation> =
            state.accounting.operations().collect();
        json!({
            "exportedAt": now_ms(),
            "config": self.config,
            "snapshots": state.history.iter().map(|s| &**s).collect::<Vec<_>>(),
            "alerts": Self::alerts_json(&state),
            "patterns": Self::patterns_sorted(&state),
            "consumers": consumers,
            "operations": operations,
        })
    }

    fn report_json(&self) -> Value {
        let Ok(mut state) = self.state() else {
            return json!({ "error": "state unavailable" });
        };
        let last = self.last_snapshot(&state);
        let consumers = self.consumers_document(&mut state, None);
        let traced = state
            .accounting
            .processes()
            .filter(|p| p.heap_traced)
            .count();
        json!({
            "generatedAt": now_ms(),
            "host": {
                "memTotalBytes": last.as_ref().map_or(0, |s| s.mem_total_bytes),
                "memAvailableBytes": last.as_ref().map_or(0, |s| s.mem_available_bytes),
            },
            "summary": {
                "processes": last.as_ref().map_or(0, |s| s.processes.len()),
                "tracedProcesses": traced,
                "activeAlerts": state.engine.active().len(),
                "snapshots": state.history.len(),
            },
            "growth": Self::growth_json(&state, 60),
            "patterns": Self::patterns_sorted(&state),
            "alerts": Self::alerts_json(&state),
            "consumers": consumers,
            "topProcesses": last.as_ref().map(|s| s.processes.iter().take(10).collect::<Vec<_>>()),
        })
    }

    fn report_text(&self) -> String {
        reports::text(&self.report_json())
    }

    fn flamegraph_svg(&self, pid: Option<u32>) -> Result<String, BackendError> {
        let mut state = self.state().map_err(internal)?;
        let pids: Vec<u32> = match pid {
            Some(pid) => vec![pid],
            None => state
                .accounting
                .processes()
                .filter(|p| p.heap_traced)
                .map(|p| p.pid)
                .chain(state.reports.keys().copied())
                .collect(),
        };
        let mut reports = Vec::new();
        for pid in pids {
            if let Some(report) = self.fresh_report(&mut state, pid).map_err(internal)? {
                reports.push(report);
            }
        }
        reports.sort_by_key(|r| r.pid);
        reports.dedup_by_key(|r| r.pid);
        if reports.is_empty() {
            return Err(BackendError::NotFound(match pid {
                Some(pid) => format!("pid {pid} is not traced: start tracing it first (POST /api/memory/trace/{pid})"),
                None => "no process is traced".to_string(),
            }));
        }
        reports::flamegraph(reports.iter(), "memtrace: live bytes by stack")
            .map_err(|err| BackendError::NotFound(chain(&err)))
    }

    fn pprof(&self, pid: u32) -> Result<Vec<u8>, BackendError> {
        let mut state = self.state().map_err(internal)?;
        let report = self
            .fresh_report(&mut state, pid)
            .map_err(internal)?
            .ok_or_else(|| BackendError::NotFound(format!("pid {pid} is not traced: start tracing it first (POST /api/memory/trace/{pid})")))?;
        reports::pprof(&report, (now_ms() as i64).saturating_mul(1_000_000))
            .map_err(|err| BackendError::Internal(chain(&err)))
    }

    fn metrics(&self) -> MetricsInput {
        let mut input = MetricsInput::default();
        let counters = self.kernel_counters();
        for (kind, count) in self.events_by_kind() {
            input.events_by_kind[kind.index()] = count;
        }
        input.events_lost_total = counters[memtrace_common::COUNTER_RINGBUF_DROPS as usize]
            + counters[memtrace_common::COUNTER_INFLIGHT_FULL as usize];
        let webhook = self.webhook_stats();
        input.webhook_sent_total = webhook.sent_total;
        input.webhook_failures_total = webhook.failures_total;
        let cost = crate::os::procfs::self_cost();
        input.agent_cpu_seconds_total = cost.cpu_seconds;
        input.agent_rss_bytes = cost.rss_bytes;
        if let Ok(probes) = self.probes() {
            input.bpf_programs = probes
                .program_stats()
                .into_iter()
                .map(|(program, run_time_ns, runs)| BpfProgramStats {
                    program,
                    run_time_seconds_total: run_time_ns as f64 / 1e9,
                    runs_total: runs,
                })
                .collect();
        }
        let Ok(state) = self.state() else {
            return input;
        };
        input.alerts_suppressed_total = state.engine.suppressed_total();
        let mut counts: HashMap<(String, String), u64> = HashMap::new();
        for alert in state.engine.active() {
            let kind = serde_json::to_value(alert.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let severity = serde_json::to_value(alert.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *counts.entry((kind, severity)).or_default() += 1;
        }
        for kind in ["threshold", "pattern", "leak", "spike"] {
            for severity in ["info", "warning", "critical"] {
                let count = counts
                    .get(&(kind.to_string(), severity.to_string()))
                    .copied()
                    .unwrap_or(0);
                input.alerts_active.push(AlertCount {
                    kind: kind.into(),
                    severity: severity.into(),
                    count,
                });
            }
        }
        input.consumers_evicted_total = state.reports.values().map(|r| r.evicted_consumers).sum();
        input.drilldowns_active = state.drilldowns.len() as u64;
        if let Some(last) = self.last_snapshot(&state) {
            let mut processes: Vec<&ProcessSnapshot> = last.processes.iter().collect();
            processes.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes));
            for (rank, p) in processes.into_iter().enumerate() {
                let pattern = state.patterns.get(&p.pid);
                input.processes.push(ProcessMetrics {
                    snapshot: p.clone(),
                    container: if rank < input.top_k {
                        crate::os::cgroup::container_of(p.pid)
                    } else {
                        String::new()
                    },
                    growth_rate_bytes_per_second: pattern
                        .map(|pp| pp.pattern.growth_rate * 1024.0 * 1024.0 / 60.0),
                    pattern: pattern.map(|pp| PatternMetric {
                        kind: pp.pattern.kind,
                        confidence: pp.pattern.confidence,
                    }),
                });
            }
        }
        let _ = PatternType::Stable;
        input
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        Agent::subscribe(self)
    }
}
