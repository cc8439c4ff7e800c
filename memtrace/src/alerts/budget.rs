//! How many alerts may be created, so that noisy processes never starve a real alert
//! (docs/alerts.md, "Budgets"). Over any sliding hour:
//!
//! - **per process identity** (command name and container, so a process that restarts under a new
//!   pid keeps its count): at most `alerting.maxAlertsPerProcessPerHour`;
//! - **per alert type** (`threshold`, `pattern`, `leak`, `spike`): at most
//!   `alerting.maxAlertsPerTypePerHour`;
//! - **host-wide**: at most `alerting.maxAlertsPerHour`, of which less severe alerts may only use a
//!   share: `info` half of it, `warning` 80 %, `critical` all of it; an alert that repeats a problem
//!   already alerted on in the hour (same identity and condition) one step less.
//!
//! In the first two scopes only alerts at least as severe as the candidate count against it, so a
//! critical alert is never held back by warnings. When the host cap has room for fewer candidates
//! than are waiting for it, the room goes to the most severe, then new (not a repeat), then newest
//! problems: a candidate yields to better ones that were suppressed and are still being raised.
//!
//! Suppressed candidates are counted once per episode (until the condition clears or its alert is
//! created), per type and per process identity.

use std::collections::{HashMap, VecDeque};

use super::{AlertType, Severity, Trigger};
use crate::config::AlertingConfig;

const HOUR_MS: u64 = 60 * 60 * 1000;
/// Identities whose suppressed counts are kept apart; the rest are summed in one `other` line.
const SUPPRESSED_IDENTITIES: usize = 100;

/// A process as rate limits see it: its command name and container (empty on the host).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub comm: String,
    pub container: String,
}

/// A problem: one condition of one process identity.
pub type Problem = (Identity, Trigger);

/// What asks for an alert, as far as the budget is concerned.
#[derive(Clone, Debug)]
pub struct Ask {
    pub identity: Identity,
    pub kind: AlertType,
    pub severity: Severity,
    /// The condition (growth triggers share one).
    pub condition: Trigger,
    /// When the condition began (its pending `since`), for the newest-first order.
    pub onset_ms: u64,
}

/// Why a candidate was not created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Process,
    Type,
    Host,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "maxAlertsPerProcessPerHour",
            Self::Type => "maxAlertsPerTypePerHour",
            Self::Host => "maxAlertsPerHour",
        }
    }
}

#[derive(Clone, Debug)]
struct Record {
    at: u64,
    identity: Identity,
    kind: AlertType,
    severity: Severity,
    condition: Trigger,
}

/// A suppressed candidate still being raised.
#[derive(Clone, Debug)]
struct Waiting {
    /// Only candidates held back by the host cap wait for its room.
    limit: Limit,
    severity: Severity,
    repeat: bool,
    onset_ms: u64,
    last_seen: u64,
}

/// Suppressed candidates by type and by identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuppressedCounts {
    pub total: u64,
    pub by_type: Vec<(AlertType, u64)>,
    /// Largest first, at most [`SUPPRESSED_IDENTITIES`] identities; `other` sums the rest.
    pub by_process: Vec<(Identity, u64)>,
    pub other: u64,
}

pub struct Budget {
    per_process: usize,
    per_type: usize,
    host: usize,
    /// Creations in the sliding hour, oldest first.
    created: VecDeque<Record>,
    waiting: HashMap<Problem, Waiting>,
    /// How long a waiting candidate that is not raised again keeps its claim.
    waiting_ttl_ms: u64,
    suppressed_total: u64,
    suppressed_by_type: HashMap<AlertType, u64>,
    suppressed_by_identity: HashMap<Identity, u64>,
}

fn share(severity: Severity, repeat: bool) -> f64 {
    match (severity, repeat) {
        (Severity::Critical, false) => 1.0,
        (Severity::Critical, true) | (Severity::Warning, false) => 0.8,
        (Severity::Warning, true) | (Severity::Info, false) => 0.5,
        (Severity::Info, true) => 0.3,
    }
}

/// Better first: more severe, then new rather than a repeat, then newer.
fn rank(severity: Severity, repeat: bool, onset_ms: u64) -> (Severity, bool, u64) {
    (severity, !repeat, onset_ms)
}

impl Budget {
    pub fn new(config: &AlertingConfig) -> Self {
        let limit = |v: u32| usize::try_from(v).unwrap_or(usize::MAX).max(1);
        Self {
            per_process: limit(config.max_alerts_per_process_per_hour),
            per_type: limit(config.max_alerts_per_type_per_hour),
            host: limit(config.max_alerts_per_hour),
            created: VecDeque::new(),
            waiting: HashMap::new(),
            waiting_ttl_ms: config.pattern_for.max(600).saturating_mul(1000),
            suppressed_total: 0,
            suppressed_by_type: HashMap::new(),
            suppressed_by_identity: HashMap::new(),
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let hour_ago = now_ms.saturating_sub(HOUR_MS);
        while self.created.front().is_some_and(|r| r.at <= hour_ago) {
            self.created.pop_front();
        }
        let ttl = self.waiting_ttl_ms;
        self.waiting
            .retain(|_, w| now_ms.saturating_sub(w.last_seen) <= ttl);
    }

    /// Host-cap slots a candidate of this severity may use.
    fn host_limit(&self, severity: Severity, repeat: bool) -> usize {
        ((self.host as f64 * share(severity, repeat)).ceil() as usize).clamp(1, self.host)
    }

    /// Whether `ask` may be created now. `Err` names the limit that holds it back; the suppression
    /// is counted the first time in an episode (`first`).
    pub fn admit(&mut self, ask: &Ask, now_ms: u64, first: bool) -> Result<(), Limit> {
        self.expire(now_ms);
        let problem = (ask.identity.clone(), ask.condition);
        let repeat = self
            .created
            .iter()
            .any(|r| r.identity == ask.identity && r.condition == ask.condition);
        let verdict = self.check(ask, repeat, now_ms);
        match verdict {
            Ok(()) => {
                self.waiting.remove(&problem);
                self.created.push_back(Record {
                    at: now_ms,
                    identity: ask.identity.clone(),
                    kind: ask.kind,
                    severity: ask.severity,
                    condition: ask.condition,
                });
            }
            Err(limit) => {
                self.waiting.insert(
                    problem,
                    Waiting {
                        limit,
                        severity: ask.severity,
                        repeat,
                        onset_ms: ask.onset_ms,
                        last_seen: now_ms,
                    },
                );
                if first {
                    self.suppressed_total += 1;
                    *self.suppressed_by_type.entry(ask.kind).or_default() += 1;
                    *self
                        .suppressed_by_identity
                        .entry(ask.identity.clone())
                        .or_default() += 1;
                }
            }
        }
        verdict
    }

    fn check(&self, ask: &Ask, repeat: bool, now_ms: u64) -> Result<(), Limit> {
        let at_least = |r: &&Record| r.severity >= ask.severity;
        let same_identity = self
            .created
            .iter()
            .filter(at_least)
            .filter(|r| r.identity == ask.identity)
            .count();
        if same_identity >= self.per_process {
            return Err(Limit::Process);
        }
        let same_type = self
            .created
            .iter()
            .filter(at_least)
            .filter(|r| r.kind == ask.kind)
            .count();
        if same_type >= self.per_type {
            return Err(Limit::Type);
        }
        let limit = self.host_limit(ask.severity, repeat);
        let used = self.created.len();
        if used >= limit {
            return Err(Limit::Host);
        }
        // Room for fewer than are waiting: better waiting candidates go first.
        let room = limit - used;
        let me = rank(ask.severity, repeat, ask.onset_ms);
        let problem = (ask.identity.clone(), ask.condition);
        let better = self
            .waiting
            .iter()
            .filter(|(p, w)| **p != problem && w.limit == Limit::Host)
            .filter(|(_, w)| now_ms.saturating_sub(w.last_seen) <= self.waiting_ttl_ms)
            .filter(|(_, w)| rank(w.severity, w.repeat, w.onset_ms) > me)
            .count();
        if better >= room {
            return Err(Limit::Host);
        }
        Ok(())
    }

    /// The condition cleared (or its process is gone): it no longer waits for room.
    pub fn forget(&mut self, identity: &Identity, condition: Trigger) {
        self.waiting.remove(&(identity.clone(), condition));
    }

    /// Counts an alert created before a restart toward the hour.
    pub fn restore(
        &mut self,
        at: u64,
        identity: Identity,
        kind: AlertType,
        severity: Severity,
        condition: Trigger,
    ) {
        let record = Record {
            at,
            identity,
            kind,
            severity,
            condition,
        };
        let index = self.created.partition_point(|r| r.at <= at);
        self.created.insert(index, record);
    }

    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    pub fn suppressed(&self) -> SuppressedCounts {
        let mut by_type: Vec<(AlertType, u64)> = self
            .suppressed_by_type
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        by_type.sort_by_key(|(k, _)| *k as u8);
        let mut by_process: Vec<(Identity, u64)> = self
            .suppressed_by_identity
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        by_process.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other = by_process
            .iter()
            .skip(SUPPRESSED_IDENTITIES)
            .map(|(_, n)| n)
            .sum();
        by_process.truncate(SUPPRESSED_IDENTITIES);
        SuppressedCounts {
            total: self.suppressed_total,
            by_type,
            by_process,
            other,
        }
    }
}
