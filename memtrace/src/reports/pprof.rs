//! The memory of a traced process as a pprof profile, laid out like Go's `/debug/pprof/heap`:
//! the four sample types `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space` (counts
//! and bytes), gzipped `profile.proto` (the messages are generated from pprof's own
//! `profile.proto` by the `lightswitch-proto` crate). `go tool pprof`, Parca and Pyroscope read it
//! as they read a Go heap profile.
//!
//! - Values are exact, not sampled (`period` 1): `inuse_*` are the allocations still live,
//!   `alloc_*` every allocation made since tracing began, freed or not. Allocations made before
//!   tracing are not in it.
//! - Its samples are the call sites of `memtrace trace`'s consumers: the malloc family, and the
//!   mappings (`mmap`) and break growth (`brk`) that code made directly, so that the top function
//!   of `go tool pprof -top` is the top consumer of `memtrace trace`. Each sample has a `kind`
//!   label (`malloc`, `mmap`, `brk`): `-tagfocus=kind=malloc` keeps the heap alone. Mappings the
//!   allocator makes for itself are left out: they back heap blocks already counted at their
//!   callers.
//! - Each stack starts at the frame the site is attributed to, as in `memtrace trace`: frames
//!   inside the allocator and its wrappers (libc, `operator new`, configured wrappers) are left
//!   out, so the leaf of a sample is the function that asked for the memory, as in a Go heap
//!   profile (where the runtime's malloc frames are left out too).
//! - Mappings carry the address range, file offset, path and GNU build id of the object as the
//!   process mapped it, the main binary first; locations carry the return address, function
//!   names, source files and line numbers. A frame without a symbol is named `library+0xoffset`,
//!   and its mapping says `has_functions: false` when none of its frames had one, so a tool with
//!   the object's debug information can symbolize it again.

use std::{collections::HashMap, io::Write as _};

pub use lightswitch_proto::profile::pprof as proto;
use prost::Message as _;

use super::ReportError;
use crate::{
    accounting::SiteClass,
    attribution::{
        symbols::{Frame, MappedObject},
        ConsumerReport, SiteLive,
    },
};

/// The sample types of a heap profile, in Go's order: `(type, unit)`.
pub const HEAP_SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// `Content-Type` of a profile served over HTTP, as Go's `net/http/pprof` answers.
pub const PPROF_CONTENT_TYPE: &str = "application/octet-stream";

/// Which of Go's heap endpoints a profile answers. Both hold the same samples; they differ in the
/// sample type a viewer opens on (`default_sample_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeapProfile {
    /// `/debug/pprof/heap`: opens on `inuse_space` (bytes live now).
    #[default]
    Heap,
    /// `/debug/pprof/allocs`: opens on `alloc_space` (bytes allocated since tracing began).
    Allocs,
}

impl HeapProfile {
    /// The profile of a Go endpoint name (`heap`, `allocs`), or `None` for any other.
    pub fn from_endpoint(name: &str) -> Option<Self> {
        match name {
            "heap" => Some(Self::Heap),
            "allocs" => Some(Self::Allocs),
            _ => None,
        }
    }

    /// The sample type the profile opens on.
    pub fn default_sample_type(self) -> &'static str {
        match self {
            Self::Heap => "inuse_space",
            Self::Allocs => "alloc_space",
        }
    }
}

/// A query parameter of Go's heap endpoints that memtrace does not serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScrapeQueryError {
    #[error(
        "seconds={0}: delta heap profiles are not served; scrape the instant profile (delta: false)"
    )]
    Delta(String),
    #[error("debug={0}: only the protobuf profile is served (debug=0)")]
    Debug(String),
}

/// Checks the query parameters of a scrape of `/debug/pprof/heap` or `/debug/pprof/allocs`
/// against what Go's handler accepts: `seconds` (a delta profile) and a non-zero `debug` (the
/// text form) are refused, `gc` is accepted and has nothing to do, others are ignored.
pub fn check_scrape_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ScrapeQueryError> {
    for (key, value) in params {
        match key {
            "seconds" if !value.is_empty() => return Err(ScrapeQueryError::Delta(value.into())),
            "debug" if !value.is_empty() && value != "0" => {
                return Err(ScrapeQueryError::Debug(value.into()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// One target group of Prometheus's HTTP service discovery, as Parca (`http_sd_configs`) and
/// Grafana Alloy (`discovery.http`) read it: the agent's address, and the labels that make the
/// scraper ask for one process (`__param_pid`) and name its series (`pid`, `comm`, and
/// `service_name`, which Pyroscope requires).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ScrapeTargetGroup {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The scrape targets of traced processes, one group per process: `address` is the agent's
/// `host:port` as the scraper reaches it.
pub fn scrape_targets<'a>(
    address: &str,
    processes: impl IntoIterator<Item = (u32, &'a str)>,
) -> Vec<ScrapeTargetGroup> {
    processes
        .into_iter()
        .map(|(pid, comm)| ScrapeTargetGroup {
            targets: vec![address.to_string()],
            labels: [
                ("__param_pid", pid.to_string()),
                ("pid", pid.to_string()),
                ("comm", comm.to_string()),
                ("service_name", comm.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        })
        .collect()
}

/// How to build a heap profile.
#[derive(Clone, Debug, Default)]
pub struct PprofOptions {
    pub kind: HeapProfile,
    /// When the profile was taken, ns since the Unix epoch.
    pub time_nanos: i64,
    /// How long the process had been traced when the profile was taken, ns (0: not said).
    pub duration_nanos: i64,
}

/// The live heap of a process as a gzipped pprof profile that opens on `inuse_space`.
pub fn pprof(report: &ConsumerReport, time_nanos: i64) -> Result<Vec<u8>, ReportError> {
    gzip(&heap_profile(
        report,
        &PprofOptions {
            time_nanos,
            ..PprofOptions::default()
        },
    ))
}

/// What a Parca or Pyroscope scrape of a traced process's `/debug/pprof/heap` (or `allocs`)
/// gets: the gzipped profile, as Go's `net/http/pprof` serves it (`Content-Type`
/// [`PPROF_CONTENT_TYPE`]).
pub fn pprof_for_scrape(
    report: &ConsumerReport,
    kind: HeapProfile,
    time_nanos: i64,
) -> Result<Vec<u8>, ReportError> {
    gzip(&heap_profile(
        report,
        &PprofOptions {
            kind,
            time_nanos,
            ..PprofOptions::default()
        },
    ))
}

/// Encodes and gzips a profile (pprof's on-disk and on-the-wire form).
pub fn gzip(profile: &proto::Profile) -> Result<Vec<u8>, ReportError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .map_err(ReportError::Compress)?;
    gz.finish().map_err(ReportError::Compress)
}

/// The string table: index 0 is the empty string.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
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

/// A mapping of the profile, keyed by where and what was mapped.
type MappingKey = (u64, String);

fn mapping_key(object: &MappedObject) -> MappingKey {
    (object.start, object.path.clone())
}

/// The main binary among the objects of a process: the one named like the process (`comm` is the
/// first 15 bytes of the executable's name), else the lowest-mapped object that is not a shared
/// library.
fn main_binary<'a>(objects: &[&'a MappedObject], comm: &str) -> Option<&'a MappedObject> {
    let name = |o: &MappedObject| -> String {
        std::path::Path::new(&o.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let by_comm = objects.iter().find(|o| {
        let name = name(o);
        !comm.is_empty() && (name == comm || (comm.len() >= 15 && name.starts_with(comm)))
    });
    by_comm
        .or_else(|| {
            objects
                .iter()
                .filter(|o| !name(o).contains(".so"))
                .min_by_key(|o| o.start)
        })
        .copied()
}

/// The sites in the profile and the frames their samples show (from the attributed frame
/// outwards).
fn profile_sites(report: &ConsumerReport) -> impl Iterator<Item = (&SiteLive, &[Frame])> {
    report
        .sites
        .iter()
        .filter(|s| !s.allocator_internal)
        .filter(|s| s.total_calls > 0 || s.live_bytes > 0)
        .map(|s| (s, s.frames.get(s.attributed..).unwrap_or(&[])))
}

fn kind_name(kind: SiteClass) -> &'static str {
    match kind {
        SiteClass::Malloc => "malloc",
        SiteClass::Mmap => "mmap",
        SiteClass::Brk => "brk",
    }
}

/// Builds the heap profile of one process (not yet encoded): see the module's documentation.
pub fn heap_profile(report: &ConsumerReport, options: &PprofOptions) -> proto::Profile {
    let mut strings = Strings::new();
    let sample_type = HEAP_SAMPLE_TYPES
        .iter()
        .map(|(kind, unit)| proto::ValueType {
            r#type: strings.get(kind),
            unit: strings.get(unit),
        })
        .collect();
    let period_type = proto::ValueType {
        r#type: strings.get("space"),
        unit: strings.get("bytes"),
    };
    let default_sample_type = strings.get(options.kind.default_sample_type());
    let kind_key = strings.get("kind");
    let comment = vec![
        strings.get(&format!(
            "memtrace heap profile of pid {} ({})",
            report.pid, report.comm
        )),
        strings.get("exact, not sampled: inuse_* live now, alloc_* since tracing began"),
    ];

    // Mappings: the main binary first, then in order of first appearance.
    let mut objects: Vec<&MappedObject> = Vec::new();
    let mut seen: HashMap<MappingKey, ()> = HashMap::new();
    for (_, frames) in profile_sites(report) {
        for object in frames.iter().filter_map(|f| f.object.as_deref()) {
            if seen.insert(mapping_key(object), ()).is_none() {
                objects.push(object);
            }
        }
    }
    if let Some(main) = main_binary(&objects, &report.comm) {
        let key = mapping_key(main);
        objects.sort_by_key(|o| mapping_key(o) != key);
    }
    let mut mappings: Vec<proto::Mapping> = Vec::with_capacity(objects.len());
    let mut mapping_ids: HashMap<MappingKey, usize> = HashMap::new();
    for object in &objects {
        mapping_ids.insert(mapping_key(object), mappings.len());
        mappings.push(proto::Mapping {
            id: mappings.len() as u64 + 1,
            memory_start: object.start,
            memory_limit: object.end,
            file_offset: object.offset,
            filename: strings.get(&object.path),
            build_id: strings.get(object.build_id.as_deref().unwrap_or("")),
            // Set below from the frames symbolized in it.
            has_functions: false,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        });
    }

    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut function_id = |strings: &mut Strings, name: &str, file: &str| -> u64 {
        *function_ids
            .entry((name.to_string(), file.to_string()))
            .or_insert_with(|| {
                let id = functions.len() as u64 + 1;
                functions.push(proto::Function {
                    id,
                    name: strings.get(name),
                    system_name: strings.get(name),
                    filename: strings.get(file),
                    start_line: 0,
                });
                id
            })
    };
    let mut locations: Vec<proto::Location> = Vec::new();
    let mut location_ids: HashMap<(Option<MappingKey>, u64, String), u64> = HashMap::new();
    let mut samples: Vec<proto::Sample> = Vec::new();
    let mut sample_index: HashMap<(Vec<u64>, i64), usize> = HashMap::new();
    for (site, frames) in profile_sites(report) {
        let mut ids = Vec::with_capacity(frames.len().max(1));
        // Frames of functions inlined at an address are lines of the location of the function
        // they are inlined into (pprof's convention: innermost line first).
        let mut inlined: Vec<&Frame> = Vec::new();
        for frame in frames {
            if frame.inlined {
                inlined.push(frame);
                continue;
            }
            let group: Vec<&Frame> = inlined.drain(..).chain([frame]).collect();
            let mapping = frame
                .object
                .as_deref()
                .map(mapping_key)
                .and_then(|key| mapping_ids.get(&key).map(|&index| (key, index)));
            if let (Some((_, index)), Some(_)) = (&mapping, &frame.function) {
                let m = &mut mappings[*index];
                m.has_functions = true;
                m.has_filenames |= frame.file.is_some();
                m.has_line_numbers |= frame.line.is_some();
                m.has_inline_frames |= group.len() > 1;
            }
            let name = group
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join("\n");
            let key = (mapping.as_ref().map(|(k, _)| k.clone()), frame.addr, name);
            let id = match location_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let line = group
                        .iter()
                        .map(|f| {
                            let file = f.source_path.as_deref().or(f.file.as_deref()).unwrap_or("");
                            proto::Line {
                                function_id: function_id(&mut strings, &f.name(), file),
                                line: f.line.map_or(0, i64::from),
                                column: 0,
                            }
                        })
                        .collect();
                    let id = locations.len() as u64 + 1;
                    locations.push(proto::Location {
                        id,
                        mapping_id: mapping.as_ref().map_or(0, |(_, i)| *i as u64 + 1),
                        address: frame.addr,
                        line,
                        is_folded: false,
                    });
                    location_ids.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        if ids.is_empty() {
            // No stack (not captured, or past the stack map): one location named like the
            // consumer, so that its bytes are not lost from the profile.
            let key = (None, 0, site.consumer.clone());
            let id = match location_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let function_id = function_id(&mut strings, &site.consumer, "");
                    let id = locations.len() as u64 + 1;
                    locations.push(proto::Location {
                        id,
                        line: vec![proto::Line {
                            function_id,
                            ..Default::default()
                        }],
                        ..Default::default()
                    });
                    location_ids.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        // Call sites whose stacks are the same from the attributed frame on (e.g. a stack
        // unwound before and after the process's unwind tables were loaded) are one sample.
        let kind = strings.get(kind_name(site.kind));
        let values = [
            saturating_i64(site.total_calls),
            saturating_i64(site.total_bytes),
            saturating_i64(site.live_count),
            saturating_i64(site.live_bytes),
        ];
        match sample_index.get(&(ids.clone(), kind)) {
            Some(&index) => {
                let sample: &mut proto::Sample = &mut samples[index];
                for (total, value) in sample.value.iter_mut().zip(values) {
                    *total = total.saturating_add(value);
                }
            }
            None => {
                sample_index.insert((ids.clone(), kind), samples.len());
                samples.push(proto::Sample {
                    location_id: ids,
                    value: values.to_vec(),
                    label: vec![proto::Label {
                        key: kind_key,
                        str: kind,
                        ..Default::default()
                    }],
                });
            }
        }
    }

    // Largest live memory first (then most allocated): `-traces` and raw readers list samples in
    // this order.
    samples.sort_by(|a, b| {
        (b.value[3], b.value[1])
            .cmp(&(a.value[3], a.value[1]))
            .then_with(|| a.location_id.cmp(&b.location_id))
    });
    proto::Profile {
        sample_type,
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: options.time_nanos,
        duration_nanos: options.duration_nanos,
        period_type: Some(period_type),
        period: 1,
        comment,
        default_sample_type,
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn object(start: u64, end: u64, offset: u64, path: &str) -> Arc<MappedObject> {
        Arc::new(MappedObject {
            start,
            end,
            offset,
            path: path.into(),
            build_id: Some(format!("{start:x}")),
        })
    }

    fn frame(name: Option<&str>, object: &Arc<MappedObject>, offset: u64) -> Frame {
        Frame {
            addr: object.start + offset,
            module: std::path::Path::new(&object.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            offset: object.offset + offset,
            function: name.map(str::to_string),
            file: name.map(|_| "leak.c".to_string()),
            line: name.map(|_| 7),
            source_path: name.map(|_| "/src/leak.c".to_string()),
            inlined: false,
            object: Some(Arc::clone(object)),
        }
    }

    fn site(
        frames: Vec<Frame>,
        attributed: usize,
        live: (u64, u64),
        total: (u64, u64),
    ) -> SiteLive {
        let consumer = frames
            .get(attributed)
            .map_or("[unknown]".to_string(), Frame::name);
        SiteLive {
            kind: SiteClass::Malloc,
            frames,
            live_bytes: live.0,
            live_count: live.1,
            attributed,
            consumer,
            total_calls: total.1,
            total_bytes: total.0,
            allocator_internal: false,
        }
    }

    /// A process `app` with its binary, libleak.so and libc: four heap sites (one through
    /// strdup in libc, one without a stack, one freed), a direct mapping, and a mapping the
    /// allocator made for itself.
    fn report() -> ConsumerReport {
        let libc = object(0x7f00_0000_0000, 0x7f00_0010_0000, 0x2000, "/lib/libc.so.6");
        let leak = object(
            0x7f10_0000_0000,
            0x7f10_0000_4000,
            0x1000,
            "/opt/libleak.so",
        );
        let app = object(0x5500_0000_0000, 0x5500_0000_8000, 0x1000, "/usr/bin/app");
        let main = || frame(Some("main"), &app, 0x40);
        ConsumerReport {
            pid: 42,
            comm: "app".into(),
            sites: vec![
                site(
                    vec![frame(Some("leak_one"), &leak, 0x10), main()],
                    0,
                    (4096, 2),
                    (8192, 4),
                ),
                site(
                    vec![
                        frame(Some("strdup"), &libc, 0x99),
                        frame(None, &leak, 0x20),
                        main(),
                    ],
                    1,
                    (100, 1),
                    (100, 1),
                ),
                site(Vec::new(), 0, (64, 1), (64, 1)),
                site(
                    vec![frame(Some("free_me"), &app, 0x80)],
                    0,
                    (0, 0),
                    (512, 2),
                ),
                SiteLive {
                    kind: SiteClass::Mmap,
                    ..site(
                        vec![frame(Some("map_it"), &leak, 0x30)],
                        0,
                        (8192, 1),
                        (8192, 1),
                    )
                },
                SiteLive {
                    kind: SiteClass::Brk,
                    allocator_internal: true,
                    ..site(
                        vec![frame(Some("sbrk"), &libc, 0x50)],
                        0,
                        (1 << 20, 1),
                        (1 << 20, 1),
                    )
                },
            ],
            ..ConsumerReport::default()
        }
    }

    fn decode(gz: &[u8]) -> proto::Profile {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut bytes)
            .expect("gunzip");
        proto::Profile::decode(&bytes[..]).expect("decodes")
    }

    fn s(p: &proto::Profile, i: i64) -> &str {
        &p.string_table[i as usize]
    }

    /// Names of the functions of a sample, leaf first.
    fn stack(p: &proto::Profile, sample: &proto::Sample) -> Vec<String> {
        sample
            .location_id
            .iter()
            .map(|&id| {
                let location = &p.location[(id - 1) as usize];
                assert_eq!(location.id, id);
                let function = &p.function[(location.line[0].function_id - 1) as usize];
                s(p, function.name).to_string()
            })
            .collect()
    }

    /// A function inlined at an address is a line of the location of the function it is inlined
    /// into, innermost first, and the mapping says it has inline frames.
    #[test]
    fn inlined_frames_are_lines_of_one_location() {
        let app = object(0x5500_0000_0000, 0x5500_0000_8000, 0x1000, "/usr/bin/app");
        let mut helper = frame(Some("helper"), &app, 0x40);
        helper.inlined = true;
        helper.line = Some(3);
        let report = ConsumerReport {
            pid: 7,
            comm: "app".into(),
            sites: vec![site(
                vec![
                    helper,
                    frame(Some("caller"), &app, 0x40),
                    frame(Some("main"), &app, 0x90),
                ],
                0,
                (64, 1),
                (64, 1),
            )],
            ..ConsumerReport::default()
        };
        let p = decode(&pprof(&report, 1_700_000_000_000_000_000).expect("profile"));
        assert_eq!(p.location.len(), 2);
        let lines: Vec<(String, i64)> = p.location[0]
            .line
            .iter()
            .map(|l| {
                let f = &p.function[(l.function_id - 1) as usize];
                (s(&p, f.name).to_string(), l.line)
            })
            .collect();
        assert_eq!(lines, [("helper".into(), 3), ("caller".into(), 7)]);
        assert_eq!(p.location[0].address, 0x5500_0000_0040);
        assert_eq!(stack(&p, &p.sample[0]), ["helper", "main"]);
        assert!(p.mapping[0].has_inline_frames);
    }

    #[test]
    fn heap_profile_is_laid_out_like_go() {
        let p = decode(&pprof(&report(), 1_700_000_000_000_000_000).expect("profile"));
        assert_eq!(s(&p, 0), "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(types, HEAP_SAMPLE_TYPES);
        // default_sample_type indexes the string table (the bug was an index into sample_type).
        assert_eq!(s(&p, p.default_sample_type), "inuse_space");
        let period = p.period_type.as_ref().expect("period type");
        assert_eq!(
            (s(&p, period.r#type), s(&p, period.unit)),
            ("space", "bytes")
        );
        assert_eq!(p.period, 1);
        assert_eq!(p.time_nanos, 1_700_000_000_000_000_000);
        assert!(s(&p, p.comment[0]).contains("pid 42 (app)"));

        let allocs = decode(&pprof_for_scrape(&report(), HeapProfile::Allocs, 1).expect("profile"));
        assert_eq!(s(&allocs, allocs.default_sample_type), "alloc_space");
        assert_eq!(allocs.sample, p.sample);
    }

    #[test]
    fn samples_start_at_the_attributed_frame_with_all_four_values() {
        let p = decode(&pprof(&report(), 1).expect("profile"));
        let samples: Vec<(Vec<String>, Vec<i64>, &str)> = p
            .sample
            .iter()
            .map(|sample| {
                assert_eq!(sample.label.len(), 1);
                assert_eq!(s(&p, sample.label[0].key), "kind");
                (
                    stack(&p, sample),
                    sample.value.clone(),
                    s(&p, sample.label[0].str),
                )
            })
            .collect();
        assert_eq!(
            samples,
            vec![
                (vec!["map_it".into()], vec![1, 8192, 1, 8192], "mmap"),
                (
                    vec!["leak_one".into(), "main".into()],
                    vec![4, 8192, 2, 4096],
                    "malloc"
                ),
                // strdup (libc) is left out; the unnamed caller is named by its offset.
                (
                    vec!["libleak.so+0x1020".into(), "main".into()],
                    vec![1, 100, 1, 100],
                    "malloc"
                ),
                (vec!["[unknown]".into()], vec![1, 64, 1, 64], "malloc"),
                (vec!["free_me".into()], vec![2, 512, 0, 0], "malloc"),
            ],
            "largest live first; the allocator's own break growth is not a sample"
        );
        // Sums per sample type are what the sites say.
        let inuse: i64 = p.sample.iter().map(|x| x.value[3]).sum();
        assert_eq!(inuse, 4096 + 100 + 64 + 8192);
    }

    #[test]
    fn mappings_have_ranges_paths_build_ids_and_the_main_binary_first() {
        let p = decode(&pprof(&report(), 1).expect("profile"));
        // As `go tool pprof -raw` shows them: start/limit/offset path build-id [flags].
        let mappings: Vec<String> = p
            .mapping
            .iter()
            .enumerate()
            .map(|(i, m)| {
                assert_eq!(m.id, i as u64 + 1);
                format!(
                    "{:#x}/{:#x}/{:#x} {} {} {}{}{}",
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    s(&p, m.filename),
                    s(&p, m.build_id),
                    if m.has_functions { "[FN]" } else { "" },
                    if m.has_filenames { "[FL]" } else { "" },
                    if m.has_line_numbers { "[LN]" } else { "" },
                )
            })
            .collect();
        assert_eq!(
            mappings,
            [
                "0x550000000000/0x550000008000/0x1000 /usr/bin/app 550000000000 [FN][FL][LN]",
                "0x7f1000000000/0x7f1000004000/0x1000 /opt/libleak.so 7f1000000000 [FN][FL][LN]",
            ],
            "libc's strdup frame is left out, so is its mapping"
        );
        // Every location's address is inside its mapping; lines carry file and line number.
        for location in &p.location {
            if location.mapping_id == 0 {
                assert_eq!(location.address, 0);
                continue;
            }
            let m = &p.mapping[(location.mapping_id - 1) as usize];
            assert!(m.memory_start <= location.address && location.address < m.memory_limit);
        }
        let leak_one = p
            .function
            .iter()
            .find(|f| s(&p, f.name) == "leak_one")
            .expect("leak_one");
        assert_eq!(s(&p, leak_one.filename), "/src/leak.c");
        let location = p
            .location
            .iter()
            .find(|l| l.line[0].function_id == leak_one.id)
            .expect("its location");
        assert_eq!(location.line[0].line, 7);
        assert_eq!(location.address, 0x7f10_0000_0010);
        // One location per address: main is shared by two samples.
        let mains = p
            .function
            .iter()
            .filter(|f| s(&p, f.name) == "main")
            .count();
        assert_eq!(mains, 1);
        assert_eq!(p.location.len(), 6);
    }

    #[test]
    fn an_object_without_symbols_says_so() {
        let stripped = object(0x1000, 0x2000, 0, "/opt/stripped");
        let report = ConsumerReport {
            pid: 1,
            comm: "x".into(),
            sites: vec![site(vec![frame(None, &stripped, 0x10)], 0, (8, 1), (8, 1))],
            ..ConsumerReport::default()
        };
        let p = heap_profile(&report, &PprofOptions::default());
        assert!(!p.mapping[0].has_functions);
        assert_eq!(
            s(&p, p.function[0].name),
            "stripped+0x10",
            "still named, by offset"
        );
    }

    #[test]
    fn main_binary_by_comm_or_lowest_executable() {
        let a = object(0x7f00, 0x8000, 0, "/lib/liba.so.1");
        let exe = object(0x5500, 0x5600, 0, "/usr/bin/a-very-long-program-name");
        let other = object(0x1000, 0x2000, 0, "/usr/bin/other");
        let objects = [a.as_ref(), exe.as_ref(), other.as_ref()];
        // comm is the executable's name cut at 15 bytes.
        let main = main_binary(&objects, "a-very-long-pro").expect("found");
        assert_eq!(main.path, "/usr/bin/a-very-long-program-name");
        let main = main_binary(&objects, "python3").expect("found");
        assert_eq!(main.path, "/usr/bin/other");
        assert!(main_binary(&[a.as_ref()], "x").is_none());
    }

    #[test]
    fn scrape_targets_for_http_service_discovery() {
        let groups = scrape_targets("10.0.0.5:10000", [(42, "node"), (7, "redis-server")]);
        let json = serde_json::to_value(&groups).expect("json");
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["10.0.0.5:10000"], "labels": {
                    "__param_pid": "42", "pid": "42", "comm": "node", "service_name": "node"}},
                {"targets": ["10.0.0.5:10000"], "labels": {
                    "__param_pid": "7", "pid": "7", "comm": "redis-server",
                    "service_name": "redis-server"}},
            ])
        );
    }

    #[test]
    fn scrape_endpoints_and_queries() {
        assert_eq!(HeapProfile::from_endpoint("heap"), Some(HeapProfile::Heap));
        assert_eq!(
            HeapProfile::from_endpoint("allocs"),
            Some(HeapProfile::Allocs)
        );
        assert_eq!(HeapProfile::from_endpoint("profile"), None);
        assert_eq!(check_scrape_query([("gc", "1"), ("debug", "0")]), Ok(()));
        assert_eq!(
            check_scrape_query([("seconds", "14")]),
            Err(ScrapeQueryError::Delta("14".into()))
        );
        assert_eq!(
            check_scrape_query([("debug", "1")]),
            Err(ScrapeQueryError::Debug("1".into()))
        );
    }
}
