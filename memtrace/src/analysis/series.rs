//! From snapshots to patterns: per-process series, the `analyze` command's logic, the JSONL reader
//! and the text rendering.

use std::{
    borrow::Borrow,
    cmp::Ordering,
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::{
    pattern::{detect_pattern, Pattern, PatternConfig, PatternType, Sample},
    AnalysisError,
};
use crate::snapshot::{ExternalBasis, HostSnapshot};

/// Which figure of a process a pattern describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// Resident set size.
    Rss,
    /// Live bytes of the traced heap.
    HeapLive,
    /// RSS minus live heap bytes, where the heap is traced from the process's start.
    External,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rss => "rss",
            Self::HeapLive => "heapLive",
            Self::External => "external",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The series of one process, in time order. Heap and library series only have samples from
/// snapshots where the process's heap was traced, the external series only where its basis was
/// `full` (traced from the process's start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSeries {
    pub pid: u32,
    /// Command name in the latest snapshot.
    pub comm: String,
    pub rss: Vec<Sample>,
    pub heap_live: Vec<Sample>,
    pub external: Vec<Sample>,
    /// Live bytes per library.
    pub libraries: BTreeMap<String, Vec<Sample>>,
    /// `MemTotal` of the latest snapshot that has it.
    pub mem_total_bytes: Option<u64>,
    /// The process's memory limit (cgroup `memory.max` or `MemTotal`) in the latest snapshot that
    /// has it.
    pub limit_bytes: Option<u64>,
    /// Whether the latest traced snapshot's heap was traced since attach (not from the start).
    pub heap_since_attach: bool,
    /// Frees of blocks allocated before tracing began, in each snapshot with a traced heap.
    pub unknown_frees: Vec<Sample>,
}

impl ProcessSeries {
    fn metric(&self, metric: Metric) -> &[Sample] {
        match metric {
            Metric::Rss => &self.rss,
            Metric::HeapLive => &self.heap_live,
            Metric::External => &self.external,
        }
    }
}

/// The pattern of one library's live bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LibraryPattern {
    pub library: String,
    pub pattern: Pattern,
}

/// The most concerning pattern of one process, over its RSS, live heap and external memory, with
/// the patterns of its libraries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessPattern {
    pub pid: u32,
    pub comm: String,
    pub metric: Metric,
    pub pattern: Pattern,
    /// Most concerning first.
    #[serde(default)]
    pub libraries: Vec<LibraryPattern>,
}

/// Splits snapshots (in any order) into per-process series, by pid, in time order.
pub fn extract_series<S: Borrow<HostSnapshot>>(snapshots: &[S]) -> Vec<ProcessSeries> {
    let mut ordered: Vec<&HostSnapshot> = snapshots.iter().map(Borrow::borrow).collect();
    ordered.sort_by_key(|s| s.timestamp);
    let mut by_pid: BTreeMap<u32, ProcessSeries> = BTreeMap::new();
    for snapshot in ordered {
        let ts = snapshot.timestamp;
        for process in &snapshot.processes {
            let series = by_pid.entry(process.pid).or_default();
            series.pid = process.pid;
            series.comm.clone_from(&process.comm);
            if snapshot.mem_total_bytes > 0 {
                series.mem_total_bytes = Some(snapshot.mem_total_bytes);
            }
            if process.limit_bytes.is_some() {
                series.limit_bytes = process.limit_bytes;
            }
            series.rss.push((ts, process.rss_bytes));
            if process.heap_traced {
                series.heap_live.push((ts, process.heap_live_bytes));
                series.unknown_frees.push((ts, process.heap_unknown_frees));
                series.heap_since_attach =
                    process.external_basis == Some(ExternalBasis::SinceAttach);
                // Only a heap traced from the start makes RSS - heap external memory.
                if let Some(external) = process.external_bytes {
                    series.external.push((ts, external));
                }
                for library in &process.libraries {
                    series
                        .libraries
                        .entry(library.library.clone())
                        .or_default()
                        .push((ts, library.live_bytes));
                }
            }
        }
    }
    by_pid.into_values().collect()
}

/// How much a pattern asks for attention, for ordering: confident non-stable patterns first, then
/// severity, then kind (exponential, leak, linear, spike, stable), then confidence.
fn concern_cmp(a: &Pattern, b: &Pattern) -> Ordering {
    fn rank(kind: PatternType) -> u8 {
        match kind {
            PatternType::Exponential => 4,
            PatternType::Leak => 3,
            PatternType::Linear => 2,
            PatternType::Spike => 1,
            PatternType::Stable => 0,
        }
    }
    let alarming = |p: &Pattern| p.confident && p.kind != PatternType::Stable;
    alarming(a)
        .cmp(&alarming(b))
        .then(a.severity.cmp(&b.severity))
        .then(rank(a.kind).cmp(&rank(b.kind)))
        .then(a.confidence.total_cmp(&b.confidence))
}

/// Analyzes one process: the most concerning of its metrics (RSS first on ties) and its libraries.
/// `None` when no metric has enough samples. The forecast aims at the process's limit as its
/// snapshots give it (`limitBytes`: its cgroup's `memory.max` or `MemTotal`), else at `MemTotal`.
///
/// A heap traced since attach whose process frees blocks from before the attach (counted as
/// unknown frees) grows in live bytes as the new blocks replace the old ones: turnover, not
/// growth. Its growth patterns are not taken as the process's pattern while such frees happen in
/// the window.
pub fn analyze_process(series: &ProcessSeries, config: &PatternConfig) -> Option<ProcessPattern> {
    let limit = series.limit_bytes.or(series.mem_total_bytes);
    let turnover = series.heap_since_attach && {
        let recent = &series.unknown_frees[series
            .unknown_frees
            .len()
            .saturating_sub(config.window_size)..];
        match (recent.first(), recent.last()) {
            (Some(first), Some(last)) => last.1 > first.1,
            _ => false,
        }
    };
    let mut best: Option<(Metric, Pattern)> = None;
    for metric in [Metric::Rss, Metric::HeapLive, Metric::External] {
        let Some(pattern) = detect_pattern(series.metric(metric), config, limit) else {
            continue;
        };
        if turnover && metric == Metric::HeapLive && pattern.kind.is_growth() {
            continue;
        }
        let better = match &best {
            Some((_, current)) => concern_cmp(&pattern, current) == Ordering::Greater,
            None => true,
        };
        if better {
            best = Some((metric, pattern));
        }
    }
    let (metric, pattern) = best?;
    let mut libraries: Vec<LibraryPattern> = series
        .libraries
        .iter()
        .filter_map(|(library, samples)| {
            detect_pattern(samples, config, None).map(|pattern| LibraryPattern {
                library: library.clone(),
                pattern,
            })
        })
        .collect();
    libraries.sort_by(|a, b| {
        concern_cmp(&b.pattern, &a.pattern)
            .then(b.pattern.growth_rate.total_cmp(&a.pattern.growth_rate))
    });
    Some(ProcessPattern {
        pid: series.pid,
        comm: series.comm.clone(),
        metric,
        pattern,
        libraries,
    })
}

/// Patterns of every process with enough samples, most concerning first.
pub fn analyze_snapshots<S: Borrow<HostSnapshot>>(
    snapshots: &[S],
    config: &PatternConfig,
) -> Vec<ProcessPattern> {
    let mut patterns: Vec<ProcessPattern> = extract_series(snapshots)
        .iter()
        .filter_map(|series| analyze_process(series, config))
        .collect();
    patterns.sort_by(|a, b| concern_cmp(&b.pattern, &a.pattern).then(a.pid.cmp(&b.pid)));
    patterns
}

/// Reads a snapshot file (one JSON [`HostSnapshot`] per line). Lines that are not valid UTF-8 or
/// JSON, or have no timestamp, are skipped with a warning naming the line; the count of skipped
/// lines is returned with the snapshots. Blank lines are ignored. Only failing to open or read the
/// file is an error.
pub fn read_snapshots_jsonl(
    path: impl AsRef<Path>,
) -> Result<(Vec<HostSnapshot>, usize), AnalysisError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| AnalysisError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut snapshots = Vec::new();
    let mut skipped = 0;
    let mut buf = Vec::new();
    let mut line_no = 0_usize;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| AnalysisError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if read == 0 {
            break;
        }
        line_no += 1;
        let line = match std::str::from_utf8(&buf) {
            Ok(line) => line.trim(),
            Err(err) => {
                log::warn!(
                    "{}:{line_no}: skipping corrupted snapshot line: {err}",
                    path.display()
                );
                skipped += 1;
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<HostSnapshot>(line) {
            Ok(snapshot) if snapshot.timestamp == 0 => {
                log::warn!(
                    "{}:{line_no}: skipping snapshot line without a timestamp",
                    path.display()
                );
                skipped += 1;
            }
            Ok(snapshot) => snapshots.push(snapshot),
            Err(err) => {
                log::warn!(
                    "{}:{line_no}: skipping corrupted snapshot line: {err}",
                    path.display()
                );
                skipped += 1;
            }
        }
    }
    Ok((snapshots, skipped))
}

/// Human output of `memtrace analyze`: a header and one line per process.
pub fn render_text(patterns: &[ProcessPattern]) -> String {
    if patterns.is_empty() {
        return "No process has enough samples to analyze.\n".to_string();
    }
    let mut out = format!(
        "{:>7}  {:<16} {:<8} {:<11} {:>6} {:>13} {:>9}  {:<8}  {}\n",
        "PID",
        "COMM",
        "METRIC",
        "TYPE",
        "CONF%",
        "GROWTH MB/min",
        "DUR min",
        "SEVERITY",
        "RECOMMENDATION"
    );
    for p in patterns {
        let comm: String = p.comm.chars().take(16).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{:>7}  {:<16} {:<8} {:<11} {:>6.1} {:>+13.2} {:>9.1}  {:<8}  {}",
            p.pid,
            comm,
            p.metric.as_str(),
            p.pattern.kind.as_str(),
            p.pattern.confidence,
            p.pattern.growth_rate,
            p.pattern.duration,
            p.pattern.severity.as_str(),
            p.pattern.recommendation,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::{
        analysis::{
            pattern::{PatternType, MB},
            synth,
        },
        snapshot::{LibrarySnapshot, ProcessSnapshot},
    };

    /// Snapshots of two processes over 20 samples at 30 s: pid 100 (`leaky`, traced) whose RSS and
    /// `libleak.so` leak 1.5 MB/min, `libc.so.6` flat; pid 200 (`idle`, untraced) flat.
    fn snapshots() -> Vec<HostSnapshot> {
        let leak = synth::leak(1);
        let flat = synth::noisy_flat(2);
        leak.iter()
            .zip(&flat)
            .map(|(&(ts, leak_bytes), &(_, flat_bytes))| {
                let heap_live = leak_bytes - (100 << 20);
                let mut leaky = ProcessSnapshot {
                    pid: 100,
                    comm: "leaky".into(),
                    rss_bytes: leak_bytes,
                    heap_traced: true,
                    heap_live_bytes: heap_live,
                    libraries: vec![
                        LibrarySnapshot {
                            library: "libc.so.6".into(),
                            live_bytes: 50 << 20,
                            ..LibrarySnapshot::default()
                        },
                        LibrarySnapshot {
                            library: "libleak.so".into(),
                            live_bytes: heap_live - (50 << 20),
                            ..LibrarySnapshot::default()
                        },
                    ],
                    ..ProcessSnapshot::default()
                };
                leaky.derive_external();
                // serde_json does not round-trip every f64 to the last bit; the reader tests
                // compare whole snapshots.
                leaky.external_ratio = None;
                let idle = ProcessSnapshot {
                    pid: 200,
                    comm: "idle".into(),
                    rss_bytes: flat_bytes,
                    ..ProcessSnapshot::default()
                };
                HostSnapshot {
                    timestamp: ts,
                    mem_total_bytes: 8 << 30,
                    mem_available_bytes: 4 << 30,
                    processes: vec![idle, leaky],
                }
            })
            .collect()
    }

    #[test]
    fn extracts_series_per_process_and_library() {
        let mut snaps = snapshots();
        snaps.reverse(); // order of the input does not matter
        let series = extract_series(&snaps);
        assert_eq!(series.len(), 2);
        let leaky = &series[0];
        assert_eq!((leaky.pid, leaky.comm.as_str()), (100, "leaky"));
        assert_eq!(leaky.rss.len(), 20);
        assert!(leaky.rss.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(leaky.heap_live.len(), 20);
        assert_eq!(leaky.external[0].1, 100 << 20);
        assert_eq!(leaky.libraries.len(), 2);
        assert_eq!(leaky.libraries["libc.so.6"].len(), 20);
        assert_eq!(leaky.mem_total_bytes, Some(8 << 30));
        let idle = &series[1];
        assert_eq!(idle.rss.len(), 20);
        assert!(idle.heap_live.is_empty() && idle.external.is_empty() && idle.libraries.is_empty());
    }

    #[test]
    fn analyze_ranks_the_leak_first_with_its_library() {
        let patterns = analyze_snapshots(&snapshots(), &PatternConfig::default());
        assert_eq!(patterns.len(), 2);
        let leaky = &patterns[0];
        assert_eq!(leaky.pid, 100);
        assert_eq!(leaky.pattern.kind, PatternType::Leak);
        // Every metric of pid 100 leaks alike; on ties RSS is reported.
        assert_eq!(leaky.metric, Metric::Rss);
        assert_eq!(leaky.pattern.limit_bytes, Some(8 << 30));
        assert!(leaky.pattern.forecast_minutes_to_limit.is_some());
        assert_eq!(leaky.libraries.len(), 2);
        assert_eq!(leaky.libraries[0].library, "libleak.so");
        assert_eq!(leaky.libraries[0].pattern.kind, PatternType::Leak);
        assert_eq!(leaky.libraries[1].pattern.kind, PatternType::Stable);
        let idle = &patterns[1];
        assert_eq!((idle.pid, idle.pattern.kind), (200, PatternType::Stable));
        assert!(idle.libraries.is_empty());
    }

    #[test]
    fn heap_leak_under_flat_rss_is_reported() {
        // RSS flat (the allocator reuses pages it already had) while the live heap grows.
        let snaps: Vec<HostSnapshot> = synth::leak(3)
            .iter()
            .map(|&(ts, heap)| {
                let mut p = ProcessSnapshot {
                    pid: 7,
                    comm: "cache".into(),
                    rss_bytes: 1 << 30,
                    heap_traced: true,
                    heap_live_bytes: heap,
                    ..ProcessSnapshot::default()
                };
                p.derive_external();
                HostSnapshot {
                    timestamp: ts,
                    processes: vec![p],
                    ..HostSnapshot::default()
                }
            })
            .collect();
        let patterns = analyze_snapshots(&snaps, &PatternConfig::default());
        assert_eq!(patterns.len(), 1);
        assert_eq!(patterns[0].metric, Metric::HeapLive);
        assert_eq!(patterns[0].pattern.kind, PatternType::Leak);
        // No MemTotal in these snapshots: no limit, no forecast.
        assert_eq!(patterns[0].pattern.limit_bytes, None);
    }

    /// Snapshots of one process traced since attach, RSS flat at 1 GiB, live heap growing like
    /// `synth::leak`, and `unknown_frees(i)` frees of pre-attach blocks at sample `i`.
    fn since_attach(unknown_frees: impl Fn(usize) -> u64) -> Vec<HostSnapshot> {
        synth::leak(3)
            .iter()
            .enumerate()
            .map(|(i, &(ts, heap))| {
                let mut p = ProcessSnapshot {
                    pid: 8,
                    comm: "attached".into(),
                    rss_bytes: 1 << 30,
                    heap_traced: true,
                    heap_live_bytes: heap,
                    heap_unknown_frees: unknown_frees(i),
                    limit_bytes: Some(2 << 30),
                    ..ProcessSnapshot::default()
                };
                p.derive_external_since_attach(1 << 30, 0);
                HostSnapshot {
                    timestamp: ts,
                    mem_total_bytes: 8 << 30,
                    processes: vec![p],
                    ..HostSnapshot::default()
                }
            })
            .collect()
    }

    /// A heap traced since attach has no external series (RSS - live heap is not external memory
    /// there), and its live heap growing while blocks from before the attach are freed is
    /// turnover, not a leak; without such frees it is a leak.
    #[test]
    fn heap_traced_since_attach() {
        let turnover = since_attach(|i| 1000 * i as u64);
        let series = extract_series(&turnover);
        assert!(series[0].external.is_empty());
        assert!(series[0].heap_since_attach);
        assert_eq!(series[0].limit_bytes, Some(2 << 30));
        let patterns = analyze_snapshots(&turnover, &PatternConfig::default());
        assert_eq!(patterns[0].metric, Metric::Rss, "{patterns:#?}");
        assert_eq!(patterns[0].pattern.kind, PatternType::Stable);

        let growth = since_attach(|_| 7);
        let patterns = analyze_snapshots(&growth, &PatternConfig::default());
        assert_eq!(patterns[0].metric, Metric::HeapLive);
        assert_eq!(patterns[0].pattern.kind, PatternType::Leak);
        // The forecast aims at the process's own limit (2 GiB), not MemTotal (8 GiB).
        assert_eq!(patterns[0].pattern.limit_bytes, Some(2 << 30));
    }

    #[test]
    fn process_pattern_json_is_camel_case() {
        let patterns = analyze_snapshots(&snapshots(), &PatternConfig::default());
        let value = serde_json::to_value(&patterns[0]).expect("serialize");
        assert_eq!(value["pid"], 100);
        assert_eq!(value["comm"], "leaky");
        assert_eq!(value["metric"], "rss");
        assert_eq!(value["pattern"]["type"], "leak");
        assert!(value["pattern"]["growthRate"].is_number());
        assert_eq!(value["libraries"][0]["library"], "libleak.so");
        assert_eq!(value["libraries"][0]["pattern"]["type"], "leak");
        assert_eq!(
            serde_json::to_value(Metric::HeapLive).expect("serialize"),
            "heapLive"
        );
    }

    #[test]
    fn too_few_snapshots_give_nothing() {
        let snaps = snapshots();
        assert!(analyze_snapshots(&snaps[..3], &PatternConfig::default()).is_empty());
        assert!(analyze_snapshots::<HostSnapshot>(&[], &PatternConfig::default()).is_empty());
    }

    fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "memtrace-analysis-{}-{name}.jsonl",
            std::process::id()
        ));
        let mut file = File::create(&path).expect("create temp file");
        file.write_all(content).expect("write temp file");
        path
    }

    #[test]
    fn jsonl_reader_skips_corrupted_lines() {
        let snaps = snapshots();
        let mut content = Vec::new();
        for (i, snapshot) in snaps.iter().take(3).enumerate() {
            content.extend(serde_json::to_vec(snapshot).expect("serialize"));
            content.push(b'\n');
            match i {
                0 => content.extend(b"{\"timestamp\": 17000, \"processes\": [tru\n"),
                1 => content.extend(b"\n   \n"),
                _ => content.extend(b"\xff\xfe not utf-8\n{}\n"),
            }
        }
        // A last line cut short by a crash, without its newline.
        content.extend(b"{\"timestamp\": 1700000090000, \"memTotal");
        let path = temp_file("corrupted", &content);
        let result = read_snapshots_jsonl(&path);
        let _ = std::fs::remove_file(&path);
        let (read, skipped) = result.expect("read");
        // Bad JSON, bad UTF-8, no timestamp, truncated; blank lines are not counted.
        assert_eq!(skipped, 4);
        assert_eq!(read.as_slice(), &snaps[..3]);
    }

    #[test]
    fn jsonl_reader_round_trips_and_reports_missing_file() {
        let snaps = snapshots();
        let mut content = Vec::new();
        for snapshot in &snaps {
            content.extend(serde_json::to_vec(snapshot).expect("serialize"));
            content.extend(b"\r\n");
        }
        let path = temp_file("roundtrip", &content);
        let result = read_snapshots_jsonl(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(result.expect("read"), (snaps, 0));

        let missing = std::env::temp_dir().join("memtrace-analysis-does-not-exist.jsonl");
        let err = read_snapshots_jsonl(&missing).expect_err("missing file");
        assert!(matches!(err, AnalysisError::Open { .. }));
        let message = err.to_string();
        assert!(message.contains("does-not-exist"), "{message}");
        // The io error is the source, not part of the message.
        assert!(!message.contains("No such file"), "{message}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn text_has_one_line_per_process() {
        let patterns = analyze_snapshots(&snapshots(), &PatternConfig::default());
        let text = render_text(&patterns);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("PID") && lines[0].contains("SEVERITY"));
        for (line, p) in lines[1..].iter().zip(&patterns) {
            assert!(line.contains(&p.pid.to_string()), "{line}");
            assert!(line.contains(&p.comm), "{line}");
            assert!(line.contains(p.pattern.kind.as_str()), "{line}");
            assert!(line.contains(p.pattern.severity.as_str()), "{line}");
            assert!(line.contains(&p.pattern.recommendation), "{line}");
        }
        assert!(lines[1].contains("+1.50"), "{}", lines[1]);
        assert!(render_text(&[]).contains("No process"));
        let _ = MB;
    }
}
