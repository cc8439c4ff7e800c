//! From detected patterns to alerts: which pattern raises which alert (linear and exponential growth
//! a `pattern` alert, a leak a `leak` alert, a spike a `spike` alert), with what severity and
//! message; which alerts a pattern observes clear; and which growing processes are worth a
//! drill-down (tracing their heap for a while).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{AlertCandidate, AlertEngine, AlertEvent, AlertType, Severity, Trigger};
use crate::{
    analysis::{self, PatternType, ProcessPattern},
    attribution::ConsumerReport,
    snapshot::ProcessSnapshot,
};

/// The triggers pattern analysis raises and clears.
pub const PATTERN_TRIGGERS: [Trigger; 4] = [
    Trigger::PatternLinear,
    Trigger::PatternExponential,
    Trigger::LeakDetected,
    Trigger::SpikeDetected,
];

/// The alert type and trigger of a pattern (`None` for stable).
pub fn trigger_of(kind: PatternType) -> Option<(AlertType, Trigger)> {
    match kind {
        PatternType::Linear => Some((AlertType::Pattern, Trigger::PatternLinear)),
        PatternType::Exponential => Some((AlertType::Pattern, Trigger::PatternExponential)),
        PatternType::Leak => Some((AlertType::Leak, Trigger::LeakDetected)),
        PatternType::Spike => Some((AlertType::Spike, Trigger::SpikeDetected)),
        PatternType::Stable => None,
    }
}

/// The alert severity of a pattern's severity.
pub fn severity_of(severity: analysis::Severity) -> Severity {
    match severity {
        analysis::Severity::Low => Severity::Info,
        analysis::Severity::Medium | analysis::Severity::High => Severity::Warning,
        analysis::Severity::Critical => Severity::Critical,
    }
}

/// A growing process whose heap is not traced: tracing it for a while names what grows.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillRequest {
    pub pid: u32,
    pub comm: String,
    pub reason: String,
    /// The alert whose context receives the consumers found, when one was raised.
    pub alert_id: Option<String>,
}

/// What one analysis did to the alerts.
#[derive(Debug, Default)]
pub struct PatternOutcome {
    pub events: Vec<AlertEvent>,
    /// Confident non-stable patterns (each published as `pattern:detected`).
    pub detected: Vec<ProcessPattern>,
    pub drill: Vec<DrillRequest>,
}

/// Applies the patterns of one analysis to the engine: confident non-stable patterns raise their
/// alert, every other pattern trigger of the process is observed clear. `latest` is the last
/// snapshot of each process, `reports` the consumers of traced processes (their top five go into
/// the alert's context). Patterns of `self_pid` (the agent's own warm-up) raise nothing.
pub fn apply_patterns(
    engine: &mut AlertEngine,
    patterns: &[ProcessPattern],
    latest: &HashMap<u32, &ProcessSnapshot>,
    reports: &BTreeMap<u32, Arc<ConsumerReport>>,
    self_pid: u32,
    now_ms: u64,
) -> PatternOutcome {
    let mut out = PatternOutcome::default();
    for pattern in patterns {
        let p = &pattern.pattern;
        let confident = p.confident && p.kind != PatternType::Stable;
        let trigger = trigger_of(p.kind);
        for other in PATTERN_TRIGGERS {
            if !confident || trigger.map(|t| t.1) != Some(other) {
                out.events
                    .extend(engine.observe_clear(pattern.pid, other, now_ms));
            }
        }
        let (Some((kind, trigger)), true) = (trigger, confident) else {
            continue;
        };
        if pattern.pid == self_pid {
            continue;
        }
        out.detected.push(pattern.clone());
        let Some(process) = latest.get(&pattern.pid) else {
            continue;
        };
        let message = format!(
            "{} memory growth ({:.2} MB/min over {:.1} min, {:.0}% confidence)",
            p.kind, p.growth_rate, p.duration, p.confidence
        );
        let mut candidate =
            AlertCandidate::new(kind, severity_of(p.severity), trigger, process, message);
        candidate.recommendations = vec![p.recommendation.clone()];
        candidate.pattern = serde_json::to_value(p).ok();
        if let Some(report) = reports.get(&pattern.pid) {
            candidate.top_consumers = serde_json::to_value(report.top_consumers(5)).ok();
            candidate.library = report.libraries.first().map(|l| l.library.clone());
        }
        let reason = format!("{} growth at {:.2} MB/min", p.kind, p.growth_rate);
        match engine.raise(candidate, now_ms) {
            Some(event) => {
                let alert_id = event.alert().id.clone();
                out.events.push(event);
                if p.kind.is_growth() && !process.heap_traced {
                    out.drill.push(DrillRequest {
                        pid: pattern.pid,
                        comm: process.comm.clone(),
                        reason,
                        alert_id: Some(alert_id),
                    });
                }
            }
            None => {
                // The alert is active already (a drill-down may have had no room when it was
                // raised): a drill-down started now still reports into it.
                if matches!(p.kind, PatternType::Leak | PatternType::Linear) && !process.heap_traced
                {
                    out.drill.push(DrillRequest {
                        pid: pattern.pid,
                        comm: process.comm.clone(),
                        reason,
                        alert_id: engine.active_id(pattern.pid, trigger).map(str::to_string),
                    });
                }
            }
        }
    }
    out
}
