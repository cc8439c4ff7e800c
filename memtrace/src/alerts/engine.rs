//! The alert engine: turns threshold checks and detections into alert creations and resolutions.
//! The policy is written up for operators in `docs/alerts.md`.
//!
//! Rules:
//! - **a condition must hold before it alerts** (Prometheus' `for:`): a condition seen true starts
//!   *pending*; it becomes an alert only when it has been seen true at every check for its `for:`
//!   duration (`thresholds.for` and the per-threshold overrides; `alerting.patternFor` for growth
//!   patterns and level shifts). A check that finds it clear ends the pending episode. A caller
//!   that knows when the condition began (a level shift's time) gives it as the candidate's
//!   `since_ms`;
//! - **young processes are judged on absolute thresholds only**: the growth-rate threshold, growth
//!   patterns and level shifts do not alert on a process younger than `alerting.gracePeriod` (they
//!   may be pending meanwhile, and alert once the process is old enough if they still hold);
//! - the growth rate of the growth-rate threshold is the engine's own: a robust slope of the RSS
//!   over `thresholds.growthRateWindow`, judged only once the history covers that window;
//! - severity follows the risk: for growth, how close the memory is to its limit and how soon it
//!   gets there (`analysis::growth_severity`), so a small process is never critical for growing;
//!   for sizes, twice the threshold or 90 % of the limit is critical;
//! - at most one active alert per (pid, condition), the three growth patterns (linear, exponential,
//!   leak) being one condition: raising it again refreshes the alert's `metrics`, `message` and
//!   `pattern` and emits nothing;
//! - budgets per process identity, per type and host-wide ([`super::budget`]); candidates over them
//!   are suppressed and counted once per episode;
//! - an active alert is resolved automatically (`resolvedBy: "auto"`) once its condition has been
//!   observed clear continuously for `alerting.autoResolveAfter`, or when its process is gone;
//! - `alerting.enabled = false`: nothing is ever created.
//!
//! The engine never reads a clock: every call takes `now_ms` (milliseconds since the Unix epoch).

use std::{
    collections::{hash_map::RandomState, HashMap, VecDeque},
    hash::BuildHasher,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    budget::{Ask, Budget, Identity, SuppressedCounts},
    history::RssHistory,
    rules::severity_of,
    Alert, AlertContext, AlertError, AlertEvent, AlertType, ResolvedBy, Severity, Trigger,
};
use crate::{
    analysis::{growth_severity, Metric},
    config::{AlertingConfig, ThresholdsConfig},
    snapshot::{ExternalBasis, LibrarySnapshot, ProcessSnapshot},
};

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
    /// Container of the process ("" on the host): with `comm`, its identity for rate limits.
    pub container: String,
    /// When the process started (ms since the epoch), for the grace period.
    pub process_start_ms: Option<u64>,
    /// When the condition began, when the caller knows it from the data (a level shift's time);
    /// otherwise it begins when first raised.
    pub since_ms: Option<u64>,
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
            container: process.container.clone(),
            process_start_ms: process.start_time_ms,
            since_ms: None,
            message: message.into(),
            metrics: serde_json::to_value(process).unwrap_or(Value::Null),
            threshold: None,
            recommendations: Vec::new(),
            library: None,
            top_consumers: None,
            pattern: None,
        }
    }

    fn identity(&self) -> Identity {
        Identity {
            comm: self.comm.clone(),
            container: self.container.clone(),
        }
    }
}

/// The condition an alert stands for: its trigger, except that the growth patterns (linear,
/// exponential, leak) are one condition, so that a process whose growth is classified one way and
/// then another keeps one alert.
pub fn condition_of(trigger: Trigger) -> Trigger {
    match trigger {
        Trigger::PatternLinear | Trigger::PatternExponential => Trigger::LeakDetected,
        other => other,
    }
}

/// Whether the grace period of young processes applies (everything but absolute sizes).
fn relative(trigger: Trigger) -> bool {
    !matches!(
        trigger,
        Trigger::ExternalMemoryThreshold | Trigger::ExternalRatioThreshold | Trigger::RssThreshold
    )
}

struct Active {
    alert: Alert,
    /// Since when the condition has been observed clear without interruption.
    clear_since: Option<u64>,
}

/// A condition seen true that has not (yet) become an alert.
#[derive(Clone, Debug)]
struct Pending {
    since: u64,
    comm: String,
    identity: Identity,
    trigger: Trigger,
    severity: Severity,
    message: String,
    /// A suppression of this episode was counted already.
    suppressed: bool,
}

/// A pending condition, for the API and the dashboard (Prometheus' "pending" alerts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingAlert {
    pub pid: u32,
    pub comm: String,
    pub trigger: Trigger,
    pub severity: Severity,
    pub message: String,
    /// When the condition began, ms since the epoch.
    pub since: u64,
    /// When it alerts if it still holds (its `for:` elapsed; later for a process in its grace
    /// period), ms since the epoch.
    pub fires_at: u64,
    /// Held back by a budget when it was due (counted as suppressed).
    pub suppressed: bool,
}

/// A level shift remembered after the analysis window has moved past it, so that "the new level
/// holds" can be judged for as long as `patternFor` asks, whatever the window's length.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMemory {
    /// The first sample at the new level, ms since the epoch.
    pub at_ms: u64,
    /// The level before and the height of the shift, bytes.
    pub base_bytes: u64,
    pub height_bytes: u64,
    /// The figure that shifted.
    pub metric: Metric,
    pub severity: Severity,
    /// The pattern that found it (analysis `Pattern` JSON).
    pub pattern: Value,
}

/// What the engine remembers of a process between checks.
#[derive(Clone, Debug, Default)]
struct Tracked {
    comm: String,
    start_ms: Option<u64>,
    rss: RssHistory,
}

pub struct AlertEngine {
    thresholds: ThresholdsConfig,
    enabled: bool,
    auto_resolve_after_ms: u64,
    pattern_for_ms: u64,
    grace_ms: u64,
    active: HashMap<(u32, Trigger), Active>,
    pending: HashMap<(u32, Trigger), Pending>,
    /// Oldest first.
    resolved: VecDeque<Alert>,
    budget: Budget,
    processes: HashMap<u32, Tracked>,
    /// Level shifts by pid (see [`StepMemory`]).
    steps: HashMap<u32, StepMemory>,
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
            auto_resolve_after_ms: alerting.auto_resolve_after.saturating_mul(1000),
            pattern_for_ms: alerting.pattern_for.saturating_mul(1000),
            grace_ms: alerting.grace_period.saturating_mul(1000),
            active: HashMap::new(),
            pending: HashMap::new(),
            resolved: VecDeque::new(),
            budget: Budget::new(alerting),
            processes: HashMap::new(),
            steps: HashMap::new(),
            rng: seed,
        }
    }

    /// The `for:` duration of a trigger, ms.
    pub fn for_ms(&self, trigger: Trigger) -> u64 {
        let t = &self.thresholds;
        let seconds = match trigger {
            Trigger::ExternalMemoryThreshold => t.external_for,
            Trigger::ExternalRatioThreshold => t.external_ratio_for,
            Trigger::RssThreshold => t.rss_for,
            Trigger::GrowthRateThreshold => t.growth_rate_for,
            _ => return self.pattern_for_ms,
        };
        seconds.unwrap_or(t.for_seconds).saturating_mul(1000)
    }

    /// `alerting.gracePeriod`, ms.
    pub fn grace_ms(&self) -> u64 {
        self.grace_ms
    }

    /// The level shifts remembered per pid (kept by `rules::apply_patterns`).
    pub fn steps_mut(&mut self) -> &mut HashMap<u32, StepMemory> {
        &mut self.steps
    }

    fn growth_window_ms(&self) -> u64 {
        self.thresholds.growth_rate_window.saturating_mul(1000)
    }

    /// Evaluates the four thresholds for one process at one snapshot: external memory and the
    /// external ratio (only on true figures: the `full` basis, or for external memory on the
    /// `since-attach` basis the growth since attach, a lower bound of it), RSS, and the growth
    /// rate (the engine's robust slope of the RSS history over `thresholds.growthRateWindow`).
    /// Exceeded thresholds are raised (they alert once held for their `for:`), the others
    /// observed clear. A pid whose active alerts were raised under another command name (pid
    /// reuse, exec) first has those alerts resolved.
    pub fn check_thresholds(&mut self, process: &ProcessSnapshot, now_ms: u64) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        // An empty name (the process raced away before it was read) proves nothing.
        let reused = !process.comm.is_empty()
            && (self.active.values().any(|a| {
                a.alert.context.pid == process.pid && a.alert.context.comm != process.comm
            }) || self
                .processes
                .get(&process.pid)
                .is_some_and(|p| !p.comm.is_empty() && p.comm != process.comm));
        if reused {
            events.extend(self.process_gone(process.pid, now_ms));
        }
        let window = self.growth_window_ms();
        let tracked = self.processes.entry(process.pid).or_default();
        if !process.comm.is_empty() {
            tracked.comm.clone_from(&process.comm);
        }
        tracked.start_ms = process.start_time_ms.or(tracked.start_ms);
        if process.rss_bytes > 0 {
            tracked.rss.push(now_ms, process.rss_bytes, window);
        }
        let growth = tracked.rss.rate_mb_per_min(window);
        if !self.enabled {
            return events;
        }

        let t = &self.thresholds;
        let (external, external_lower_bound) = match process.external_basis {
            Some(ExternalBasis::Full) => (process.external_bytes.map(|b| b as f64 / MIB), false),
            Some(ExternalBasis::SinceAttach) => (
                process
                    .external_growth_bytes
                    .filter(|g| *g > 0)
                    .map(|g| g as f64 / MIB),
                true,
            ),
            None => (None, false),
        };
        let ratio = match process.external_basis {
            Some(ExternalBasis::Full) => process.external_ratio,
            _ => None,
        };
        let checks = [
            (Trigger::ExternalMemoryThreshold, external, t.external_mb),
            (Trigger::ExternalRatioThreshold, ratio, t.external_ratio),
            (
                Trigger::RssThreshold,
                Some(process.rss_bytes as f64 / MIB),
                t.rss_mb,
            ),
            (Trigger::GrowthRateThreshold, growth, t.growth_rate_mb),
        ];
        let mut metrics = None;
        for (trigger, value, threshold) in checks {
            match value {
                Some(value) if value > threshold => {
                    let metrics = metrics
                        .get_or_insert_with(|| serde_json::to_value(process).unwrap_or(Value::Null))
                        .clone();
                    let candidate = threshold_candidate(
                        process,
                        trigger,
                        value,
                        threshold,
                        metrics,
                        external_lower_bound,
                    );
                    events.extend(self.raise(candidate, now_ms));
                }
                _ => events.extend(self.observe_clear(process.pid, trigger, now_ms)),
            }
        }
        events
    }

    /// Raises a condition: it becomes an alert once it has held for its `for:` (and its process is
    /// past the grace period, for the triggers it applies to) and a budget has room. Returns the
    /// creation event, or `None` when alerting is disabled, the condition is still pending, an
    /// alert for the same (pid, condition) is already active (it is refreshed instead), or a
    /// budget holds it back (counted as suppressed once per episode).
    pub fn raise(&mut self, candidate: AlertCandidate, now_ms: u64) -> Option<AlertEvent> {
        if !self.enabled {
            return None;
        }
        let key = (candidate.pid, condition_of(candidate.trigger));
        let message = format!(
            "pid {} ({}): {}",
            candidate.pid, candidate.comm, candidate.message
        );
        if let Some(active) = self.active.get_mut(&key) {
            active.clear_since = None;
            active.alert.metrics = candidate.metrics;
            active.alert.message = message;
            if candidate.pattern.is_some() {
                active.alert.context.pattern = candidate.pattern;
            }
            self.pending.remove(&key);
            return None;
        }

        let onset = candidate.since_ms.unwrap_or(now_ms).min(now_ms);
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            since: onset,
            comm: candidate.comm.clone(),
            identity: candidate.identity(),
            trigger: candidate.trigger,
            severity: candidate.severity,
            message: message.clone(),
            suppressed: false,
        });
        pending.since = pending.since.min(onset);
        pending.trigger = candidate.trigger;
        pending.severity = candidate.severity;
        pending.message.clone_from(&message);
        let since = pending.since;
        let first_suppression = !pending.suppressed;

        if now_ms.saturating_sub(since) < self.for_ms(candidate.trigger) {
            return None;
        }
        if relative(candidate.trigger) && self.in_grace(&candidate, now_ms) {
            return None;
        }
        let ask = Ask {
            identity: candidate.identity(),
            kind: candidate.kind,
            severity: candidate.severity,
            condition: key.1,
            onset_ms: since,
        };
        if let Err(limit) = self.budget.admit(&ask, now_ms, first_suppression) {
            if let Some(pending) = self.pending.get_mut(&key) {
                pending.suppressed = true;
            }
            if first_suppression {
                log::info!("alert suppressed ({} reached): {message}", limit.as_str());
            }
            return None;
        }
        self.pending.remove(&key);

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
                container: candidate.container,
                library: candidate.library,
                top_consumers: candidate.top_consumers,
                pattern: candidate.pattern,
            },
            resolved: false,
            resolved_at: None,
            resolved_by: None,
        };
        self.active.insert(
            key,
            Active {
                alert: alert.clone(),
                clear_since: None,
            },
        );
        Some(AlertEvent::Created(alert))
    }

    /// Whether the candidate's process is younger than the grace period (its start from the
    /// candidate, else from the process's snapshots).
    fn in_grace(&self, candidate: &AlertCandidate, now_ms: u64) -> bool {
        let start = candidate
            .process_start_ms
            .or_else(|| self.processes.get(&candidate.pid).and_then(|p| p.start_ms));
        start.is_some_and(|start| now_ms.saturating_sub(start) < self.grace_ms)
    }

    /// Reports that the condition (pid, trigger) is currently clear: a pending episode ends, and an
    /// active alert is resolved once the condition has been clear continuously for
    /// `alerting.autoResolveAfter`.
    pub fn observe_clear(&mut self, pid: u32, trigger: Trigger, now_ms: u64) -> Option<AlertEvent> {
        let key = (pid, condition_of(trigger));
        if let Some(pending) = self.pending.remove(&key) {
            self.budget.forget(&pending.identity, key.1);
        }
        self.observe_unsure(pid, trigger, now_ms)
    }

    /// Reports that the condition (pid, trigger) was not seen this time, without evidence that it
    /// cleared (a growth pattern below the confidence threshold): a pending episode goes on (it
    /// cannot alert at this check), and an active alert counts the check as clear toward
    /// auto-resolution.
    pub fn observe_unsure(
        &mut self,
        pid: u32,
        trigger: Trigger,
        now_ms: u64,
    ) -> Option<AlertEvent> {
        let key = (pid, condition_of(trigger));
        let active = self.active.get_mut(&key)?;
        let since = *active.clear_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < self.auto_resolve_after_ms {
            return None;
        }
        self.finish(key, ResolvedBy::Auto, now_ms)
            .map(AlertEvent::Resolved)
    }

    /// The process exited: resolves all its active alerts automatically and forgets what the
    /// engine knew of it.
    pub fn process_gone(&mut self, pid: u32, now_ms: u64) -> Vec<AlertEvent> {
        self.processes.remove(&pid);
        self.steps.remove(&pid);
        let pending: Vec<(u32, Trigger)> = self
            .pending
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in pending {
            if let Some(p) = self.pending.remove(&key) {
                self.budget.forget(&p.identity, key.1);
            }
        }
        let mut keys: Vec<(u32, Trigger)> = self
            .active
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        keys.sort_by_key(|(_, t)| t.as_str());
        keys.into_iter()
            .filter_map(|key| self.finish(key, ResolvedBy::Auto, now_ms))
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
        if let Some(key) = key {
            if let Some(alert) = self.finish(key, ResolvedBy::Manual, now_ms) {
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

    /// The id of the active alert for (pid, condition of `trigger`), if there is one.
    pub fn active_id(&self, pid: u32, trigger: Trigger) -> Option<&str> {
        self.active
            .get(&(pid, condition_of(trigger)))
            .map(|a| a.alert.id.as_str())
    }

    /// Active alerts, newest first.
    pub fn active(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().map(|a| &a.alert).collect();
        sort_newest_first(&mut v);
        v
    }

    /// Whether (pid, condition of `trigger`) has an active alert.
    pub fn is_active(&self, pid: u32, trigger: Trigger) -> bool {
        self.active.contains_key(&(pid, condition_of(trigger)))
    }

    /// Conditions seen true that are not alerts (yet): waiting for their `for:`, the grace period
    /// or a budget. Oldest first.
    pub fn pending(&self) -> Vec<PendingAlert> {
        let mut v: Vec<PendingAlert> = self
            .pending
            .iter()
            .map(|(&(pid, _), p)| {
                let mut fires_at = p.since.saturating_add(self.for_ms(p.trigger));
                if relative(p.trigger) {
                    if let Some(start) = self.processes.get(&pid).and_then(|t| t.start_ms) {
                        fires_at = fires_at.max(start.saturating_add(self.grace_ms));
                    }
                }
                PendingAlert {
                    pid,
                    comm: p.comm.clone(),
                    trigger: p.trigger,
                    severity: p.severity,
                    message: p.message.clone(),
                    since: p.since,
                    fires_at,
                    suppressed: p.suppressed,
                }
            })
            .collect();
        v.sort_by_key(|p| (p.since, p.pid));
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

    /// Alert candidates held back by a budget since start, each episode (a condition from when it
    /// was first held back until it clears or alerts) counted once.
    pub fn suppressed_total(&self) -> u64 {
        self.budget.suppressed_total()
    }

    /// The suppressed count by alert type and by process identity (command name and container).
    pub fn suppressed(&self) -> SuppressedCounts {
        self.budget.suppressed()
    }

    /// Loads alerts saved before a restart (`Store::load_alerts`): unresolved ones become active again
    /// (their conditions start un-observed), resolved ones go to the history, and all creation times
    /// count toward the budgets.
    pub fn restore(&mut self, alerts: Vec<Alert>) {
        let mut alerts = alerts;
        alerts.sort_by_key(|a| a.timestamp);
        for alert in alerts {
            let container = if alert.context.container.is_empty() {
                alert.metrics["container"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                alert.context.container.clone()
            };
            self.budget.restore(
                alert.timestamp,
                Identity {
                    comm: alert.context.comm.clone(),
                    container,
                },
                alert.kind,
                alert.severity,
                condition_of(alert.context.trigger),
            );
            if alert.resolved {
                self.push_resolved(alert);
                continue;
            }
            let key = (alert.context.pid, condition_of(alert.context.trigger));
            if let Some(older) = self.active.insert(
                key,
                Active {
                    alert,
                    clear_since: None,
                },
            ) {
                log::warn!(
                    "restored two active alerts for pid {} condition {}: keeping the newer, dropping {}",
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
            .filter_map(|key| self.finish(key, ResolvedBy::Auto, now_ms))
            .map(AlertEvent::Resolved)
            .collect()
    }

    fn finish(&mut self, key: (u32, Trigger), by: ResolvedBy, now_ms: u64) -> Option<Alert> {
        let mut alert = self.active.remove(&key)?.alert;
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

/// Severity of a size threshold: warning, or critical at twice the threshold or more, or when the
/// process holds 90 % of its memory limit.
fn size_severity(value: f64, threshold: f64, process: &ProcessSnapshot) -> Severity {
    let near_limit = process
        .limit_bytes
        .is_some_and(|l| l > 0 && process.rss_bytes as f64 >= 0.9 * l as f64);
    if value >= 2.0 * threshold || near_limit {
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
    external_lower_bound: bool,
) -> AlertCandidate {
    let (message, recommendations): (String, &[&str]) = match trigger {
        Trigger::ExternalMemoryThreshold if external_lower_bound => (
            format!(
                "External memory (at least {value:.1}MB: its growth since tracing began) exceeds \
                 threshold ({threshold}MB)"
            ),
            &[
                "Check native libraries for allocations that are never freed (see topConsumers)",
                "Review connection pools and caches",
                "Examine file and mapping cleanup (mmap without munmap, unclosed files)",
            ],
        ),
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
    let severity = match trigger {
        Trigger::GrowthRateThreshold => severity_of(growth_severity(
            process.rss_bytes,
            value,
            None,
            process.limit_bytes,
            threshold,
        ))
        .max(Severity::Warning),
        _ => size_severity(value, threshold, process),
    };
    let mut libraries: Vec<&LibrarySnapshot> = process.libraries.iter().collect();
    libraries.sort_by_key(|l| std::cmp::Reverse(l.live_bytes));
    libraries.truncate(TOP_CONSUMERS);
    AlertCandidate {
        kind: AlertType::Threshold,
        severity,
        trigger,
        pid: process.pid,
        comm: process.comm.clone(),
        container: process.container.clone(),
        process_start_ms: process.start_time_ms,
        since_ms: None,
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
    use crate::snapshot::LibrarySnapshot;

    const MB: u64 = 1024 * 1024;
    const T0: u64 = 1_700_000_000_000;
    const SEC: u64 = 1000;
    const MIN: u64 = 60_000;

    fn alerting() -> AlertingConfig {
        AlertingConfig::default()
    }

    /// An engine without `for:` delays or grace period: conditions alert at once.
    fn engine() -> AlertEngine {
        AlertEngine::with_seed(
            &ThresholdsConfig::default().with_for(0),
            &alerting().immediate(),
            42,
        )
    }

    /// An engine with the default `for:`, grace period and budgets.
    fn default_engine() -> AlertEngine {
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

    /// A process traced from its start with the given RSS and live heap.
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

    /// Feeds `snapshot(second)` to the engine once a second from `from` to `to` (seconds after
    /// T0, inclusive) and returns the alerts created, with their time.
    fn run(
        e: &mut AlertEngine,
        from: u64,
        to: u64,
        snapshot: impl Fn(u64) -> Vec<ProcessSnapshot>,
    ) -> Vec<(u64, Alert)> {
        let mut out = Vec::new();
        for s in from..=to {
            for p in snapshot(s) {
                for event in e.check_thresholds(&p, T0 + s * SEC) {
                    if let AlertEvent::Created(a) = event {
                        out.push((s, a));
                    }
                }
            }
        }
        out
    }

    fn candidate(
        kind: AlertType,
        severity: Severity,
        trigger: Trigger,
        p: &ProcessSnapshot,
    ) -> AlertCandidate {
        AlertCandidate::new(
            kind,
            severity,
            trigger,
            p,
            format!("{} pattern", trigger.as_str()),
        )
    }

    #[test]
    fn external_threshold_fires_with_message_trigger_severity() {
        let mut e = engine();
        // 95.2 MiB external over 100 MiB heap: external above 80, ratio 0.95 below 1.5.
        let p = traced(1234, 195 * MB + MB / 5, 100 * MB);
        let events = e.check_thresholds(&p, T0);
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
        assert_eq!(a.metrics["externalBasis"], "full");
        assert!(!a.resolved);
        assert_eq!(a.timestamp, T0);
        let (prefix, suffix) = a.id.rsplit_once('_').unwrap();
        assert_eq!(prefix, format!("alert_{T0}"));
        assert_eq!(suffix.len(), 9);
        assert!(suffix
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
    }

    /// Issue 10: a process holding 112 MB of heap allocated before it was traced got
    /// "External memory (112.5MB) exceeds threshold (80MB)" and ratio alerts. Since attach, only
    /// the growth since then is external for sure: no alert while it is small, and the ratio is
    /// never judged.
    #[test]
    fn heap_from_before_the_attach_is_not_external() {
        let mut e = engine();
        let mut p = ProcessSnapshot {
            pid: 77,
            comm: "python3".into(),
            rss_bytes: 120 * MB,
            heap_traced: true,
            heap_live_bytes: MB,
            ..Default::default()
        };
        p.derive_external_since_attach(119 * MB, 0);
        assert!(e.check_thresholds(&p, T0).is_empty());
        // 100 MiB of RSS growth since the attach, 1 MiB of it heap: at least 99 MiB external.
        p.rss_bytes = 220 * MB;
        p.derive_external_since_attach(119 * MB, 0);
        let events = e.check_thresholds(&p, T0 + SEC);
        let triggers: Vec<Trigger> = created(&events).iter().map(|a| a.context.trigger).collect();
        assert_eq!(
            triggers,
            [Trigger::ExternalMemoryThreshold, Trigger::RssThreshold]
        );
        assert_eq!(
            created(&events)[0].message,
            "pid 77 (python3): External memory (at least 100.0MB: its growth since tracing began) \
             exceeds threshold (80MB)"
        );
    }

    #[test]
    fn size_thresholds_and_severities() {
        let mut e = engine();
        // external 300 MiB (>= 2 x 80: critical), ratio 3.0 (>= 2 x 1.5: critical), rss 400 MiB
        // (= 2 x 200: critical).
        let p = traced(7, 400 * MB, 100 * MB);
        let events = e.check_thresholds(&p, T0);
        let alerts = created(&events);
        let by = |t: Trigger| *alerts.iter().find(|a| a.context.trigger == t).unwrap();
        assert_eq!(alerts.len(), 3);
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
        // JSON names of the triggers.
        let json = serde_json::to_value(ratio).unwrap();
        assert_eq!(json["context"]["trigger"], "external_ratio_threshold");
        assert_eq!(json["type"], "threshold");
        assert_eq!(json["severity"], "critical");
        // 210 MiB of a 230 MiB limit: critical although only 1.05 x the threshold.
        let mut near = proc(8, "db", 210);
        near.limit_bytes = Some(230 * MB);
        let events = e.check_thresholds(&near, T0);
        assert_eq!(created(&events)[0].severity, Severity::Critical);
    }

    /// Every threshold must hold for its `for:` (60 s by default) at every check before it
    /// alerts; a check that finds it clear starts the count over.
    #[test]
    fn thresholds_alert_only_after_holding_for_their_duration() {
        let mut e = default_engine();
        let over = |s: u64| vec![proc(1, "big", if s == 30 { 150 } else { 250 })];
        let alerts = run(&mut e, 0, 200, over);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        // Exceeded from 0, clear at 30, exceeded again from 31: alerts at 31 + 60.
        assert_eq!(alerts[0].0, 91);
        assert_eq!(alerts[0].1.context.trigger, Trigger::RssThreshold);
        // The pending condition was visible meanwhile.
        let mut e = default_engine();
        run(&mut e, 0, 10, |_| vec![proc(2, "big", 250)]);
        let pending = e.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].trigger, Trigger::RssThreshold);
        assert_eq!((pending[0].since, pending[0].fires_at), (T0, T0 + 60 * SEC));
        // A per-threshold override.
        let thresholds = ThresholdsConfig {
            rss_for: Some(5),
            ..ThresholdsConfig::default()
        };
        let mut e = AlertEngine::with_seed(&thresholds, &alerting(), 1);
        let alerts = run(&mut e, 0, 20, |_| vec![proc(3, "big", 250)]);
        assert_eq!(alerts[0].0, 5);
    }

    /// Issue 10: a 21 MB process got "Memory growth rate (75.4MB/min) exceeds threshold" 12 s
    /// after the agent started, as critical. The rate is judged over the growth window only, and
    /// its severity follows the risk: a small process far from its limit is a warning.
    #[test]
    fn growth_rate_needs_a_long_enough_span_and_small_processes_are_not_critical() {
        let mut e = default_engine();
        let growing = |s: u64| {
            let mut p = proc(9, "small", 0);
            p.rss_bytes = 21 * MB + s * 75 * MB / 60;
            p.limit_bytes = Some(8192 * MB);
            p.start_time_ms = Some(T0 - 3600 * SEC);
            vec![p]
        };
        assert!(run(&mut e, 0, 12, growing).is_empty());
        let alerts = run(&mut e, 13, 400, growing);
        let growth: Vec<&(u64, Alert)> = alerts
            .iter()
            .filter(|(_, a)| a.context.trigger == Trigger::GrowthRateThreshold)
            .collect();
        // The window (120 s, 90 % covered at 108 s) and then the for: (60 s).
        assert_eq!(growth[0].0, 168, "{alerts:?}");
        assert_eq!(growth[0].1.severity, Severity::Warning);
        assert!(
            growth[0]
                .1
                .message
                .contains("Memory growth rate (75.0MB/min)"),
            "{}",
            growth[0].1.message
        );
    }

    /// A program that grows 60 MB in its first 5 s and then idles is never alerted on for its
    /// growth rate.
    #[test]
    fn start_up_growth_is_not_a_growth_rate() {
        let mut e = default_engine();
        let alerts = run(&mut e, 0, 900, |s| {
            let mut p = proc(10, "burst", 0);
            p.rss_bytes = (2 + 12 * s.min(5)) * MB;
            p.start_time_ms = Some(T0);
            vec![p]
        });
        assert!(alerts.is_empty(), "{alerts:?}");
    }

    /// A process younger than the grace period is judged on absolute thresholds only: its RSS
    /// alerts (after its for:), its growth does not until the grace period is over, and then only
    /// if it still holds.
    #[test]
    fn young_processes_are_judged_on_absolute_thresholds_only() {
        let mut alerting = alerting();
        alerting.grace_period = 300;
        let thresholds = ThresholdsConfig::default().with_for(10);
        let mut e = AlertEngine::with_seed(&thresholds, &alerting, 1);
        let alerts = run(&mut e, 0, 600, |s| {
            let mut p = proc(11, "young", 0);
            p.rss_bytes = 250 * MB + s * 10 * MB;
            p.start_time_ms = Some(T0);
            vec![p]
        });
        let at = |t: Trigger| {
            alerts
                .iter()
                .find(|(_, a)| a.context.trigger == t)
                .map(|(s, _)| *s)
        };
        assert_eq!(at(Trigger::RssThreshold), Some(10));
        assert_eq!(at(Trigger::GrowthRateThreshold), Some(300));
        // A pattern raised during the grace period waits for its end.
        let p = ProcessSnapshot {
            start_time_ms: Some(T0),
            ..proc(12, "young", 50)
        };
        let leak = || {
            candidate(
                AlertType::Leak,
                Severity::Warning,
                Trigger::LeakDetected,
                &p,
            )
        };
        for s in (0..300).step_by(10) {
            assert!(e.raise(leak(), T0 + s * SEC).is_none());
        }
        assert!(matches!(
            e.raise(leak(), T0 + 300 * SEC),
            Some(AlertEvent::Created(_))
        ));
    }

    #[test]
    fn pattern_conditions_hold_for_pattern_for_and_may_start_at_a_known_time() {
        let mut e = default_engine(); // patternFor 60 s, grace 60 s
        let p = ProcessSnapshot {
            start_time_ms: Some(T0 - 3600 * SEC),
            ..proc(13, "svc", 300)
        };
        let leak = || {
            candidate(
                AlertType::Leak,
                Severity::Warning,
                Trigger::LeakDetected,
                &p,
            )
        };
        assert!(e.raise(leak(), T0).is_none());
        assert!(e.raise(leak(), T0 + 50 * SEC).is_none());
        // Not sure (a low-confidence pattern): the episode goes on.
        assert!(e
            .observe_unsure(13, Trigger::LeakDetected, T0 + 55 * SEC)
            .is_none());
        // Classified linear now: the same growth condition.
        let linear = candidate(
            AlertType::Pattern,
            Severity::Warning,
            Trigger::PatternLinear,
            &p,
        );
        let Some(AlertEvent::Created(a)) = e.raise(linear, T0 + 60 * SEC) else {
            panic!("growth held for 60 s")
        };
        assert_eq!(a.context.trigger, Trigger::PatternLinear);
        // One growth alert per process: a leak now refreshes it.
        assert!(e.raise(leak(), T0 + 70 * SEC).is_none());
        assert_eq!(e.active().len(), 1);
        assert_eq!(e.active()[0].message, "pid 13 (svc): leak_detected pattern");
        // A level shift known to have begun 60 s ago alerts at once.
        let mut spike = candidate(
            AlertType::Spike,
            Severity::Warning,
            Trigger::SpikeDetected,
            &p,
        );
        spike.since_ms = Some(T0 + 10 * SEC);
        assert!(matches!(
            e.raise(spike, T0 + 70 * SEC),
            Some(AlertEvent::Created(_))
        ));
        // Cleared: the episode ends.
        let mut e = default_engine();
        assert!(e.raise(leak(), T0).is_none());
        e.observe_clear(13, Trigger::LeakDetected, T0 + 30 * SEC);
        assert!(e.raise(leak(), T0 + 60 * SEC).is_none());
        assert!(e.pending()[0].since == T0 + 60 * SEC);
    }

    #[test]
    fn untraced_process_only_checks_rss_and_growth() {
        let mut e = engine();
        let p = proc(9, "java", 1000);
        let events = e.check_thresholds(&p, T0);
        let alerts = created(&events);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].context.trigger, Trigger::RssThreshold);
        // Below every threshold: nothing.
        assert!(e.check_thresholds(&proc(10, "sh", 1), T0).is_empty());
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
        let events = e.check_thresholds(&p, T0);
        let a = events[0].alert();
        assert_eq!(a.context.library.as_deref(), Some("libssl.so.3"));
        let top = a.context.top_consumers.as_ref().unwrap();
        assert_eq!(top[0]["library"], "libssl.so.3");
        assert_eq!(top[1]["liveBytes"], 10);
    }

    #[test]
    fn one_active_alert_per_pid_and_condition() {
        let mut e = engine();
        assert_eq!(e.check_thresholds(&proc(1, "a", 250), T0).len(), 1);
        // Still exceeded: refreshed, no new alert.
        assert!(e.check_thresholds(&proc(1, "a", 260), T0 + MIN).is_empty());
        assert_eq!(e.active().len(), 1);
        assert_eq!(
            e.active()[0].message,
            "pid 1 (a): RSS (260.0MB) exceeds threshold (200MB)"
        );
        assert_eq!(e.active()[0].metrics["rssBytes"], 260 * MB);
        // Same trigger, other pid: its own alert.
        assert_eq!(e.check_thresholds(&proc(2, "b", 250), T0).len(), 1);
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
    fn auto_resolve_after_clear_period_not_before() {
        let mut e = engine(); // autoResolveAfter = 300 s
        e.check_thresholds(&proc(1, "a", 250), T0);
        // Clear from T0 + 1 min.
        assert!(e.check_thresholds(&proc(1, "a", 100), T0 + MIN).is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), T0 + 5 * MIN)
            .is_empty());
        // Exceeded again: the clear period starts over.
        assert!(e
            .check_thresholds(&proc(1, "a", 250), T0 + 6 * MIN)
            .is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), T0 + 7 * MIN)
            .is_empty());
        assert!(e
            .check_thresholds(&proc(1, "a", 100), T0 + 12 * MIN - 1)
            .is_empty());
        let events = e.check_thresholds(&proc(1, "a", 100), T0 + 12 * MIN);
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
        let events = e.check_thresholds(&proc(1, "a", 250), T0 + 13 * MIN);
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
        // Any growth trigger clears the growth condition.
        let resolved = e
            .observe_clear(5, Trigger::LeakDetected, T0 + 6 * MIN)
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
        let events = e.check_thresholds(&proc(1, "a", 250), T0);
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
        e.check_thresholds(&traced(1, 400 * MB, 100 * MB), T0);
        e.check_thresholds(&proc(2, "b", 300), T0);
        assert_eq!(e.active().len(), 4);
        let events = e.process_gone(1, T0 + 1);
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(
            |ev| matches!(ev, AlertEvent::Resolved(a) if a.resolved_by == Some(ResolvedBy::Auto))
        ));
        assert_eq!(e.active().len(), 1);
        // pid 2 now runs another program: its old alert is resolved, a new one raised.
        let events = e.check_thresholds(&proc(2, "other", 300), T0 + 2);
        assert!(matches!(&events[0], AlertEvent::Resolved(a) if a.context.comm == "b"));
        assert!(matches!(&events[1], AlertEvent::Created(a) if a.context.comm == "other"));
    }

    #[test]
    fn disabled_engine_creates_nothing() {
        let mut cfg = alerting().immediate();
        cfg.enabled = false;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default().with_for(0), &cfg, 1);
        assert!(e.check_thresholds(&proc(1, "a", 900), T0).is_empty());
        assert!(e.active().is_empty());
        assert!(e.pending().is_empty());
    }

    #[test]
    fn restore_reactivates_unresolved_alerts() {
        let mut first = engine();
        first.check_thresholds(&proc(1, "a", 250), T0);
        first.check_thresholds(&proc(2, "b", 250), T0 + 1);
        let id2 = first.active()[0].id.clone();
        first.resolve(&id2, T0 + 2).unwrap();
        let saved: Vec<Alert> = first.all_recent(100).into_iter().cloned().collect();

        let mut cfg = alerting().immediate();
        cfg.max_alerts_per_hour = 3;
        cfg.max_alerts_per_type_per_hour = 3;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default().with_for(0), &cfg, 7);
        e.restore(saved);
        let active = e.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].context.pid, 1);
        assert_eq!(e.all_recent(10).len(), 2);
        // The restored alert is the active one for (1, rss): no duplicate.
        assert!(e.check_thresholds(&proc(1, "a", 250), T0 + MIN).is_empty());
        // Restored creations count toward the hour: 2 of the 3 threshold alerts used.
        assert_eq!(
            created(&e.check_thresholds(&proc(3, "c", 250), T0 + MIN)).len(),
            1
        );
        assert!(e.check_thresholds(&proc(4, "d", 250), T0 + MIN).is_empty());
        assert_eq!(e.suppressed_total(), 1);
        // And it auto-resolves like any other.
        e.check_thresholds(&proc(1, "a", 100), T0 + 2 * MIN);
        let events = e.check_thresholds(&proc(1, "a", 100), T0 + 7 * MIN);
        assert!(matches!(&events[0], AlertEvent::Resolved(a) if a.context.pid == 1));
    }

    /// Guards issue 11 item 7: restored alerts about processes that are gone are resolved at once
    /// (`resolvedBy: auto`); the others stay active.
    #[test]
    fn resolve_gone_resolves_only_dead_processes() {
        let mut first = engine();
        first.check_thresholds(&proc(1, "a", 250), T0);
        first.check_thresholds(&proc(2, "b", 250), T0);
        first.check_thresholds(&traced(3, 400 * MB, 100 * MB), T0);
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
        let events = e.check_thresholds(&traced(42, 200 * MB, 50 * MB), T0);
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

    /// The hour's creations per process identity are limited, and a restarting process (new pid,
    /// same name and container) keeps its count; alerts of another container are another
    /// identity.
    #[test]
    fn per_process_identity_budget_survives_pid_churn() {
        let mut e = engine(); // 3 per process, 5 per type, 10 per hour
        let mut n = 0;
        for pid in 100..110 {
            n += created(&e.check_thresholds(&proc(pid, "crashy", 300), T0 + u64::from(pid))).len();
            e.process_gone(pid, T0 + u64::from(pid));
        }
        assert_eq!(n, 3);
        assert_eq!(e.suppressed_total(), 7);
        let mut other = proc(200, "crashy", 300);
        other.container = "0123456789ab".into();
        assert_eq!(created(&e.check_thresholds(&other, T0 + 200)).len(), 1);
        let counts = e.suppressed();
        assert_eq!(counts.by_type, vec![(AlertType::Threshold, 7)]);
        assert_eq!(counts.by_process[0].0.comm, "crashy");
        assert_eq!(counts.by_process[0].1, 7);
    }

    /// A suppressed condition that persists is counted once, not at every check (issue 10 saw
    /// 111 suppressions in a minute).
    #[test]
    fn a_suppressed_episode_counts_once() {
        let mut cfg = alerting().immediate();
        cfg.max_alerts_per_hour = 1;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default().with_for(0), &cfg, 3);
        run(&mut e, 0, 59, |_| {
            vec![proc(1, "a", 300), proc(2, "b", 300)]
        });
        assert_eq!(e.active().len(), 1);
        assert_eq!(e.suppressed_total(), 1);
        assert!(e.pending()[0].suppressed);
        // It clears and comes back: a new episode.
        e.check_thresholds(&proc(2, "b", 100), T0 + 60 * SEC);
        e.check_thresholds(&proc(2, "b", 300), T0 + 61 * SEC);
        assert_eq!(e.suppressed_total(), 2);
    }

    /// The budget case: many noisy processes raise alerts of every kind, and one process
    /// leaks; the leak's alert is raised, whatever the order of the checks.
    #[test]
    fn noisy_processes_never_starve_a_critical_leak() {
        let mut e = engine(); // 3 per process, 5 per type, 10 per hour
        let mut t = T0;
        // 40 noisy processes, 4 names, each with an RSS threshold and a pattern alert.
        for pid in 1..=40 {
            t += SEC;
            let p = proc(pid, &format!("noisy{}", pid % 4), 300);
            e.check_thresholds(&p, t);
            e.raise(
                candidate(
                    AlertType::Pattern,
                    Severity::Warning,
                    Trigger::PatternLinear,
                    &p,
                ),
                t,
            );
            e.raise(
                candidate(
                    AlertType::Spike,
                    Severity::Warning,
                    Trigger::SpikeDetected,
                    &p,
                ),
                t,
            );
        }
        // All warnings: 3 per name, 5 per type, and 8 (80 % of the cap of 10) in all.
        assert_eq!(e.active().len(), 8);
        let leak = proc(999, "leaky", 150);
        let created = e.raise(
            candidate(
                AlertType::Leak,
                Severity::Critical,
                Trigger::LeakDetected,
                &leak,
            ),
            t + SEC,
        );
        assert!(
            matches!(created, Some(AlertEvent::Created(ref a)) if a.context.pid == 999),
            "{created:?}"
        );
        // The noise was held back by the budgets, and counted.
        assert!(e.suppressed_total() > 0);
        let counts = e.suppressed();
        assert!(counts
            .by_type
            .iter()
            .any(|(k, _)| *k == AlertType::Threshold));
    }

    /// Info alerts use at most half the host cap and warnings 80 %: the rest stays for more
    /// severe ones.
    #[test]
    fn less_severe_alerts_leave_room_for_more_severe_ones() {
        let mut cfg = alerting().immediate();
        cfg.max_alerts_per_type_per_hour = 100;
        cfg.max_alerts_per_process_per_hour = 100;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default().with_for(0), &cfg, 5);
        let raise = |e: &mut AlertEngine, pid: u32, severity: Severity| {
            let p = proc(pid, &format!("p{pid}"), 10);
            e.raise(
                candidate(AlertType::Leak, severity, Trigger::LeakDetected, &p),
                T0,
            )
            .is_some()
        };
        let infos = (0..10)
            .filter(|&i| raise(&mut e, i, Severity::Info))
            .count();
        assert_eq!(infos, 5);
        let warnings = (10..20)
            .filter(|&i| raise(&mut e, i, Severity::Warning))
            .count();
        assert_eq!(warnings, 3);
        let criticals = (20..30)
            .filter(|&i| raise(&mut e, i, Severity::Critical))
            .count();
        assert_eq!(criticals, 2);
    }

    /// When the host cap frees less room than is waiting for it, the room goes to the most severe,
    /// then newest waiting problem, not to whichever is checked first.
    #[test]
    fn freed_room_goes_to_the_newest_most_severe_waiting_problem() {
        let mut cfg = alerting().immediate();
        cfg.max_alerts_per_hour = 5; // warnings may use 4
        cfg.max_alerts_per_type_per_hour = 100;
        let mut e = AlertEngine::with_seed(&ThresholdsConfig::default().with_for(0), &cfg, 9);
        let raise = |e: &mut AlertEngine, pid: u32, severity: Severity, t: u64| {
            let p = proc(pid, &format!("p{pid}"), 10);
            e.raise(
                candidate(AlertType::Leak, severity, Trigger::LeakDetected, &p),
                t,
            )
            .is_some()
        };
        assert!(raise(&mut e, 1, Severity::Warning, T0));
        for pid in 2..=4 {
            assert!(raise(&mut e, pid, Severity::Warning, T0 + 5 * MIN));
        }
        // The warnings' share is used up: an older and a newer problem wait, raised again at
        // every check while they last.
        assert!(!raise(&mut e, 6, Severity::Warning, T0 + MIN));
        for t in (2..60).step_by(2) {
            assert!(!raise(&mut e, 7, Severity::Warning, T0 + t * MIN));
            assert!(!raise(&mut e, 6, Severity::Warning, T0 + t * MIN));
        }
        // An hour after the first creation one slot frees. The older problem is checked first but
        // yields to the newer one, which takes the slot; then there is no room left.
        let later = T0 + 60 * MIN + 1;
        assert!(!raise(&mut e, 6, Severity::Warning, later));
        assert!(raise(&mut e, 7, Severity::Warning, later));
        assert!(!raise(&mut e, 6, Severity::Warning, later + 1));
        // Severity first: a critical takes the room beyond the warnings' share at once, and a
        // waiting critical goes before a newer warning.
        assert!(raise(&mut e, 8, Severity::Critical, later + 2));
        assert_eq!(e.suppressed_total(), 2);
    }
}
