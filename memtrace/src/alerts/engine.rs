//! The alert engine: turns threshold checks and detections into alert creations and resolutions.
//!
//! Rules:
//! - at most one active alert per (pid, trigger): raising a condition that already has an active alert
//!   refreshes that alert's `metrics` and `message` (current figures) and emits nothing;
//! - at most `alerting.maxAlertsPerHour` alerts are created in any sliding hour, across all processes;
//!   candidates over the limit are not created, only counted ([`AlertEngine::suppressed_total`]). A
//!   condition that persists is raised again on the next check, so it is created once the hour has room;
//! - an active alert is resolved automatically (`resolvedBy: "auto"`) once its condition has been
//!   observed clear continuously for `alerting.autoResolveAfter`, or when its process is gone;
//! - `alerting.enabled = false`: nothing is ever created.
//!
//! The engine never reads a clock: every call takes `now_ms` (milliseconds since the Unix epoch).

use std::{
    collections::{hash_map::RandomState, HashMap, VecDeque},
    hash::BuildHasher,
};

use serde_json::Value;

use super::{
    Alert, AlertContext, AlertError, AlertEvent, AlertType, ResolvedBy, Severity, Trigger,
};
use crate::{
    config::{AlertingConfig, ThresholdsConfig},
    snapshot::{LibrarySnapshot, ProcessSnapshot},
};

const HOUR_MS: u64 = 60 * 60 * 1000;
const MIB: f64 = 1024.0 * 1024.0;
/// Resolved alerts kept in memory for [`AlertEngine::all_recent`].
const RESOLVED_HISTORY: usize = 1000;
/// Libraries listed in `context.topConsumers` of threshold alerts.
const TOP_CONSUMERS: usize = 5;

/// An alert the caller (pattern analysis, leak and spike detection) wants raised.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertCandidate {
    pub kind: AlertType,
    pub severity: Severity,
    pub trigger: Trigger,
    pub pid: u32,
    pub comm: String,
    /// Without the `pid N (comm): ` prefix, which the engine adds.
    pub message: String,
    /// The process snapshot JSON.
    pub metrics: Value,
    pub threshold: Option<f64>,
    pub recommendations: Vec<String>,
    pub library: Option<String>,
    pub top_consumers: Option<Value>,
    pub pattern: Option<Value>,
}

impl AlertCandidate {
    /// A candidate with the required fields; the optional context fields can be set afterwards.
    pub fn new(
        kind: AlertType,
        severity: Severity,
        trigger: Trigger,
        process: &ProcessSnapshot,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            severity,
            trigger,
            pid: process.pid,
            comm: process.comm.clone(),
            message: message.into(),
            metrics: serde_json::to_value(process).unwrap_or(Value::Null),
            threshold: None,
            recommendations: Vec::new(),
            library: None,
            top_consumers: None,
            pattern: None,
        }
    }
}

struct Active {
    alert: Alert,
    /// Since when the condition has been observed clear without interruption.
    clear_since: Option<u64>,
}

pub struct AlertEngine {
    thresholds: ThresholdsConfig,
    enabled: bool,
    max_per_hour: usize,
    auto_resolve_after_ms: u64,
    active: HashMap<(u32, Trigger), Active>,
    /// Oldest first.
    resolved: VecDeque<Alert>,
    /// Creation times of alerts in the sliding hour, ascending.
    created: VecDeque<u64>,
    suppressed_total: u64,
    rng: u64,
}

impl AlertEngine {
    pub fn new(thresholds: &ThresholdsConfig, alerting: &AlertingConfig) -> Self {
        Self::with_seed(
            thresholds,
            alerting,
            RandomState::new().hash_one(0x6d656d7472616365_u64),
        )
    }

    /// An engine whose alert ids are reproducible (tests).
    pub fn with_seed(thresholds: &ThresholdsConfig, alerting: &AlertingConfig, seed: u64) -> Self {
        Self {
            thresholds: thresholds.clone(),
            enabled: alerting.enabled,
            max_per_hour: usize::try_from(alerting.max_alerts_per_hour).unwrap_or(usize::MAX),
            auto_resolve_after_ms: alerting.auto_resolve_after.saturating_mul(1000),
            active: HashMap::new(),
            resolved: VecDeque::new(),
            created: VecDeque::new(),
            suppressed_total: 0,
            rng: seed,
        }
    }

    /// Evaluates the four thresholds for one process: external memory and external ratio (where the
    /// heap is traced and the figure is known), RSS, and the growth rate (where the caller knows it,
    /// in MiB per minute). Exceeded thresholds raise alerts; thresholds observed clear count toward
    /// auto-resolution. A pid whose active alerts were raised under another command name (pid reuse,
    /// exec) first has those alerts resolved.
    pub fn check_thresholds(
        &mut self,
        process: &ProcessSnapshot,
        growth_rate_mb_per_min: Option<f64>,
        now_ms: u64,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        // An empty name (the process raced away before it was read) proves nothing.
        let reused = !process.comm.is_empty()
            && self.active.values().any(|a| {
                a.alert.context.pid == process.pid && a.alert.context.comm != process.comm
            });
        if reused {
            events.extend(self.process_gone(process.pid, now_ms));
        }
        if !self.enabled {
            return events;
        }

        let t = &self.thresholds;
        let checks = [
            (
                Trigger::ExternalMemoryThreshold,
                process.external_bytes.map(|b| b as f64 / MIB),
                t.external_mb,
            ),
            (
                Trigger::ExternalRatioThreshold,
                process.external_ratio,
                t.external_ratio,
            ),
            (
                Trigger::RssThreshold,
                Some(process.rss_bytes as f64 / MIB),
                t.rss_mb,
            ),
            (
                Trigger::GrowthRateThreshold,
                growth_rate_mb_per_min,
                t.growth_rate_mb,
            ),
        ];
        let mut metrics = None;
        for (trigger, value, threshold) in checks {
            let Some(value) = value else { continue };
            if value > threshold {
                let metrics = metrics
                    .get_or_insert_with(|| serde_json::to_value(process).unwrap_or(Value::Null))
                    .clone();
                let candidate = threshold_candidate(process, trigger, value, threshold, metrics);
                events.extend(self.raise(candidate, now_ms));
            } else {
                events.extend(self.observe_clear(process.pid, trigger, now_ms));
            }
        }
        events
    }

    /// Raises an alert. Returns the creation event, or `None` when alerting is disabled, an alert for
    /// the same (pid, trigger) is already active (it is refreshed instead), or the hourly limit is
    /// reached (counted in [`AlertEngine::suppressed_total`]).
    pub fn raise(&mut self, candidate: AlertCandidate, now_ms: u64) -> Option<AlertEvent> {
        if !self.enabled {
            return None;
        }
        let message = format!(
            "pid {} ({}): {}",
            candidate.pid, candidate.comm, candidate.message
        );
        if let Some(active) = self.active.get_mut(&(candidate.pid, candidate.trigger)) {
            active.clear_since = None;
            active.alert.metrics = candidate.metrics;
            active.alert.message = message;
            return None;
        }

        let hour_ago = now_ms.saturating_sub(HOUR_MS);
        while self.created.front().is_some_and(|&t| t <= hour_ago) {
            self.created.pop_front();
        }
        if self.created.len() >= self.max_per_hour {
            self.suppressed_total += 1;
            log::debug!("alert suppressed (maxAlertsPerHour reached): {message}");
            return None;
        }

        let alert = Alert {
            id: self.new_id(now_ms),
            timestamp: now_ms,
            kind: candidate.kind,
            severity: candidate.severity,
            message,
            metrics: candidate.metrics,
            context: AlertContext {
                trigger: candidate.trigger,
                threshold: candidate.threshold,
                recommendations: candidate.recommendations,
                pid: candidate.pid,
                comm: candidate.comm,
                library: candidate.library,
                top_consumers: candidate.top_consumers,
                pattern: candidate.pattern,
            },
            resolved: false,
            resolved_at: None,
            resolved_by: None,
        };
        // Keep `created` ascending even if the caller's clock stepped back.
        let at = self.created.partition_point(|&t| t <= now_ms);
        self.created.insert(at, now_ms);
        self.active.insert(
            (alert.context.pid, alert.context.trigger),
            Active {
                alert: alert.clone(),
                clear_since: None,
            },
        );
        Some(AlertEvent::Created(alert))
    }

    /// Reports that the condition (pid, trigger) is currently clear. Resolves its active alert once the
    /// condition has been clear continuously for `alerting.autoResolveAfter`.
    pub fn observe_clear(&mut self, pid: u32, trigger: Trigger, now_ms: u64) -> Option<AlertEvent> {
        let active = self.active.get_mut(&(pid, trigger))?;
        let since = *active.clear_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < self.auto_resolve_after_ms {
            return None;
        }
        self.finish(pid, trigger, ResolvedBy::Auto, now_ms)
            .map(AlertEvent::Resolved)
    }

    /// The process exited: resolves all its active alerts automatically.
    pub fn process_gone(&mut self, pid: u32, now_ms: u64) -> Vec<AlertEvent> {
        let mut triggers: Vec<Trigger> = self
            .active
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|&(_, t)| t)
            .collect();
        triggers.sort_by_key(|t| t.as_str());
        triggers
            .into_iter()
            .filter_map(|t| self.finish(pid, t, ResolvedBy::Auto, now_ms))
            .map(AlertEvent::Resolved)
            .collect()
    }

    /// Resolves an active alert by id (`resolvedBy: "manual"`). The caller delivers
    /// `AlertEvent::Resolved(alert)` to the channels like any other event.
    pub fn resolve(&mut self, id: &str, now_ms: u64) -> Result<Alert, AlertError> {
        let key = self
            .active
            .iter()
            .find(|(_, a)| a.alert.id == id)
            .map(|(k, _)| *k);
        if let Some((pid, trigger)) = key {
            if let Some(alert) = self.finish(pid, trigger, ResolvedBy::Manual, now_ms) {
                return Ok(alert);
            }
        }
        if self.resolved.iter().any(|a| a.id == id) {
            return Err(AlertError::AlreadyResolved(id.to_owned()));
        }
        Err(AlertError::NotFound(id.to_owned()))
    }

    /// Adds what a drill-down found (top consumers, library) to an active alert's context.
    /// Returns the updated alert, or `None` when it is no longer active.
    pub fn annotate(
        &mut self,
        id: &str,
        top_consumers: serde_json::Value,
        library: Option<String>,
    ) -> Option<Alert> {
        let active = self.active.values_mut().find(|a| a.alert.id == id)?;
        active.alert.context.top_consumers = Some(top_consumers);
        if library.is_some() {
            active.alert.context.library = library;
        }
        Some(active.alert.clone())
    }

    /// The id of the active alert for (pid, trigger), if there is one.
    pub fn active_id(&self, pid: u32, trigger: Trigger) -> Option<&str> {
        self.active
            .get(&(pid, trigger))
            .map(|a| a.alert.id.as_str())
    }

    /// Active alerts, newest first.
    pub fn active(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().map(|a| &a.alert).collect();
        sort_newest_first(&mut v);
        v
    }

    /// Active and resolved alerts, newest first, at most `limit`.
    pub fn all_recent(&self, limit: usize) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self
            .active
            .values()
            .map(|a| &a.alert)
            .chain(self.resolved.iter())
            .collect();
        sort_newest_first(&mut v);
        v.truncate(limit);
        v
    }

    /// Alert candidates not created because of `alerting.maxAlertsPerHour`, since start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    /// Loads alerts saved before a restart (`Store::load_alerts`): unresolved ones become active again
    /// (their conditions start un-observed), resolved ones go to the history, and all creation times
    /// count toward the hourly limit.
    pub fn restore(&mut self, alerts: Vec<Alert>) {
        let mut alerts = alerts;
        alerts.sort_by_key(|a| a.timestamp);
        for alert in alerts {
            let at = self.created.partition_point(|&t| t <= alert.timestamp);
            self.created.insert(at, alert.timestamp);
            if alert.resolved {
                self.push_resolved(alert);
                continue;
            }
            let key = (alert.context.pid, alert.context.trigger);
            if let Some(older) = self.active.insert(
                key,
                Active {
                    alert,
                    clear_since: None,
                },
            ) {
                log::warn!(
                    "restored two active alerts for pid {} trigger {}: keeping the newer, dropping {}",
                    key.0,
                    key.1.as_str(),
                    older.alert.id
                );
            }
        }
    }

    /// Resolves (automatically) the active alerts whose process is gone: `alive(alert)` says whether
    /// the process the alert is about still runs (for restored alerts at start:
    /// `os::procfs::process_alive_since(pid, comm, timestamp)`, which also tells a reused PID).
    pub fn resolve_gone(&mut self, alive: impl Fn(&Alert) -> bool, now_ms: u64) -> Vec<AlertEvent> {
        let mut gone: Vec<(u32, Trigger)> = self
            .active
            .iter()
            .filter(|(_, a)| !alive(&a.alert))
            .map(|(&key, _)| key)
            .collect();
        gone.sort_by_key(|&(pid, t)| (pid, t.as_str()));
        gone.into_iter()
            .filter_map(|(pid, t)| self.finish(pid, t, ResolvedBy::Auto, now_ms))
            .map(AlertEvent::Resolved)
            .collect()
    }

    fn finish(&mut self, pid: u32, trigger: Trigger, by: ResolvedBy, now_ms: u64) -> Option<Alert> {
        let mut alert = self.active.remove(&(pid, trigger))?.alert;
        alert.resolved = true;
        alert.resolved_at = Some(now_ms);
        alert.resolved_by = Some(by);
        self.push_resolved(alert.clone());
        Some(alert)
    }

    fn push_resolved(&mut self, alert: Alert) {
        if self.resolved.len() >= RESOLVED_HISTORY {
            self.resolved.pop_front();
        }
        self.resolved.push_back(alert);
    }

    /// `alert_<ms>_<9 lowercase alphanumerics>`, like the origin's
    /// `Math.random().toString(36).substr(2, 9)`.
    fn new_id(&mut self, now_ms: u64) -> String {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut x = self.next_random();
        let mut suffix = String::with_capacity(9);
        for _ in 0..9 {
            suffix.push(char::from(ALPHABET[(x % 36) as usize]));
            x /= 36;
        }
        format!("alert_{now_ms}_{suffix}")
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn sort_newest_first(v: &mut [&Alert]) {
    v.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then_with(|| b.id.cmp(&a.id)));
}

/// Warning, or critical at twice the threshold or more.
fn threshold_severity(value: f64, threshold: f64) -> Severity {
    if value >= 2.0 * threshold {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

fn threshold_candidate(
    process: &ProcessSnapshot,
    trigger: Trigger,
    value: f64,
    threshold: f64,
    metrics: Value,
) -> AlertCandidate {
    let (message, recommendations): (String, &[&str]) = match trigger {
        Trigger::ExternalMemoryThreshold => (
            format!("External memory ({value:.1}MB) exceeds threshold ({threshold}MB)"),
            &[
                "Check native libraries for allocations that are never freed (see topConsumers)",
                "Review connection pools and caches",
                "Examine file and mapping cleanup (mmap without munmap, unclosed files)",
            ],
        ),
        Trigger::ExternalRatioThreshold => (
            format!("External/heap ratio ({value:.2}) exceeds threshold ({threshold})"),
            &[
                "Most memory is outside the traced heap: inspect mmap'd regions and other allocators",
                "Check libraries that allocate outside malloc (custom allocators, mmap)",
            ],
        ),
        Trigger::RssThreshold => (
            format!("RSS ({value:.1}MB) exceeds threshold ({threshold}MB)"),
            &[
                "Check the process's heap and mappings for growth",
                "Consider a memory limit (cgroup) for this service",
            ],
        ),
        _ => (
            format!("Memory growth rate ({value:.1}MB/min) exceeds threshold ({threshold}MB/min)"),
            &[
                "Follow the growth pattern to tell a leak from a warm-up",
                "Compare top consumers over time to find the growing one",
            ],
        ),
    };
    let mut libraries: Vec<&LibrarySnapshot> = process.libraries.iter().collect();
    libraries.sort_by_key(|l| std::cmp::Reverse(l.live_bytes));
    libraries.truncate(TOP_CONSUMERS);
    AlertCandidate {
        kind: AlertType::Threshold,
        severity: threshold_severity(value, threshold),
        trigger,
        pid: process.pid,
        comm: process.comm.clone(),
        message,
        metrics,
        threshold: Some(threshold),
        recommendations: recommendations.iter().map(|s| (*s).to_owned()).collect(),
        library: libraries.first().map(|l| l.library.clone()),
        top_consumers: (!libraries.is_empty())
            .then(|| serde_json::to_value(&libraries).unwrap_or(Value::Null)),
        pattern: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;
    const T0: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn alerting() -> AlertingConfig {
        AlertingConfig::default()
    }

    fn engine() -> AlertEngine {
        AlertEngine::with_seed(&ThresholdsConfig::default(), &alerting(), 42)
    }

    fn proc(pid: u32, comm: &str, rss_mb: u64) -> ProcessSnapshot {
        ProcessSnapshot {
            pid,
            comm: comm.into(),
            rss_bytes: rss_mb * MB,
            ..Default::default()
        }
    }

    /// A traced process with the given RSS and live heap.
    fn traced(pid: u32, rss: u64, heap: u64) -> ProcessSnapshot {
        let mut p = ProcessSnapshot {
            pid,
            comm: "node".into(),
            rss_bytes: rss,
            heap_traced: true,
            heap_live_bytes: heap,
            ..Default::default()
        };
        p.derive_external();
        p
    }

    fn created(events: &[AlertEvent]) -> Vec<&Alert> {
        events
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Created(a) => Some(a),
                AlertEvent::Resolved(_) => None,
            })
            .collect()
    }

    #[test]
    fn external_threshold_fires_with_message_trigger_severity() {
        let mut e = engine();
        // 95.2 MiB external over 100 MiB heap: external and ratio below 1.5... ratio 0.95.
        let p = traced(1234, 195 * MB + MB / 5, 100 * MB);
        let events = e.check_thresholds(&p, None, T0);
        let alerts = created(&events);
        assert_eq!(alerts.len(), 1, "{events:?}");
        let a = alerts[0];
        assert_eq!(a.kind, AlertType::Threshold);
        assert_eq!(a.severity, Severity::Warning);
        assert_eq!(a.context.trigger, Trigger::ExternalMemoryThreshold);
        assert_eq!(a.context.threshold, Some(80.0));
        assert_eq!(a.context.pid, 1234);
        assert_eq!(a.context.comm, "node");
        assert_eq!(
            a.message,
            "pid 1234 (node): External memory (95.2MB) exceeds threshold (80MB)"
        );
        assert!(!a.context.recommendations.is_empty());
        assert_eq!(a.metrics["pid"], 1234);
        assert_eq!(a.metrics["externalBytes"], p.external_bytes.unwrap());
        assert!(!a.resolved);
        assert_eq!(a.timestamp, T0);
        let (prefix, suffix) = a.id.rsplit_once('_').unwrap();
        assert_eq!(prefix, format!("alert_{T0}"));
        assert_eq!(suffix.len(), 9);
        assert!(suffix
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }

    #[test]
    fn all_four_thresholds_and_severities() {
        let mut e = engine();
        // external 300 MiB (>= 2 x 80: critical), ratio 3.0 (>= 2 x 1.5: critical), rss 400 MiB
        // (= 2 x 200: critical), growth 6 MiB/min (warning).
        let p = traced(7, 400 * MB, 100 * MB);
        let events = e.check_thresholds(&p, Some(6.0), T0);
        let alerts = created(&events);
        let by = |t: Trigger| *alerts.iter().find(|a| a.context.trigger == t).unwrap();
        assert_eq!(alerts.len(), 4);
        assert_eq!(
            by(Trigger::ExternalMemoryThreshold).severity,
            Severity::Critical
        );
        let ratio = by(Trigger::ExternalRatioThreshold);
        assert_eq!(ratio.severity, Severity::Critical);
        assert_eq!(
            ratio.message,
            "pid 7 (node): External/heap ratio (3.00) exceeds threshold (1.5)"
        );
        let rss = by(Trigger::RssThreshold);
        assert_eq!(rss.severity, Severity::Critical);
        assert_eq!(
            rss.message,
            "pid 7 (node): RSS (400.0MB) exceeds threshold (200MB)"
        );
        let growth = by(Trigger::GrowthRateThreshold);
        assert_eq!(growth.severity, Severity::Warning);
        assert_eq!(growth.context.threshold, Some(5.0));
        assert_eq!(
            growth.message,
            "pid 7 (node): Memory growth rate (6.0MB/min) exceeds threshold (5MB/min)"
        );
        // JSON names of the triggers.
        let json = serde_json::to_value(ratio).unwrap();
        assert_eq!(json["context"]["trigger"], "external_ratio_threshold");
        assert_eq!(json["type"], "threshold");
        assert_eq!(json["severity"], "critical");
    }

    #[test]
    fn untraced_process_only_checks_rss_and_growth() {
        let mut e = engine();
        let p = proc(9, "java", 1000);
        let events = e.check_thresholds(&p, None, T0);
        let alerts = created(&events);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].context.trigger, Trigger::RssThreshold);
        // Below every threshold: nothing.
        assert!(e
            .check_thresholds(&proc(10, "sh", 1), Some(0.1), T0)
            .is_empty());
    }

    #[test]
    fn top_consumers_and_library_in_context() {
        let mut e = engine();
        let mut p = proc(3, "app", 300);
        p.libraries = vec![
            LibrarySnapshot {
                library: "libc.so.6".into(),
                live_bytes: 10,
                ..Default::default()
            },
            LibrarySnapshot {
                library: "libssl.so.3".into(),
                live_bytes: 99,
                ..Default::default()
            },
        ];
        let events = e.check_thresholds(&p, None, T0);
        let a = events[0].alert();
        assert_eq!(a.context.library.as_deref(), Some("libssl.so.3"));
        let top = a.context.top_consumers.as_ref().unwrap();
        assert_eq!(top[0]["library"], "libssl.so.3");
        assert_eq!(top[1]["liveBytes"], 10);
    }

    #[test]
    fn one_active_alert_per_pid_and_trigger() {
        let mut e = engine();
        assert_eq!(e.check_thresholds(&proc(1, "a", 250), None, T0).len(), 1);
        // Still exceeded: refreshed, no new alert.
        assert!(e
            .check_thresholds(&proc(1, "a", 260), None, T0 + MIN)
            .is_empty());
        assert_eq!(e.active().len(), 1);
        assert_eq!(
            e.active()[0].message,
            "pid 1 (a): RSS (260.0MB) exceeds threshold (200MB)"
        );
        assert_eq!(e.active()[0].metrics["rssBytes"], 260 * MB);
        // Same trigger, other pid: its own alert.
        assert_eq!(e.check_thresholds(&proc(2, "b", 250), None, T0).len(), 1);
        // Same pid, other trigger through raise(): its own alert; raised twice: one.
        let c = AlertCandidate::new(
            AlertType::Leak,
            Severity::Critical,
            Trigger::LeakDetected,
            &proc(1, "a", 250),
            "Potential memory leak",
        );
        assert!(matches!(
            e.raise(c.clone(), T0),
            Some(AlertEvent::Created(_))
        ));
        assert!(e.raise(c, T0 + MIN).is_none());
        assert_eq!(e.active().len(), 3);
        assert_eq!(e.suppressed_total(), 0);
    }

    #[test]
    fn rate_limit_holds_over_a_sliding_hour_and_counts_suppressed() {
        let mut cfg = alerting();
        cfg.max_alerts_per_hour = 3;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default(), &cfg, 1);
        let mut n_created = 0;
        for pid in 0..5 {
            n_created += e
                .check_thresholds(&proc(pid, "p", 300), None, T0 + u64::from(pid) * MIN)
                .len();
        }
        assert_eq!(n_created, 3);
        assert_eq!(e.suppressed_total(), 2);
        assert_eq!(e.active().len(), 3);
        // Still within the hour of the first alert: suppressed again.
        assert!(e
            .check_thresholds(&proc(3, "p", 300), None, T0 + 59 * MIN)
            .is_empty());
        assert_eq!(e.suppressed_total(), 3);
        // One hour after the first creation, one slot frees up.
        let events = e.check_thresholds(&proc(3, "p", 300), None, T0 + 60 * MIN);
        assert_eq!(created(&events).len(), 1);
        assert!(e
            .check_thresholds(&proc(4, "p", 300), None, T0 + 60 * MIN)
            .is_empty());
        assert_eq!(e.suppressed_total(), 4);
    }

    #[test]
    fn auto_resolve_after_clear_period_not_before() {
        let mut e = engine(); // autoResolveAfter = 300 s
        e.check_thresholds(&proc(1, "a", 250), None, T0);
        // Clear from T0 + 1 min.
        assert!(e
            .check_thresholds(&proc(1, "a", 100), None, T0 + MIN)
            .is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), None, T0 + 5 * MIN)
            .is_empty());
        // Exceeded again: the clear period starts over.
        assert!(e
            .check_thresholds(&proc(1, "a", 250), None, T0 + 6 * MIN)
            .is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), None, T0 + 7 * MIN)
            .is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), None, T0 + 12 * MIN - 1)
            .is_empty());
        let events = e.check_thresholds(&proc(1, "a", 100), None, T0 + 12 * MIN);
        assert_eq!(events.len(), 1);
        let AlertEvent::Resolved(a) = &events[0] else {
            panic!("{events:?}")
        };
        assert!(a.resolved);
        assert_eq!(a.resolved_at, Some(T0 + 12 * MIN));
        assert_eq!(a.resolved_by, Some(ResolvedBy::Auto));
        assert!(e.active().is_empty());
        assert_eq!(e.all_recent(10).len(), 1);
        // A new excess after resolution is a new alert.
        let events = e.check_thresholds(&proc(1, "a", 250), None, T0 + 13 * MIN);
        assert_eq!(created(&events).len(), 1);
        assert_ne!(events[0].alert().id, a.id);
    }

    #[test]
    fn observe_clear_resolves_caller_raised_alerts() {
        let mut e = engine();
        let c = AlertCandidate {
            pattern: Some(serde_json::json!({"type": "linear", "confidence": 85})),
            ..AlertCandidate::new(
                AlertType::Pattern,
                Severity::Warning,
                Trigger::PatternLinear,
                &proc(5, "x", 10),
                "Linear growth pattern (85% confidence)",
            )
        };
        let created = e.raise(c, T0).unwrap();
        assert_eq!(
            created.alert().context.pattern.as_ref().unwrap()["type"],
            "linear"
        );
        assert_eq!(
            created.alert().message,
            "pid 5 (x): Linear growth pattern (85% confidence)"
        );
        assert!(e
            .observe_clear(5, Trigger::PatternLinear, T0 + MIN)
            .is_none());
        assert!(e
            .observe_clear(5, Trigger::PatternLinear, T0 + 6 * MIN - 1)
            .is_none());
        let resolved = e
            .observe_clear(5, Trigger::PatternLinear, T0 + 6 * MIN)
            .unwrap();
        assert!(matches!(resolved, AlertEvent::Resolved(ref a) if a.id == created.alert().id));
        // Nothing active: nothing to clear.
        assert!(e
            .observe_clear(5, Trigger::PatternLinear, T0 + 7 * MIN)
            .is_none());
    }

    #[test]
    fn manual_resolve() {
        let mut e = engine();
        let events = e.check_thresholds(&proc(1, "a", 250), None, T0);
        let id = events[0].alert().id.clone();
        let a = e.resolve(&id, T0 + 5).unwrap();
        assert!(a.resolved);
        assert_eq!(a.resolved_at, Some(T0 + 5));
        assert_eq!(a.resolved_by, Some(ResolvedBy::Manual));
        assert!(e.active().is_empty());
        assert!(matches!(
            e.resolve(&id, T0 + 6),
            Err(AlertError::AlreadyResolved(_))
        ));
        let err = e.resolve("alert_1_nope", T0).unwrap_err();
        assert!(matches!(err, AlertError::NotFound(_)));
        assert_eq!(err.to_string(), "no alert with id alert_1_nope");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["resolvedBy"], "manual");
        assert_eq!(json["resolvedAt"], T0 + 5);
    }

    #[test]
    fn process_gone_and_pid_reuse_resolve_alerts() {
        let mut e = engine();
        e.check_thresholds(&traced(1, 400 * MB, 100 * MB), None, T0);
        e.check_thresholds(&proc(2, "b", 300), None, T0);
        assert_eq!(e.active().len(), 4);
        let events = e.process_gone(1, T0 + 1);
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(
            |ev| matches!(ev, AlertEvent::Resolved(a) if a.resolved_by == Some(ResolvedBy::Auto))
        ));
        assert_eq!(e.active().len(), 1);
        // pid 2 now runs another program: its old alert is resolved, a new one raised.
        let events = e.check_thresholds(&proc(2, "other", 300), None, T0 + 2);
        assert!(matches!(&events[0], AlertEvent::Resolved(a) if a.context.comm == "b"));
        assert!(matches!(&events[1], AlertEvent::Created(a) if a.context.comm == "other"));
    }

    #[test]
    fn disabled_engine_creates_nothing() {
        let mut cfg = alerting();
        cfg.enabled = false;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default(), &cfg, 1);
        assert!(e
            .check_thresholds(&proc(1, "a", 900), Some(100.0), T0)
            .is_empty());
        assert!(e.active().is_empty());
    }

    #[test]
    fn restore_reactivates_unresolved_alerts() {
        let mut first = engine();
        first.check_thresholds(&proc(1, "a", 250), None, T0);
        first.check_thresholds(&proc(2, "b", 250), None, T0 + 1);
        let id2 = first.active()[0].id.clone();
        first.resolve(&id2, T0 + 2).unwrap();
        let saved: Vec<Alert> = first.all_recent(100).into_iter().cloned().collect();

        let mut cfg = alerting();
        cfg.max_alerts_per_hour = 3;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default(), &cfg, 7);
        e.restore(saved);
        let active = e.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].context.pid, 1);
        assert_eq!(e.all_recent(10).len(), 2);
        // The restored alert is the active one for (1, rss): no duplicate.
        assert!(e
            .check_thresholds(&proc(1, "a", 250), None, T0 + MIN)
            .is_empty());
        // Restored creations count toward the hour: 2 of 3 used.
        assert_eq!(
            created(&e.check_thresholds(&proc(3, "c", 250), None, T0 + MIN)).len(),
            1
        );
        assert!(e
            .check_thresholds(&proc(4, "d", 250), None, T0 + MIN)
            .is_empty());
        assert_eq!(e.suppressed_total(), 1);
        // And it auto-resolves like any other.
        e.check_thresholds(&proc(1, "a", 100), None, T0 + 2 * MIN);
        let events = e.check_thresholds(&proc(1, "a", 100), None, T0 + 7 * MIN);
        assert!(matches!(&events[0], AlertEvent::Resolved(a) if a.context.pid == 1));
    }

    /// Guards issue 11 item 7: restored alerts about processes that are gone are resolved at once
    /// (`resolvedBy: auto`); the others stay active.
    #[test]
    fn resolve_gone_resolves_only_dead_processes() {
        let mut first = engine();
        first.check_thresholds(&proc(1, "a", 250), None, T0);
        first.check_thresholds(&proc(2, "b", 250), None, T0);
        first.check_thresholds(&traced(3, 400 * MB, 100 * MB), None, T0);
        let saved: Vec<Alert> = first.all_recent(100).into_iter().cloned().collect();
        let mut e = engine();
        e.restore(saved);
        assert_eq!(e.active().len(), 5);
        let events = e.resolve_gone(|a| a.context.pid == 2, T0 + 1);
        assert_eq!(events.len(), 4);
        assert!(events.iter().all(|ev| matches!(ev,
            AlertEvent::Resolved(a) if a.resolved_by == Some(ResolvedBy::Auto)
                && a.resolved_at == Some(T0 + 1) && a.context.pid != 2)));
        let active: Vec<u32> = e.active().iter().map(|a| a.context.pid).collect();
        assert_eq!(active, [2]);
        assert!(e.resolve_gone(|_| true, T0 + 2).is_empty());
    }

    #[test]
    fn alert_json_shape() {
        let mut e = engine();
        let events = e.check_thresholds(&traced(42, 200 * MB, 50 * MB), None, T0);
        let json = serde_json::to_value(events[0].alert()).unwrap();
        for key in [
            "id",
            "timestamp",
            "type",
            "severity",
            "message",
            "metrics",
            "context",
            "resolved",
        ] {
            assert!(json.get(key).is_some(), "missing {key}: {json}");
        }
        assert!(json.get("resolvedAt").is_none());
        for key in ["trigger", "threshold", "recommendations", "pid", "comm"] {
            assert!(
                json["context"].get(key).is_some(),
                "missing context.{key}: {json}"
            );
        }
        let back: Alert = serde_json::from_value(json).unwrap();
        assert_eq!(&back, events[0].alert());
    }
}
