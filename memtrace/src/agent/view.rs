//! What each half of the agent publishes after every change, and the answers computed from it.
//! Views are immutable: a reader holds one as long as it needs and never waits for a writer.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    accounting::Operation,
    analysis::{PatternType, ProcessPattern},
    api::{
        Alerts, ConsumerReport, Consumers, Drilldown, Growth, GrowthRow, HostSnapshot,
        ProcessConsumer, TracedProcess,
    },
    snapshot::ProcessSnapshot,
};

/// What the intake publishes: which processes are traced and why.
#[derive(Clone, Debug, Default)]
pub struct IntakeView {
    /// By pid.
    pub traced: Vec<TracedProcess>,
    pub drilldowns: Vec<Drilldown>,
    pub drilldowns_total: u64,
    /// Snapshots not taken because the core was behind.
    pub snapshots_dropped: u64,
    /// Heap tracings started and stopped since start.
    pub traces_started: u64,
    pub traces_stopped: u64,
    /// Processes let go for their CPU budget, and switched to sampling, since start.
    pub traces_refused: u64,
    pub traces_sampled: u64,
    /// The latest processes let go for their budget, most recent last.
    pub refusals: Vec<crate::api::TraceRefusal>,
    /// Start time (clock ticks after boot) of each traced process: with the pid, its identity.
    pub start_times: BTreeMap<u32, u64>,
}

impl IntakeView {
    pub fn is_traced(&self, pid: u32) -> bool {
        self.traced.iter().any(|t| t.pid == pid)
    }

    pub fn drilldown(&self, pid: u32) -> Option<&Drilldown> {
        self.drilldowns.iter().find(|d| d.pid == pid)
    }
}

/// What the core publishes: history, patterns, alerts, consumers.
#[derive(Clone, Debug, Default)]
pub struct CoreView {
    /// Snapshots in memory, oldest first.
    pub history: Vec<Arc<HostSnapshot>>,
    /// The latest pattern of each process.
    pub patterns: HashMap<u32, ProcessPattern>,
    /// When the last analysis ran (ms since the Unix epoch).
    pub last_analysis: Option<u64>,
    pub alerts: Alerts,
    /// Consumers of traced processes (and the last ones of processes no longer traced), by pid.
    pub reports: BTreeMap<u32, Arc<ConsumerReport>>,
    /// The last figures of recently exited processes, most recent last.
    pub exited: Vec<ProcessSnapshot>,
    /// Recent allocations of at least `tracking.minAllocationSize`, oldest first.
    pub operations: Arc<Vec<Operation>>,
}

impl CoreView {
    pub fn last_snapshot(&self) -> Option<&Arc<HostSnapshot>> {
        self.history.last()
    }

    /// Patterns, most concerning first (confident non-stable ones by severity), then by pid.
    pub fn patterns_by_concern(&self) -> Vec<ProcessPattern> {
        let mut patterns: Vec<ProcessPattern> = self.patterns.values().cloned().collect();
        patterns.sort_by(|a, b| {
            let concern = |p: &ProcessPattern| {
                (
                    p.pattern.confident && p.pattern.kind != PatternType::Stable,
                    p.pattern.severity,
                )
            };
            concern(b)
                .cmp(&concern(a))
                .then(b.pattern.confidence.total_cmp(&a.pattern.confidence))
                .then(a.pid.cmp(&b.pid))
        });
        patterns
    }

    /// The consumers of one process, or of every process with a report.
    pub fn consumers(&self, pid: Option<u32>) -> Consumers {
        let processes: Vec<ConsumerReport> = self
            .reports
            .iter()
            .filter(|(&p, _)| pid.is_none_or(|want| want == p))
            .map(|(_, r)| (**r).clone())
            .collect();
        let mut consumers: Vec<ProcessConsumer> = processes
            .iter()
            .flat_map(|r| {
                r.consumers.iter().map(|c| ProcessConsumer {
                    pid: r.pid,
                    comm: r.comm.clone(),
                    consumer: c.clone(),
                })
            })
            .collect();
        consumers.sort_by(|a, b| {
            b.consumer
                .allocated_memory
                .cmp(&a.consumer.allocated_memory)
                .then(a.pid.cmp(&b.pid))
                .then(a.consumer.id.cmp(&b.consumer.id))
        });
        Consumers {
            timestamp: self.last_snapshot().map_or(0, |s| s.timestamp),
            processes,
            consumers,
        }
    }

    /// Growth over the last `minutes` of history.
    pub fn growth(&self, minutes: u32) -> Growth {
        growth(&self.history, minutes)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Per-process growth over the last `minutes` of `history` (oldest first): each process from the
/// first snapshot of the window it appears in to the last snapshot.
pub fn growth(history: &[Arc<HostSnapshot>], minutes: u32) -> Growth {
    let Some(last) = history.last() else {
        return Growth {
            minutes,
            from: None,
            to: None,
            processes: Vec::new(),
        };
    };
    let since = last
        .timestamp
        .saturating_sub(u64::from(minutes).saturating_mul(60_000));
    let window: Vec<&Arc<HostSnapshot>> = history.iter().filter(|s| s.timestamp >= since).collect();
    let mut first: HashMap<u32, (u64, &ProcessSnapshot)> = HashMap::new();
    for snapshot in &window {
        for p in &snapshot.processes {
            first.entry(p.pid).or_insert((snapshot.timestamp, p));
        }
    }
    let mut processes: Vec<GrowthRow> = last
        .processes
        .iter()
        .filter_map(|p| {
            let (t0, p0) = first.get(&p.pid)?;
            let span = last.timestamp.saturating_sub(*t0) as f64 / 60_000.0;
            let rate = |delta: i64| {
                if span > 0.0 {
                    delta as f64 / MIB / span
                } else {
                    0.0
                }
            };
            let delta_rss = signed_delta(p0.rss_bytes, p.rss_bytes);
            let heap = (p.heap_traced && p0.heap_traced)
                .then_some((p0.heap_live_bytes, p.heap_live_bytes));
            Some(GrowthRow {
                pid: p.pid,
                comm: p.comm.clone(),
                start_rss_bytes: p0.rss_bytes,
                end_rss_bytes: p.rss_bytes,
                delta_rss_bytes: delta_rss,
                start_heap_bytes: heap.map(|h| h.0),
                end_heap_bytes: heap.map(|h| h.1),
                delta_heap_bytes: heap.map(|h| signed_delta(h.0, h.1)),
                rss_growth_mb_per_minute: rate(delta_rss),
                heap_growth_mb_per_minute: heap.map(|h| rate(signed_delta(h.0, h.1))),
                minutes: span,
            })
        })
        .collect();
    processes.sort_by(|a, b| {
        b.delta_rss_bytes
            .cmp(&a.delta_rss_bytes)
            .then(a.pid.cmp(&b.pid))
    });
    Growth {
        minutes,
        from: window.first().map(|s| s.timestamp),
        to: Some(last.timestamp),
        processes,
    }
}

fn signed_delta(from: u64, to: u64) -> i64 {
    let delta = i128::from(to) - i128::from(from);
    i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(ts: u64, processes: &[(u32, u64, Option<u64>)]) -> Arc<HostSnapshot> {
        Arc::new(HostSnapshot {
            timestamp: ts,
            processes: processes
                .iter()
                .map(|&(pid, rss, heap)| ProcessSnapshot {
                    pid,
                    comm: format!("p{pid}"),
                    rss_bytes: rss,
                    heap_traced: heap.is_some(),
                    heap_live_bytes: heap.unwrap_or(0),
                    ..ProcessSnapshot::default()
                })
                .collect(),
            ..HostSnapshot::default()
        })
    }

    #[test]
    fn growth_over_the_window_per_process() {
        let mb = 1 << 20;
        let history = vec![
            snapshot(0, &[(1, 10 * mb, None)]),
            snapshot(60_000, &[(1, 20 * mb, None), (2, 5 * mb, Some(mb))]),
            snapshot(120_000, &[(1, 40 * mb, None), (2, 4 * mb, Some(3 * mb))]),
        ];
        let g = growth(&history, 60);
        assert_eq!((g.from, g.to), (Some(0), Some(120_000)));
        assert_eq!(g.processes.len(), 2);
        let p1 = &g.processes[0];
        assert_eq!(p1.pid, 1);
        assert_eq!(p1.delta_rss_bytes, 30 * mb as i64);
        assert!((p1.rss_growth_mb_per_minute - 15.0).abs() < 1e-9);
        assert_eq!(p1.start_heap_bytes, None);
        // Seen for one minute only; shrinking RSS is a negative delta, the heap grew.
        let p2 = &g.processes[1];
        assert_eq!(p2.delta_rss_bytes, -(mb as i64));
        assert_eq!(p2.delta_heap_bytes, Some(2 * mb as i64));
        assert!((p2.minutes - 1.0).abs() < 1e-9);
        // A one-minute window only sees the last two snapshots.
        let g = growth(&history, 1);
        assert_eq!(g.from, Some(60_000));
        assert_eq!(g.processes[0].delta_rss_bytes, 20 * mb as i64);
        // Nothing yet.
        assert!(growth(&[], 5).processes.is_empty());
    }

    #[test]
    fn concerning_patterns_come_first() {
        use crate::analysis::{Metric, Pattern, Severity};
        let pattern = |pid: u32, kind, confident, severity, confidence| ProcessPattern {
            pid,
            comm: String::new(),
            metric: Metric::Rss,
            pattern: Pattern {
                kind,
                confidence,
                growth_rate: 0.0,
                duration: 1.0,
                severity,
                recommendation: String::new(),
                confident,
                r2: 0.0,
                samples: 10,
                current_bytes: 0,
                doubling_minutes: None,
                spike_score: None,
                spike_bytes: None,
                spike_kind: None,
                spike_at: None,
                spike_base_bytes: None,
                forecast_minutes_to_limit: None,
                limit_bytes: None,
            },
            libraries: Vec::new(),
        };
        let mut view = CoreView::default();
        for p in [
            pattern(1, PatternType::Stable, true, Severity::Low, 99.0),
            pattern(2, PatternType::Leak, true, Severity::High, 80.0),
            pattern(3, PatternType::Linear, false, Severity::Critical, 50.0),
            pattern(4, PatternType::Exponential, true, Severity::Critical, 75.0),
        ] {
            view.patterns.insert(p.pid, p);
        }
        let order: Vec<u32> = view.patterns_by_concern().iter().map(|p| p.pid).collect();
        assert_eq!(order, [4, 2, 3, 1]);
    }
}
