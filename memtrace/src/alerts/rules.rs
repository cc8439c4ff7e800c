//! From detected patterns to alerts: which pattern raises which alert, with what severity and
//! message; which conditions a pattern observes clear; and which growing processes are worth a
//! drill-down (tracing their heap for a while).
//!
//! - **Growth** (linear, exponential, leak) seen with confidence raises the growth condition
//!   (`pattern` alerts for linear and exponential growth, `leak` for a leak; one condition, so a
//!   process keeps one growth alert while its growth is classified one way or another). Growth seen
//!   below the confidence threshold neither raises nor clears it; any other pattern clears it.
//! - **Level shifts** (a spike of kind `step`) raise a `spike` alert once the new level has held
//!   for `alerting.patternFor` since the jump, and only when the jump is at least `medium` (a
//!   quarter of the level, or 5 % of the limit). The shift is remembered after it leaves the
//!   analysis window, as long as the figure stays above half the jump and the memory is not seen
//!   growing (a step followed by growth is growth). A shift that happened while the process was in
//!   its grace period (its start-up) raises nothing.
//! - **Transient spikes** (a sample or two, then back) are reported as patterns but raise no alert:
//!   no condition holds.
//! - Growth of less than [`MIN_ALERT_BYTES`] over the analysed window, and jumps smaller than that,
//!   raise nothing, whatever their shape: a heap traced since a moment ago that grew by a few
//!   kilobytes is not a leak to page anyone about.
//! - Severity is the pattern's (by risk: see `analysis::growth_severity` and
//!   `analysis::spike_severity`): `low` is `info`, `medium` and `high` are `warning`, `critical` is
//!   `critical`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    engine::StepMemory, AlertCandidate, AlertEngine, AlertEvent, AlertType, Severity, Trigger,
};
use crate::{
    analysis::{self, Metric, PatternType, ProcessPattern, SpikeKind, MB},
    attribution::ConsumerReport,
    snapshot::ProcessSnapshot,
};

/// Growth over the window, or a jump, below this raises no alert (1 MiB).
pub const MIN_ALERT_BYTES: f64 = MB;

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

/// The figure of `metric` in a snapshot.
fn metric_value(process: &ProcessSnapshot, metric: Metric) -> Option<u64> {
    match metric {
        Metric::Rss => Some(process.rss_bytes),
        Metric::HeapLive => process.heap_traced.then_some(process.heap_live_bytes),
        Metric::External => process.external_bytes,
    }
}

/// Applies the patterns of one analysis to the engine (see the module's documentation). `latest`
/// is the last snapshot of each process, `reports` the consumers of traced processes (their top
/// five go into the alert's context). Patterns of `self_pid` (the agent's own warm-up) raise
/// nothing.
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
        let pid = pattern.pid;
        let p = &pattern.pattern;
        if pid == self_pid {
            out.events
                .extend(engine.observe_clear(pid, Trigger::LeakDetected, now_ms));
            out.events
                .extend(engine.observe_clear(pid, Trigger::SpikeDetected, now_ms));
            continue;
        }
        if p.confident && p.kind != PatternType::Stable {
            out.detected.push(pattern.clone());
        }
        let process = latest.get(&pid).copied();
        apply_growth(engine, pattern, process, reports, now_ms, &mut out);
        apply_step(engine, pattern, process, now_ms, &mut out);
    }
    out
}

fn in_grace(engine: &AlertEngine, process: &ProcessSnapshot, at_ms: u64) -> bool {
    process
        .start_time_ms
        .is_some_and(|start| at_ms.saturating_sub(start) < engine.grace_ms())
}

fn apply_growth(
    engine: &mut AlertEngine,
    pattern: &ProcessPattern,
    process: Option<&ProcessSnapshot>,
    reports: &BTreeMap<u32, Arc<ConsumerReport>>,
    now_ms: u64,
    out: &mut PatternOutcome,
) {
    let p = &pattern.pattern;
    let pid = pattern.pid;
    let growth = p.kind.is_growth();
    let large_enough = p.growth_rate * p.duration * MB >= MIN_ALERT_BYTES;
    if !growth || !p.confident || !large_enough {
        out.events.extend(if growth {
            engine.observe_unsure(pid, Trigger::LeakDetected, now_ms)
        } else {
            engine.observe_clear(pid, Trigger::LeakDetected, now_ms)
        });
        return;
    }
    let (Some((kind, trigger)), Some(process)) = (trigger_of(p.kind), process) else {
        return;
    };
    let message = format!(
        "{} memory growth ({:.2} MB/min over {:.1} min, {:.0}% confidence)",
        p.kind, p.growth_rate, p.duration, p.confidence
    );
    let mut candidate =
        AlertCandidate::new(kind, severity_of(p.severity), trigger, process, message);
    candidate.recommendations = vec![p.recommendation.clone()];
    candidate.pattern = serde_json::to_value(p).ok();
    if let Some(report) = reports.get(&pid) {
        candidate.top_consumers = serde_json::to_value(report.top_consumers(5)).ok();
        candidate.library = report.libraries.first().map(|l| l.library.clone());
    }
    let reason = format!("{} growth at {:.2} MB/min", p.kind, p.growth_rate);
    // No drill-down into a process still starting up.
    let drill = !process.heap_traced && !in_grace(engine, process, now_ms);
    match engine.raise(candidate, now_ms) {
        Some(event) => {
            let alert_id = event.alert().id.clone();
            out.events.push(event);
            if drill {
                out.drill.push(DrillRequest {
                    pid,
                    comm: process.comm.clone(),
                    reason,
                    alert_id: Some(alert_id),
                });
            }
        }
        None => {
            // Pending (or held back): tracing the heap now has the consumers ready when the
            // alert is created. Active already (a drill-down may have had no room when it was
            // raised): a drill-down started now still reports into it.
            if drill && matches!(p.kind, PatternType::Leak | PatternType::Linear) {
                out.drill.push(DrillRequest {
                    pid,
                    comm: process.comm.clone(),
                    reason,
                    alert_id: engine.active_id(pid, trigger).map(str::to_string),
                });
            }
        }
    }
}

fn apply_step(
    engine: &mut AlertEngine,
    pattern: &ProcessPattern,
    process: Option<&ProcessSnapshot>,
    now_ms: u64,
    out: &mut PatternOutcome,
) {
    let p = &pattern.pattern;
    let pid = pattern.pid;
    let step_now = p.kind == PatternType::Spike && p.spike_kind == Some(SpikeKind::Step);
    if step_now && p.confident {
        if let (Some(at_ms), Some(base_bytes), Some(height_bytes)) =
            (p.spike_at, p.spike_base_bytes, p.spike_bytes)
        {
            engine.steps_mut().insert(
                pid,
                StepMemory {
                    at_ms,
                    base_bytes,
                    height_bytes,
                    metric: pattern.metric,
                    severity: severity_of(p.severity),
                    pattern: serde_json::to_value(p).unwrap_or_default(),
                },
            );
        }
    }
    let Some(step) = engine.steps_mut().get(&pid).cloned() else {
        out.events.extend(if step_now {
            engine.observe_unsure(pid, Trigger::SpikeDetected, now_ms)
        } else {
            engine.observe_clear(pid, Trigger::SpikeDetected, now_ms)
        });
        return;
    };
    let holds = process
        .and_then(|process| metric_value(process, step.metric))
        .is_some_and(|value| value >= step.base_bytes + step.height_bytes / 2);
    let start_up = process.is_some_and(|process| in_grace(engine, process, step.at_ms));
    let alerted_and_gone = !step_now && engine.is_active(pid, Trigger::SpikeDetected);
    // Growth now: what looked like a step was part of it (a step followed by growth is growth).
    let growing = p.kind.is_growth() && p.confident;
    // Kept at most long enough to have alerted (twice patternFor) and ten minutes more.
    let stale = now_ms.saturating_sub(step.at_ms)
        > engine
            .for_ms(Trigger::SpikeDetected)
            .saturating_mul(2)
            .saturating_add(600_000);
    let worth = step.severity >= Severity::Warning && step.height_bytes as f64 >= MIN_ALERT_BYTES;
    let (Some(process), true, false, false, false, true, false) = (
        process,
        holds,
        start_up,
        alerted_and_gone,
        stale,
        worth,
        growing,
    ) else {
        engine.steps_mut().remove(&pid);
        out.events
            .extend(engine.observe_clear(pid, Trigger::SpikeDetected, now_ms));
        return;
    };
    let held_s = now_ms.saturating_sub(step.at_ms) / 1000;
    let message = format!(
        "Sudden memory increase of {:.1} MB (from {:.1} MB, {}) that has held for {held_s} s",
        step.height_bytes as f64 / MB,
        step.base_bytes as f64 / MB,
        step.metric
    );
    let mut candidate = AlertCandidate::new(
        AlertType::Spike,
        step.severity,
        Trigger::SpikeDetected,
        process,
        message,
    );
    candidate.since_ms = Some(step.at_ms);
    candidate.recommendations = vec![step.pattern["recommendation"]
        .as_str()
        .unwrap_or("Look for a large allocation that is kept")
        .to_owned()];
    candidate.pattern = Some(step.pattern.clone());
    out.events.extend(engine.raise(candidate, now_ms));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::{detect_pattern, Pattern, PatternConfig},
        config::{AlertingConfig, ThresholdsConfig},
    };

    const MIB: u64 = 1 << 20;
    const T0: u64 = 1_700_000_000_000;
    const SEC: u64 = 1000;

    fn engine() -> AlertEngine {
        AlertEngine::with_seed(&ThresholdsConfig::default(), &AlertingConfig::default(), 1)
    }

    fn process(pid: u32, rss: u64, start_ms: u64) -> ProcessSnapshot {
        ProcessSnapshot {
            pid,
            comm: format!("p{pid}"),
            rss_bytes: rss,
            start_time_ms: Some(start_ms),
            limit_bytes: Some(8192 * MIB),
            ..ProcessSnapshot::default()
        }
    }

    fn process_pattern(pid: u32, pattern: Pattern) -> ProcessPattern {
        ProcessPattern {
            pid,
            comm: format!("p{pid}"),
            metric: Metric::Rss,
            pattern,
            libraries: Vec::new(),
        }
    }

    /// The pattern of the 20 one-second samples of `rss(second)` ending at `end`.
    fn pattern_at(end: u64, rss: &dyn Fn(u64) -> u64) -> Pattern {
        let samples: Vec<(u64, u64)> = (end.saturating_sub(19)..=end)
            .map(|s| (T0 + s * SEC, rss(s)))
            .collect();
        let config = PatternConfig {
            min_data_points: 5,
            ..PatternConfig::default()
        };
        detect_pattern(&samples, &config, Some(8192 * MIB)).expect("enough samples")
    }

    /// Runs the analysis every `every` seconds from 5 to `to` over a process whose RSS is
    /// `rss(second)`, started `age_s` seconds before T0; returns the alerts created.
    fn watch(
        e: &mut AlertEngine,
        to: u64,
        every: usize,
        age_s: u64,
        rss: &dyn Fn(u64) -> u64,
    ) -> Vec<(u64, crate::alerts::Alert)> {
        let mut created = Vec::new();
        for s in (19..=to).step_by(every) {
            let p = process(7, rss(s), T0 - age_s * SEC);
            let pattern = process_pattern(7, pattern_at(s, rss));
            let latest = HashMap::from([(7, &p)]);
            let out = apply_patterns(e, &[pattern], &latest, &BTreeMap::new(), 1, T0 + s * SEC);
            for event in out.events {
                if let AlertEvent::Created(a) = event {
                    created.push((s, a));
                }
            }
        }
        created
    }

    /// A steady leak in an old process alerts once its growth has held for patternFor (60 s),
    /// and one alert stays while the growth goes on.
    #[test]
    fn a_leak_alerts_after_holding_for_pattern_for() {
        let mut e = engine();
        let alerts = watch(&mut e, 200, 5, 3600, &|s| (100 + 3 * s) * MIB);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        // First analysed at 19 s, held from then: alerts at 79 s.
        assert_eq!(alerts[0].0, 79);
        assert!(matches!(
            alerts[0].1.kind,
            AlertType::Leak | AlertType::Pattern
        ));
        assert!(alerts[0].1.context.pattern.is_some());
    }

    /// A process that grows fast at start and then idles is not alerted on: its growth is over
    /// before its patternFor, and within its grace period.
    #[test]
    fn start_up_growth_then_idle_raises_nothing() {
        let mut e = engine();
        let burst = |s: u64| (2 + 12 * s.min(5)) * MIB;
        assert!(watch(&mut e, 600, 5, 0, &burst).is_empty());
        // Also when it grows for 40 s.
        let mut e = engine();
        let longer = |s: u64| (2 + 3 * s.min(40)) * MIB;
        assert!(watch(&mut e, 600, 5, 0, &longer).is_empty());
    }

    /// A jump that stays (33 MB to 333 MB) alerts as a spike once the new level has held for
    /// patternFor since the jump, even when the analysis window (20 s here) is shorter; a square
    /// wave does not.
    #[test]
    fn a_level_shift_that_holds_alerts_once() {
        let mut e = engine();
        let step = |s: u64| if s >= 100 { 333 * MIB } else { 33 * MIB } + (s % 3) * MIB / 10;
        let alerts = watch(&mut e, 400, 5, 3600, &step);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let (at, alert) = &alerts[0];
        assert_eq!(*at, 164, "the first analysis 60 s after the jump");
        assert_eq!(alert.kind, AlertType::Spike);
        assert_eq!(alert.severity, Severity::Warning);
        assert!(
            alert
                .message
                .contains("Sudden memory increase of 300.0 MB (from 33.1 MB, rss)"),
            "{}",
            alert.message
        );
        assert_eq!(alert.context.pattern.as_ref().unwrap()["spikeKind"], "step");

        let mut e = engine();
        let square = |s: u64| {
            if (s / 30) % 2 == 1 {
                333 * MIB
            } else {
                33 * MIB
            }
        };
        let alerts = watch(&mut e, 400, 5, 3600, &square);
        assert!(alerts.is_empty(), "{alerts:?}");
    }

    /// A leak whose snapshots came irregularly (one interval catching up a stall) raises its growth
    /// alert, never a spike, even with no `for:` delay.
    #[test]
    fn a_stall_in_a_leak_is_not_a_level_shift() {
        let alerting = AlertingConfig::default().immediate();
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default(), &alerting, 1);
        let leak = |s: u64| (20 + 20 * s + if s >= 60 { 40 } else { 0 }) * MIB;
        let alerts = watch(&mut e, 200, 1, 3600, &leak);
        assert!(!alerts.is_empty());
        assert!(
            alerts.iter().all(|(_, a)| a.kind != AlertType::Spike),
            "{alerts:#?}"
        );
    }

    /// A jump during the process's start-up (its grace period) raises nothing.
    #[test]
    fn a_start_up_jump_raises_nothing() {
        let mut e = engine();
        let step = |s: u64| if s >= 30 { 300 * MIB } else { 2 * MIB };
        assert!(watch(&mut e, 400, 5, 0, &step).is_empty());
    }

    /// A heap traced a moment ago that grows by kilobytes is not alerted on; the same shape in
    /// megabytes is.
    #[test]
    fn tiny_growth_and_jumps_raise_nothing() {
        let mut e = engine();
        let kilobytes = |s: u64| 64 * 1024 + s * 2048;
        assert!(watch(&mut e, 300, 5, 3600, &kilobytes).is_empty());
        let mut e = engine();
        let jump = |s: u64| if s >= 100 { 600 * 1024 } else { 100 * 1024 };
        assert!(watch(&mut e, 400, 5, 3600, &jump).is_empty());
        let mut e = engine();
        let megabytes = |s: u64| 64 * MIB + s * 2 * MIB;
        assert_eq!(watch(&mut e, 300, 5, 3600, &megabytes).len(), 1);
    }

    /// Transient spikes are patterns, not alerts.
    #[test]
    fn transient_spikes_raise_nothing() {
        let mut e = engine();
        let spikes = |s: u64| if s % 40 == 25 { 600 * MIB } else { 200 * MIB };
        assert!(watch(&mut e, 400, 5, 3600, &spikes).is_empty());
    }

    #[test]
    fn the_agents_own_patterns_raise_nothing() {
        let mut e = engine();
        let rss = |s: u64| (100 + 3 * s) * MIB;
        for s in (19..=200).step_by(5) {
            let p = process(1, rss(s), T0 - 3600 * SEC);
            let pattern = process_pattern(1, pattern_at(s, &rss));
            let latest = HashMap::from([(1, &p)]);
            let out = apply_patterns(
                &mut e,
                &[pattern],
                &latest,
                &BTreeMap::new(),
                1,
                T0 + s * SEC,
            );
            assert!(out.events.is_empty() && out.detected.is_empty());
        }
    }
}
