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
        parts.push(format!("[{}]", class_name(site.kind)));
    }
    parts.join(";")
}

fn class_name(class: SiteClass) -> &'static str {
    match class {
        SiteClass::Malloc => "malloc",
        SiteClass::Mmap => "mmap",
        SiteClass::Brk => "brk",
    }
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

/// The readable report: what grew, patterns, alerts, top consumers with stacks.
pub fn text(report: &serde_json::Value) -> String {
    let mut out = String::new();
    let generated = report["generatedAt"].as_u64().unwrap_or(0);
    let date = crate::store::UtcDate::from_unix_ms(generated);
    let seconds = (generated / 1000) % 86_400;
    let _ = writeln!(
        out,
        "memtrace report, {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        date.year(),
        date.month(),
        date.day(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    let _ = writeln!(
        out,
        "host: {} available of {}; {} processes, {} with traced heaps; {} active alerts\n",
        mib(report["host"]["memAvailableBytes"].as_u64().unwrap_or(0)),
        mib(report["host"]["memTotalBytes"].as_u64().unwrap_or(0)),
        report["summary"]["processes"],
        report["summary"]["tracedProcesses"],
        report["summary"]["activeAlerts"],
    );
    let _ = writeln!(
        out,
        "what grew (over {} min of history):",
        report["growth"]["minutes"]
    );
    for p in report["growth"]["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
    {
        let delta = p["deltaRssBytes"].as_i64().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:>7} {:<16} rss {:>+10.1} MiB ({:+.2} MB/min) now {}",
            p["pid"],
            p["comm"].as_str().unwrap_or(""),
            delta as f64 / (1024.0 * 1024.0),
            p["rssGrowthMbPerMinute"].as_f64().unwrap_or(0.0),
            mib(p["endRssBytes"].as_u64().unwrap_or(0)),
        );
    }
    let _ = writeln!(out, "\npatterns:");
    let patterns = report["patterns"].as_array().cloned().unwrap_or_default();
    if patterns.is_empty() {
        let _ = writeln!(out, "  (not enough history yet)");
    }
    for p in patterns.iter().take(15) {
        let pattern = &p["pattern"];
        let _ = writeln!(
            out,
            "  {:>7} {:<16} {:<11} {:>5.1}% {:>+8.2} MB/min over {:.1} min [{}] {}",
            p["pid"],
            p["comm"].as_str().unwrap_or(""),
            pattern["type"].as_str().unwrap_or(""),
            pattern["confidence"].as_f64().unwrap_or(0.0),
            pattern["growthRate"].as_f64().unwrap_or(0.0),
            pattern["duration"].as_f64().unwrap_or(0.0),
            pattern["severity"].as_str().unwrap_or(""),
            pattern["recommendation"].as_str().unwrap_or(""),
        );
    }
    let _ = writeln!(out, "\nactive alerts:");
    let active = report["alerts"]["active"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if active.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for a in &active {
        let _ = writeln!(
            out,
            "  [{}] {} {}: {}",
            a["severity"].as_str().unwrap_or(""),
            a["type"].as_str().unwrap_or(""),
            a["id"].as_str().unwrap_or(""),
            a["message"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(out, "\ntop consumers (traced processes):");
    for process in report["consumers"]["processes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  pid {} ({}):",
            process["pid"],
            process["comm"].as_str().unwrap_or("")
        );
        for lib in process["libraries"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
        {
            let _ = writeln!(
                out,
                "    {:>12} live  {}",
                mib(lib["liveBytes"].as_u64().unwrap_or(0)),
                lib["library"].as_str().unwrap_or("")
            );
        }
        for c in process["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
        {
            let _ = writeln!(
                out,
                "    {:>12} in {} allocations: {} {} in {}",
                mib(c["allocatedMemory"].as_u64().unwrap_or(0)),
                c["activeAllocations"],
                c["type"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
                c["category"].as_str().unwrap_or(""),
            );
            for frame in c["stackTrace"].as_array().into_iter().flatten().take(4) {
                let _ = writeln!(out, "          {}", frame.as_str().unwrap_or(""));
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
}
