//! Prometheus `/metrics`: a registry built at each scrape from the backend's [`MetricsInput`],
//! written in the text exposition format by the `prometheus` crate (which escapes label values).
//!
//! Names have the `memtrace_` prefix and base units; `_total` only on counters. The number of
//! series is bounded and does not follow the churn of processes on the host:
//! - per-process series are keyed by process **identity** ([`Identity`]: command name and
//!   cgroup, plus the container id derived from the cgroup) and summed over the processes that
//!   share it, so a pid that comes and goes under an identity creates no series. A `pid` label
//!   appears only on `memtrace_traced_process_info`, for the processes traced by name
//!   (configuration, request, drill-down);
//! - the top K identities have their own series, chosen across snapshots with hysteresis by
//!   [`MetricsState`] (see [`TopK`]: at most 2K at a time); the rest are summed into one series with
//!   `comm="other", cgroup="other"` (no real cgroup is called that: their paths start with `/`).
//!   Likewise the (identity, library) pairs of `memtrace_library_live_bytes`, in `library="other"`;
//! - a series exists only where its value can change: no heap series for untraced processes, no
//!   webhook counters without a webhook, no BPF program counters while BPF statistics are off.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{CounterVec, GaugeVec, Opts, Registry, TextEncoder};

use super::backend::{MetricsInput, PatternMetric, ProcessMetrics};
use crate::{config::MetricsConfig, events::Kind, snapshot::ProcessSnapshot};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `comm`, `cgroup` and `library` value of the sums of what has no series of its own.
pub const OTHER: &str = "other";

/// The labels of per-identity series.
const IDENTITY_LABELS: [&str; 3] = ["comm", "container", "cgroup"];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the metric {0}")]
    Metric(String, #[source] prometheus::Error),
    #[error("cannot encode the metrics")]
    Encode(#[source] prometheus::Error),
}

/// Who a process is for `/metrics`: its command name and its cgroup (and the container id found in
/// the cgroup). Every process of a service (one cgroup) with the same name shares an identity,
/// across restarts and pid reuse.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub comm: String,
    pub cgroup: String,
    /// The container id found in the cgroup (the snapshot's `container`), or "".
    pub container: String,
}

impl Identity {
    pub fn of(snapshot: &ProcessSnapshot) -> Self {
        Self {
            comm: snapshot.comm.clone(),
            cgroup: snapshot.cgroup.clone(),
            container: snapshot.container.clone(),
        }
    }

    /// The aggregate of the identities without series of their own.
    fn other() -> Self {
        Self {
            comm: OTHER.to_string(),
            cgroup: OTHER.to_string(),
            container: String::new(),
        }
    }

    /// Values of [`IDENTITY_LABELS`].
    fn labels(&self) -> [String; 3] {
        [
            self.comm.clone(),
            self.container.clone(),
            self.cgroup.clone(),
        ]
    }
}

/// Top K with hysteresis: which keys (identities, libraries) have their own series, updated once
/// per snapshot with each key's value (RSS, live bytes).
///
/// With `V(n)` the n-th largest value of the snapshot:
/// - a key **enters** when it ranks in the top K, clearly: its value is above `V(K+1)` times
///   (1 + `margin`) (and not 0), and it has been present in every update for `enter_after`. A
///   process that lives shorter never gets series of its own. The first update takes the top K
///   as they are;
/// - a member is **out** while it is absent or its value times (1 + `margin`) is below `V(K)`, and
///   **leaves** once it has been out for `leave_after`. Until then it keeps its series: a member
///   just below the K-th neither leaves nor flaps, a service that restarts keeps its series.
///
/// Members on their way out and newcomers may overlap: there are at most 2K members at a time
/// (a newcomer waits while there are), usually K. Each of the 2K places changes hands at most
/// once per `leave_after`, so over a time `W` at most `2K * (1 + ceil(W / leave_after))` keys
/// have had series.
#[derive(Clone, Debug)]
pub struct TopK<K> {
    k: usize,
    margin: f64,
    enter_after_ms: u64,
    leave_after_ms: u64,
    /// Members, each with the time (ms) since which it has been out, if it is.
    members: BTreeMap<K, Option<u64>>,
    /// Keys present in the last update, each with the time since which it has been present
    /// (`None`: since the first update).
    seen: BTreeMap<K, Option<u64>>,
    updated: bool,
}

impl<K: Ord + Clone> TopK<K> {
    /// `enter_after_s` and `leave_after_s` in seconds; `margin` a fraction (0.2 = 20 %).
    pub fn new(k: usize, margin: f64, enter_after_s: u64, leave_after_s: u64) -> Self {
        Self {
            k,
            margin: if margin.is_finite() {
                margin.max(0.0)
            } else {
                0.0
            },
            enter_after_ms: enter_after_s.saturating_mul(1000),
            leave_after_ms: leave_after_s.saturating_mul(1000),
            members: BTreeMap::new(),
            seen: BTreeMap::new(),
            updated: false,
        }
    }

    /// Takes the values of a snapshot made at `now_ms`.
    pub fn update(&mut self, now_ms: u64, values: &BTreeMap<K, u64>) {
        let first = !self.updated;
        self.updated = true;
        self.seen.retain(|key, _| values.contains_key(key));
        for key in values.keys() {
            if !self.seen.contains_key(key) {
                self.seen.insert(key.clone(), (!first).then_some(now_ms));
            }
        }
        if self.k == 0 {
            self.members.clear();
            return;
        }
        let mut ranked: Vec<(&K, u64)> = values.iter().map(|(key, &v)| (key, v)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let nth = |n: usize| ranked.get(n - 1).map_or(0.0, |&(_, v)| v as f64);
        let (kth, next) = (nth(self.k), nth(self.k + 1));
        let margin = 1.0 + self.margin;

        for (key, out_since) in &mut self.members {
            let out = values
                .get(key)
                .is_none_or(|&value| (value as f64) * margin < kth);
            if out {
                out_since.get_or_insert(now_ms);
            } else {
                *out_since = None;
            }
        }
        let leave_after = self.leave_after_ms;
        self.members.retain(|_, out_since| {
            out_since.is_none_or(|since| now_ms.saturating_sub(since) < leave_after)
        });

        let capacity = self.k.saturating_mul(2);
        for &(key, value) in ranked.iter().take(self.k) {
            if self.members.len() >= capacity {
                break;
            }
            let present_for = match self.seen.get(key) {
                Some(Some(since)) => now_ms.saturating_sub(*since),
                Some(None) => u64::MAX,
                None => 0,
            };
            let clearly_in = first || value as f64 > next * margin;
            if value > 0
                && clearly_in
                && present_for >= self.enter_after_ms
                && !self.members.contains_key(key)
            {
                self.members.insert(key.clone(), None);
            }
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.members.contains_key(key)
    }

    /// The members (some may be absent from the last update, within `leave_after`).
    pub fn members(&self) -> impl Iterator<Item = &K> {
        self.members.keys()
    }
}

/// Which identities and (identity, library) pairs have their own series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub processes: BTreeSet<Identity>,
    pub libraries: BTreeSet<(Identity, String)>,
}

impl Selection {
    /// The `top_k` identities by RSS and the `top_k_libraries` pairs by live bytes of `input`
    /// alone, without hysteresis.
    pub fn top(input: &MetricsInput) -> Self {
        MetricsState::with(input.top_k, input.top_k_libraries, 0.0, 0, 0).select(input)
    }
}

/// The agent's memory of which identities and libraries have series ([`TopK`] for each), kept
/// across scrapes. It moves once per snapshot, however many scrapers ask.
#[derive(Clone, Debug)]
pub struct MetricsState {
    processes: TopK<Identity>,
    libraries: TopK<(Identity, String)>,
    /// The snapshot of the last update (`None` inside: before the first snapshot).
    last_snapshot_ms: Option<Option<u64>>,
    selection: Selection,
}

impl MetricsState {
    pub fn new(config: &MetricsConfig) -> Self {
        Self::with(
            config.top_k,
            config.top_k_libraries,
            config.margin,
            config.enter_after,
            config.leave_after,
        )
    }

    fn with(
        top_k: usize,
        top_k_libraries: usize,
        margin: f64,
        enter_after_s: u64,
        leave_after_s: u64,
    ) -> Self {
        Self {
            processes: TopK::new(top_k, margin, enter_after_s, leave_after_s),
            libraries: TopK::new(top_k_libraries, margin, enter_after_s, leave_after_s),
            last_snapshot_ms: None,
            selection: Selection::default(),
        }
    }

    /// The selection for `input`, after taking its snapshot into account if it is a new one.
    pub fn select(&mut self, input: &MetricsInput) -> Selection {
        if self.last_snapshot_ms != Some(input.last_snapshot_ms) {
            self.last_snapshot_ms = Some(input.last_snapshot_ms);
            let now = input.last_snapshot_ms.unwrap_or(0);
            let mut processes: BTreeMap<Identity, u64> = BTreeMap::new();
            for p in &input.processes {
                let rss = processes.entry(Identity::of(&p.snapshot)).or_default();
                *rss = rss.saturating_add(p.snapshot.rss_bytes);
            }
            let libraries = library_values(input);
            self.processes.update(now, &processes);
            self.libraries.update(now, &libraries);
            self.selection = Selection {
                processes: self.processes.members().cloned().collect(),
                libraries: self.libraries.members().cloned().collect(),
            };
        }
        self.selection.clone()
    }
}

/// Live bytes of each (identity, library) pair: summed over the identity's processes.
fn library_values(input: &MetricsInput) -> BTreeMap<(Identity, String), u64> {
    let mut libraries: BTreeMap<(Identity, String), u64> = BTreeMap::new();
    for p in &input.processes {
        for library in &p.snapshot.libraries {
            let live = libraries
                .entry((Identity::of(&p.snapshot), library.library.clone()))
                .or_default();
            *live = live.saturating_add(library.live_bytes);
        }
    }
    libraries
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

/// A metric family and its name (for errors). A family given no series is left out of the text.
struct Family<V> {
    name: String,
    vec: V,
}

impl Family<GaugeVec> {
    /// Adds `value` to the series with these label values (a new series starts at 0). Non-finite
    /// values are left out.
    fn add<S: AsRef<str>>(&self, labels: &[S], value: f64) -> Result<(), MetricsError> {
        if !value.is_finite() {
            return Ok(());
        }
        let labels: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
        self.vec
            .get_metric_with_label_values(&labels)
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

/// The figures of an identity: sums over its processes.
#[derive(Clone, Debug, Default)]
struct Group {
    processes: u64,
    rss: u64,
    rss_anon: u64,
    rss_file: u64,
    rss_shmem: u64,
    swap: u64,
    mapped_anon: u64,
    mapped_file: u64,
    brk: u64,
    /// Processes whose heap is traced, and the sums over them.
    traced: u64,
    heap_live: u64,
    heap_allocations: u64,
    external: Option<u64>,
    /// External and live heap bytes of the traced processes with a heap (for the ratio).
    ratio_external: u64,
    ratio_heap: u64,
    growth: Option<f64>,
    /// The most confident pattern among the processes.
    pattern: Option<PatternMetric>,
}

impl Group {
    fn add(&mut self, p: &ProcessMetrics) {
        let s = &p.snapshot;
        self.processes += 1;
        self.rss = self.rss.saturating_add(s.rss_bytes);
        self.rss_anon = self.rss_anon.saturating_add(s.rss_anon_bytes);
        self.rss_file = self.rss_file.saturating_add(s.rss_file_bytes);
        self.rss_shmem = self.rss_shmem.saturating_add(s.rss_shmem_bytes);
        self.swap = self.swap.saturating_add(s.swap_bytes);
        self.mapped_anon = self.mapped_anon.saturating_add(s.mapped_anon_bytes);
        self.mapped_file = self.mapped_file.saturating_add(s.mapped_file_bytes);
        self.brk = self.brk.saturating_add(s.brk_bytes);
        if s.heap_traced {
            self.traced += 1;
            self.heap_live = self.heap_live.saturating_add(s.heap_live_bytes);
            self.heap_allocations = self.heap_allocations.saturating_add(s.heap_live_count);
        }
        if let Some(external) = s.external_bytes {
            self.external = Some(self.external.unwrap_or(0).saturating_add(external));
            if s.external_ratio.is_some() {
                self.ratio_external = self.ratio_external.saturating_add(external);
                self.ratio_heap = self.ratio_heap.saturating_add(s.heap_live_bytes);
            }
        }
        if let Some(rate) = p.growth_rate_bytes_per_second.filter(|r| r.is_finite()) {
            self.growth = Some(self.growth.unwrap_or(0.0) + rate);
        }
        if let Some(pattern) = p.pattern.filter(|p| p.confidence.is_finite()) {
            if self
                .pattern
                .is_none_or(|best| pattern.confidence > best.confidence)
            {
                self.pattern = Some(pattern);
            }
        }
    }

    /// Adds another group's sums (not its pattern: a sum of identities has none).
    fn merge(&mut self, g: &Group) {
        self.processes += g.processes;
        self.rss = self.rss.saturating_add(g.rss);
        self.rss_anon = self.rss_anon.saturating_add(g.rss_anon);
        self.rss_file = self.rss_file.saturating_add(g.rss_file);
        self.rss_shmem = self.rss_shmem.saturating_add(g.rss_shmem);
        self.swap = self.swap.saturating_add(g.swap);
        self.mapped_anon = self.mapped_anon.saturating_add(g.mapped_anon);
        self.mapped_file = self.mapped_file.saturating_add(g.mapped_file);
        self.brk = self.brk.saturating_add(g.brk);
        self.traced += g.traced;
        self.heap_live = self.heap_live.saturating_add(g.heap_live);
        self.heap_allocations = self.heap_allocations.saturating_add(g.heap_allocations);
        if let Some(external) = g.external {
            self.external = Some(self.external.unwrap_or(0).saturating_add(external));
        }
        self.ratio_external = self.ratio_external.saturating_add(g.ratio_external);
        self.ratio_heap = self.ratio_heap.saturating_add(g.ratio_heap);
        if let Some(rate) = g.growth {
            self.growth = Some(self.growth.unwrap_or(0.0) + rate);
        }
    }
}

/// The per-identity families.
struct ProcessFamilies {
    processes: Family<GaugeVec>,
    rss: Family<GaugeVec>,
    rss_anon: Family<GaugeVec>,
    rss_file: Family<GaugeVec>,
    rss_shmem: Family<GaugeVec>,
    swap: Family<GaugeVec>,
    mapped: Family<GaugeVec>,
    brk: Family<GaugeVec>,
    heap_traced: Family<GaugeVec>,
    heap_live: Family<GaugeVec>,
    heap_allocations: Family<GaugeVec>,
    external: Family<GaugeVec>,
    external_ratio: Family<GaugeVec>,
    growth_rate: Family<GaugeVec>,
    pattern_confidence: Family<GaugeVec>,
}

impl ProcessFamilies {
    fn new(scrape: &Scrape) -> Result<Self, MetricsError> {
        let l = &IDENTITY_LABELS;
        let [comm, container, cgroup] = IDENTITY_LABELS;
        Ok(Self {
            processes: scrape.gauge(
                "memtrace_processes",
                "Live processes of the identity (command name and cgroup).",
                l,
            )?,
            rss: scrape.gauge("memtrace_process_rss_bytes", "Resident set size (summed over the processes of the identity).", l)?,
            rss_anon: scrape.gauge("memtrace_process_rss_anon_bytes", "Resident anonymous memory.", l)?,
            rss_file: scrape.gauge("memtrace_process_rss_file_bytes", "Resident file-backed memory.", l)?,
            rss_shmem: scrape.gauge("memtrace_process_rss_shmem_bytes", "Resident shared memory.", l)?,
            swap: scrape.gauge("memtrace_process_swap_bytes", "Swapped-out anonymous memory.", l)?,
            mapped: scrape.gauge(
                "memtrace_process_mapped_bytes",
                "Live bytes of mappings made with mmap/mremap, by kind (anon, file).",
                &[comm, container, cgroup, "kind"],
            )?,
            brk: scrape.gauge("memtrace_process_brk_bytes", "Extent of the program break above its start.", l)?,
            heap_traced: scrape.gauge(
                "memtrace_process_heap_traced",
                "Processes of the identity whose malloc family is traced; only where there are some.",
                l,
            )?,
            heap_live: scrape.gauge(
                "memtrace_process_heap_live_bytes",
                "Live bytes of the traced heaps (requested sizes); only where heaps are traced.",
                l,
            )?,
            heap_allocations: scrape.gauge(
                "memtrace_process_heap_live_allocations",
                "Live allocations of the traced heaps; only where heaps are traced.",
                l,
            )?,
            external: scrape.gauge(
                "memtrace_process_external_bytes",
                "RSS minus live heap bytes of the traced processes; only where heaps are traced.",
                l,
            )?,
            external_ratio: scrape.gauge(
                "memtrace_process_external_ratio",
                "External bytes over live heap bytes of the traced processes with a heap.",
                l,
            )?,
            growth_rate: scrape.gauge(
                "memtrace_process_growth_rate_bytes_per_second",
                "Growth rate of the RSS, where known.",
                l,
            )?,
            pattern_confidence: scrape.gauge(
                "memtrace_process_pattern_confidence",
                "Confidence (0-100) of the current growth pattern (the most confident of the identity's processes), labelled with its type.",
                &[comm, container, cgroup, "type"],
            )?,
        })
    }

    fn add(&self, identity: &Identity, g: &Group) -> Result<(), MetricsError> {
        let labels = identity.labels();
        fn with<'a>(labels: &'a [String; 3], extra: &'a str) -> [&'a str; 4] {
            [&labels[0], &labels[1], &labels[2], extra]
        }
        self.processes.add(&labels, g.processes as f64)?;
        self.rss.add(&labels, g.rss as f64)?;
        self.rss_anon.add(&labels, g.rss_anon as f64)?;
        self.rss_file.add(&labels, g.rss_file as f64)?;
        self.rss_shmem.add(&labels, g.rss_shmem as f64)?;
        self.swap.add(&labels, g.swap as f64)?;
        self.mapped
            .add(&with(&labels, "anon"), g.mapped_anon as f64)?;
        self.mapped
            .add(&with(&labels, "file"), g.mapped_file as f64)?;
        self.brk.add(&labels, g.brk as f64)?;
        if g.traced > 0 {
            self.heap_traced.add(&labels, g.traced as f64)?;
            self.heap_live.add(&labels, g.heap_live as f64)?;
            self.heap_allocations
                .add(&labels, g.heap_allocations as f64)?;
        }
        if let Some(external) = g.external {
            self.external.add(&labels, external as f64)?;
        }
        if g.ratio_heap > 0 {
            self.external_ratio
                .add(&labels, g.ratio_external as f64 / g.ratio_heap as f64)?;
        }
        if let Some(rate) = g.growth {
            self.growth_rate.add(&labels, rate)?;
        }
        if let Some(pattern) = g.pattern {
            self.pattern_confidence
                .add(&with(&labels, pattern.kind.as_str()), pattern.confidence)?;
        }
        Ok(())
    }
}

/// Renders the metrics in the text exposition format.
pub fn render(input: &MetricsInput) -> Result<String, MetricsError> {
    let scrape = Scrape {
        registry: Registry::new(),
    };
    let selection = match &input.selection {
        Some(selection) => selection.clone(),
        None => Selection::top(input),
    };

    let build = scrape.gauge(
        "memtrace_build_info",
        "Always 1; the labels say which memtrace this is.",
        &["version", "arch"],
    )?;
    build.add(&[env!("CARGO_PKG_VERSION"), std::env::consts::ARCH], 1.0)?;
    if let Some(ms) = input.last_snapshot_ms {
        scrape
            .gauge(
                "memtrace_last_snapshot_timestamp_seconds",
                "When the snapshot behind the process series was taken (Unix time).",
                &[],
            )?
            .add::<&str>(&[], ms as f64 / 1000.0)?;
    }

    // Processes: summed by identity; the selected identities get their own series, the rest
    // are summed into "other".
    let families = ProcessFamilies::new(&scrape)?;
    let mut groups: BTreeMap<Identity, Group> = BTreeMap::new();
    for p in &input.processes {
        groups.entry(Identity::of(&p.snapshot)).or_default().add(p);
    }
    let mut other: Option<Group> = None;
    for (identity, group) in &groups {
        if selection.processes.contains(identity) {
            families.add(identity, group)?;
        } else {
            other.get_or_insert_with(Group::default).merge(group);
        }
    }
    if let Some(other) = other {
        families.add(&Identity::other(), &other)?;
    }

    // The processes traced by name: the only series with a pid.
    let info = scrape.gauge(
        "memtrace_traced_process_info",
        "1 for each process whose malloc family is traced by configuration, on request or by a drill-down.",
        &["pid", "comm", "container", "cgroup", "reason"],
    )?;
    let mut listed = BTreeSet::new();
    for traced in &input.traced {
        let Some(p) = input
            .processes
            .iter()
            .find(|p| p.snapshot.pid == traced.pid)
        else {
            continue;
        };
        if !listed.insert(traced.pid) {
            continue;
        }
        let [comm, container, cgroup] = Identity::of(&p.snapshot).labels();
        info.add(
            &[
                traced.pid.to_string(),
                comm,
                container,
                cgroup,
                traced.reason.clone(),
            ],
            1.0,
        )?;
    }

    // Libraries: the selected (identity, library) pairs, the rest summed into library="other".
    let libraries_family = scrape.gauge(
        "memtrace_library_live_bytes",
        "Live bytes a library asked for (through the allocator or mapped directly), per process identity.",
        &["comm", "container", "cgroup", "library"],
    )?;
    let mut other_libraries: Option<u64> = None;
    for (key, live) in library_values(input) {
        if selection.libraries.contains(&key) {
            let (identity, library) = key;
            let [comm, container, cgroup] = identity.labels();
            libraries_family.add(&[comm, container, cgroup, library], live as f64)?;
        } else {
            other_libraries = Some(other_libraries.unwrap_or(0).saturating_add(live));
        }
    }
    if let Some(live) = other_libraries {
        libraries_family.add(&[OTHER, "", OTHER, OTHER], live as f64)?;
    }

    let counter = |name: &str, help: &str, value: f64| -> Result<(), MetricsError> {
        scrape.counter(name, help, &[])?.set(&[], value)
    };
    let gauge = |name: &str, help: &str, value: f64| -> Result<(), MetricsError> {
        scrape.gauge(name, help, &[])?.add::<&str>(&[], value)
    };

    // Alerts.
    if let Some(alerts) = &input.alerts {
        let active = scrape.gauge(
            "memtrace_alerts_active",
            "Active alerts by type and severity.",
            &["type", "severity"],
        )?;
        for count in &alerts.active {
            active.add(
                &[count.kind.as_str(), count.severity.as_str()],
                count.count as f64,
            )?;
        }
        let suppressed = scrape.counter(
            "memtrace_alerts_suppressed_total",
            "Alert candidates held back by a budget (per identity, per type, host-wide), each \
             episode once, by alert type.",
            &["type"],
        )?;
        for (kind, count) in &alerts.suppressed {
            suppressed.set(&[kind.as_str()], *count as f64)?;
        }
    }

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
    if let Some(webhook) = &input.webhook {
        counter(
            "memtrace_webhook_sent_total",
            "Alert events delivered to the webhook.",
            webhook.sent_total as f64,
        )?;
        counter(
            "memtrace_webhook_failures_total",
            "Alert events the webhook did not accept after the retries.",
            webhook.failures_total as f64,
        )?;
        counter(
            "memtrace_webhook_dropped_total",
            "Alert events dropped from the webhook's full queue.",
            webhook.dropped_total as f64,
        )?;
        counter(
            "memtrace_webhook_resent_total",
            "Firing alerts posted to the webhook again (Alertmanager format, webhookResendInterval).",
            webhook.resent_total as f64,
        )?;
    }
    if let Some(store) = &input.store {
        counter(
            "memtrace_store_write_failures_total",
            "Writes to the data directory that failed.",
            store.write_failures_total as f64,
        )?;
        counter(
            "memtrace_store_skipped_lines_total",
            "Corrupted, partial or over-long lines of data files skipped when read.",
            store.skipped_lines_total as f64,
        )?;
    }
    counter(
        "memtrace_snapshots_dropped_total",
        "Snapshots not taken because the analysis side was behind.",
        input.snapshots_dropped_total as f64,
    )?;
    let traces = scrape.counter(
        "memtrace_heap_traces_total",
        "Heap tracings of a process started and stopped (requests, drill-downs, exits), and \
         processes sampled or let go for their CPU budget.",
        &["event"],
    )?;
    traces.set(&["started"], input.heap_traces_started_total as f64)?;
    traces.set(&["stopped"], input.heap_traces_stopped_total as f64)?;
    traces.set(&["sampled"], input.heap_traces_sampled_total as f64)?;
    traces.set(&["refused"], input.heap_traces_refused_total as f64)?;
    if let Some(active) = input.drilldowns_active {
        gauge(
            "memtrace_drilldowns_active",
            "Processes whose malloc family is traced by a drill-down.",
            active as f64,
        )?;
    }

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
        "Time spent in each eBPF program (while kernel.bpf_stats_enabled=1).",
        &["program"],
    )?;
    let runs = scrape.counter(
        "memtrace_bpf_program_runs_total",
        "Runs of each eBPF program (while kernel.bpf_stats_enabled=1).",
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
            backend::{AlertCount, AlertMetrics, BpfProgramStats, PatternMetric},
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
        "memtrace_build_info",
        "memtrace_last_snapshot_timestamp_seconds",
        "memtrace_processes",
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
        "memtrace_traced_process_info",
        "memtrace_library_live_bytes",
        "memtrace_alerts_active",
        "memtrace_alerts_suppressed_total",
        "memtrace_events_total",
        "memtrace_events_lost_total",
        "memtrace_consumers_evicted_total",
        "memtrace_webhook_sent_total",
        "memtrace_webhook_failures_total",
        "memtrace_webhook_dropped_total",
        "memtrace_webhook_resent_total",
        "memtrace_snapshots_dropped_total",
        "memtrace_heap_traces_total",
        "memtrace_drilldowns_active",
        "memtrace_agent_cpu_seconds_total",
        "memtrace_agent_rss_bytes",
        "memtrace_bpf_program_run_time_seconds_total",
        "memtrace_bpf_program_runs_total",
    ];

    const NODE_CGROUP: &str = "/system.slice/node.service";

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
        // The mock has no data directory: no store counters rather than zeros.
        assert!(!text.contains("memtrace_store_"), "{text}");
        let node = [("comm", "node"), ("container", ""), ("cgroup", NODE_CGROUP)];
        assert_eq!(
            value(&samples, "memtrace_process_rss_bytes", &node),
            (200u64 << 20) as f64
        );
        assert_eq!(value(&samples, "memtrace_processes", &node), 1.0);
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
                &[("comm", "node"), ("kind", "file")]
            ),
            (8u64 << 20) as f64
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_pattern_confidence",
                &[("comm", "node"), ("type", "leak")]
            ),
            85.0
        );
        // The container id comes from the cgroup path.
        assert_eq!(
            value(
                &samples,
                "memtrace_process_rss_bytes",
                &[("comm", "postgres"), ("container", "0123456789ab")]
            ),
            (100u64 << 20) as f64
        );
        // Untraced processes have no heap series at all (not zeros).
        for name in [
            "memtrace_process_heap_live_bytes",
            "memtrace_process_heap_traced",
            "memtrace_process_external_bytes",
            "memtrace_process_external_ratio",
        ] {
            assert!(
                find(&samples, name, &[("comm", "postgres")]).is_none(),
                "{name}"
            );
        }
        assert_eq!(
            value(
                &samples,
                "memtrace_library_live_bytes",
                &[("comm", "node"), ("library", "/usr/lib/libcrypto.so.3")]
            ),
            (40u64 << 20) as f64
        );
        // A pid only on the info series of the processes traced by name.
        for s in &samples {
            assert_eq!(
                s.labels.contains_key("pid"),
                s.name == "memtrace_traced_process_info",
                "{s:?}"
            );
        }
        assert_eq!(
            value(
                &samples,
                "memtrace_traced_process_info",
                &[
                    ("pid", "100"),
                    ("comm", "node"),
                    ("cgroup", NODE_CGROUP),
                    ("reason", "requested")
                ]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert_eq!(
            value(&samples, "memtrace_last_snapshot_timestamp_seconds", &[]),
            crate::http::mock::MOCK_TIMESTAMP as f64 / 1000.0
        );
        // Every kind of event and every alert type/severity has a series.
        for kind in Kind::ALL {
            let v = value(&samples, "memtrace_events_total", &[("kind", kind.name())]);
            assert_eq!(v, 100.0 * (kind.index() as f64 + 1.0));
        }
        for kind in ["threshold", "pattern", "leak", "spike"] {
            for severity in ["info", "warning", "critical"] {
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
        // Three identities, K = 50: no "other".
        assert!(find(&samples, "memtrace_process_rss_bytes", &[("comm", OTHER)]).is_none());
    }

    #[test]
    fn parts_that_do_not_apply_have_no_series() {
        // No snapshot yet, alerting off, no webhook, no data directory, no drill-downs, BPF
        // statistics off: only what can move.
        let text = render(&MetricsInput::default()).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "memtrace_build_info",
                "memtrace_events_total",
                "memtrace_events_lost_total",
                "memtrace_consumers_evicted_total",
                "memtrace_snapshots_dropped_total",
                "memtrace_heap_traces_total",
                "memtrace_agent_cpu_seconds_total",
                "memtrace_agent_rss_bytes",
            ]),
            "{text}"
        );
        // No HELP or TYPE of an empty family either.
        assert!(!text.contains("memtrace_process_"), "{text}");
        assert!(!text.contains("memtrace_bpf_program_"), "{text}");
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
                    cgroup: "/a \"b\"\\c.scope".to_string(),
                    rss_bytes: 1,
                    libraries: vec![LibrarySnapshot {
                        library: "/tmp/a \"b\"\\c.so".to_string(),
                        live_bytes: 5,
                        ..LibrarySnapshot::default()
                    }],
                    ..ProcessSnapshot::default()
                },
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
        let s = find(&samples, "memtrace_process_rss_bytes", &[]).expect("series");
        assert_eq!(s.labels["comm"], "new\nline}{,=");
        assert_eq!(s.labels["cgroup"], "/a \"b\"\\c.scope");
        let lib = find(&samples, "memtrace_library_live_bytes", &[]).expect("series");
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

    /// A process with identity `comm` in `cgroup`: RSS in MiB, half of it anonymous; a traced heap
    /// of 1 MiB in 10 allocations; two libraries of `pid * 100 + i` live bytes.
    fn process_in(pid: u32, comm: &str, cgroup: &str, rss_mb: u64, traced: bool) -> ProcessMetrics {
        let mut snapshot = ProcessSnapshot {
            pid,
            comm: comm.to_string(),
            cgroup: cgroup.to_string(),
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
            growth_rate_bytes_per_second: Some(f64::from(pid)),
            pattern: Some(PatternMetric {
                kind: crate::analysis::PatternType::Linear,
                confidence: 50.0 + f64::from(pid),
            }),
        }
    }

    /// Each process its own identity `p<pid>`.
    fn process(pid: u32, rss_mb: u64, traced: bool) -> ProcessMetrics {
        process_in(pid, &format!("p{pid}"), "/x.slice", rss_mb, traced)
    }

    #[test]
    fn processes_of_an_identity_share_their_series() {
        // Three workers of one service (one of them traced), a namesake in another cgroup.
        let input = MetricsInput {
            processes: vec![
                process_in(11, "worker", "/app.service", 3, false),
                process_in(12, "worker", "/app.service", 5, true),
                process_in(13, "worker", "/app.service", 7, false),
                process_in(14, "worker", "/other.service", 2, false),
            ],
            ..MetricsInput::default()
        };
        let text = render(&input).expect("render");
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let app = [("comm", "worker"), ("cgroup", "/app.service")];
        assert_eq!(value(&samples, "memtrace_processes", &app), 3.0);
        assert_eq!(
            value(&samples, "memtrace_process_rss_bytes", &app),
            (15u64 << 20) as f64
        );
        assert_eq!(value(&samples, "memtrace_process_heap_traced", &app), 1.0);
        assert_eq!(
            value(&samples, "memtrace_process_heap_live_bytes", &app),
            (1u64 << 20) as f64
        );
        // External of the traced process only (5 MiB RSS - 1 MiB heap), and its ratio.
        assert_eq!(
            value(&samples, "memtrace_process_external_bytes", &app),
            (4u64 << 20) as f64
        );
        assert_eq!(
            value(&samples, "memtrace_process_external_ratio", &app),
            4.0
        );
        assert_eq!(
            value(
                &samples,
                "memtrace_process_growth_rate_bytes_per_second",
                &app
            ),
            (11 + 12 + 13) as f64
        );
        // The most confident pattern of the three (pid 13's).
        assert_eq!(
            value(&samples, "memtrace_process_pattern_confidence", &app),
            63.0
        );
        // Libraries summed by identity: lib0 = 1100 + 1200 + 1300.
        assert_eq!(
            value(
                &samples,
                "memtrace_library_live_bytes",
                &[("cgroup", "/app.service"), ("library", "lib0.so")]
            ),
            3600.0
        );
        let other = [("comm", "worker"), ("cgroup", "/other.service")];
        assert_eq!(value(&samples, "memtrace_processes", &other), 1.0);
        assert!(find(&samples, "memtrace_process_heap_traced", &other).is_none());
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.name == "memtrace_process_rss_bytes")
                .count(),
            2
        );
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
            .map(|s| (s.labels["comm"].as_str(), s.value))
            .collect();
        let mib = |n: u64| (n << 20) as f64;
        assert_eq!(rss.len(), 3, "{rss:?}");
        assert!(
            rss.contains(&("p1", mib(5))) && rss.contains(&("p2", mib(4))),
            "{rss:?}"
        );
        let other = [("comm", OTHER), ("container", ""), ("cgroup", OTHER)];
        assert_eq!(value(&samples, "memtrace_processes", &other), 3.0);
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
                &[("comm", OTHER), ("kind", "anon")]
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
            &[("comm", OTHER)]
        )
        .is_none());
        assert!(find(
            &samples,
            "memtrace_process_pattern_confidence",
            &[("comm", "p1"), ("type", "linear")]
        )
        .is_some());
        // Bounded: K + 1 series per process family.
        for name in [
            "memtrace_processes",
            "memtrace_process_rss_bytes",
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
                    s.labels["comm"].clone(),
                    s.labels["library"].clone(),
                    s.value,
                )
            })
            .collect();
        assert_eq!(libraries.len(), 4, "{libraries:?}");
        for (comm, library, live) in [
            ("p5", "lib1.so", 501.0),
            ("p5", "lib0.so", 500.0),
            ("p4", "lib1.so", 401.0),
        ] {
            assert!(
                libraries.contains(&(comm.to_string(), library.to_string(), live)),
                "{libraries:?}"
            );
        }
        let rest: u64 = [400, 100, 101, 200, 201, 300, 301].iter().sum();
        assert_eq!(
            value(
                &samples,
                "memtrace_library_live_bytes",
                &[("comm", OTHER), ("cgroup", OTHER), ("library", OTHER)]
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
            alerts: Some(AlertMetrics {
                active: vec![AlertCount {
                    kind: "leak".to_string(),
                    severity: "critical".to_string(),
                    count: 2,
                }],
                suppressed: Vec::new(),
            }),
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

    fn values(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
        pairs.iter().copied().collect()
    }

    fn members(top: &TopK<&'static str>) -> Vec<&'static str> {
        top.members().copied().collect()
    }

    #[test]
    fn top_k_enters_only_after_enter_after() {
        // K = 2, enter after 10 s, leave after 60 s, margin 20 %.
        let mut top = TopK::new(2, 0.2, 10, 60);
        // Present at the first update: members at once.
        top.update(0, &values(&[("a", 100), ("b", 50)]));
        assert_eq!(members(&top), ["a", "b"]);
        // A short-lived big process never gets in: present 9 s, then gone.
        let mut top = TopK::new(3, 0.2, 10, 60);
        top.update(0, &values(&[("a", 100), ("b", 50)]));
        for t in (1..=9).map(|s| s * 1000) {
            top.update(t, &values(&[("a", 100), ("b", 50), ("big", 500)]));
            assert_eq!(members(&top), ["a", "b"], "at {t} ms");
        }
        top.update(10_000, &values(&[("a", 100), ("b", 50)]));
        // Back later: its time starts again.
        top.update(11_000, &values(&[("a", 100), ("b", 50), ("big", 500)]));
        top.update(20_000, &values(&[("a", 100), ("b", 50), ("big", 500)]));
        assert_eq!(members(&top), ["a", "b"]);
        top.update(21_000, &values(&[("a", 100), ("b", 50), ("big", 500)]));
        assert_eq!(members(&top), ["a", "b", "big"]);
        // Nothing with a value of 0 (kernel threads, exited processes).
        let mut top = TopK::new(3, 0.2, 0, 60);
        top.update(0, &values(&[("a", 100), ("zero", 0)]));
        assert_eq!(members(&top), ["a"]);
    }

    #[test]
    fn top_k_members_neither_flap_nor_stay_forever() {
        let mut top = TopK::new(2, 0.2, 0, 60);
        top.update(0, &values(&[("a", 100), ("b", 50), ("c", 45)]));
        assert_eq!(members(&top), ["a", "b"]);
        // c and b swap places back and forth, within the margin: nothing moves.
        for t in 1..100u64 {
            let (b, c) = if t % 2 == 0 { (50, 45) } else { (45, 52) };
            top.update(t * 1000, &values(&[("a", 100), ("b", b), ("c", c)]));
            assert_eq!(members(&top), ["a", "b"], "at {t} s");
        }
        // c overtakes b for good (c > 1.2 b): c gets series at once; b is out from 100 s and
        // keeps its series until 160 s.
        for t in 100..160u64 {
            top.update(t * 1000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
            assert_eq!(members(&top), ["a", "b", "c"], "at {t} s");
        }
        top.update(160_000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
        assert_eq!(members(&top), ["a", "c"]);
        // Back within the margin of the K-th before leave_after: the clock starts again.
        let mut top = TopK::new(2, 0.2, 0, 60);
        top.update(0, &values(&[("a", 100), ("b", 50), ("c", 45)]));
        top.update(1000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
        top.update(59_000, &values(&[("a", 100), ("b", 55), ("c", 60)]));
        top.update(70_000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
        assert_eq!(members(&top), ["a", "b", "c"]);
        top.update(129_000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
        assert_eq!(members(&top), ["a", "b", "c"]);
        top.update(130_000, &values(&[("a", 100), ("b", 40), ("c", 60)]));
        assert_eq!(members(&top), ["a", "c"]);
    }

    #[test]
    fn top_k_lets_a_new_large_process_in_after_enter_after() {
        let mut top = TopK::new(2, 0.2, 30, 60);
        top.update(0, &values(&[("db", 100), ("web", 50), ("cron", 10)]));
        assert_eq!(members(&top), ["db", "web"]);
        // A leaking process starts at 1 s as the largest: series after 30 s. web, third from
        // 1 s on, keeps its own until 61 s.
        let all = values(&[("db", 100), ("web", 50), ("cron", 10), ("leaky", 200)]);
        for t in 1..31u64 {
            top.update(t * 1000, &all);
            assert_eq!(members(&top), ["db", "web"], "at {t} s");
        }
        for t in 31..61u64 {
            top.update(t * 1000, &all);
            assert_eq!(members(&top), ["db", "leaky", "web"], "at {t} s");
        }
        top.update(61_000, &all);
        assert_eq!(members(&top), ["db", "leaky"]);
    }

    #[test]
    fn top_k_holds_a_place_for_a_restarting_service() {
        let mut top = TopK::new(2, 0.2, 30, 60);
        top.update(0, &values(&[("db", 100), ("web", 50), ("cron", 10)]));
        assert_eq!(members(&top), ["db", "web"]);
        // web restarts: gone for 19 s. It keeps its place (and comes back without waiting
        // enter_after again); cron, second meanwhile, gets series too.
        for t in 1..20u64 {
            top.update(t * 1000, &values(&[("db", 100), ("cron", 10)]));
            assert_eq!(members(&top), ["cron", "db", "web"], "at {t} s");
        }
        // web back: cron, out again, keeps its series 60 s more.
        for t in 20..80u64 {
            top.update(t * 1000, &values(&[("db", 100), ("web", 50), ("cron", 10)]));
            assert_eq!(members(&top), ["cron", "db", "web"], "at {t} s");
        }
        top.update(80_000, &values(&[("db", 100), ("web", 50), ("cron", 10)]));
        assert_eq!(members(&top), ["db", "web"]);
    }

    /// At most 2K members at a time, whatever comes and goes.
    #[test]
    fn top_k_never_holds_more_than_twice_k() {
        let mut top = TopK::new(2, 0.0, 0, 3600);
        top.update(0, &values(&[("a", 10), ("b", 9)]));
        for (t, key) in ["c", "d", "e", "f", "g"].into_iter().enumerate() {
            // Each newcomer the largest, then gone.
            top.update((t as u64 + 1) * 1000, &values(&[(key, 100 + t as u64)]));
            assert!(top.members().count() <= 4);
        }
        assert_eq!(members(&top), ["a", "b", "c", "d"]);
    }

    /// Guards the bound the churn test over a real Prometheus relies on: under any churn at most
    /// 2K members at a time, and over a time W at most 2K * (1 + ceil(W / leave_after)) keys ever.
    #[test]
    fn top_k_bounds_the_keys_under_churn() {
        let (k, leave_after_s) = (5usize, 20u64);
        let mut top: TopK<u32> = TopK::new(k, 0.2, 3, leave_after_s);
        let mut seed: u64 = 42;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        // 10 long-lived keys with noisy values, and a stream of short- and mid-lived ones
        // (1 to 12 s) with values up to 10 times larger, over 200 s of 1 s updates.
        let mut alive: Vec<(u32, u64)> = Vec::new();
        let mut ever: BTreeSet<u32> = BTreeSet::new();
        let mut fresh = 1000u32;
        let window_s = 200u64;
        for t in 0..window_s {
            alive.retain(|&(_, until)| until > t);
            for _ in 0..3 {
                alive.push((fresh, t + 1 + u64::from(next() % 12)));
                fresh += 1;
            }
            let mut values: BTreeMap<u32, u64> = (0..10u32)
                .map(|key| (key, 100 + u64::from(key) * 10 + u64::from(next() % 30)))
                .collect();
            for &(key, _) in &alive {
                values.insert(key, u64::from(next() % 2000));
            }
            top.update(t * 1000, &values);
            assert!(top.members().count() <= 2 * k);
            ever.extend(top.members().copied());
        }
        let bound = 2 * k * (1 + window_s.div_ceil(leave_after_s) as usize);
        assert!(
            ever.len() <= bound,
            "{} keys had series, bound {bound}",
            ever.len()
        );
        // Without hysteresis (a plain top K of each update) the same churn names far more.
        let mut plain: BTreeSet<u32> = BTreeSet::new();
        let mut top: TopK<u32> = TopK::new(k, 0.0, 0, 0);
        let mut alive: Vec<(u32, u64)> = Vec::new();
        let mut fresh = 1000u32;
        for t in 0..window_s {
            alive.retain(|&(_, until)| until > t);
            for _ in 0..3 {
                alive.push((fresh, t + 1 + u64::from(next() % 12)));
                fresh += 1;
            }
            let mut values: BTreeMap<u32, u64> = (0..10u32).map(|key| (key, 100)).collect();
            for &(key, _) in &alive {
                values.insert(key, u64::from(next() % 2000));
            }
            top.update(t * 1000, &values);
            plain.extend(top.members().copied());
        }
        eprintln!(
            "keys with series over {window_s} s: {} with hysteresis (bound {bound}), {} without",
            ever.len(),
            plain.len()
        );
        assert!(
            plain.len() > 4 * ever.len(),
            "{} vs {}",
            plain.len(),
            ever.len()
        );
    }

    #[test]
    fn the_state_moves_once_per_snapshot_and_ignores_pid_churn() {
        let config = crate::config::MetricsConfig {
            top_k: 2,
            top_k_libraries: 2,
            margin: 0.2,
            enter_after: 10,
            leave_after: 60,
        };
        let mut state = MetricsState::new(&config);
        let at = |ms: u64, processes: Vec<ProcessMetrics>| MetricsInput {
            processes,
            last_snapshot_ms: Some(ms),
            ..MetricsInput::default()
        };
        let first = at(
            0,
            vec![
                process_in(1, "db", "/db.service", 100, false),
                process_in(2, "web", "/web.service", 50, false),
                process_in(3, "cron", "/cron.service", 10, false),
            ],
        );
        let selected = state.select(&first);
        let names =
            |s: &Selection| -> Vec<String> { s.processes.iter().map(|i| i.comm.clone()).collect() };
        assert_eq!(names(&selected), ["db", "web"]);
        let text = render(&MetricsInput {
            selection: Some(selected.clone()),
            ..first
        })
        .expect("render");
        let series = |text: &str| -> BTreeSet<String> {
            check(text)
                .expect("well formed")
                .into_iter()
                .filter(|s| s.name.starts_with("memtrace_process"))
                .map(|s| format!("{}{:?}", s.name, s.labels))
                .collect()
        };
        let before = series(&text);
        // Many scrapes of one snapshot: nothing moves, even with other figures.
        for _ in 0..100 {
            let again = at(
                0,
                vec![
                    process_in(1, "db", "/db.service", 1, false),
                    process_in(3, "cron", "/cron.service", 900, false),
                ],
            );
            assert_eq!(state.select(&again), selected);
        }
        // 100 snapshots later every pid has changed (web workers and cron jobs come and go),
        // the identities have not: the same series.
        for n in 1..=100u32 {
            let churned = at(
                u64::from(n) * 1000,
                vec![
                    process_in(1, "db", "/db.service", 100, false),
                    process_in(1000 + n, "web", "/web.service", 50, false),
                    process_in(2000 + n, "cron", "/cron.service", 10, false),
                ],
            );
            let selection = state.select(&churned);
            assert_eq!(selection, selected);
            let text = render(&MetricsInput {
                selection: Some(selection),
                ..churned
            })
            .expect("render");
            assert_eq!(series(&text), before);
        }
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
