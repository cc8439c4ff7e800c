//! Reports and exports of live memory: a flame graph of live bytes by stack (inferno), a pprof
//! profile of the live heap (`inuse_objects`/`inuse_space`, gzipped protobuf as `go tool pprof`
//! reads it), and the readable text report.

use std::{collections::HashMap, fmt::Write as _, io::Write as _};

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
        for site in &report.sites {
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

/// pprof's profile.proto, the messages and fields a heap profile needs.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Self::default();
        strings.get("");
        strings
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The live heap of a process as a gzipped pprof profile (`inuse_objects`, `inuse_space`).
pub fn pprof(report: &ConsumerReport, time_nanos: i64) -> Result<Vec<u8>, ReportError> {
    use prost::Message as _;
    let mut strings = Strings::new();
    let mut profile = proto::Profile {
        sample_type: vec![
            proto::ValueType {
                r#type: strings.get("inuse_objects"),
                unit: strings.get("count"),
            },
            proto::ValueType {
                r#type: strings.get("inuse_space"),
                unit: strings.get("bytes"),
            },
        ],
        time_nanos,
        period_type: Some(proto::ValueType {
            r#type: strings.get("space"),
            unit: strings.get("bytes"),
        }),
        period: 1,
        default_sample_type: 1,
        ..Default::default()
    };
    let mut mappings: HashMap<String, u64> = HashMap::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: HashMap<(String, u64), u64> = HashMap::new();
    for site in report.sites.iter().filter(|s| s.kind == SiteClass::Malloc) {
        let mut ids = Vec::new();
        for frame in &site.frames {
            let mapping_count = mappings.len() as u64;
            let mapping_id = *mappings.entry(frame.module.clone()).or_insert_with(|| {
                profile.mapping.push(proto::Mapping {
                    id: mapping_count + 1,
                    filename: strings.get(&frame.module),
                    has_functions: true,
                });
                mapping_count + 1
            });
            let name = frame.name();
            let file = frame.file.clone().unwrap_or_default();
            let function_count = functions.len() as u64;
            let function_id = *functions
                .entry((name.clone(), file.clone()))
                .or_insert_with(|| {
                    profile.function.push(proto::Function {
                        id: function_count + 1,
                        name: strings.get(&name),
                        system_name: strings.get(&name),
                        filename: strings.get(&file),
                    });
                    function_count + 1
                });
            let location_count = locations.len() as u64;
            let location_id = *locations
                .entry((frame.module.clone(), frame.offset))
                .or_insert_with(|| {
                    profile.location.push(proto::Location {
                        id: location_count + 1,
                        mapping_id,
                        address: frame.addr,
                        line: vec![proto::Line {
                            function_id,
                            line: i64::from(frame.line.unwrap_or(0)),
                        }],
                    });
                    location_count + 1
                });
            ids.push(location_id);
        }
        profile.sample.push(proto::Sample {
            location_id: ids,
            value: vec![site.live_count as i64, site.live_bytes as i64],
        });
    }
    profile.string_table = strings.table;
    let bytes = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).map_err(ReportError::Compress)?;
    gz.finish().map_err(ReportError::Compress)
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
            file: None,
            line: None,
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
                },
                SiteLive {
                    kind: SiteClass::Mmap,
                    frames: vec![frame("map_it", "libleak.so", 0x30)],
                    live_bytes: 8192,
                    live_count: 1,
                },
            ],
            ..ConsumerReport::default()
        }
    }

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

    #[test]
    fn pprof_round_trips() {
        use prost::Message as _;
        let gz = pprof(&report(), 1).expect("profile");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut bytes)
            .expect("gunzip");
        let profile = proto::Profile::decode(&bytes[..]).expect("decodes");
        assert_eq!(profile.sample.len(), 1, "only heap sites");
        assert_eq!(profile.sample[0].value, vec![2, 4096]);
        assert_eq!(profile.sample[0].location_id.len(), 2);
        let types: Vec<&str> = profile
            .sample_type
            .iter()
            .map(|t| profile.string_table[t.r#type as usize].as_str())
            .collect();
        assert_eq!(types, ["inuse_objects", "inuse_space"]);
        assert_eq!(profile.string_table[0], "");
        let leaf = &profile.location[(profile.sample[0].location_id[0] - 1) as usize];
        let function = &profile.function[(leaf.line[0].function_id - 1) as usize];
        assert_eq!(profile.string_table[function.name as usize], "leak_one");
    }
}
