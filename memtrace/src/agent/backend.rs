//! The running agent as the HTTP side sees it: `impl Backend for Agent`. Reads answer from the
//! published views; commands go to the thread that owns what they change and wait for its answer
//! (on the HTTP side's blocking pool, with a time limit).

use std::{
    collections::HashMap,
    sync::{mpsc, Arc},
    time::Duration,
};

use tokio::sync::broadcast;

use super::{
    core::CoreMessage,
    intake::{IntakeCommand, TraceError},
    Agent,
};
use crate::{
    alerts::{AlertError, AlertType, Severity},
    analysis::ProcessPattern,
    api::{
        Alert, Alerts, Consumers, DrilldownSettings, Export, Failures, Growth, Health,
        HealthMemory, HealthStatus, HostSnapshot, ProcessDetail, ProcessRow, Report, ReportHistory,
        ReportHost, ReportSummary, Status, StreamEvent, TraceReason, TraceStarted, TraceStopped,
    },
    events::Kind,
    http::{
        AlertCount, AlertMetrics, Backend, BackendError, BpfProgramStats, MetricsInput,
        PatternMetric, ProcessMetrics, StoreMetrics, TracedMetric, WebhookMetrics,
    },
    os::{cgroup, clock},
    reports::{self, HeapProfile},
};

/// Whether the kernel keeps BPF run-time statistics now (`kernel.bpf_stats_enabled`, which also
/// reads 1 while a process holds them on, as the agent does with `agent.bpfStats`).
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|text| text.trim() == "1")
}

/// How long a command may wait for the thread that carries it out.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl From<TraceError> for BackendError {
    fn from(err: TraceError) -> Self {
        match err {
            TraceError::NoProcess(_) | TraceError::NotTraced(_) => Self::NotFound(err.to_string()),
            TraceError::Refused(_) => Self::BadRequest(err.to_string()),
            TraceError::OverBudget { .. } => Self::Conflict(err.to_string()),
            TraceError::Unavailable => Self::Unavailable(err.to_string()),
            TraceError::Failed(_) => Self::Internal(err.to_string()),
        }
    }
}

fn not_traced(pid: u32) -> BackendError {
    BackendError::NotFound(format!(
        "pid {pid} is not traced: start tracing it first (POST /api/memory/trace/{pid})"
    ))
}

impl Agent {
    /// Sends a command to the intake and waits for its answer.
    fn ask_intake<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<Result<T, TraceError>>) -> IntakeCommand,
    ) -> Result<T, BackendError> {
        if !self.shared.health.intake_running() {
            return Err(TraceError::Unavailable.into());
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.intake
            .send(make(reply))
            .map_err(|_| BackendError::from(TraceError::Unavailable))?;
        match answer.recv_timeout(COMMAND_TIMEOUT) {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(BackendError::Unavailable(
                "the agent did not answer in time".into(),
            )),
        }
    }

    /// Sends a message to the core and waits for its answer.
    fn ask_core<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<T>) -> CoreMessage,
    ) -> Result<T, BackendError> {
        let (reply, answer) = mpsc::sync_channel(1);
        match self.core.try_send(make(reply)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Err(BackendError::Unavailable(
                    "the agent is busy (its queue is full): try again".into(),
                ))
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(BackendError::Unavailable("the agent's core stopped".into()))
            }
        }
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| BackendError::Unavailable("the agent did not answer in time".into()))
    }
}

impl Agent {
    fn failures(&self) -> Failures {
        let webhook = self.shared.dispatcher.webhook_stats();
        let store = self.shared.store.as_deref();
        Failures {
            webhook_failures: webhook.failures_total,
            webhook_dropped: webhook.dropped_total,
            store_write_failures: store.map_or(0, |s| s.persist_failures_total()),
            store_skipped_lines: store.map_or(0, |s| s.corrupt_lines_total()),
        }
    }
}

impl Backend for Agent {
    fn health(&self) -> Health {
        let alerts = self.shared.core.load().alerts.active.len();
        let degraded = self.shared.health.degraded();
        let status = match (&degraded, alerts) {
            (Some(_), _) => HealthStatus::Degraded,
            (None, 0) => HealthStatus::Healthy,
            (None, _) => HealthStatus::Warning,
        };
        Health {
            status,
            reason: degraded,
            memory: HealthMemory {
                alerts,
                monitoring: self.shared.health.intake_running(),
            },
        }
    }

    fn status(&self) -> Status {
        let shared = &self.shared;
        let intake = shared.intake.load();
        let core = shared.core.load();
        let config = &shared.config;
        Status {
            is_monitoring: shared.health.intake_running(),
            started_at: shared.started_at,
            uptime_seconds: shared.uptime().as_secs(),
            last_snapshot: core.last_snapshot().cloned(),
            active_alerts: core.alerts.active.len(),
            traced_pids: intake.traced.iter().map(|t| t.pid).collect(),
            traced: intake.traced.clone(),
            malloc_all: config.agent.malloc_all,
            drilldowns: intake.drilldowns.clone(),
            drilldown_options: DrilldownSettings {
                enabled: config.drilldown.enabled,
                window_seconds: config.drilldown.window,
                max_processes: config.drilldown.max_processes,
                cpu_budget: config.drilldown.cpu_budget,
            },
            trace_refusals: intake.refusals.clone(),
            events_received: shared
                .stats
                .received
                .load(std::sync::atomic::Ordering::Relaxed),
            events_lost: shared.kernel_counters()[memtrace_common::COUNTER_RINGBUF_DROPS as usize],
            snapshots_dropped: intake.snapshots_dropped,
            failures: self.failures(),
            snapshot_interval: config.monitor.snapshot_interval,
            analysis_interval: config.monitor.analysis_interval,
            pid: std::process::id(),
        }
    }

    fn history(&self, count: usize) -> Vec<Arc<HostSnapshot>> {
        let core = self.shared.core.load();
        let skip = core.history.len().saturating_sub(count);
        core.history[skip..].to_vec()
    }

    fn growth(&self, minutes: u32) -> Growth {
        self.shared.core.load().growth(minutes)
    }

    fn analyze(&self) -> Result<Vec<ProcessPattern>, BackendError> {
        self.ask_core(|reply| CoreMessage::Analyze { reply })
    }

    fn alerts(&self) -> Alerts {
        self.shared.core.load().alerts.clone()
    }

    fn resolve_alert(&self, id: &str) -> Result<Alert, BackendError> {
        let id = id.to_string();
        self.ask_core(|reply| CoreMessage::Resolve { id, reply })?
            .map_err(|err| match err {
                AlertError::NotFound(_) => BackendError::NotFound(err.to_string()),
                AlertError::AlreadyResolved(_) => BackendError::BadRequest(err.to_string()),
            })
    }

    fn consumers(&self, pid: Option<u32>) -> Consumers {
        self.shared.core.load().consumers(pid)
    }

    fn processes(&self) -> Vec<ProcessRow> {
        let core = self.shared.core.load();
        core.last_snapshot()
            .map(|s| {
                s.processes
                    .iter()
                    .map(|p| ProcessRow {
                        snapshot: p.clone(),
                        pattern: core.patterns.get(&p.pid).map(|pp| pp.pattern.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn process(&self, pid: u32) -> Option<ProcessDetail> {
        let core = self.shared.core.load();
        let intake = self.shared.intake.load();
        let live = core
            .last_snapshot()
            .and_then(|s| s.processes.iter().find(|p| p.pid == pid))
            .cloned();
        let exited = live.is_none();
        let snapshot = live.or_else(|| core.exited.iter().rev().find(|p| p.pid == pid).cloned())?;
        let report = core.reports.get(&pid);
        Some(ProcessDetail {
            libraries: report.map(|r| r.libraries.clone()).unwrap_or_default(),
            consumers: report.map(|r| r.consumers.clone()),
            leaks: report.map(|r| r.leaks.clone()),
            pattern: core.patterns.get(&pid).cloned(),
            traced: !exited && (intake.is_traced(pid) || self.shared.config.agent.malloc_all),
            drilldown: intake.drilldown(pid).cloned(),
            container: if exited {
                String::new()
            } else {
                cgroup::container_of(pid)
            },
            exited,
            snapshot,
        })
    }

    fn trace_start(&self, pid: u32) -> Result<TraceStarted, BackendError> {
        // The allocator's files are read here, on the HTTP side's blocking pool, not by the intake.
        let prepared = Box::new(crate::probes::prepare(
            pid,
            self.shared.config.probes.entry_probes,
        ));
        self.ask_intake(|reply| IntakeCommand::TraceStart {
            pid,
            prepared,
            reply,
        })
    }

    fn trace_stop(&self, pid: u32) -> Result<TraceStopped, BackendError> {
        self.ask_intake(|reply| IntakeCommand::TraceStop { pid, reply })
    }

    fn export(&self) -> Export {
        let core = self.shared.core.load();
        Export {
            exported_at: clock::now_ms(),
            config: self.shared.config.redacted(),
            snapshots: core.history.clone(),
            alerts: core.alerts.clone(),
            patterns: core.patterns_by_concern(),
            consumers: core.consumers(None),
            operations: (*core.operations).clone(),
        }
    }

    fn report(&self) -> Report {
        let core = self.shared.core.load();
        let last = core.last_snapshot();
        let consumers = core.consumers(None);
        Report {
            generated_at: clock::now_ms(),
            history: ReportHistory {
                from: core.history.first().map(|s| s.timestamp),
                to: last.map(|s| s.timestamp),
                snapshots: core.history.len(),
            },
            host: ReportHost {
                mem_total_bytes: last.map_or(0, |s| s.mem_total_bytes),
                mem_available_bytes: last.map_or(0, |s| s.mem_available_bytes),
            },
            summary: ReportSummary {
                processes: last.map_or(0, |s| s.processes.len()),
                traced_processes: last
                    .map_or(0, |s| s.processes.iter().filter(|p| p.heap_traced).count()),
                active_alerts: core.alerts.active.len(),
                snapshots: core.history.len(),
            },
            growth: core.growth(60),
            patterns: core.patterns_by_concern(),
            alerts: core.alerts.clone(),
            consumers,
            top_processes: last
                .map(|s| s.processes.iter().take(10).cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn flamegraph_svg(&self, pid: Option<u32>) -> Result<String, BackendError> {
        let core = self.shared.core.load();
        let reports: Vec<&crate::api::ConsumerReport> = core
            .reports
            .iter()
            .filter(|(&p, _)| pid.is_none_or(|want| want == p))
            .map(|(_, r)| &**r)
            .collect();
        if reports.is_empty() {
            return Err(match pid {
                Some(pid) => not_traced(pid),
                None => BackendError::NotFound("no process is traced".into()),
            });
        }
        reports::flamegraph(reports, "memtrace: live bytes by stack")
            .map_err(|err| BackendError::NotFound(crate::error_chain(&err)))
    }

    fn pprof(&self, pid: u32) -> Result<Vec<u8>, BackendError> {
        let core = self.shared.core.load();
        let report = core.reports.get(&pid).ok_or_else(|| not_traced(pid))?;
        reports::pprof(report, (clock::now_ms() as i64).saturating_mul(1_000_000))
            .map_err(|err| BackendError::Internal(crate::error_chain(&err)))
    }

    fn heap_profile(&self, pid: u32, kind: HeapProfile) -> Result<Vec<u8>, BackendError> {
        let core = self.shared.core.load();
        let report = core.reports.get(&pid).ok_or_else(|| not_traced(pid))?;
        reports::pprof_for_scrape(
            report,
            kind,
            (clock::now_ms() as i64).saturating_mul(1_000_000),
        )
        .map_err(|err| BackendError::Internal(crate::error_chain(&err)))
    }

    fn profiled_processes(&self) -> Vec<(u32, String)> {
        let core = self.shared.core.load();
        let alive: std::collections::HashSet<u32> = core
            .last_snapshot()
            .map(|s| s.processes.iter().map(|p| p.pid).collect())
            .unwrap_or_default();
        core.reports
            .values()
            .filter(|r| alive.contains(&r.pid))
            .map(|r| (r.pid, r.comm.clone()))
            .collect()
    }

    fn metrics(&self) -> MetricsInput {
        let shared = &self.shared;
        let config = &shared.config;
        let core = shared.core.load();
        let intake = shared.intake.load();
        let mut input = MetricsInput {
            top_k: config.metrics.top_k,
            top_k_libraries: config.metrics.top_k_libraries,
            ..MetricsInput::default()
        };
        let counters = shared.kernel_counters();
        for kind in Kind::ALL {
            input.events_by_kind[kind.index()] = shared.stats.kind_count(kind);
        }
        input.events_lost_total = counters[memtrace_common::COUNTER_RINGBUF_DROPS as usize]
            + counters[memtrace_common::COUNTER_INFLIGHT_FULL as usize];
        if config.alerting.active_webhook_url().is_some() {
            let webhook = shared.dispatcher.webhook_stats();
            input.webhook = Some(WebhookMetrics {
                sent_total: webhook.sent_total,
                failures_total: webhook.failures_total,
                dropped_total: webhook.dropped_total,
                resent_total: webhook.resent_total,
            });
        }
        if let Some(store) = &shared.store {
            input.store = Some(StoreMetrics {
                write_failures_total: store.persist_failures_total(),
                skipped_lines_total: store.corrupt_lines_total(),
            });
        }
        input.snapshots_dropped_total = intake.snapshots_dropped;
        input.heap_traces_started_total = intake.traces_started;
        input.heap_traces_stopped_total = intake.traces_stopped;
        input.heap_traces_refused_total = intake.traces_refused;
        input.heap_traces_sampled_total = intake.traces_sampled;
        let cost = crate::os::procfs::self_cost();
        input.agent_cpu_seconds_total = cost.cpu_seconds;
        input.agent_rss_bytes = cost.rss_bytes;
        // While the kernel's BPF statistics are off the run counts stand still (at 0, or where
        // they stopped): no series then.
        if bpf_stats_enabled() {
            input.bpf_programs = shared
                .programs
                .stats()
                .into_iter()
                .map(|(program, run_time_ns, runs)| BpfProgramStats {
                    program,
                    run_time_seconds_total: run_time_ns as f64 / 1e9,
                    runs_total: runs,
                })
                .collect();
        }
        if config.alerting.enabled {
            let mut counts: HashMap<(AlertType, Severity), u64> = HashMap::new();
            for alert in &core.alerts.active {
                *counts.entry((alert.kind, alert.severity)).or_default() += 1;
            }
            let mut active = Vec::new();
            for kind in AlertType::ALL {
                for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
                    active.push(AlertCount {
                        kind: kind.as_str().into(),
                        severity: severity.as_str().into(),
                        count: counts.get(&(kind, severity)).copied().unwrap_or(0),
                    });
                }
            }
            input.alerts = Some(AlertMetrics {
                active,
                suppressed: AlertType::ALL
                    .iter()
                    .map(|kind| {
                        let count = core.alerts.suppressed.by_type.get(kind).copied();
                        (kind.as_str().to_string(), count.unwrap_or(0))
                    })
                    .collect(),
            });
        }
        input.consumers_evicted_total = core.reports.values().map(|r| r.evicted_consumers).sum();
        if config.drilldown.enabled {
            input.drilldowns_active = Some(intake.drilldowns.len() as u64);
        }
        input.traced = intake
            .traced
            .iter()
            .map(|t| TracedMetric {
                pid: t.pid,
                reason: match t.reason {
                    TraceReason::Configured => "configured",
                    TraceReason::Requested => "requested",
                    TraceReason::Drilldown => "drilldown",
                }
                .to_string(),
            })
            .collect();
        if let Some(last) = core.last_snapshot() {
            input.last_snapshot_ms = Some(last.timestamp);
            input.processes = last
                .processes
                .iter()
                .map(|p| {
                    let pattern = core.patterns.get(&p.pid);
                    ProcessMetrics {
                        snapshot: p.clone(),
                        growth_rate_bytes_per_second: pattern
                            .map(|pp| pp.pattern.growth_rate * 1024.0 * 1024.0 / 60.0),
                        pattern: pattern.map(|pp| PatternMetric {
                            kind: pp.pattern.kind,
                            confidence: pp.pattern.confidence,
                        }),
                    }
                })
                .collect();
        }
        // The identities with series of their own move once per snapshot (with hysteresis).
        let mut state = self
            .metrics_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        input.selection = Some(state.select(&input));
        input
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.shared.events.subscribe()
    }
}
