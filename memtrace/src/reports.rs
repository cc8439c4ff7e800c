//! Reports and exports of live memory: a flame graph of live bytes by stack (inferno), a pprof
//! heap profile (Go's `/debug/pprof/heap` layout, gzipped protobuf as `go tool pprof`, Parca and
//! Pyroscope read it; see [`pprof`](self::pprof)), and the readable text report.

mod pprof;
pub mod pyroscope;

use std::{collections::HashMap, fmt::Write as _};

pub use self::pprof::{
    check_scrape_query, gzip, heap_profile, pprof, pprof_for_scrape, proto, scrape_targets,
    HeapProfile, PprofOptions, ScrapeQueryError, ScrapeTargetGroup, HEAP_SAMPLE_TYPES,
    PPROF_CONTENT_TYPE,
};
use crate::{
    accounting::SiteClass,
    attribution::{ConsumerReport, SiteLive},
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no live memory with stacks to draw")]
    Empty,
    #[error("drawing the flame graph")]
    Flamegraph(#[source] std::io::Error),
    #[error("compressing the profile")]
    Compress(#[source] std::io::Error),
}

/// Frames of a site as a flame graph line, root first: `comm;main;f;g`.
fn folded(comm: &str, site: &SiteLive) -> String {
    let mut parts = vec![comm.replace(';', ":")];
    parts.extend(site.frames.iter().rev().map(|f| f.name().replace(';', ":")));
    if site.kind != SiteClass::Malloc {
        parts.push(format!("[{}]", site.kind.as_str()));
    }
    parts.join(";")
}

/// Folded stacks (`frames count`) of live bytes over the given processes.
pub fn folded_stacks<'a>(reports: impl IntoIterator<Item = &'a ConsumerReport>) -> Vec<String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for report in reports {
        for site in report.sites.iter().filter(|s| s.live_bytes > 0) {
            *counts
                .entry(folded(&format!("{} ({})", report.comm, report.pid), site))
                .or_default() += site.live_bytes;
        }
    }
    let mut lines: Vec<String> = counts
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect();
    lines.sort();
    lines
}

/// An SVG flame graph of live bytes by stack.
pub fn flamegraph<'a>(
    reports: impl IntoIterator<Item = &'a ConsumerReport>,
    title: &str,
) -> Result<String, ReportError> {
    let lines = folded_stacks(reports);
    if lines.is_empty() {
        return Err(ReportError::Empty);
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "bytes".to_string();
    options.name_type = "Function:".to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(|err| ReportError::Flamegraph(std::io::Error::other(err.to_string())))?;
    Ok(String::from_utf8_lossy(&svg).into_owned())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `YYYY-MM-DD HH:MM:SS UTC` of milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let date = crate::store::UtcDate::from_unix_ms(ms);
    let seconds = (ms / 1000) % 86_400;
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        date.year(),
        date.month(),
        date.day(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// A name another program chose (a command name, a library path) made safe for a terminal:
/// control characters are shown escaped (`\x1b`), so a name cannot clear the screen or forge lines.
pub fn printable(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Stable patterns listed in the text report after every concerning one.
const STABLE_LISTED: usize = 10;

/// The readable report: the history it covers, what grew, patterns (concerning ones first, all of
/// them), alerts, top consumers with stacks.
pub fn text(report: &crate::api::Report) -> String {
    use crate::analysis::PatternType;
    let mut out = String::new();
    let _ = writeln!(out, "memtrace report, {}", utc(report.generated_at));
    let h = &report.history;
    match (h.from, h.to) {
        (Some(from), Some(to)) => {
            let _ = writeln!(
                out,
                "history: {} snapshots from {} to {} ({:.1} min)",
                h.snapshots,
                utc(from),
                utc(to),
                to.saturating_sub(from) as f64 / 60_000.0
            );
        }
        _ => {
            let _ = writeln!(out, "history: no snapshot yet");
        }
    }
    let _ = writeln!(
        out,
        "host: {} available of {}; {} processes, {} with traced heaps; {} active alerts\n",
        mib(report.host.mem_available_bytes),
        mib(report.host.mem_total_bytes),
        report.summary.processes,
        report.summary.traced_processes,
        report.summary.active_alerts,
    );
    let _ = writeln!(
        out,
        "what grew (over the last {} min of history):",
        report.growth.minutes
    );
    for p in report.growth.processes.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:>7} {:<16} rss {:>+10.1} MiB ({:+.2} MB/min) now {}",
            p.pid,
            printable(&p.comm),
            p.delta_rss_bytes as f64 / (1024.0 * 1024.0),
            p.rss_growth_mb_per_minute,
            mib(p.end_rss_bytes),
        );
    }
    let _ = writeln!(out, "\npatterns (concerning first):");
    if report.patterns.is_empty() {
        let _ = writeln!(out, "  (not enough history yet)");
    }
    let concerning = |p: &crate::api::ProcessPattern| {
        p.pattern.confident && p.pattern.kind != PatternType::Stable
    };
    let mut stable_left = 0;
    let mut stable_listed = 0;
    for p in &report.patterns {
        if !concerning(p) {
            if stable_listed == STABLE_LISTED {
                stable_left += 1;
                continue;
            }
            stable_listed += 1;
        }
        let pattern = &p.pattern;
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:<11} {:>5.1}% {:>+8.2} MB/min over {:.1} min [{}] {}",
            p.pid,
            printable(&p.comm),
            pattern.kind.as_str(),
            pattern.confidence,
            pattern.growth_rate,
            pattern.duration,
            pattern.severity.as_str(),
            pattern.recommendation,
        );
    }
    if stable_left > 0 {
        let _ = writeln!(
            out,
            "  ({stable_left} more processes without a concerning pattern)"
        );
    }
    let _ = writeln!(out, "\nactive alerts:");
    if report.alerts.active.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for a in &report.alerts.active {
        let _ = writeln!(
            out,
            "  [{}] {} {}: {}",
            a.severity.as_str(),
            a.kind.as_str(),
            a.id,
            printable(&a.message)
        );
    }
    let _ = writeln!(out, "\ntop consumers (traced processes):");
    if report.consumers.processes.is_empty() {
        let _ = writeln!(out, "  none (no process is traced)");
    }
    for process in &report.consumers.processes {
        let _ = writeln!(out, "  pid {} ({}):", process.pid, printable(&process.comm));
        for lib in process.libraries.iter().take(5) {
            let _ = writeln!(
                out,
                "    {:>12} live  {}",
                mib(lib.live_bytes),
                printable(&lib.library)
            );
        }
        for c in process.consumers.iter().take(5) {
            let _ = writeln!(
                out,
                "    {:>12} in {} allocations: {} {} in {}",
                mib(c.allocated_memory),
                c.active_allocations,
                c.kind.as_str(),
                printable(&c.name),
                printable(&c.category),
            );
            for frame in c.stack_trace.iter().take(4) {
                let _ = writeln!(out, "          {}", printable(frame));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::symbols::Frame;

    fn report() -> ConsumerReport {
        let frame = |name: &str, module: &str, offset: u64| Frame {
            addr: 0x1000 + offset,
            module: module.into(),
            offset,
            function: Some(name.into()),
            ..Frame::default()
        };
        ConsumerReport {
            pid: 42,
            comm: "app".into(),
            sites: vec![
                SiteLive {
                    kind: SiteClass::Malloc,
                    frames: vec![
                        frame("leak_one", "libleak.so", 0x10),
                        frame("main", "app", 0x20),
                    ],
                    live_bytes: 4096,
                    live_count: 2,
                    attributed: 0,
                    consumer: "leak_one".into(),
                    total_calls: 2,
                    total_bytes: 4096,
                    allocator_internal: false,
                },
                SiteLive {
                    kind: SiteClass::Malloc,
                    frames: vec![frame("freed", "app", 0x40)],
                    live_bytes: 0,
                    live_count: 0,
                    attributed: 0,
                    consumer: "freed".into(),
                    total_calls: 1,
                    total_bytes: 64,
                    allocator_internal: false,
                },
                SiteLive {
                    kind: SiteClass::Mmap,
                    frames: vec![frame("map_it", "libleak.so", 0x30)],
                    live_bytes: 8192,
                    live_count: 1,
                    attributed: 0,
                    consumer: "map_it".into(),
                    total_calls: 1,
                    total_bytes: 8192,
                    allocator_internal: false,
                },
            ],
            ..ConsumerReport::default()
        }
    }

    /// Sites whose memory was all freed are not drawn.
    #[test]
    fn folded_lines_are_root_first_with_bytes() {
        let lines = folded_stacks([&report()]);
        assert_eq!(
            lines,
            vec![
                "app (42);main;leak_one 4096".to_string(),
                "app (42);map_it;[mmap] 8192".to_string()
            ]
        );
    }

    #[test]
    fn flamegraph_is_svg() {
        let svg = flamegraph([&report()], "live bytes").expect("svg");
        assert!(svg.contains("<svg") && svg.contains("leak_one"));
        assert!(matches!(
            flamegraph([&ConsumerReport::default()], "x"),
            Err(ReportError::Empty)
        ));
    }

    #[test]
    fn names_cannot_drive_the_terminal() {
        assert_eq!(printable("ok name"), "ok name");
        assert_eq!(printable("\u{1b}[2Jx\nfake"), "\\u{1b}[2Jx\\nfake");
    }
}
