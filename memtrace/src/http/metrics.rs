//! Prometheus `/metrics`: a registry built at each scrape from the backend's [`MetricsInput`],
//! written in the text exposition format by the `prometheus` crate (which escapes label values).
//!
//! Names have the `memtrace_` prefix and base units; `_total` only on counters. Cardinality is
//! bounded: the `top_k` processes by RSS get their own series and the rest are summed into
//! `pid="other"`; likewise the `top_k_libraries` (process, library) pairs by live bytes, the rest
//! in `library="other"`.

use std::cmp::Ordering;

use prometheus::{CounterVec, GaugeVec, Opts, Registry, TextEncoder};

use super::backend::{MetricsInput, ProcessMetrics};
use crate::events::Kind;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Alert types and severities that always have a `memtrace_alerts_active` series (0 when none),
/// so that alerting rules see a value rather than an absent series.
const ALERT_TYPES: [&str; 4] = ["threshold", "pattern", "leak", "spike"];
const ALERT_SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

const PROCESS_LABELS: [&str; 3] = ["pid", "comm", "container"];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the metric {0}")]
    Metric(String, #[source] prometheus::Error),
    #[error("cannot encode the metrics")]
    Encode(#[source] prometheus::Error),
}

/// A registry being filled for one scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn gauge(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<Family<GaugeVec>, MetricsError> {
        let vec = GaugeVec::new(Opts::new(name, help), labels)
            .map_err(|e| MetricsError::Metric(name.to_string(), e))?;
        self.registry
            .register(Box::new(vec.clone()))
            .map_err(|e| MetricsError::Metric(name.to_string(), e))?;
        Ok(Family {
            name: name.to_string(),
            vec,
        })
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<Family<CounterVec>, MetricsError> {
        let vec = CounterVec::new(Opts::new(name, help), labels)
            .map_err(|e| MetricsError::Metric(name.to_string(), e))?;
        self.registry
            .register(Box::new(vec.clone()))
            .map_err(|e| MetricsError::Metric(name.to_string(), e))?;
        Ok(Family {
            name: name.to_string(),
            vec,
        })
    }
}

/// A metric family and its name (for errors).
struct Family<V> {
    name: String,
    vec: V,
}

impl Family<GaugeVec> {
    /// Adds `value` to the series with these label values (a new series starts at 0). Non-finite
    /// values are left out.
    fn add(&self, labels: &[&str], value: f64) -> Result<(), MetricsError> {
        if !value.is_finite() {
            return Ok(());
        }
        self.vec
            .get_metric_with_label_values(labels)
            .map_err(|e| MetricsError::Metric(self.name.clone(), e))?
            .add(value);
        Ok(())
    }
}

impl Family<CounterVec> {
    /// Sets the counter (new at each scrape) to `value`; negative and non-finite values count as 0.
    fn set(&self, labels: &[&str], value: f64) -> Result<(), MetricsError> {
        let counter = self
            .vec
            .get_metric_with_label_values(labels)
            .map_err(|e| MetricsError::Metric(self.name.clone(), e))?;
        if value.is_finite() && value > 0.0 {
            counter.inc_by(value);
        }
        Ok(())
    }
}

/// The per-process families.
struct ProcessFamilies {
    rss: Family<GaugeVec>,
    rss_anon: Family<GaugeVec>,
    rss_file: Family<GaugeVec>,
    rss_shmem: Family<GaugeVec>,
    swap: Family<GaugeVec>,
    heap_live: Family<GaugeVec>,
    heap_allocations: Family<GaugeVec>,
    mapped: Family<GaugeVec>,
    brk: Family<GaugeVec>,
    external: Family<GaugeVec>,
    external_ratio: Family<GaugeVec>,
    heap_traced: Family<GaugeVec>,
    growth_rate: Family<GaugeVec>,
    pattern_confidence: Family<GaugeVec>,
}

impl ProcessFamilies {
    fn new(scrape: &Scrape) -> Result<Self, MetricsError> {
        let l = &PROCESS_LABELS;
        let with = |extra: &'static str| {
            [
                PROCESS_LABELS[0],
                PROCESS_LABELS[1],
                PROCESS_LABELS[2],
                extra,
            ]
        };
        Ok(Self {
            rss: scrape.gauge("memtrace_process_rss_bytes", "Resident set size.", l)?,
            rss_anon: scrape.gauge("memtrace_process_rss_anon_bytes", "Resident anonymous memory.", l)?,
            rss_file: scrape.gauge("memtrace_process_rss_file_bytes", "Resident file-backed memory.", l)?,
            rss_shmem: scrape.gauge("memtrace_process_rss_shmem_bytes", "Resident shared memory.", l)?,
            swap: scrape.gauge("memtrace_process_swap_bytes", "Swapped-out anonymous memory.", l)?,
            heap_live: scrape.gauge(
                "memtrace_process_heap_live_bytes",
                "Live bytes of the traced heap (requested sizes); only for traced processes.",
                l,
            )?,
            heap_allocations: scrape.gauge(
                "memtrace_process_heap_live_allocations",
                "Live allocations of the traced heap; only for traced processes.",
                l,
            )?,
            mapped: scrape.gauge(
                "memtrace_process_mapped_bytes",
                "Live bytes of mappings made with mmap/mremap, by kind (anon, file).",
                &with("kind"),
            )?,
            brk: scrape.gauge("memtrace_process_brk_bytes", "Extent of the program break above its start.", l)?,
            external: scrape.gauge(
                "memtrace_process_external_bytes",
                "RSS minus live heap bytes; only for traced processes.",
                l,
            )?,
            external_ratio: scrape.gauge(
                "memtrace_process_external_ratio",
                "External bytes over live heap bytes; only for traced processes with a heap.",
                l,
            )?,
            heap_traced: scrape.gauge(
                "memtrace_process_heap_traced",
                "1 when the malloc family of the process is traced (for pid=\"other\": how many are).",
                l,
            )?,
            growth_rate: scrape.gauge(
                "memtrace_process_growth_rate_bytes_per_second",
                "Growth rate of the RSS.",
                l,
            )?,
            pattern_confidence: scrape.gauge(
                "memtrace_process_pattern_confidence",
                "Confidence (0-100) of the current growth pattern, labelled with its type.",
                &with("type"),
            )?,
        })
    }

    /// Adds the figures of `p`; `traced` is the value of `memtrace_process_heap_traced`.
    fn add(&self, labels: &[&str; 3], p: &ProcessMetrics, traced: f64) -> Result<(), MetricsError> {
        let s = &p.snapshot;
        self.rss.add(labels, s.rss_bytes as f64)?;
        self.rss_anon.add(labels, s.rss_anon_bytes as f64)?;
        self.rss_file.add(labels, s.rss_file_bytes as f64)?;
        self.rss_shmem.add(labels, s.rss_shmem_bytes as f64)?;
        self.swap.add(labels, s.swap_bytes as f64)?;
        let [pid, comm, container] = *labels;
        self.mapped
            .add(&[pid, comm, container, "anon"], s.mapped_anon_bytes as f64)?;
        self.mapped
            .add(&[pid, comm, container, "file"], s.mapped_file_bytes as f64)?;
        self.brk.add(labels, s.brk_bytes as f64)?;
        self.heap_traced.add(labels, traced)?;
        if s.heap_traced {
            self.heap_live.add(labels, s.heap_live_bytes as f64)?;
            self.heap_allocations
                .add(labels, s.heap_live_count as f64)?;
        }
        if let Some(external) = s.external_bytes {
            self.external.add(labels, external as f64)?;
        }
        if let Some(rate) = p.growth_rate_bytes_per_second {
            self.growth_rate.add(labels, rate)?;
        }
        Ok(())
    }
}

/// Sums of the processes past the top K.
#[derive(Default)]
struct Other {
    any: bool,
    process: ProcessMetrics,
    /// External and live heap bytes of the processes that have an external ratio.
    ratio_external: f64,
    ratio_heap: f64,
    traced: u64,
}

impl Other {
    fn add(&mut self, p: &ProcessMetrics) {
        let s = &p.snapshot;
        let o = &mut self.process.snapshot;
        self.any = true;
        o.rss_bytes = o.rss_bytes.saturating_add(s.rss_bytes);
        o.rss_anon_bytes = o.rss_anon_bytes.saturating_add(s.rss_anon_bytes);
        o.rss_file_bytes = o.rss_file_bytes.saturating_add(s.rss_file_bytes);
        o.rss_shmem_bytes = o.rss_shmem_bytes.saturating_add(s.rss_shmem_bytes);
        o.swap_bytes = o.swap_bytes.saturating_add(s.swap_bytes);
        o.mapped_anon_bytes = o.mapped_anon_bytes.saturating_add(s.mapped_anon_bytes);
        o.mapped_file_bytes = o.mapped_file_bytes.saturating_add(s.mapped_file_bytes);
        o.brk_bytes = o.brk_bytes.saturating_add(s.brk_bytes);
        if s.heap_traced {
            self.traced += 1;
            o.heap_traced = true;
            o.heap_live_bytes = o.heap_live_bytes.saturating_add(s.heap_live_bytes);
            o.heap_live_count = o.heap_live_count.saturating_add(s.heap_live_count);
        }
        if let Some(external) = s.external_bytes {
            o.external_bytes = Some(o.external_bytes.unwrap_or(0).saturating_add(external));
        }
        if let (Some(_), Some(external)) = (s.external_ratio, s.external_bytes) {
            self.ratio_external += external as f64;
            self.ratio_heap += s.heap_live_bytes as f64;
        }
        if let Some(rate) = p.growth_rate_bytes_per_second.filter(|r| r.is_finite()) {
            self.process.growth_rate_bytes_per_second =
                Some(self.process.growth_rate_bytes_per_second.unwrap_or(0.0) + rate);
        }
    }
}

fn by_rss_desc(a: &&ProcessMetrics, b: &&ProcessMetrics) -> Ordering {
    b.snapshot
        .rss_bytes
        .cmp(&a.snapshot.rss_bytes)
        .then(a.snapshot.pid.cmp(&b.snapshot.pid))
}

/// Renders the metrics in the text exposition format.
pub fn render(input: &MetricsInput) -> Result<String, MetricsError> {
    let scrape = Scrape {
        registry: Registry::new(),
    };

    // Processes: top K by RSS, the rest in pid="other".
    let families = ProcessFamilies::new(&scrape)?;
    let mut processes: Vec<&ProcessMetrics> = input.processes.iter().collect();
    processes.sort_by(by_rss_desc);
    let mut other = Other::default();
    for (rank, p) in processes.iter().enumerate() {
        if rank >= input.top_k {
            other.add(p);
            continue;
        }
        let pid = p.snapshot.pid.to_string();
        let labels = [pid.as_str(), p.snapshot.comm.as_str(), p.container.as_str()];
        families.add(&labels, p, if p.snapshot.heap_traced { 1.0 } else { 0.0 })?;
        if let Some(external_ratio) = p.snapshot.external_ratio {
            families.external_ratio.add(&labels, external_ratio)?;
        }
        if let Some(pattern) = p.pattern {
            let [pid, comm, container] = labels;
            families.pattern_confidence.add(
                &[pid, comm, container, pattern.kind.as_str()],
                pattern.confidence,
            )?;
        }
    }
    if other.any {
        let labels = ["other", "", ""];
        // heap_traced of "other" counts the traced processes.
        families.add(&labels, &other.process, other.traced as f64)?;
        if other.ratio_heap > 0.0 {
            families
                .external_ratio
                .add(&labels, other.ratio_external / other.ratio_heap)?;
        }
    }

    // Libraries: top K (process, library) pairs by live bytes, the rest in library="other".
    let libraries_family = scrape.gauge(
        "memtrace_library_live_bytes",
        "Live bytes a library asked for (through the allocator or mapped directly), per process.",
        &["pid", "comm", "library"],
    )?;
    let mut libraries: Vec<(&ProcessMetrics, &str, u64)> = input
        .processes
        .iter()
        .flat_map(|p| {
            p.snapshot
                .libraries
                .iter()
                .map(move |l| (p, l.library.as_str(), l.live_bytes))
        })
        .collect();
    libraries.sort_by(|a, b| {
        b.2.cmp(&a.2)
            .then(a.0.snapshot.pid.cmp(&b.0.snapshot.pid))
            .then(a.1.cmp(b.1))
    });
    let mut other_libraries: Option<u64> = None;
    for (rank, (p, library, live)) in libraries.iter().enumerate() {
        if rank >= input.top_k_libraries {
            other_libraries = Some(other_libraries.unwrap_or(0).saturating_add(*live));
            continue;
        }
        let pid = p.snapshot.pid.to_string();
        libraries_family.add(
            &[pid.as_str(), p.snapshot.comm.as_str(), library],
            *live as f64,
        )?;
    }
    if let Some(live) = other_libraries {
        libraries_family.add(&["other", "", "other"], live as f64)?;
    }

    // Alerts.
    let alerts = scrape.gauge(
        "memtrace_alerts_active",
        "Active alerts by type and severity.",
        &["type", "severity"],
    )?;
    for kind in ALERT_TYPES {
        for severity in ALERT_SEVERITIES {
            alerts.add(&[kind, severity], 0.0)?;
        }
    }
    for count in &input.alerts_active {
        alerts.add(
            &[count.kind.as_str(), count.severity.as_str()],
            count.count as f64,
        )?;
    }
    let counter = |name: &str, help: &str, value: f64| -> Result<(), MetricsError> {
        scrape.counter(name, help, &[])?.set(&[], value)
    };
    let gauge = |name: &str, help: &str, value: f64| -> Result<(), MetricsError> {
        scrape.gauge(name, help, &[])?.add(&[], value)
    };
    counter(
        "memtrace_alerts_suppressed_total",
        "Alerts not raised because of the hourly limit.",
        input.alerts_suppressed_total as f64,
    )?;

    // The pipeline.
    let events = scrape.counter(
        "memtrace_events_total",
        "Kernel events decoded, by kind.",
        &["kind"],
    )?;
    for kind in Kind::ALL {
        let value = input.events_by_kind.get(kind.index()).copied().unwrap_or(0);
        events.set(&[kind.name()], value as f64)?;
    }
    counter(
        "memtrace_events_lost_total",
        "Kernel events lost (ring buffer or in-flight map full).",
        input.events_lost_total as f64,
    )?;
    counter(
        "memtrace_consumers_evicted_total",
        "Consumers dropped from the full consumer table.",
        input.consumers_evicted_total as f64,
    )?;
    counter(
        "memtrace_webhook_sent_total",
        "Alert events delivered to the webhook.",
        input.webhook_sent_total as f64,
    )?;
    counter(
        "memtrace_webhook_failures_total",
        "Alert events the webhook did not accept after the retries.",
        input.webhook_failures_total as f64,
    )?;
    counter(
        "memtrace_webhook_dropped_total",
        "Alert events dropped from the webhook's full queue.",
        input.webhook_dropped_total as f64,
    )?;
    counter(
        "memtrace_store_write_failures_total",
        "Writes to the data directory that failed.",
        input.store_write_failures_total as f64,
    )?;
    counter(
        "memtrace_store_skipped_lines_total",
        "Corrupted, partial or over-long lines of data files skipped when read.",
        input.store_skipped_lines_total as f64,
    )?;
    counter(
        "memtrace_snapshots_dropped_total",
        "Snapshots not taken because the analysis side was behind.",
        input.snapshots_dropped_total as f64,
    )?;
    let traces = scrape.counter(
        "memtrace_heap_traces_total",
        "Heap tracings of a process started and stopped (requests, drill-downs, exits).",
        &["event"],
    )?;
    traces.set(&["started"], input.heap_traces_started_total as f64)?;
    traces.set(&["stopped"], input.heap_traces_stopped_total as f64)?;
    gauge(
        "memtrace_drilldowns_active",
        "Processes whose malloc family is traced on request.",
        input.drilldowns_active as f64,
    )?;

    // The agent's own cost.
    counter(
        "memtrace_agent_cpu_seconds_total",
        "CPU time (user and system) of the agent.",
        input.agent_cpu_seconds_total,
    )?;
    gauge(
        "memtrace_agent_rss_bytes",
        "Resident set size of the agent.",
        input.agent_rss_bytes as f64,
    )?;
    let run_time = scrape.counter(
        "memtrace_bpf_program_run_time_seconds_total",
        "Time spent in each eBPF program (needs kernel.bpf_stats_enabled=1).",
        &["program"],
    )?;
    let runs = scrape.counter(
        "memtrace_bpf_program_runs_total",
        "Runs of each eBPF program (needs kernel.bpf_stats_enabled=1).",
        &["program"],
    )?;
    for program in &input.bpf_programs {
        run_time.set(&[program.program.as_str()], program.run_time_seconds_total)?;
        runs.set(&[program.program.as_str()], program.runs_total as f64)?;
    }

    let mut text = String::new();
    TextEncoder::new()
        .encode_utf8(&scrape.registry.gather(), &mut text)
        .map_err(MetricsError::Encode)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{
        http::{
            backend::{AlertCount, BpfProgramStats, PatternMetric},
            mock::MockBackend,
            Backend as _,
        },
        snapshot::{LibrarySnapshot, ProcessSnapshot},
    };

    /// One sample of the exposition text.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses `{a="x",b="y"}` (after the name); returns the labels and the rest of the line.
    fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let Some(rest) = s.strip_prefix('{') else {
            return Ok((labels, s));
        };
        s = rest;
        loop {
            if let Some(rest) = s.strip_prefix('}') {
                return Ok((labels, rest));
            }
            let (name, rest) = s
                .split_once("=\"")
                .ok_or(format!("no label value in {s:?}"))?;
            if !valid_name(name) || name.starts_with("__") {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {rest:?}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err("raw newline in a label value".to_string()),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value {rest:?}")),
                }
            };
            if labels.insert(name.to_string(), value).is_some() {
                return Err(format!("label {name} twice"));
            }
            s = &rest[end + 1..];
            s = s.strip_prefix(',').unwrap_or(s);
        }
    }

    /// Checks the text exposition format the way memtrace uses it: every sample's family has HELP
    /// and TYPE (once, before its samples), counters and only counters end in `_total`, names
    /// have the `memtrace_` prefix, label values are escaped, values are numbers, no series twice.
    fn check(text: &str) -> Result<Vec<Sample>, String> {
        let mut help = BTreeSet::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, doc) = rest
                    .split_once(' ')
                    .ok_or(format!("HELP without text: {line}"))?;
                if doc.trim().is_empty() || !help.insert(name.to_string()) {
                    return Err(format!("empty or repeated HELP: {line}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
                if !matches!(kind, "counter" | "gauge") {
                    return Err(format!("unexpected type: {line}"));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return Err(format!("counter without _total: {name}"));
                }
                if kind != "counter" && name.ends_with("_total") {
                    return Err(format!("_total on a {kind}: {name}"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(format!("repeated TYPE: {line}"));
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).ok_or(format!("no value: {line}"))?;
            let name = &line[..name_end];
            if !valid_name(name) || !name.starts_with("memtrace_") {
                return Err(format!("bad metric name {name:?}"));
            }
            if !help.contains(name) || !types.contains_key(name) {
                return Err(format!("{name} has no HELP or TYPE before its samples"));
            }
            let (labels, rest) = parse_labels(&line[name_end..])?;
            let value = rest.trim();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| format!("bad value in {line}"))?,
            };
            if types[name] == "counter" && (value.is_nan() || value < 0.0) {
                return Err(format!("negative or NaN counter: {line}"));
            }
            if !seen.insert(format!("{name}{labels:?}")) {
                return Err(format!("series twice: {line}"));
            }
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(samples)
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples.iter().find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        find(samples, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
    }

    const ALL_NAMES: &[&str] = &[
        "memtrace_process_rss_bytes",
        "memtrace_process_rss_anon_bytes",
        "memtrace_process_rss_file_bytes",
        "memtrace_process_rss_shmem_bytes",
        "memtrace_process_swap_bytes",
        "memtrace_process_heap_live_bytes",
        "memtrace_process_heap_live_allocations",
        "memtrace_process_mapped_bytes",
        "memtrace_process_brk_bytes",
        "memtrace_process_external_bytes",
        "memtrace_process_external_ratio",
        "memtrace_process_heap_traced",
        "memtrace_process_growth_rate_bytes_per_second",
        "memtrace_process_pattern_confidence",
        "memtrace_library_live_bytes",
        "memtrace_alerts_active",
        "memtrace_alerts_suppressed_total",
        "memtrace_events_total",
        "memtrace_events_lost_total",
        "memtrace_consumers_evicted_total",
        "memtrace_webhook_sent_total",
        "memtrace_webhook_failures_total",
        "memtrace_webhook_dropped_total",
        "memtrace_store_write_failures_total",
        "memtrace_store_skipped_lines_total",
        "memtrace_snapshots_dropped_total",
        "memtrace_heap_traces_total",
        "memtrace_drilldowns_active",
        "memtrace_agent_cpu_seconds_total",
        "memtrace_agent_rss_bytes",
        "memtrace_bpf_program_run_time_seconds_total",
        "memtrace_bpf_program_runs_total",
    ];

    #[test]
    fn mock_metrics_are_well_formed_and_complete() {
        let text = render(&MockBackend::new().metrics()).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for name in ALL_NAMES {
            assert!(
                samples.iter().any(|s| s.name == *name),
                "no {name} in\n{text}"
            );
        }
        let node = [("pid", "100"), ("comm", "node"), ("container", "")];
        assert_eq!(
            value(&samples, "memtrace_process_rss_bytes", &node),
            (200u64 << 20) as f64
        );
        assert_eq!(value(&samples, "memtrace_process_heap_traced", &node), 1.0);
        assert_eq!(
            value(&samples, "memtrace_process_external_bytes", &node),
            (136u64 << 20) as f64
        );
        assert_eq!(
            value(&samples, "memtrace_process_external_ratio", &node),
            136.0 / 64.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_mapped_bytes",
                &[("pid", "100"), ("kind", "file")]
            ),
            (8u64 << 20) as f64
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_pattern_confidence",
                &[("pid", "100"), ("type", "leak")]
            ),
            85.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_rss_bytes",
                &[("pid", "200"), ("container", "0123456789ab")]
            ),
            (100u64 << 20) as f64
        );
        // Untraced processes have no heap series.
        assert!(find(
            &samples,
            "memtrace_process_heap_live_bytes",
            &[("pid", "200")]
        )
        .is_none());
        assert!(find(
            &samples,
            "memtrace_process_external_bytes",
            &[("pid", "200")]
        )
        .is_none());
        assert_eq!(
            value(&samples, "memtrace_process_heap_traced", &[("pid", "200")]),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_library_live_bytes",
                &[("pid", "100"), ("library", "/usr/lib/libcrypto.so.3")]
            ),
            (40u64 << 20) as f64
        );
        // Every kind of event and every alert type/severity has a series.
        for kind in Kind::ALL {
            let v = value(&samples, "memtrace_events_total", &[("kind", kind.name())]);
            assert_eq!(v, 100.0 * (kind.index() as f64 + 1.0));
        }
        for kind in ALERT_TYPES {
            for severity in ALERT_SEVERITIES {
                find(
                    &samples,
                    "memtrace_alerts_active",
                    &[("type", kind), ("severity", severity)],
                )
                .unwrap_or_else(|| panic!("no alerts_active {kind} {severity}"));
            }
        }
        assert_eq!(
            value(
                &samples,
                "memtrace_alerts_active",
                &[("type", "threshold"), ("severity", "warning")]
            ),
            1.0
        );
        assert_eq!(value(&samples, "memtrace_events_lost_total", &[]), 7.0);
        assert_eq!(
            value(&samples, "memtrace_agent_cpu_seconds_total", &[]),
            1.25
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_bpf_program_runs_total",
                &[("program", "malloc_return")]
            ),
            1_000_000.0
        );
        // Three processes, K = 50: no "other".
        assert!(find(&samples, "memtrace_process_rss_bytes", &[("pid", "other")]).is_none());
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(&MockBackend::new().metrics()).expect("render");
        assert!(text.contains(r#"comm="we\"ird\\comm""#), "{text}");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            value(
                &samples,
                "memtrace_process_rss_bytes",
                &[("comm", "we\"ird\\comm")]
            ),
            (10u64 << 20) as f64
        );

        let input = MetricsInput {
            processes: vec![ProcessMetrics {
                snapshot: ProcessSnapshot {
                    pid: 1,
                    comm: "new\nline}{,=".to_string(),
                    rss_bytes: 1,
                    libraries: vec![LibrarySnapshot {
                        library: "/tmp/a \"b\"\\c.so".to_string(),
                        live_bytes: 5,
                        ..LibrarySnapshot::default()
                    }],
                    ..ProcessSnapshot::default()
                },
                container: "c\"1".to_string(),
                ..ProcessMetrics::default()
            }],
            bpf_programs: vec![BpfProgramStats {
                program: "x\\y".to_string(),
                run_time_seconds_total: 1.0,
                runs_total: 2,
            }],
            ..MetricsInput::default()
        };
        let text = render(&input).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains(r#"comm="new\nline}{,=""#), "{text}");
        let s = find(&samples, "memtrace_process_rss_bytes", &[("pid", "1")]).expect("series");
        assert_eq!(s.labels["comm"], "new\nline}{,=");
        assert_eq!(s.labels["container"], "c\"1");
        let lib = find(&samples, "memtrace_library_live_bytes", &[("pid", "1")]).expect("series");
        assert_eq!(lib.labels["library"], "/tmp/a \"b\"\\c.so");
        assert_eq!(
            value(
                &samples,
                "memtrace_bpf_program_runs_total",
                &[("program", "x\\y")]
            ),
            2.0
        );
    }

    fn process(pid: u32, rss_mb: u64, traced: bool) -> ProcessMetrics {
        let mut snapshot = ProcessSnapshot {
            pid,
            comm: format!("p{pid}"),
            rss_bytes: rss_mb << 20,
            rss_anon_bytes: rss_mb << 19,
            heap_traced: traced,
            heap_live_bytes: if traced { 1 << 20 } else { 0 },
            heap_live_count: if traced { 10 } else { 0 },
            mapped_anon_bytes: 1 << 10,
            libraries: (0..2)
                .map(|i| LibrarySnapshot {
                    library: format!("lib{i}.so"),
                    live_bytes: u64::from(pid) * 100 + i,
                    ..LibrarySnapshot::default()
                })
                .collect(),
            ..ProcessSnapshot::default()
        };
        snapshot.derive_external();
        ProcessMetrics {
            snapshot,
            container: String::new(),
            growth_rate_bytes_per_second: Some(f64::from(pid)),
            pattern: Some(PatternMetric {
                kind: crate::analysis::PatternType::Linear,
                confidence: 50.0,
            }),
        }
    }

    #[test]
    fn top_k_and_other() {
        // RSS 5, 4, 3, 2, 1 MiB for pids 1..5 (given out of order); the heaps of 3 and 4 traced.
        let input = MetricsInput {
            processes: vec![
                process(4, 2, true),
                process(1, 5, false),
                process(5, 1, false),
                process(2, 4, false),
                process(3, 3, true),
            ],
            top_k: 2,
            top_k_libraries: 3,
            ..MetricsInput::default()
        };
        let text = render(&input).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let rss: Vec<(&str, f64)> = samples
            .iter()
            .filter(|s| s.name == "memtrace_process_rss_bytes")
            .map(|s| (s.labels["pid"].as_str(), s.value))
            .collect();
        let mib = |n: u64| (n << 20) as f64;
        assert_eq!(rss.len(), 3, "{rss:?}");
        assert!(
            rss.contains(&("1", mib(5))) && rss.contains(&("2", mib(4))),
            "{rss:?}"
        );
        let other = [("pid", "other"), ("comm", ""), ("container", "")];
        assert_eq!(
            value(&samples, "memtrace_process_rss_bytes", &other),
            mib(3 + 2 + 1)
        );
        assert_eq!(
            value(&samples, "memtrace_process_rss_anon_bytes", &other),
            ((3u64 << 19) + (2 << 19) + (1 << 19)) as f64
        );
        assert_eq!(value(&samples, "memtrace_process_heap_traced", &other), 2.0);
        assert_eq!(
            value(&samples, "memtrace_process_heap_live_bytes", &other),
            mib(2)
        );
        assert_eq!(
            value(&samples, "memtrace_process_heap_live_allocations", &other),
            20.0
        );
        assert_eq!(
            value(&samples, "memtrace_process_external_bytes", &other),
            mib(3 + 2 - 2)
        );
        assert_eq!(
            value(&samples, "memtrace_process_external_ratio", &other),
            3.0 / 2.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_mapped_bytes",
                &[("pid", "other"), ("kind", "anon")]
            ),
            3.0 * 1024.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_growth_rate_bytes_per_second",
                &other
            ),
            (3 + 4 + 5) as f64
        );
        // No pattern for "other"; the top processes have theirs.
        assert!(find(
            &samples,
            "memtrace_process_pattern_confidence",
            &[("pid", "other")]
        )
        .is_none());
        assert!(find(
            &samples,
            "memtrace_process_pattern_confidence",
            &[("pid", "1"), ("type", "linear")]
        )
        .is_some());
        // Bounded: K + 1 series per process family.
        for name in [
            "memtrace_process_rss_bytes",
            "memtrace_process_heap_traced",
            "memtrace_process_brk_bytes",
        ] {
            assert_eq!(
                samples.iter().filter(|s| s.name == name).count(),
                3,
                "{name}"
            );
        }

        // Libraries: live bytes pid*100 + i; the top 3 overall are 501, 500, 401.
        let libraries: Vec<(String, String, f64)> = samples
            .iter()
            .filter(|s| s.name == "memtrace_library_live_bytes")
            .map(|s| {
                (
                    s.labels["pid"].clone(),
                    s.labels["library"].clone(),
                    s.value,
                )
            })
            .collect();
        assert_eq!(libraries.len(), 4, "{libraries:?}");
        for (pid, library, live) in [
            ("5", "lib1.so", 501.0),
            ("5", "lib0.so", 500.0),
            ("4", "lib1.so", 401.0),
        ] {
            assert!(
                libraries.contains(&(pid.to_string(), library.to_string(), live)),
                "{libraries:?}"
            );
        }
        let rest: u64 = [400, 100, 101, 200, 201, 300, 301].iter().sum();
        assert_eq!(
            value(
                &samples,
                "memtrace_library_live_bytes",
                &[("pid", "other"), ("library", "other")]
            ),
            rest as f64
        );
    }

    #[test]
    fn counters_never_go_negative() {
        let input = MetricsInput {
            agent_cpu_seconds_total: f64::NAN,
            bpf_programs: vec![BpfProgramStats {
                program: "p".to_string(),
                run_time_seconds_total: -1.0,
                runs_total: 0,
            }],
            alerts_active: vec![AlertCount {
                kind: "leak".to_string(),
                severity: "critical".to_string(),
                count: 2,
            }],
            ..MetricsInput::default()
        };
        let text = render(&input).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            value(&samples, "memtrace_agent_cpu_seconds_total", &[]),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_bpf_program_run_time_seconds_total",
                &[("program", "p")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_alerts_active",
                &[("type", "leak"), ("severity", "critical")]
            ),
            2.0
        );
        // Nothing per process without processes.
        assert!(!text.contains("memtrace_process_"));
    }

    #[test]
    fn the_checker_catches_mistakes() {
        assert!(check("memtrace_x 1\n").is_err());
        assert!(check(
            "# HELP memtrace_x_total x\n# TYPE memtrace_x_total gauge\nmemtrace_x_total 1\n"
        )
        .is_err());
        assert!(check("# HELP memtrace_x x\n# TYPE memtrace_x counter\nmemtrace_x 1\n").is_err());
        assert!(
            check("# HELP memtrace_x x\n# TYPE memtrace_x gauge\nmemtrace_x{a=\"b\"c\"} 1\n")
                .is_err()
        );
        assert!(
            check("# HELP memtrace_x x\n# TYPE memtrace_x gauge\nmemtrace_x{a=\"\\q\"} 1\n")
                .is_err()
        );
        assert!(check(
            "# HELP memtrace_x x\n# TYPE memtrace_x gauge\nmemtrace_x 1\nmemtrace_x 2\n"
        )
        .is_err());
        assert!(
            check("# HELP memtrace_x x\n# TYPE memtrace_x gauge\nmemtrace_x{a=\"\\\"\"} 1\n")
                .is_ok()
        );
    }

    /// `promtool check metrics` where promtool is installed (Debian's `prometheus` package).
    #[test]
    fn promtool_accepts_the_metrics() {
        let promtool = std::path::Path::new("/usr/bin/promtool");
        if !promtool.exists() {
            eprintln!("SKIPPED: /usr/bin/promtool is not installed (apt-get install prometheus)");
            return;
        }
        let mut input = MockBackend::new().metrics();
        input.top_k = 1;
        input.top_k_libraries = 1;
        let text = render(&input).expect("render");
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
            .expect("write");
        let output = child.wait_with_output().expect("promtool output");
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool: {}\n{}\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
