//! The agent's configuration file (TOML).
//!
//! Sections and keys follow the origin monitor's configuration (`snapshotInterval`,
//! `thresholds.externalMB`, `patternDetection.windowSize`, ...): keys are camelCase, every key is
//! optional and defaults to the origin's value, and unknown keys are rejected. Durations are whole
//! seconds unless the key's name says otherwise (`webhookTimeoutMs`, `retention.*Days`,
//! `retention.operationsHours`). `docs/configuration.md` documents every key; `memtrace.example.toml`
//! is a complete commented file.
//!
//! After parsing, [`Config::validate`] rejects values that parse but make no sense, with an error
//! that names the key (`thresholds.externalRatio: must be > 0`).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Environment variable consulted for the API token when the file sets none.
pub const TOKEN_ENV: &str = "MEMTRACE_TOKEN";

const MIB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys and values of the wrong type. The source (toml's error) names the
    /// line, the column and the key.
    #[error("invalid configuration file {}", path.as_deref().map_or_else(|| "<string>".into(), |p| p.display().to_string()))]
    Parse {
        path: Option<PathBuf>,
        #[source]
        source: toml::de::Error,
    },
    /// A value that parsed but is out of range. `key` is the dotted key, e.g. `monitor.snapshotInterval`.
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("cannot read token file {path} (monitor.tokenFile)")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} (monitor.tokenFile) is empty")]
    TokenFileEmpty { path: PathBuf },
}

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Config {
    pub monitor: MonitorConfig,
    pub agent: AgentConfig,
    pub probes: ProbesConfig,
    pub drilldown: DrilldownConfig,
    pub thresholds: ThresholdsConfig,
    pub pattern_detection: PatternDetectionConfig,
    pub alerting: AlertingConfig,
    pub tracking: TrackingConfig,
    pub retention: RetentionConfig,
    pub metrics: MetricsConfig,
}

/// `[monitor]`: sampling, analysis cadence, the API listener and the data directory.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Seconds between host snapshots (origin: 30000 ms).
    pub snapshot_interval: u64,
    /// Seconds between pattern analyses (origin: 120000 ms).
    pub analysis_interval: u64,
    /// Address of the HTTP API (`IP:port`).
    pub listen: SocketAddr,
    /// Where snapshots, alerts and consumer data are kept.
    pub data_dir: PathBuf,
    /// Bearer token for the API. Never serialized (so never exported through the API).
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// File holding the token (read and trimmed), used when neither `token` nor `MEMTRACE_TOKEN` is set.
    pub token_file: Option<PathBuf>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            snapshot_interval: 30,
            analysis_interval: 120,
            listen: SocketAddr::from(([127, 0, 0, 1], 10000)),
            data_dir: PathBuf::from("/var/lib/memtrace"),
            token: None,
            token_file: None,
        }
    }
}

impl fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("snapshot_interval", &self.snapshot_interval)
            .field("analysis_interval", &self.analysis_interval)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl MonitorConfig {
    pub fn snapshot_interval(&self) -> Duration {
        Duration::from_secs(self.snapshot_interval)
    }

    pub fn analysis_interval(&self) -> Duration {
        Duration::from_secs(self.analysis_interval)
    }
}

/// `[agent]`: what the agent traces at start, what it keeps in memory and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Processes whose malloc family is traced from the start (`--pid`).
    pub pids: Vec<u32>,
    /// Trace the malloc family of every process on the host (`--malloc-all`): every malloc and free
    /// then costs a uprobe hit.
    pub malloc_all: bool,
    /// Snapshots kept in memory (the data directory keeps them all, within retention).
    pub history: usize,
    /// Processes listed in the periodic log summary at debug level (`--top`).
    pub top: usize,
    /// Write snapshots, alerts and consumers to the data directory (`--no-persist` turns it off).
    pub persist: bool,
    /// Keep the kernel's BPF run-time statistics on while running (`--bpf-stats`).
    pub bpf_stats: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            pids: Vec::new(),
            malloc_all: false,
            history: 240,
            top: 10,
            persist: true,
            bpf_stats: false,
        }
    }
}

/// Most snapshots `agent.history` may keep in memory.
pub const HISTORY_MAX: usize = 100_000;
/// Most snapshots one analysis may look at (`patternDetection.windowSize`).
pub const WINDOW_MAX: u32 = 2_000;

/// `[probes]`: sizes and switches of the eBPF side, fixed at load time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// Ring buffer size in MiB (a power of two, 1 to 1024).
    #[serde(rename = "ringBufferMB")]
    pub ring_buffer_mb: u32,
    /// Allocator calls in flight at once (entries of the in-flight map).
    pub inflight_entries: u32,
    /// Distinct user stacks kept (entries of the stack map).
    pub stack_entries: u32,
    /// Capture a user stack with each traced allocation and mapping (call-site attribution).
    pub capture_stacks: bool,
    /// Bytes waiting in the ring buffer before the reader is woken (it also drains every 20 ms).
    #[serde(skip)]
    pub wakeup_bytes: u64,
    /// Memory of the unwind tables (CFI turned into rows the kernel walks), MiB; allocated by the
    /// kernel at load, evicted least recently used first.
    #[serde(rename = "unwindTableMB")]
    pub unwind_table_mb: u32,
    /// Frames the kernel unwinds per stack (at most 64).
    pub unwind_depth: u32,
    /// Processes with unwind tables at once.
    pub unwind_processes: u32,
    /// Put every allocator probe on its function's first instruction instead of the first one the
    /// kernel emulates (see docs/trace.md, "Where the probes sit"): about ten times the cost per
    /// call where the first instruction is single-stepped (glibc's `free`).
    pub entry_probes: bool,
    /// CPU that tracing a process's heap on request (API, `--pid`, `agent.pids`) may add to it, in
    /// cores (0.5 = half of one core): over it the process is traced in windows (its figures then
    /// partial), far over it not at all. See docs/trace.md, "What tracing costs a process".
    pub cpu_budget: f64,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            ring_buffer_mb: 8,
            inflight_entries: 16384,
            stack_entries: 8192,
            capture_stacks: true,
            wakeup_bytes: 256 << 10,
            unwind_table_mb: 8,
            unwind_depth: memtrace_common::UNWIND_MAX_FRAMES as u32,
            unwind_processes: 256,
            entry_probes: false,
            cpu_budget: crate::probes::budget::EXPLICIT_BUDGET_CORES,
        }
    }
}

impl ProbesConfig {
    /// The ring buffer size in bytes.
    pub fn ring_buffer_bytes(&self) -> u32 {
        self.ring_buffer_mb.saturating_mul(1 << 20)
    }
}

/// `[drilldown]`: tracing the heap of a process that starts to grow, for a bounded window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DrilldownConfig {
    pub enabled: bool,
    /// Seconds a drill-down traces a process's heap.
    pub window: u64,
    /// Processes drilled into at once.
    pub max_processes: usize,
    /// CPU a drill-down may add to the process it traces, in cores (0.05 = 5% of one core).
    pub cpu_budget: f64,
}

impl Default for DrilldownConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 60,
            max_processes: 2,
            cpu_budget: crate::probes::budget::DRILLDOWN_BUDGET_CORES,
        }
    }
}

impl DrilldownConfig {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window)
    }
}

/// Most seconds `drilldown.window` may be (a day).
pub const DRILLDOWN_WINDOW_MAX: u64 = 86_400;

/// `[thresholds]`: per-process alert thresholds. Sizes in MiB (the origin's "MB" is 1024 * 1024 bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdsConfig {
    /// External memory (RSS minus live traced heap) above which an alert is raised.
    #[serde(rename = "externalMB")]
    pub external_mb: f64,
    /// External bytes over live heap bytes above which an alert is raised.
    #[serde(rename = "externalRatio")]
    pub external_ratio: f64,
    /// Resident set size above which an alert is raised.
    #[serde(rename = "rssMB")]
    pub rss_mb: f64,
    /// Growth of RSS in MiB per minute above which an alert is raised.
    #[serde(rename = "growthRateMB")]
    pub growth_rate_mb: f64,
    /// Seconds a threshold must stay exceeded, at every check, before it alerts (Prometheus'
    /// `for:`). The `...For` keys override it for one threshold.
    #[serde(rename = "for")]
    pub for_seconds: u64,
    #[serde(rename = "externalFor", skip_serializing_if = "Option::is_none")]
    pub external_for: Option<u64>,
    #[serde(rename = "externalRatioFor", skip_serializing_if = "Option::is_none")]
    pub external_ratio_for: Option<u64>,
    #[serde(rename = "rssFor", skip_serializing_if = "Option::is_none")]
    pub rss_for: Option<u64>,
    #[serde(rename = "growthRateFor", skip_serializing_if = "Option::is_none")]
    pub growth_rate_for: Option<u64>,
    /// Seconds of RSS history the growth rate is measured over (a robust slope); a process with a
    /// shorter history is not judged on its growth rate yet.
    #[serde(rename = "growthRateWindow")]
    pub growth_rate_window: u64,
}

impl Default for ThresholdsConfig {
    fn default() -> Self {
        Self {
            external_mb: 80.0,
            external_ratio: 1.5,
            rss_mb: 200.0,
            growth_rate_mb: 5.0,
            for_seconds: 60,
            external_for: None,
            external_ratio_for: None,
            rss_for: None,
            growth_rate_for: None,
            growth_rate_window: 120,
        }
    }
}

impl ThresholdsConfig {
    /// Every threshold's `for:` duration is `seconds` (tests, and configurations without delays).
    pub fn with_for(mut self, seconds: u64) -> Self {
        self.for_seconds = seconds;
        self.external_for = None;
        self.external_ratio_for = None;
        self.rss_for = None;
        self.growth_rate_for = None;
        self
    }
}

/// `[patternDetection]`: the growth pattern analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PatternDetectionConfig {
    /// Number of most recent snapshots analysed.
    pub window_size: u32,
    /// Fewer snapshots than this: no analysis.
    pub min_data_points: u32,
    /// Patterns detected with a lower confidence (percent) are not alerted.
    pub confidence_threshold: f64,
}

impl Default for PatternDetectionConfig {
    fn default() -> Self {
        Self {
            window_size: 20,
            min_data_points: 5,
            confidence_threshold: 70.0,
        }
    }
}

/// Where alerts are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// One log line per alert event.
    Console,
    /// One JSON line per alert event in `<dataDir>/alerts.jsonl` (also what restores alerts on restart).
    File,
    /// HTTP POST of the alert JSON to `alerting.webhookUrl` (inactive while no URL is set).
    Webhook,
}

/// The body the webhook channel posts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The alert JSON of the origin monitor (also what `alerts.jsonl` holds).
    #[default]
    Origin,
    /// Alertmanager's `POST /api/v2/alerts` body: an array of alerts with labels, annotations,
    /// `startsAt`, `endsAt` and `generatorURL`; resolutions set `endsAt`, firing alerts are sent
    /// again every `webhookResendInterval`.
    Alertmanager,
}

/// `[alerting]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// When false no alert is created at all.
    pub enabled: bool,
    pub channels: Vec<Channel>,
    /// Alerts created in any sliding hour, across all processes (the host-wide cap); further ones
    /// are suppressed (counted). More severe alerts are never crowded out by less severe ones.
    pub max_alerts_per_hour: u32,
    /// Alerts created in any sliding hour for one process identity (command name and container,
    /// so a restarting process keeps its count).
    pub max_alerts_per_process_per_hour: u32,
    /// Alerts created in any sliding hour of one type (`threshold`, `pattern`, `leak`, `spike`).
    pub max_alerts_per_type_per_hour: u32,
    /// Seconds a growth pattern (or a level shift) must hold, at every analysis, before it alerts.
    pub pattern_for: u64,
    /// Processes younger than this (seconds) are judged on absolute thresholds only (RSS,
    /// external memory, ratio): no growth-rate, pattern or spike alert while they start up.
    pub grace_period: u64,
    /// `http://` or `https://host[:port]/path`.
    pub webhook_url: Option<String>,
    /// PEM file of the CA certificates that sign the webhook server's certificate, trusted
    /// instead of the public roots (https only).
    pub webhook_ca_file: Option<PathBuf>,
    /// PEM client certificate (and chain) presented to the webhook server, with
    /// `webhookClientKey` (https only).
    pub webhook_client_cert: Option<PathBuf>,
    /// PEM private key of `webhookClientCert`.
    pub webhook_client_key: Option<PathBuf>,
    /// What the webhook posts: `origin` (the alert JSON) or `alertmanager`.
    pub webhook_format: WebhookFormat,
    /// Seconds between posts of the still-firing alerts (`alertmanager` format only), which keep
    /// them from expiring in Alertmanager.
    pub webhook_resend_interval: u64,
    /// The agent's URL as the alert's readers reach it (`generatorURL` of Alertmanager alerts).
    /// Default: `http://` and `monitor.listen`.
    pub external_url: Option<String>,
    /// Time limit of one POST, connection included.
    pub webhook_timeout_ms: u64,
    /// Further attempts after a failed POST, with exponential backoff.
    pub webhook_retries: u32,
    /// Alert events waiting for the webhook; when full the oldest is dropped (counted).
    pub webhook_queue: usize,
    /// Seconds a condition must be continuously clear before its alert is resolved automatically.
    pub auto_resolve_after: u64,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channels: vec![Channel::Console, Channel::File, Channel::Webhook],
            max_alerts_per_hour: 10,
            max_alerts_per_process_per_hour: 3,
            max_alerts_per_type_per_hour: 5,
            pattern_for: 60,
            grace_period: 60,
            webhook_url: None,
            webhook_ca_file: None,
            webhook_client_cert: None,
            webhook_client_key: None,
            webhook_format: WebhookFormat::Origin,
            webhook_resend_interval: 60,
            external_url: None,
            webhook_timeout_ms: 5000,
            webhook_retries: 3,
            webhook_queue: 100,
            auto_resolve_after: 300,
        }
    }
}

impl AlertingConfig {
    pub fn has_channel(&self, channel: Channel) -> bool {
        self.channels.contains(&channel)
    }

    /// The webhook URL when the webhook channel is both listed and configured.
    pub fn active_webhook_url(&self) -> Option<&str> {
        self.webhook_url
            .as_deref()
            .filter(|_| self.has_channel(Channel::Webhook))
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    pub fn auto_resolve_after(&self) -> Duration {
        Duration::from_secs(self.auto_resolve_after)
    }

    /// No `for:` delay on patterns and no grace period (tests, and configurations that want
    /// immediate alerts).
    pub fn immediate(mut self) -> Self {
        self.pattern_for = 0;
        self.grace_period = 0;
        self
    }
}

/// `[tracking]`: allocation tracking and memory consumers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrackingConfig {
    pub enabled: bool,
    /// Consumers (call sites / libraries) tracked at most.
    pub max_consumers: u32,
    /// Operation records kept in memory at most.
    pub max_operations: u32,
    /// Frames captured per allocation stack (at most 127, the kernel's limit).
    pub stack_trace_depth: u32,
    /// Allocations smaller than this (bytes) are not recorded as operations.
    pub min_allocation_size: u64,
    /// A single allocation at least this large (bytes) is flagged suspicious.
    pub suspicious_size: u64,
    /// A consumer holding more than this (bytes) is flagged.
    pub max_consumer_size: u64,
    /// Seconds after which a live allocation counts as a leak candidate.
    pub leak_age: u64,
    /// Allocation wrappers (exact function names) skipped when attributing memory to a caller,
    /// besides libc and C++ `operator new`.
    pub wrappers: Vec<String>,
    /// Groups of old live allocations listed in the leak view.
    pub leak_top: usize,
    /// Directories searched for separate debug files: `<dir>/.build-id/xx/yyyy.debug` by build
    /// id, and `<dir>/NAME` for an object's `.gnu_debuglink` NAME (which is also searched next to
    /// the object, where only root can write).
    pub debug_dirs: Vec<PathBuf>,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_consumers: 1000,
            max_operations: 5000,
            stack_trace_depth: memtrace_common::UNWIND_MAX_FRAMES as u32,
            min_allocation_size: 1024,
            suspicious_size: 10 * MIB,
            max_consumer_size: 100 * MIB,
            leak_age: 30,
            wrappers: Vec::new(),
            leak_top: 20,
            debug_dirs: DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// Where distributions install separate debug files (Debian's `-dbgsym` packages, RHEL's
/// `-debuginfo`).
pub const DEFAULT_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

impl TrackingConfig {
    pub fn leak_age(&self) -> Duration {
        Duration::from_secs(self.leak_age)
    }
}

/// `[retention]`: how long data files are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetentionConfig {
    pub snapshots_days: u32,
    pub alerts_days: u32,
    pub consumers_days: u32,
    pub operations_hours: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            snapshots_days: 7,
            alerts_days: 30,
            consumers_days: 7,
            operations_hours: 24,
        }
    }
}

const DAY: u64 = 24 * 60 * 60;

impl RetentionConfig {
    pub fn snapshots(&self) -> Duration {
        Duration::from_secs(u64::from(self.snapshots_days) * DAY)
    }

    pub fn alerts(&self) -> Duration {
        Duration::from_secs(u64::from(self.alerts_days) * DAY)
    }

    pub fn consumers(&self) -> Duration {
        Duration::from_secs(u64::from(self.consumers_days) * DAY)
    }

    pub fn operations(&self) -> Duration {
        Duration::from_secs(u64::from(self.operations_hours) * 60 * 60)
    }
}

/// `[metrics]`: which processes and libraries get their own series in Prometheus `/metrics`.
///
/// Series are keyed by process identity (command name and cgroup), never by pid alone. The `topK`
/// identities by RSS get their own series, the rest are summed into `comm="other"`; membership has
/// hysteresis so that series neither flap nor churn: an identity enters once it has been seen for
/// `enterAfter` seconds and ranks in the top K by more than `margin`, and leaves once it has been
/// out of the top K by more than `margin` (or gone) for `leaveAfter` seconds; at most `2 * topK` at
/// a time. Libraries likewise, by live bytes. See `http::metrics::TopK`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Process identities with their own series.
    pub top_k: usize,
    /// (Process identity, library) pairs with their own `memtrace_library_live_bytes` series.
    pub top_k_libraries: usize,
    /// Relative margin (0.2 = 20 %): a newcomer enters only when its value is above the
    /// (K+1)-th largest times (1 + margin), a member is out only when its value times (1 + margin)
    /// is below the K-th largest.
    pub margin: f64,
    /// Seconds an identity must have been seen (in consecutive snapshots) before it gets series;
    /// processes that live shorter stay in `other`. Those running when the agent starts qualify at once.
    pub enter_after: u64,
    /// Seconds a member must have been out of the top K (or gone) before it loses its series.
    pub leave_after: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            top_k: 50,
            top_k_libraries: 50,
            margin: 0.2,
            enter_after: 60,
            leave_after: 300,
        }
    }
}

/// Most identities (or libraries) `metrics.topK` (`topKLibraries`) may give series to.
pub const METRICS_TOP_K_MAX: usize = 10_000;

/// Values given on the command line, applied over the file's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    pub snapshot_interval: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub webhook_url: Option<String>,
    /// Added to `agent.pids`.
    pub pids: Vec<u32>,
    pub malloc_all: Option<bool>,
    pub history: Option<usize>,
    pub top: Option<usize>,
    pub persist: Option<bool>,
    pub bpf_stats: Option<bool>,
    pub ring_buffer_mb: Option<u32>,
    pub inflight_entries: Option<u32>,
    pub stack_entries: Option<u32>,
    pub capture_stacks: Option<bool>,
    pub drilldown_enabled: Option<bool>,
    pub drilldown_window: Option<u64>,
    pub drilldown_max: Option<usize>,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, &ConfigOverrides::default())
    }

    /// Reads and parses a configuration file, applies command-line overrides, and validates the
    /// result (so that a flag can make a file's values consistent: `--snapshot-interval 1` with
    /// `analysisInterval = 2`).
    pub fn load_with(
        path: impl AsRef<Path>,
        overrides: &ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: Some(path.to_path_buf()),
            source,
        })?;
        config.apply(overrides)?;
        Ok(config)
    }

    /// The URL under which the agent's API is reached: `alerting.externalUrl`, else `http://` and
    /// `monitor.listen`, without a trailing slash.
    pub fn external_url(&self) -> String {
        self.alerting
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.monitor.listen))
            .trim_end_matches('/')
            .to_owned()
    }

    /// Parses and validates a configuration given as a string.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Applies command-line overrides, then validates the result. On error `self` is unchanged.
    pub fn apply(&mut self, overrides: &ConfigOverrides) -> Result<(), ConfigError> {
        let mut next = self.clone();
        if let Some(v) = overrides.snapshot_interval {
            next.monitor.snapshot_interval = v;
        }
        if let Some(v) = overrides.listen {
            next.monitor.listen = v;
        }
        if let Some(v) = &overrides.data_dir {
            next.monitor.data_dir = v.clone();
        }
        if let Some(v) = &overrides.webhook_url {
            next.alerting.webhook_url = Some(v.clone());
        }
        for &pid in &overrides.pids {
            if !next.agent.pids.contains(&pid) {
                next.agent.pids.push(pid);
            }
        }
        let set = |slot: &mut _, value: Option<_>| {
            if let Some(value) = value {
                *slot = value;
            }
        };
        set(&mut next.agent.malloc_all, overrides.malloc_all);
        set(&mut next.agent.persist, overrides.persist);
        set(&mut next.agent.bpf_stats, overrides.bpf_stats);
        set(&mut next.probes.capture_stacks, overrides.capture_stacks);
        set(&mut next.drilldown.enabled, overrides.drilldown_enabled);
        let set = |slot: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *slot = value;
            }
        };
        set(&mut next.agent.history, overrides.history);
        set(&mut next.agent.top, overrides.top);
        set(&mut next.drilldown.max_processes, overrides.drilldown_max);
        let set = |slot: &mut u32, value: Option<u32>| {
            if let Some(value) = value {
                *slot = value;
            }
        };
        set(&mut next.probes.ring_buffer_mb, overrides.ring_buffer_mb);
        set(
            &mut next.probes.inflight_entries,
            overrides.inflight_entries,
        );
        set(&mut next.probes.stack_entries, overrides.stack_entries);
        if let Some(v) = overrides.drilldown_window {
            next.drilldown.window = v;
        }
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Checks the ranges of all values; the error names the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.monitor;
        at_least("monitor.snapshotInterval", m.snapshot_interval, 1)?;
        at_least("monitor.analysisInterval", m.analysis_interval, 1)?;
        if m.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("monitor.dataDir", "must not be empty"));
        }
        if m.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid("monitor.token", "must not be empty"));
        }
        if m.token_file
            .as_deref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::invalid(
                "monitor.tokenFile",
                "must not be empty",
            ));
        }

        if m.analysis_interval < m.snapshot_interval {
            return Err(ConfigError::invalid(
                "monitor.analysisInterval",
                format!(
                    "must be at least monitor.snapshotInterval ({} s): an analysis needs new snapshots",
                    m.snapshot_interval
                ),
            ));
        }

        let g = &self.agent;
        at_least("agent.history", g.history as u64, 2)?;
        at_most("agent.history", g.history as u64, HISTORY_MAX as u64)?;
        if let Some(&pid) = g.pids.iter().find(|&&pid| pid == 0) {
            return Err(ConfigError::invalid(
                "agent.pids",
                format!("{pid} is not a process id"),
            ));
        }

        let pr = &self.probes;
        if pr.ring_buffer_mb == 0
            || !pr.ring_buffer_mb.is_power_of_two()
            || pr.ring_buffer_mb > 1024
        {
            return Err(ConfigError::invalid(
                "probes.ringBufferMB",
                "must be a power of two from 1 to 1024 (MiB)",
            ));
        }
        at_least("probes.inflightEntries", u64::from(pr.inflight_entries), 1)?;
        at_most(
            "probes.inflightEntries",
            u64::from(pr.inflight_entries),
            1 << 22,
        )?;
        at_least("probes.stackEntries", u64::from(pr.stack_entries), 1)?;
        at_most("probes.stackEntries", u64::from(pr.stack_entries), 1 << 20)?;
        at_least("probes.unwindTableMB", u64::from(pr.unwind_table_mb), 1)?;
        at_most("probes.unwindTableMB", u64::from(pr.unwind_table_mb), 4096)?;
        at_least("probes.unwindDepth", u64::from(pr.unwind_depth), 1)?;
        at_most(
            "probes.unwindDepth",
            u64::from(pr.unwind_depth),
            u64::from(memtrace_common::UNWIND_MAX_FRAMES as u32),
        )?;
        at_least("probes.unwindProcesses", u64::from(pr.unwind_processes), 1)?;
        at_most(
            "probes.unwindProcesses",
            u64::from(pr.unwind_processes),
            65_536,
        )?;
        cores("probes.cpuBudget", pr.cpu_budget)?;

        let d = &self.drilldown;
        at_least("drilldown.window", d.window, 1)?;
        at_most("drilldown.window", d.window, DRILLDOWN_WINDOW_MAX)?;
        at_least("drilldown.maxProcesses", d.max_processes as u64, 1)?;
        at_most("drilldown.maxProcesses", d.max_processes as u64, 64)?;
        cores("drilldown.cpuBudget", d.cpu_budget)?;

        let t = &self.thresholds;
        positive("thresholds.externalMB", t.external_mb)?;
        positive("thresholds.externalRatio", t.external_ratio)?;
        positive("thresholds.rssMB", t.rss_mb)?;
        positive("thresholds.growthRateMB", t.growth_rate_mb)?;
        at_least("thresholds.growthRateWindow", t.growth_rate_window, 1)?;

        let p = &self.pattern_detection;
        at_least("patternDetection.windowSize", u64::from(p.window_size), 2)?;
        at_most(
            "patternDetection.windowSize",
            u64::from(p.window_size),
            u64::from(WINDOW_MAX),
        )?;
        if p.window_size as usize > self.agent.history {
            return Err(ConfigError::invalid(
                "patternDetection.windowSize",
                format!(
                    "must not exceed agent.history ({}): the window is taken from the snapshots kept in memory",
                    self.agent.history
                ),
            ));
        }
        at_least(
            "patternDetection.minDataPoints",
            u64::from(p.min_data_points),
            2,
        )?;
        if p.min_data_points > p.window_size {
            return Err(ConfigError::invalid(
                "patternDetection.minDataPoints",
                format!(
                    "must not exceed patternDetection.windowSize ({})",
                    p.window_size
                ),
            ));
        }
        if !(0.0..=100.0).contains(&p.confidence_threshold) {
            return Err(ConfigError::invalid(
                "patternDetection.confidenceThreshold",
                "must be between 0 and 100 (percent)",
            ));
        }

        let a = &self.alerting;
        at_least(
            "alerting.maxAlertsPerHour",
            u64::from(a.max_alerts_per_hour),
            1,
        )?;
        at_least(
            "alerting.maxAlertsPerProcessPerHour",
            u64::from(a.max_alerts_per_process_per_hour),
            1,
        )?;
        at_least(
            "alerting.maxAlertsPerTypePerHour",
            u64::from(a.max_alerts_per_type_per_hour),
            1,
        )?;
        at_least(
            "alerting.webhookResendInterval",
            a.webhook_resend_interval,
            1,
        )?;
        if let Some(url) = &a.external_url {
            let uri: Result<ureq::http::Uri, _> = url.parse();
            let ok = uri.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                return Err(ConfigError::invalid(
                    "alerting.externalUrl",
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        at_least("alerting.webhookTimeoutMs", a.webhook_timeout_ms, 1)?;
        at_least("alerting.webhookQueue", a.webhook_queue as u64, 1)?;
        if let Some(url) = &a.webhook_url {
            validate_webhook_url(url)?;
        }
        if a.webhook_client_cert.is_some() != a.webhook_client_key.is_some() {
            return Err(ConfigError::invalid(
                if a.webhook_client_cert.is_some() {
                    "alerting.webhookClientKey"
                } else {
                    "alerting.webhookClientCert"
                },
                "a client certificate needs both alerting.webhookClientCert and \
                 alerting.webhookClientKey",
            ));
        }
        let plain_http = a
            .webhook_url
            .as_deref()
            .is_some_and(|url| !url.starts_with("https://"));
        for (key, set) in [
            ("alerting.webhookCaFile", a.webhook_ca_file.is_some()),
            (
                "alerting.webhookClientCert",
                a.webhook_client_cert.is_some(),
            ),
        ] {
            if set && plain_http {
                return Err(ConfigError::invalid(
                    key,
                    "is for an https:// alerting.webhookUrl; this one is plain http",
                ));
            }
        }

        let k = &self.tracking;
        at_least("tracking.maxConsumers", u64::from(k.max_consumers), 1)?;
        at_least("tracking.maxOperations", u64::from(k.max_operations), 1)?;
        at_least(
            "tracking.stackTraceDepth",
            u64::from(k.stack_trace_depth),
            1,
        )?;
        if k.stack_trace_depth > 127 {
            return Err(ConfigError::invalid(
                "tracking.stackTraceDepth",
                "must be at most 127 (the kernel's stack depth limit)",
            ));
        }
        at_least("tracking.suspiciousSize", k.suspicious_size, 1)?;
        at_least("tracking.maxConsumerSize", k.max_consumer_size, 1)?;
        at_least("tracking.leakAge", k.leak_age, 1)?;
        at_least("tracking.leakTop", k.leak_top as u64, 1)?;
        if let Some(dir) = k.debug_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(ConfigError::invalid(
                "tracking.debugDirs",
                format!("{} is not an absolute path", dir.display()),
            ));
        }

        let x = &self.metrics;
        at_most("metrics.topK", x.top_k as u64, METRICS_TOP_K_MAX as u64)?;
        at_most(
            "metrics.topKLibraries",
            x.top_k_libraries as u64,
            METRICS_TOP_K_MAX as u64,
        )?;
        if !(x.margin.is_finite() && (0.0..=10.0).contains(&x.margin)) {
            return Err(ConfigError::invalid(
                "metrics.margin",
                "must be between 0 and 10 (a fraction: 0.2 is 20 %)",
            ));
        }
        at_most("metrics.enterAfter", x.enter_after, DAY)?;
        at_most("metrics.leaveAfter", x.leave_after, DAY)?;

        let r = &self.retention;
        at_least("retention.snapshotsDays", u64::from(r.snapshots_days), 1)?;
        at_least("retention.alertsDays", u64::from(r.alerts_days), 1)?;
        at_least("retention.consumersDays", u64::from(r.consumers_days), 1)?;
        at_least(
            "retention.operationsHours",
            u64::from(r.operations_hours),
            1,
        )?;
        Ok(())
    }

    /// The pattern detector's settings: `[patternDetection]`, with severity measured against
    /// `thresholds.growthRateMB`.
    pub fn pattern(&self) -> crate::analysis::PatternConfig {
        let p = &self.pattern_detection;
        crate::analysis::PatternConfig {
            window_size: p.window_size as usize,
            min_data_points: p.min_data_points as usize,
            confidence_threshold: p.confidence_threshold,
            growth_rate_mb: self.thresholds.growth_rate_mb,
            ..crate::analysis::PatternConfig::default()
        }
    }

    /// The API token, from the first of these that is set and not blank (each trimmed): the
    /// `--token` flag (`flag`), the `MEMTRACE_TOKEN` environment variable, `monitor.token`, the
    /// contents of `monitor.tokenFile` (an unreadable or empty file is an error); else none.
    pub fn resolve_token(&self, flag: Option<&str>) -> Result<Option<String>, ConfigError> {
        self.resolve_token_with(flag, std::env::var(TOKEN_ENV).ok().as_deref())
    }

    /// [`Config::resolve_token`] with the environment variable's value given.
    pub fn resolve_token_with(
        &self,
        flag: Option<&str>,
        env: Option<&str>,
    ) -> Result<Option<String>, ConfigError> {
        let set = |value: Option<&str>| {
            value
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        if let Some(token) = set(flag)
            .or_else(|| set(env))
            .or_else(|| set(self.monitor.token.as_deref()))
        {
            return Ok(Some(token));
        }
        let Some(path) = &self.monitor.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::TokenFileEmpty { path: path.clone() });
        }
        Ok(Some(token.to_owned()))
    }
}

impl Config {
    /// The configuration as it may be shown (export, logs): the webhook URL with its credentials
    /// and secret path masked (the token is never serialized at all).
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.alerting.webhook_url = shown.alerting.webhook_url.as_deref().map(redact_url);
        shown
    }
}

/// A URL with what may be secret masked: `scheme://user:***@host:port/***?***` (the user name is
/// kept, the password, the path and the query are not: webhook services put their secret in the
/// path). A string that is not a URL is masked whole.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return "***".into();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "***".into();
    };
    let authority = authority.as_str();
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{host}");
    if !matches!(uri.path(), "" | "/") {
        out.push_str("/***");
    }
    if uri.query().is_some() {
        out.push_str("?***");
    }
    out
}

fn at_least(key: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be >= {min}")));
    }
    Ok(())
}

fn at_most(key: &'static str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::invalid(key, format!("must be <= {max}")));
    }
    Ok(())
}

/// A CPU budget: more than nothing, at most 1024 cores.
fn cores(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= 1024.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value} is not a CPU budget: a number of cores above 0, at most 1024 (0.05 = 5% of one core)"),
        ))
    }
}

fn positive(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(ConfigError::invalid(key, "must be > 0"));
    }
    Ok(())
}

fn validate_webhook_url(url: &str) -> Result<(), ConfigError> {
    const KEY: &str = "alerting.webhookUrl";
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| ConfigError::invalid(KEY, format!("not a valid URL ({e})")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(ConfigError::invalid(
                KEY,
                "must start with http:// or https://",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(KEY, "has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    /// The error and all its sources, as `main` prints them.
    fn chain(e: &ConfigError) -> String {
        crate::error_chain(e)
    }

    fn invalid_key(text: &str) -> String {
        match Config::from_toml_str(text) {
            Err(ConfigError::Invalid { key, .. }) => key.to_owned(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_origin_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.monitor.snapshot_interval, 30);
        assert_eq!(c.monitor.analysis_interval, 120);
        assert_eq!(c.monitor.listen.to_string(), "127.0.0.1:10000");
        assert_eq!(c.monitor.data_dir, PathBuf::from("/var/lib/memtrace"));
        assert_eq!(c.thresholds.external_mb, 80.0);
        assert_eq!(c.thresholds.external_ratio, 1.5);
        assert_eq!(c.thresholds.rss_mb, 200.0);
        assert_eq!(c.thresholds.growth_rate_mb, 5.0);
        assert_eq!(c.pattern_detection.window_size, 20);
        assert_eq!(c.pattern_detection.min_data_points, 5);
        assert_eq!(c.pattern_detection.confidence_threshold, 70.0);
        assert!(c.alerting.enabled);
        assert_eq!(
            c.alerting.channels,
            [Channel::Console, Channel::File, Channel::Webhook]
        );
        assert_eq!(c.alerting.max_alerts_per_hour, 10);
        assert_eq!(c.alerting.active_webhook_url(), None);
        assert_eq!(c.alerting.webhook_timeout_ms, 5000);
        assert_eq!(c.alerting.webhook_retries, 3);
        assert_eq!(c.alerting.webhook_queue, 100);
        assert_eq!(c.alerting.auto_resolve_after, 300);
        assert_eq!(c.thresholds.for_seconds, 60);
        assert_eq!(c.thresholds.rss_for, None);
        assert_eq!(c.thresholds.growth_rate_window, 120);
        assert_eq!(c.alerting.pattern_for, 60);
        assert_eq!(c.alerting.grace_period, 60);
        assert_eq!(c.alerting.max_alerts_per_process_per_hour, 3);
        assert_eq!(c.alerting.max_alerts_per_type_per_hour, 5);
        assert_eq!(c.alerting.webhook_format, WebhookFormat::Origin);
        assert_eq!(c.alerting.webhook_resend_interval, 60);
        assert_eq!(c.external_url(), "http://127.0.0.1:10000");
        assert_eq!(c.tracking.suspicious_size, 10 * 1024 * 1024);
        assert_eq!(c.tracking.max_consumer_size, 100 * 1024 * 1024);
        assert_eq!(c.tracking.leak_age, 30);
        assert_eq!(c.retention.snapshots(), Duration::from_secs(7 * 86400));
        assert_eq!(c.retention.alerts(), Duration::from_secs(30 * 86400));
        assert_eq!(c.retention.operations(), Duration::from_secs(86400));
    }

    #[test]
    fn example_file_parses_to_defaults_plus_its_settings() {
        let text = include_str!("../../memtrace.example.toml");
        let c = Config::from_toml_str(text).unwrap();
        // The example lists every key with its default, except the commented-out optional ones.
        assert_eq!(c, Config::default());
    }

    #[test]
    fn camel_case_keys_parse() {
        let c = Config::from_toml_str(
            r#"
            [monitor]
            snapshotInterval = 5
            listen = "0.0.0.0:9000"
            dataDir = "/tmp/mt"
            token = "s3cret"
            [thresholds]
            externalMB = 10
            growthRateMB = 0.5
            for = 30
            rssFor = 120
            [patternDetection]
            confidenceThreshold = 90
            [alerting]
            channels = ["console"]
            webhookUrl = "http://127.0.0.1:8080/hook"
            webhookFormat = "alertmanager"
            externalUrl = "https://memtrace.example.com/"
            gracePeriod = 0
            [tracking]
            stackTraceDepth = 20
            [retention]
            operationsHours = 6
            "#,
        )
        .unwrap();
        assert_eq!(c.monitor.snapshot_interval(), Duration::from_secs(5));
        assert_eq!(c.monitor.listen.port(), 9000);
        assert_eq!(c.thresholds.external_mb, 10.0);
        assert_eq!(c.thresholds.growth_rate_mb, 0.5);
        assert_eq!(
            (c.thresholds.for_seconds, c.thresholds.rss_for),
            (30, Some(120))
        );
        assert_eq!(c.alerting.webhook_format, WebhookFormat::Alertmanager);
        assert_eq!(c.alerting.grace_period, 0);
        assert_eq!(c.external_url(), "https://memtrace.example.com");
        assert_eq!(c.pattern_detection.confidence_threshold, 90.0);
        assert_eq!(c.alerting.channels, [Channel::Console]);
        // Listed URL but webhook not among the channels: inactive.
        assert_eq!(c.alerting.active_webhook_url(), None);
        assert_eq!(c.tracking.stack_trace_depth, 20);
        assert_eq!(c.retention.operations(), Duration::from_secs(6 * 3600));
        // The token never leaks through Debug or serialization.
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret"));
    }

    #[test]
    fn metrics_section_parses() {
        let c = Config::from_toml_str(
            "[metrics]\ntopK = 10\ntopKLibraries = 0\nmargin = 0\nenterAfter = 5\nleaveAfter = 0\n",
        )
        .unwrap();
        assert_eq!(
            c.metrics,
            MetricsConfig {
                top_k: 10,
                top_k_libraries: 0,
                margin: 0.0,
                enter_after: 5,
                leave_after: 0,
            }
        );
        let defaults = Config::default().metrics;
        assert_eq!(
            (defaults.top_k, defaults.top_k_libraries),
            (50, 50),
            "issue 14 asks for a default K of 50"
        );
        let msg = chain(&Config::from_toml_str("[metrics]\ntopk = 3\n").unwrap_err());
        assert!(msg.contains("topk"), "{msg}");
    }

    #[test]
    fn unknown_key_error_names_key_and_line() {
        let err = Config::from_toml_str("[monitor]\nsnapshotInterval = 5\nsnapshotIntervall = 3\n")
            .unwrap_err();
        let msg = chain(&err);
        assert!(matches!(err, ConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains("snapshotIntervall"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let msg = chain(&Config::from_toml_str("[nope]\n").unwrap_err());
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn type_error_names_key_and_line() {
        let err = Config::from_toml_str("[thresholds]\n\nrssMB = \"big\"\n").unwrap_err();
        let msg = chain(&err);
        assert!(msg.contains("rssMB"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let msg =
            chain(&Config::from_toml_str("[alerting]\nchannels = [\"email\"]\n").unwrap_err());
        assert!(msg.contains("email"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn parse_error_of_a_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("memtrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[monitor\n").unwrap();
        let msg = chain(&Config::load(&path).unwrap_err());
        assert!(msg.contains("bad.toml"), "{msg}");
        let msg = chain(&Config::load(dir.join("missing.toml")).unwrap_err());
        assert!(msg.contains("missing.toml"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        let cases = [
            (
                "[monitor]\nsnapshotInterval = 0",
                "monitor.snapshotInterval",
            ),
            (
                "[monitor]\nanalysisInterval = 0",
                "monitor.analysisInterval",
            ),
            ("[monitor]\ndataDir = \"\"", "monitor.dataDir"),
            ("[monitor]\ntoken = \" \"", "monitor.token"),
            (
                "[thresholds]\nexternalRatio = 0",
                "thresholds.externalRatio",
            ),
            ("[metrics]\ntopK = 10001", "metrics.topK"),
            ("[metrics]\ntopKLibraries = 10001", "metrics.topKLibraries"),
            ("[metrics]\nmargin = -0.1", "metrics.margin"),
            ("[metrics]\nmargin = 11", "metrics.margin"),
            ("[metrics]\nenterAfter = 86401", "metrics.enterAfter"),
            ("[metrics]\nleaveAfter = 86401", "metrics.leaveAfter"),
            (
                "[thresholds]\nexternalRatio = -1.5",
                "thresholds.externalRatio",
            ),
            ("[thresholds]\nexternalMB = nan", "thresholds.externalMB"),
            ("[thresholds]\nrssMB = 0", "thresholds.rssMB"),
            (
                "[thresholds]\ngrowthRateMB = inf",
                "thresholds.growthRateMB",
            ),
            (
                "[patternDetection]\nconfidenceThreshold = 101",
                "patternDetection.confidenceThreshold",
            ),
            (
                "[patternDetection]\nwindowSize = 1",
                "patternDetection.windowSize",
            ),
            (
                "[patternDetection]\nminDataPoints = 30",
                "patternDetection.minDataPoints",
            ),
            (
                "[alerting]\nmaxAlertsPerHour = 0",
                "alerting.maxAlertsPerHour",
            ),
            (
                "[alerting]\nwebhookUrl = \"ftp://x/y\"",
                "alerting.webhookUrl",
            ),
            (
                "[alerting]\nwebhookUrl = \"https://x/y\"\nwebhookClientCert = \"/c.pem\"",
                "alerting.webhookClientKey",
            ),
            (
                "[alerting]\nwebhookUrl = \"https://x/y\"\nwebhookClientKey = \"/k.pem\"",
                "alerting.webhookClientCert",
            ),
            (
                "[alerting]\nwebhookUrl = \"http://x/y\"\nwebhookCaFile = \"/ca.pem\"",
                "alerting.webhookCaFile",
            ),
            (
                "[alerting]\nwebhookUrl = \"not a url\"",
                "alerting.webhookUrl",
            ),
            (
                "[alerting]\nwebhookTimeoutMs = 0",
                "alerting.webhookTimeoutMs",
            ),
            ("[alerting]\nwebhookQueue = 0", "alerting.webhookQueue"),
            (
                "[alerting]\nmaxAlertsPerProcessPerHour = 0",
                "alerting.maxAlertsPerProcessPerHour",
            ),
            (
                "[alerting]\nmaxAlertsPerTypePerHour = 0",
                "alerting.maxAlertsPerTypePerHour",
            ),
            (
                "[alerting]\nwebhookResendInterval = 0",
                "alerting.webhookResendInterval",
            ),
            (
                "[alerting]\nexternalUrl = \"ftp://x\"",
                "alerting.externalUrl",
            ),
            (
                "[thresholds]\ngrowthRateWindow = 0",
                "thresholds.growthRateWindow",
            ),
            (
                "[tracking]\nstackTraceDepth = 128",
                "tracking.stackTraceDepth",
            ),
            ("[tracking]\nleakAge = 0", "tracking.leakAge"),
            (
                "[tracking]\ndebugDirs = [\"usr/lib/debug\"]",
                "tracking.debugDirs",
            ),
            (
                "[monitor]\nsnapshotInterval = 60\nanalysisInterval = 30",
                "monitor.analysisInterval",
            ),
            ("[agent]\nhistory = 10", "patternDetection.windowSize"),
            ("[agent]\nhistory = 100001", "agent.history"),
            ("[agent]\npids = [0]", "agent.pids"),
            (
                "[patternDetection]\nwindowSize = 100000",
                "patternDetection.windowSize",
            ),
            ("[probes]\nringBufferMB = 3", "probes.ringBufferMB"),
            ("[probes]\nringBufferMB = 2048", "probes.ringBufferMB"),
            ("[probes]\ninflightEntries = 0", "probes.inflightEntries"),
            ("[drilldown]\nwindow = 0", "drilldown.window"),
            (
                "[drilldown]\nwindow = 18446744073709551615",
                "drilldown.window",
            ),
            ("[drilldown]\nmaxProcesses = 0", "drilldown.maxProcesses"),
            ("[drilldown]\ncpuBudget = 0", "drilldown.cpuBudget"),
            ("[probes]\ncpuBudget = -1", "probes.cpuBudget"),
            ("[probes]\ncpuBudget = nan", "probes.cpuBudget"),
            ("[retention]\nalertsDays = 0", "retention.alertsDays"),
            (
                "[retention]\noperationsHours = 0",
                "retention.operationsHours",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(invalid_key(text), key, "{text}");
        }
        let err = Config::from_toml_str("[thresholds]\nexternalRatio = 0").unwrap_err();
        assert_eq!(err.to_string(), "thresholds.externalRatio: must be > 0");
    }

    /// https URLs are accepted, with the TLS files that go with them.
    #[test]
    fn https_webhook_with_tls_files() {
        let c = Config::from_toml_str(
            r#"
            [alerting]
            webhookUrl = "https://alerts.example:8443/hook"
            webhookCaFile = "/etc/memtrace/ca.pem"
            webhookClientCert = "/etc/memtrace/client.pem"
            webhookClientKey = "/etc/memtrace/client.key"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.alerting.active_webhook_url(),
            Some("https://alerts.example:8443/hook")
        );
        assert_eq!(
            c.alerting.webhook_ca_file.as_deref(),
            Some(Path::new("/etc/memtrace/ca.pem"))
        );
        assert_eq!(
            c.alerting.webhook_client_cert.as_deref(),
            Some(Path::new("/etc/memtrace/client.pem"))
        );
        assert_eq!(
            c.alerting.webhook_client_key.as_deref(),
            Some(Path::new("/etc/memtrace/client.key"))
        );
        let c = Config::from_toml_str("[alerting]\nwebhookUrl = \"https://x/y\"").unwrap();
        assert_eq!(c.alerting.active_webhook_url(), Some("https://x/y"));
    }

    #[test]
    fn flags_apply_before_the_checks_between_keys() {
        let dir = std::env::temp_dir().join(format!("memtrace-load-with-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        // Alone, analysisInterval 2 is below the default snapshotInterval (30)...
        std::fs::write(&path, "[monitor]\nanalysisInterval = 2\n").unwrap();
        assert!(Config::load(&path).is_err());
        // ... but not with --snapshot-interval 1.
        let c = Config::load_with(
            &path,
            &ConfigOverrides {
                snapshot_interval: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            (c.monitor.snapshot_interval, c.monitor.analysis_interval),
            (1, 2)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overrides_apply_and_are_validated() {
        let mut c = Config::default();
        c.apply(&ConfigOverrides {
            snapshot_interval: Some(10),
            listen: Some("0.0.0.0:1234".parse().unwrap()),
            data_dir: Some("/data".into()),
            webhook_url: Some("http://127.0.0.1:9/x".into()),
            pids: vec![42],
            history: Some(500),
            drilldown_window: Some(5),
            ring_buffer_mb: Some(16),
            capture_stacks: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.agent.pids, [42]);
        assert_eq!(c.agent.history, 500);
        assert_eq!(c.drilldown.window, 5);
        assert_eq!(c.probes.ring_buffer_bytes(), 16 << 20);
        assert!(!c.probes.capture_stacks);
        assert_eq!(c.monitor.snapshot_interval, 10);
        assert_eq!(c.monitor.listen.port(), 1234);
        assert_eq!(c.monitor.data_dir, PathBuf::from("/data"));
        assert_eq!(
            c.alerting.active_webhook_url(),
            Some("http://127.0.0.1:9/x")
        );

        let before = c.clone();
        let err = c
            .apply(&ConfigOverrides {
                snapshot_interval: Some(0),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().starts_with("monitor.snapshotInterval"),
            "{err}"
        );
        assert_eq!(c, before);
    }

    #[test]
    fn urls_are_shown_without_their_secrets() {
        assert_eq!(
            redact_url("https://user:pa55@hooks.example.com:8443/services/T0/B0/SECRET?x=1"),
            "https://user:***@hooks.example.com:8443/***?***"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9000/"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(redact_url("not a url"), "***");
        let mut c = Config::default();
        c.alerting.webhook_url = Some("http://u:p@h/secret".into());
        assert_eq!(
            c.redacted().alerting.webhook_url.as_deref(),
            Some("http://u:***@h/***")
        );
    }

    #[test]
    fn token_resolution_order() {
        let dir = std::env::temp_dir().join(format!("memtrace-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let token = |c: &Config, flag: Option<&str>, env: Option<&str>| {
            c.resolve_token_with(flag, env).unwrap()
        };

        let mut c = Config::default();
        assert_eq!(token(&c, None, None), None);
        c.monitor.token_file = Some(file.clone());
        assert_eq!(token(&c, None, None).as_deref(), Some("from-file"));
        c.monitor.token = Some(" from-config ".into());
        assert_eq!(token(&c, None, None).as_deref(), Some("from-config"));
        // The environment wins over the file, the flag over both.
        assert_eq!(
            token(&c, None, Some(" from-env\t")).as_deref(),
            Some("from-env")
        );
        assert_eq!(
            token(&c, Some("from-flag"), Some("from-env")).as_deref(),
            Some("from-flag")
        );
        // Blank counts as unset, wherever it comes from.
        assert_eq!(
            token(&c, Some("  "), Some("   ")).as_deref(),
            Some("from-config")
        );

        c.monitor.token = None;
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            c.resolve_token_with(None, None),
            Err(ConfigError::TokenFileEmpty { .. })
        ));
        c.monitor.token_file = Some(dir.join("missing"));
        let err = c.resolve_token_with(None, None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
