//! Alerts: what an alert is (the origin monitor's shape, camelCase JSON), the engine that decides when
//! one is created or resolved ([`AlertEngine`]), and the channels that deliver alert events
//! ([`channels::Dispatcher`]: console, `alerts.jsonl`, webhook).
//!
//! The engine is pure: it takes the time as an argument and returns [`AlertEvent`]s; the caller hands
//! those to the dispatcher.

pub mod budget;
pub mod channels;
mod engine;
mod history;
pub mod payload;
pub mod rules;

use serde::{Deserialize, Serialize};

pub use self::engine::{condition_of, AlertCandidate, AlertEngine, PendingAlert};

/// Where the file channel writes alert events (the data directory's `alerts.jsonl`): the store
/// implements it, so alerts do not depend on persistence.
pub trait AlertSink: Send + Sync {
    fn append_alert(&self, alert: &Alert) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("no alert with id {0}")]
    NotFound(String),
    #[error("alert {0} is already resolved")]
    AlreadyResolved(String),
}

/// What kind of condition raised the alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertType {
    /// A configured threshold is exceeded.
    Threshold,
    /// A concerning growth pattern (linear, exponential) was detected.
    Pattern,
    /// A potential memory leak was identified.
    Leak,
    /// A sudden increase was detected.
    Spike,
}

impl AlertType {
    pub const ALL: [AlertType; 4] = [
        AlertType::Threshold,
        AlertType::Pattern,
        AlertType::Leak,
        AlertType::Spike,
    ];

    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Pattern => "pattern",
            Self::Leak => "leak",
            Self::Spike => "spike",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// The condition an alert stands for. At most one alert per (pid, trigger) is active at a time,
/// the growth patterns (linear, exponential, leak) counting as one ([`condition_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    ExternalMemoryThreshold,
    ExternalRatioThreshold,
    RssThreshold,
    GrowthRateThreshold,
    PatternLinear,
    PatternExponential,
    LeakDetected,
    SpikeDetected,
}

impl Trigger {
    /// The name used in JSON (`external_memory_threshold`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExternalMemoryThreshold => "external_memory_threshold",
            Self::ExternalRatioThreshold => "external_ratio_threshold",
            Self::RssThreshold => "rss_threshold",
            Self::GrowthRateThreshold => "growth_rate_threshold",
            Self::PatternLinear => "pattern_linear",
            Self::PatternExponential => "pattern_exponential",
            Self::LeakDetected => "leak_detected",
            Self::SpikeDetected => "spike_detected",
        }
    }
}

/// Who resolved an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedBy {
    /// Through the API (`resolve`).
    Manual,
    /// The condition stayed clear for `alerting.autoResolveAfter`, or the process exited.
    Auto,
}

/// One alert, as the API returns it and as each line of `alerts.jsonl` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `alert_<creation ms>_<9 random lowercase alphanumerics>`.
    pub id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    #[serde(rename = "type")]
    pub kind: AlertType,
    pub severity: Severity,
    /// `pid 1234 (node): External memory (95.2MB) exceeds threshold (80MB)`.
    pub message: String,
    /// The process snapshot (`ProcessSnapshot` JSON) that raised or last confirmed the alert.
    pub metrics: serde_json::Value,
    pub context: AlertContext,
    pub resolved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<ResolvedBy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertContext {
    pub trigger: Trigger,
    /// The threshold exceeded, in the unit of the message (MiB, ratio, MiB/min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub recommendations: Vec<String>,
    pub pid: u32,
    #[serde(default)]
    pub comm: String,
    /// Container id of the process ("" on the host, then left out of the JSON).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// The library most involved, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// Top consumers (libraries or call sites) at the time, largest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_consumers: Option<serde_json::Value>,
    /// The detected pattern (analysis `Pattern` JSON) for pattern, leak and spike alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<serde_json::Value>,
}

impl Alert {
    pub fn pid(&self) -> u32 {
        self.context.pid
    }

    pub fn trigger(&self) -> Trigger {
        self.context.trigger
    }
}

/// What the engine reports; the dispatcher delivers each to the configured channels.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertEvent {
    Created(Alert),
    Resolved(Alert),
}

impl AlertEvent {
    pub fn alert(&self) -> &Alert {
        match self {
            Self::Created(a) | Self::Resolved(a) => a,
        }
    }

    pub fn into_alert(self) -> Alert {
        match self {
            Self::Created(a) | Self::Resolved(a) => a,
        }
    }
}
