//! `cargo xtask bench`: memtrace's overhead against real peers, measured in one run on this
//! machine (see docs/benchmarks.md).
//!
//! Every figure is a ratio measured pairwise in the same run: a bare run and a traced run of the
//! same workload back to back (the order alternating from pair to pair), the ratio of the two, and
//! the median over the pairs. The workloads time their own work loop (`elapsed <seconds>`), so a
//! tracer's start-up is never in the figure; the whole process is timed as well.

mod proc;
mod runs;
mod setup;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use serde_json::{json, Value};

use self::{
    runs::{Ctx, Job, Outcome, Tracer},
    setup::Machine,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Sizes and repetitions of a full or a quick run.
struct Plan {
    pairs: usize,
    /// The host-wide tier's targets (1%, 5%) need more pairs than the rest: pairs per round.
    agent_reps: usize,
    /// malloc loop: pairs for the host-wide tier (resolves 1%), and for per-call tracers.
    malloc_light: u64,
    malloc_heavy: u64,
    page_iterations: u64,
    /// sqlite3 orders: for the host-wide tier, and for per-call tracers.
    sqlite_light: usize,
    sqlite_heavy: usize,
    spawn_count: u64,
    storm_pairs: u64,
    live_allocations: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                pairs: 3,
                agent_reps: 2,
                malloc_light: 10_000_000,
                malloc_heavy: 60_000,
                page_iterations: 300,
                sqlite_light: 30_000,
                sqlite_heavy: 4_000,
                spawn_count: 150,
                storm_pairs: 100_000,
                live_allocations: 1_000_000,
            }
        } else {
            Self {
                pairs: 5,
                agent_reps: 3,
                malloc_light: 30_000_000,
                malloc_heavy: 150_000,
                page_iterations: 800,
                sqlite_light: 60_000,
                sqlite_heavy: 10_000,
                spawn_count: 300,
                storm_pairs: 300_000,
                live_allocations: 1_000_000,
            }
        }
    }
}

/// A workload as run in the pairs.
struct Workload {
    key: &'static str,
    title: &'static str,
    /// Command for the host-wide tier and for the per-call tracers, with a description of each.
    light: (Vec<String>, String),
    heavy: (Vec<String>, String),
    input: Vec<u8>,
    /// Input for the per-call tracers when it differs (sqlite3's smaller script).
    heavy_input: Option<Vec<u8>>,
    says_ready: bool,
    /// Per-call cost is computed for it (the malloc loop).
    per_call: bool,
}

impl Workload {
    fn job(&self, tracer: Tracer) -> (Job<'_>, &str) {
        let (argv, size) = if tracer.per_call() {
            &self.heavy
        } else {
            &self.light
        };
        let input = match (&self.heavy_input, tracer.per_call()) {
            (Some(heavy), true) => heavy,
            _ => &self.input,
        };
        (
            Job {
                argv: argv.clone(),
                input,
                says_ready: self.says_ready,
            },
            size,
        )
    }
}

struct Pair {
    bare: Outcome,
    traced: Outcome,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.traced.elapsed / self.bare.elapsed
    }

    fn wall_ratio(&self) -> f64 {
        self.traced.wall / self.bare.wall
    }

    fn cpu_ratio(&self) -> Option<f64> {
        Some(self.traced.cpu? / self.bare.cpu?)
    }

    /// (traced − bare) / calls, in µs.
    fn per_call_us(&self) -> Option<f64> {
        (self.traced.calls > 0)
            .then(|| (self.traced.elapsed - self.bare.elapsed) / self.traced.calls as f64 * 1e6)
    }

    /// (traced − bare work-loop time) per malloc+free pair (two calls), in ns.
    fn per_pair_ns(&self) -> Option<f64> {
        self.per_call_us().map(|us| us * 2000.0)
    }

    /// (traced − bare work-loop CPU) per malloc+free pair, in ns: less sensitive than elapsed time
    /// to other work on the machine (the traps are the workload's own system time).
    fn cpu_per_pair_ns(&self) -> Option<f64> {
        let (traced, bare) = (self.traced.cpu?, self.bare.cpu?);
        (self.traced.calls > 0).then(|| (traced - bare) / self.traced.calls as f64 * 2e9)
    }
}

struct Series {
    tracer: Tracer,
    size: String,
    pairs: Vec<Pair>,
    error: Option<String>,
}

impl Series {
    fn ratios(&self) -> Vec<f64> {
        self.pairs.iter().map(Pair::ratio).collect()
    }

    fn ratio(&self) -> Option<f64> {
        median(&self.ratios())
    }

    fn wall_ratio(&self) -> Option<f64> {
        median(&self.pairs.iter().map(Pair::wall_ratio).collect::<Vec<_>>())
    }

    fn cpu_ratio(&self) -> Option<f64> {
        median(
            &self
                .pairs
                .iter()
                .filter_map(Pair::cpu_ratio)
                .collect::<Vec<_>>(),
        )
    }

    fn per_call_us(&self) -> Option<f64> {
        median(
            &self
                .pairs
                .iter()
                .filter_map(Pair::per_call_us)
                .collect::<Vec<_>>(),
        )
    }

    fn per_pair_ns(&self) -> Option<f64> {
        median(
            &self
                .pairs
                .iter()
                .filter_map(Pair::per_pair_ns)
                .collect::<Vec<_>>(),
        )
    }

    fn cpu_per_pair_ns(&self) -> Option<f64> {
        median(
            &self
                .pairs
                .iter()
                .filter_map(Pair::cpu_per_pair_ns)
                .collect::<Vec<_>>(),
        )
    }

    fn json(&self) -> Value {
        json!({
            "tracer": self.tracer.key(),
            "label": self.tracer.label(),
            "size": self.size,
            "error": self.error,
            "medianRatio": self.ratio(),
            "medianWholeProcessRatio": self.wall_ratio(),
            "medianCpuRatio": self.cpu_ratio(),
            "medianPerCallMicroseconds": self.per_call_us(),
            "medianPerPairNanoseconds": self.per_pair_ns(),
            "medianCpuPerPairNanoseconds": self.cpu_per_pair_ns(),
            "pairs": self.pairs.iter().map(|p| json!({
                "bareElapsed": p.bare.elapsed,
                "tracedElapsed": p.traced.elapsed,
                "bareCpu": p.bare.cpu,
                "tracedCpu": p.traced.cpu,
                "cpuRatio": p.cpu_ratio(),
                "bareWall": p.bare.wall,
                "tracedWall": p.traced.wall,
                "ratio": p.ratio(),
                "wholeProcessRatio": p.wall_ratio(),
                "calls": p.traced.calls,
                "perCallMicroseconds": p.per_call_us(),
                "perPairNanoseconds": p.per_pair_ns(),
                "cpuPerPairNanoseconds": p.cpu_per_pair_ns(),
                "entryHits": p.traced.entry_hits,
                "returnHits": p.traced.return_hits,
                "agentCpuSeconds": p.traced.agent_cpu,
                "memtrace": p.traced.report.as_ref().map(report_summary),
            })).collect::<Vec<_>>(),
        })
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The parts of memtrace trace's report the suite uses.
fn report_summary(r: &Value) -> Value {
    json!({
        "eventsReceived": r["eventsReceived"],
        "eventsUndecodable": r["eventsUndecodable"],
        "kernel": r["kernel"],
        "agent": r["agent"],
        "heapTotalAllocs": r["process"]["heapTotalAllocs"],
        "heapTotalFrees": r["process"]["heapTotalFrees"],
        "heapLiveCount": r["process"]["heapLiveCount"],
    })
}

/// One pipeline measurement under memtrace trace.
struct PipelineRow {
    name: String,
    elapsed: f64,
    received: u64,
    kernel_events: u64,
    ring_full: u64,
    inflight_full: u64,
    cpu: f64,
    /// CPU of a trace of a workload that does nothing (load, attach, report), subtracted for the
    /// net figure.
    fixed_cpu: Option<f64>,
}

impl PipelineRow {
    fn from_report(name: String, outcome: &Outcome, fixed_cpu: Option<f64>) -> Option<Self> {
        let r = outcome.report.as_ref()?;
        let kernel = |k: &str| r["kernel"][k].as_u64().unwrap_or(0);
        Some(Self {
            name,
            elapsed: outcome.elapsed,
            received: r["eventsReceived"].as_u64().unwrap_or(0),
            kernel_events: kernel("events"),
            ring_full: kernel("ring_buffer_full"),
            inflight_full: kernel("inflight_map_full"),
            cpu: r["agent"]["cpuSeconds"].as_f64().unwrap_or(0.0),
            fixed_cpu,
        })
    }

    fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed
    }

    fn cpu_per_million(&self) -> f64 {
        self.cpu / self.received.max(1) as f64 * 1e6
    }

    fn net_cpu_per_million(&self) -> Option<f64> {
        self.fixed_cpu
            .map(|f| (self.cpu - f).max(0.0) / self.received.max(1) as f64 * 1e6)
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "workloadElapsed": self.elapsed,
            "eventsReceived": self.received,
            "kernelEvents": self.kernel_events,
            "ringBufferFull": self.ring_full,
            "inflightMapFull": self.inflight_full,
            "eventsPerSecond": self.rate(),
            "memtraceCpuSeconds": self.cpu,
            "fixedCpuSeconds": self.fixed_cpu,
            "cpuSecondsPerMillionEvents": self.cpu_per_million(),
            "netCpuSecondsPerMillionEvents": self.net_cpu_per_million(),
        })
    }
}

struct Target {
    name: &'static str,
    measured: String,
    met: Option<bool>,
}

pub fn run(
    root: &Path,
    binary: &Path,
    json_path: Option<&Path>,
    quick: bool,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let plan = Plan::new(quick);
    let machine = Machine::describe();
    let target_dir = binary
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let bin_dir = target_dir.join("bench");
    fs::create_dir_all(&bin_dir)?;
    let work = std::env::temp_dir().join(format!("memtrace-bench-{}", std::process::id()));
    fs::create_dir_all(&work)?;

    eprintln!("bench: checking the peers (perf, bpftrace, heaptrack, sqlite3)");
    let peers = setup::peers(&[
        ("perf", "linux-perf", &["--version"]),
        ("bpftrace", "bpftrace", &["--version"]),
        ("heaptrack", "heaptrack", &["--version"]),
        ("sqlite3", "sqlite3", &["--version"]),
    ]);
    if proc::which("cc").is_none() {
        eprintln!("bench: no C compiler: installing gcc with apt-get");
        let _ = setup::peers(&[("cc", "gcc", &["--version"])]);
    }
    let peer = |name: &str| {
        peers
            .iter()
            .find(|p| p.program == name)
            .expect("listed above")
    };
    let mut notes: Vec<String> = peers
        .iter()
        .filter_map(|p| p.note.as_ref().map(|n| format!("{}: {n}", p.program)))
        .collect();

    eprintln!("bench: compiling the workloads into {}", bin_dir.display());
    let malloc_loop = setup::compile(root, &bin_dir, "malloc_loop")?
        .to_string_lossy()
        .into_owned();
    let page_touch = setup::compile(root, &bin_dir, "page_touch")?
        .to_string_lossy()
        .into_owned();
    let spawn = setup::compile(root, &bin_dir, "spawn")?
        .to_string_lossy()
        .into_owned();
    let storm = setup::compile(root, &bin_dir, "mmap_storm")?
        .to_string_lossy()
        .into_owned();
    let live = setup::compile(root, &bin_dir, "live_allocs")?
        .to_string_lossy()
        .into_owned();

    let private_libc = if peer("bpftrace").available() {
        match setup::private_libc(&work.join("libc")) {
            Ok(path) => path.parent().map(Path::to_path_buf),
            Err(err) => {
                notes.push(format!(
                    "bpftrace not measured: no private libc copy ({err:#})"
                ));
                None
            }
        }
    } else {
        None
    };
    let ticks = proc::capture("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100.0);
    let floors = if peer("perf").available() {
        eprintln!("bench: memtrace's probe offsets for the perf floor");
        match setup::floors(binary, &malloc_loop, &work) {
            Ok(floors) => Some(floors),
            Err(err) => {
                notes.push(format!("perf floors not measured: {err:#}"));
                None
            }
        }
    } else {
        None
    };
    let ctx = Ctx {
        memtrace: binary.to_path_buf(),
        perf: peer("perf").path.clone(),
        floors,
        bpftrace: peer("bpftrace")
            .path
            .clone()
            .filter(|_| private_libc.is_some()),
        heaptrack: peer("heaptrack").path.clone(),
        private_libc,
        work: work.clone(),
        ticks,
    };

    let gate = b"go\n".to_vec();
    let mut workloads = vec![
        Workload {
            key: "malloc-loop",
            title: "malloc/free loop",
            light: (
                vec![malloc_loop.clone(), plan.malloc_light.to_string()],
                format!("{} malloc+free pairs", plan.malloc_light),
            ),
            heavy: (
                vec![malloc_loop.clone(), plan.malloc_heavy.to_string()],
                format!("{} malloc+free pairs", plan.malloc_heavy),
            ),
            input: gate.clone(),
            heavy_input: None,
            says_ready: true,
            per_call: true,
        },
        Workload {
            key: "page-touch",
            title: "page-touch loop",
            light: (
                vec![page_touch.clone(), plan.page_iterations.to_string()],
                format!("{} x mmap 1 MiB, touch, munmap", plan.page_iterations),
            ),
            heavy: (
                vec![page_touch.clone(), plan.page_iterations.to_string()],
                format!("{} x mmap 1 MiB, touch, munmap", plan.page_iterations),
            ),
            input: gate.clone(),
            heavy_input: None,
            says_ready: true,
            per_call: false,
        },
    ];
    if let Some(sqlite) = peer("sqlite3").path.as_ref() {
        let argv = vec![
            sqlite.to_string_lossy().into_owned(),
            "-batch".into(),
            ":memory:".into(),
        ];
        let size =
            |rows: usize| format!("{rows} orders, {} customers, in memory", (rows / 20).max(1));
        let light_script = setup::sqlite_script(plan.sqlite_light);
        let heavy_script = setup::sqlite_script(plan.sqlite_heavy);
        fs::write(bin_dir.join("sqlite-light.sql"), &light_script)?;
        fs::write(bin_dir.join("sqlite-heavy.sql"), &heavy_script)?;
        workloads.push(Workload {
            key: "sqlite",
            title: "sqlite3 (mixed)",
            light: (argv.clone(), size(plan.sqlite_light)),
            heavy: (argv, size(plan.sqlite_heavy)),
            input: light_script.into_bytes(),
            heavy_input: Some(heavy_script.into_bytes()),
            says_ready: false,
            per_call: false,
        });
    } else {
        notes.push("sqlite3 workload not measured: sqlite3 is not available".into());
    }
    workloads.push(Workload {
        key: "process-churn",
        title: "process churn",
        light: (
            vec![spawn.clone(), plan.spawn_count.to_string()],
            format!("{} x fork+exec /bin/true", plan.spawn_count),
        ),
        heavy: (
            vec![spawn.clone(), plan.spawn_count.to_string()],
            format!("{} x fork+exec /bin/true", plan.spawn_count),
        ),
        input: gate.clone(),
        heavy_input: None,
        says_ready: true,
        per_call: false,
    });

    // The pairs.
    let mut results: Vec<(usize, Vec<Series>)> = Vec::new();
    for (wi, workload) in workloads.iter().enumerate() {
        let mut series: Vec<Series> = Tracer::MEASURED
            .iter()
            .map(|&tracer| {
                let (_, size) = workload.job(tracer);
                let error = match tracer {
                    t if t.is_bpftrace() && ctx.bpftrace.is_none() => Some(format!(
                        "not measured: {}",
                        peer("bpftrace")
                            .note
                            .clone()
                            .unwrap_or_else(|| "bpftrace is not available".into())
                    )),
                    t if t.is_perf() && (ctx.perf.is_none() || ctx.floors.is_none()) => {
                        Some(format!(
                            "not measured: {}",
                            peer("perf").note.clone().unwrap_or_else(|| {
                                "perf or memtrace's probe offsets are not available".into()
                            })
                        ))
                    }
                    Tracer::Heaptrack if ctx.heaptrack.is_none() => Some(format!(
                        "not measured: {}",
                        peer("heaptrack")
                            .note
                            .clone()
                            .unwrap_or_else(|| "heaptrack is not available".into())
                    )),
                    _ => None,
                };
                Series {
                    tracer,
                    size: size.to_string(),
                    pairs: Vec::new(),
                    error,
                }
            })
            .collect();
        for round in 0..plan.pairs {
            let n = series.len();
            for k in 0..n {
                let index = (k + round) % n;
                let item = &mut series[index];
                if item.error.is_some() {
                    continue;
                }
                let tracer = item.tracer;
                let (job, _) = workload.job(tracer);
                let private = tracer.is_bpftrace();
                let reps = if tracer == Tracer::Agent {
                    plan.agent_reps
                } else {
                    1
                };
                let total = plan.pairs * reps;
                for rep in 0..reps {
                    if item.error.is_some() {
                        break;
                    }
                    let index = round * reps + rep;
                    let tag = format!("{}-{}-{index}", workload.key, tracer.key());
                    let bare_first = index % 2 == 0;
                    let result = (|| -> anyhow::Result<Pair> {
                        let mut bare = None;
                        if bare_first {
                            bare = Some(runs::run(
                                &ctx,
                                Tracer::Bare,
                                &job,
                                private,
                                &format!("{tag}-bare"),
                            )?);
                        }
                        let traced = runs::run(&ctx, tracer, &job, private, &tag)?;
                        let bare = match bare {
                            Some(b) => b,
                            None => runs::run(
                                &ctx,
                                Tracer::Bare,
                                &job,
                                private,
                                &format!("{tag}-bare"),
                            )?,
                        };
                        Ok(Pair { bare, traced })
                    })();
                    match result {
                        Ok(pair) => {
                            eprintln!(
                            "bench: {:<16} {:<28} pair {}/{}: bare {:.4} s, traced {:.4} s, ratio {:.3}",
                            workload.title,
                            tracer.label(),
                            index + 1,
                            total,
                            pair.bare.elapsed,
                            pair.traced.elapsed,
                            pair.ratio()
                        );
                            for note in pair.traced.notes.iter().chain(&pair.bare.notes) {
                                notes.push(format!(
                                    "{} / {}: {note}",
                                    workload.title,
                                    tracer.label()
                                ));
                            }
                            item.pairs.push(pair);
                        }
                        Err(err) => {
                            eprintln!(
                                "bench: {} / {} failed: {err:#}",
                                workload.title,
                                tracer.label()
                            );
                            item.error = Some(format!("failed: {err:#}"));
                        }
                    }
                }
            }
        }
        results.push((wi, series));
    }

    // Pipeline limits, all under memtrace trace with its defaults (stacks on).
    eprintln!("bench: pipeline limits");
    let mut pipeline: Vec<PipelineRow> = Vec::new();
    let mut pipeline_errors: Vec<String> = Vec::new();
    let one = |argv: Vec<String>, tag: &str, no_stacks: bool| -> anyhow::Result<Outcome> {
        let job = Job {
            argv,
            input: &gate,
            says_ready: true,
        };
        runs::trace(&ctx, &job, &[], tag, no_stacks, &[])
    };
    let fixed_cpu = match one(
        vec![malloc_loop.clone(), "1".into()],
        "pipeline-idle",
        false,
    ) {
        Ok(o) => o
            .report
            .as_ref()
            .and_then(|r| r["agent"]["cpuSeconds"].as_f64()),
        Err(err) => {
            pipeline_errors.push(format!("idle trace (fixed CPU cost) failed: {err:#}"));
            None
        }
    };
    let malloc_series = results
        .iter()
        .find(|(wi, _)| workloads[*wi].per_call)
        .and_then(|(_, series)| series.iter().find(|s| s.tracer == Tracer::Trace));
    if let Some(series) = malloc_series {
        // The median pair by events/s.
        let mut rows: Vec<PipelineRow> = series
            .pairs
            .iter()
            .filter_map(|p| {
                PipelineRow::from_report(
                    format!(
                        "malloc loop, 1 thread, {}",
                        series.size.replace(" malloc+free", "")
                    ),
                    &p.traced,
                    fixed_cpu,
                )
            })
            .collect();
        rows.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        if !rows.is_empty() {
            let mid = rows.len() / 2;
            let mut row = rows.swap_remove(mid);
            row.name.push_str(" (median pair)");
            pipeline.push(row);
        }
    }
    let extra_runs: Vec<(String, Vec<String>, &str, bool)> = vec![
        (
            format!("malloc loop, 2 threads, {} pairs", plan.malloc_heavy),
            vec![
                malloc_loop.clone(),
                plan.malloc_heavy.to_string(),
                "2".into(),
            ],
            "pipeline-malloc2",
            false,
        ),
        (
            format!(
                "mmap/munmap storm, 2 threads, {} pairs, --no-stacks",
                plan.storm_pairs
            ),
            vec![storm.clone(), plan.storm_pairs.to_string(), "2".into()],
            "pipeline-storm",
            true,
        ),
    ];
    for (name, argv, tag, no_stacks) in extra_runs {
        eprintln!("bench: pipeline: {name}");
        match one(argv, tag, no_stacks) {
            Ok(o) => pipeline.extend(PipelineRow::from_report(name, &o, fixed_cpu)),
            Err(err) => pipeline_errors.push(format!("{name}: {err:#}")),
        }
    }
    eprintln!(
        "bench: {} live allocations under memtrace trace",
        plan.live_allocations
    );
    let live_result = one(
        vec![live.clone(), plan.live_allocations.to_string()],
        "pipeline-live",
        false,
    );
    let live_row = match &live_result {
        Ok(o) => PipelineRow::from_report(
            format!("{} live allocations", plan.live_allocations),
            o,
            fixed_cpu,
        ),
        Err(err) => {
            pipeline_errors.push(format!("live allocations: {err:#}"));
            None
        }
    };
    let live_memory = live_result
        .as_ref()
        .ok()
        .and_then(|o| o.report.as_ref())
        .map(|r| {
            let a = &r["agent"];
            let get = |k: &str| a[k].as_u64().unwrap_or(0);
            LiveMemory {
                peak: get("peakRssBytes"),
                rss: get("rssBytes"),
                maps: get("bpfMapBytes"),
                mapped: get("bpfMappedBytes"),
                live_count: r["process"]["heapLiveCount"].as_u64().unwrap_or(0),
            }
        });
    if let Some(row) = live_row {
        pipeline.push(row);
    }
    let load_end = setup::load_average();

    // Report.
    let mut out = String::new();
    let versions = format!(
        "memtrace {} (release build, {}), perf {}, bpftrace {}, heaptrack {}, sqlite3 {}",
        proc::capture(
            "git",
            &[
                "-C",
                &root.to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        )
        .unwrap_or_default(),
        binary.display(),
        or_missing(peer("perf").version.trim_start_matches("perf version ")),
        or_missing(peer("bpftrace").version.trim_start_matches("bpftrace ")),
        or_missing(&peer("heaptrack").version.replace("heaptrack ", "")),
        or_missing(
            peer("sqlite3")
                .version
                .split_whitespace()
                .next()
                .unwrap_or_default()
        ),
    );
    let _ = writeln!(
        out,
        "memtrace benchmark suite ({} run: {} pairs per figure)",
        if quick { "quick" } else { "full" },
        plan.pairs
    );
    let _ =
        writeln!(
        out,
        "machine: Linux {}, {}, {} cores, {:.1} GiB memory; load average {} at start, {} at end",
        machine.kernel, machine.cpu, machine.cores, machine.memory_gib, machine.load_start, load_end
    );
    let _ = writeln!(out, "{versions}");
    let _ = writeln!(out);
    let _ = writeln!(out, "Slowdown vs bare, median over pairs of traced/bare:");
    let _ = writeln!(out, "  ratio = work-loop elapsed time (timed by the workload itself), with [min-max] of the pair ratios;");
    let _ = writeln!(out, "  cpu = CPU seconds the workload used in its loop (its children's included); whole = the whole process, tracer start-up included");
    let _ = writeln!(
        out,
        "{:<17} {:<29} {:<38} {:>5} {:>9} {:>21} {:>9} {:>9}",
        "workload", "tracer", "size", "pairs", "ratio", "[min-max]", "cpu", "whole"
    );
    for (wi, series) in &results {
        let w = &workloads[*wi];
        for item in series {
            if let Some(err) = &item.error {
                if item.pairs.is_empty() {
                    let _ = writeln!(
                        out,
                        "{:<17} {:<29} {}",
                        w.title,
                        item.tracer.label(),
                        first_line(err)
                    );
                    continue;
                }
            }
            let ratios = item.ratios();
            let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                out,
                "{:<17} {:<29} {:<38} {:>5} {:>9} {:>21} {:>9} {:>9}{}",
                w.title,
                item.tracer.label(),
                item.size,
                item.pairs.len(),
                fmt_ratio(item.ratio()),
                format!("[{}-{}]", fmt_ratio(Some(min)), fmt_ratio(Some(max))),
                fmt_ratio(item.cpu_ratio()),
                fmt_ratio(item.wall_ratio()),
                item.error
                    .as_ref()
                    .map(|e| format!("  (then {})", first_line(e)))
                    .unwrap_or_default()
            );
        }
    }

    // Per-pair costs on the malloc loop.
    let malloc = results
        .iter()
        .find(|(wi, _)| workloads[*wi].per_call)
        .map(|(_, s)| s);
    let series_of = |tracer: Tracer| malloc.and_then(|s| s.iter().find(|x| x.tracer == tracer));
    let per_call = |tracer: Tracer| series_of(tracer).and_then(Series::per_call_us);
    let per_pair = |tracer: Tracer| series_of(tracer).and_then(Series::per_pair_ns);
    let cpu_per_pair = |tracer: Tracer| series_of(tracer).and_then(Series::cpu_per_pair_ns);
    let floor = per_pair(Tracer::PerfPlaced);
    let cpu_floor = cpu_per_pair(Tracer::PerfPlaced);
    let heaptrack_pair = per_pair(Tracer::Heaptrack);
    let _ = writeln!(out);
    let _ = writeln!(out, "Cost per malloc+free pair on the malloc loop: (traced - bare) / pairs, median over pairs, of the work loop's");
    let _ = writeln!(out, "  elapsed time and of its CPU time (the traps are the workload's own system time; CPU is less disturbed by the");
    let _ = writeln!(out, "  rest of the machine). The floor is perf counting uprobes (no BPF) at memtrace's offsets: three traps a pair.");
    let _ = writeln!(
        out,
        "{:<32} {:>10} {:>9} {:>10} {:>9} {:>12}",
        "tracer", "ns/pair", "vs floor", "CPU ns", "vs floor", "vs heaptrack"
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    for tracer in [
        Tracer::PerfPlaced,
        Tracer::PerfEntry,
        Tracer::Trace,
        Tracer::TraceNoStacks,
        Tracer::TraceEntry,
        Tracer::BpftraceEntryReturn,
        Tracer::Heaptrack,
    ] {
        let size = series_of(tracer)
            .map(|s| s.size.as_str())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>9} {:>10} {:>9} {:>12}   ({size})",
            tracer.label(),
            per_pair(tracer).map_or("-".into(), |c| format!("{c:.0}")),
            ratio(per_pair(tracer), floor),
            cpu_per_pair(tracer).map_or("-".into(), |c| format!("{c:.0}")),
            ratio(cpu_per_pair(tracer), cpu_floor),
            ratio(per_pair(tracer), heaptrack_pair),
        );
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "Event pipeline under memtrace trace (events received / workload elapsed; lost = ring_buffer_full; CPU = memtrace's own, report's agent.cpuSeconds)");
    let _ = writeln!(
        out,
        "{:<58} {:>9} {:>9} {:>6} {:>8} {:>10} {:>7} {:>18}",
        "run", "received", "kernel", "lost", "elapsed", "events/s", "CPU s", "CPU s/M ev"
    );
    for row in &pipeline {
        let _ = writeln!(
            out,
            "{:<58} {:>9} {:>9} {:>6} {:>8.3} {:>10.0} {:>7.2} {:>18}",
            row.name,
            row.received,
            row.kernel_events,
            row.ring_full,
            row.elapsed,
            row.rate(),
            row.cpu,
            format!(
                "{:.2} ({})",
                row.cpu_per_million(),
                row.net_cpu_per_million()
                    .map_or("-".into(), |n| format!("{n:.2} net"))
            ),
        );
    }
    if let Some(f) = fixed_cpu {
        let _ = writeln!(out, "(net: minus the {f:.3} s CPU of tracing a workload that does nothing: load, attach, report)");
    }
    for err in &pipeline_errors {
        let _ = writeln!(out, "pipeline run failed: {}", first_line(err));
    }
    if let Some(m) = live_memory {
        let _ = writeln!(
            out,
            "{} live allocations: memtrace peak RSS {:.1} MiB (RSS at report {:.1} MiB, {:.1} MiB of it BPF maps mapped in) + BPF maps {:.1} MiB = {:.1} MiB, the mapped maps counted once; heap live count in the report {}",
            plan.live_allocations,
            m.peak as f64 / MIB,
            m.rss as f64 / MIB,
            m.mapped as f64 / MIB,
            m.maps as f64 / MIB,
            m.total() as f64 / MIB,
            m.live_count
        );
    }

    // Targets.
    let ratio_of = |key: &str, tracer: Tracer| {
        results
            .iter()
            .find(|(wi, _)| workloads[*wi].key == key)
            .and_then(|(_, s)| s.iter().find(|x| x.tracer == tracer))
            .and_then(Series::ratio)
    };
    let mut targets = Vec::new();
    let slowdown = |ratio: Option<f64>, limit: f64, name: &'static str| Target {
        name,
        measured: ratio.map_or("not measured".into(), |r| {
            format!("{:+.1}% (ratio {:.3})", (r - 1.0) * 100.0, r)
        }),
        met: ratio.map(|r| r <= 1.0 + limit),
    };
    targets.push(slowdown(
        ratio_of("malloc-loop", Tracer::Agent),
        0.01,
        "default mode: <=1% slowdown, malloc loop",
    ));
    targets.push(slowdown(
        ratio_of("page-touch", Tracer::Agent),
        0.05,
        "default mode: <=5% slowdown, page-touch loop",
    ));
    let memtrace_pair = per_pair(Tracer::Trace);
    let pair_target = |tracer: Tracer, name: &'static str| match (per_pair(tracer), floor) {
        (Some(m), Some(f)) if f > 0.0 => Target {
            name,
            measured: format!(
                "{m:.0} ns vs {f:.0} ns = {:.2}x (CPU: {})",
                m / f,
                ratio(cpu_per_pair(tracer), cpu_floor)
            ),
            met: Some(m / f <= 1.5),
        },
        _ => Target {
            name,
            measured: "not measured".into(),
            met: None,
        },
    };
    targets.push(pair_target(
        Tracer::Trace,
        "malloc+free pair <= 1.5x the three-trap floor (stacks)",
    ));
    targets.push(pair_target(
        Tracer::TraceNoStacks,
        "malloc+free pair <= 1.5x the three-trap floor (no stacks)",
    ));
    targets.push(match (memtrace_pair, heaptrack_pair) {
        (Some(m), Some(h)) if h > 0.0 => Target {
            name: "malloc+free pair <= 3x heaptrack",
            measured: format!("{m:.0} ns vs heaptrack {h:.0} ns = {:.2}x", m / h),
            met: Some(m / h <= 3.0),
        },
        _ => Target {
            name: "malloc+free pair <= 3x heaptrack",
            measured: "not measured".into(),
            met: None,
        },
    });
    let sqlite = |tracer: Tracer| {
        results
            .iter()
            .find(|(wi, _)| workloads[*wi].key == "sqlite")
            .and_then(|(_, s)| s.iter().find(|x| x.tracer == tracer))
    };
    targets.push(
        match (
            sqlite(Tracer::Trace).and_then(Series::ratio),
            sqlite(Tracer::Heaptrack).and_then(Series::ratio),
        ) {
            (Some(m), Some(h)) if h > 0.0 => Target {
                name: "sqlite3 under memtrace trace <= 3x heaptrack's time",
                measured: format!(
                    "slowdown {m:.2}x vs heaptrack {h:.2}x = {:.2}x (whole process: {})",
                    m / h,
                    ratio(
                        sqlite(Tracer::Trace).and_then(Series::wall_ratio),
                        sqlite(Tracer::Heaptrack).and_then(Series::wall_ratio)
                    )
                ),
                met: Some(m / h <= 3.0),
            },
            _ => Target {
                name: "sqlite3 under memtrace trace <= 3x heaptrack's time",
                measured: "not measured".into(),
                met: None,
            },
        },
    );
    let best = pipeline
        .iter()
        .filter(|r| r.received > 0)
        .max_by(|a, b| a.rate().total_cmp(&b.rate()));
    targets.push(match best {
        Some(row) => Target {
            name: ">=1.5 M events/s delivered, every loss counted",
            measured: format!(
                "best {:.0} events/s ({}); lost {} (ring_buffer_full), kernel-sent minus received {}",
                row.rate(),
                row.name,
                row.ring_full,
                row.kernel_events as i64 - row.received as i64
            ),
            met: Some(row.rate() >= 1.5e6),
        },
        None => Target { name: ">=1.5 M events/s delivered, every loss counted", measured: "not measured".into(), met: None },
    });
    targets.push(match live_memory {
        Some(m) => Target {
            name: "memtrace RSS + BPF maps <= 128 MiB, 1 M live allocations",
            measured: format!(
                "{:.1} MiB peak RSS + {:.1} MiB maps - {:.1} MiB mapped in both = {:.1} MiB",
                m.peak as f64 / MIB,
                m.maps as f64 / MIB,
                m.mapped as f64 / MIB,
                m.total() as f64 / MIB
            ),
            met: Some(m.total() as f64 <= 128.0 * MIB),
        },
        None => Target {
            name: "memtrace RSS + BPF maps <= 128 MiB, 1 M live allocations",
            measured: "not measured".into(),
            met: None,
        },
    });
    let most = pipeline.iter().max_by_key(|r| r.received);
    targets.push(match most {
        Some(row) => {
            let figure = row
                .net_cpu_per_million()
                .unwrap_or_else(|| row.cpu_per_million());
            Target {
                name: "memtrace CPU <= 0.5 s per million events",
                measured: format!(
                    "{figure:.2} s/M net ({:.2} s/M raw) on {}, at {:.0} events/s",
                    row.cpu_per_million(),
                    row.name,
                    row.rate()
                ),
                met: Some(figure <= 0.5),
            }
        }
        None => Target {
            name: "memtrace CPU <= 0.5 s per million events",
            measured: "not measured".into(),
            met: None,
        },
    });
    let _ = writeln!(out);
    let _ = writeln!(out, "Targets");
    for t in &targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let _ = writeln!(out, "  {:<58} {:<13} {}", t.name, verdict, t.measured);
    }
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for note in &notes {
        *counted.entry(note.clone()).or_default() += 1;
    }
    if !counted.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Notes");
        for (note, count) in &counted {
            let _ = writeln!(
                out,
                "  {}{}",
                note,
                if *count > 1 {
                    format!(" (x{count})")
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "\nsuite time {:.1} min",
        began.elapsed().as_secs_f64() / 60.0
    );
    print!("{out}");

    if let Some(path) = json_path {
        let doc = json!({
            "quick": quick,
            "pairsPerFigure": plan.pairs,
            "machine": machine.json(&load_end),
            "versions": versions,
            "peers": peers.iter().map(setup::Peer::json).collect::<Vec<_>>(),
            "workloads": results.iter().map(|(wi, series)| {
                let w = &workloads[*wi];
                json!({"key": w.key, "title": w.title, "tracers": series.iter().map(Series::json).collect::<Vec<_>>()})
            }).collect::<Vec<_>>(),
            "perCallMicroseconds": Tracer::MEASURED.iter().map(|&t| (t.key().to_string(), json!(per_call(t)))).collect::<serde_json::Map<_, _>>(),
            "perPairNanoseconds": Tracer::MEASURED.iter().map(|&t| (t.key().to_string(), json!(per_pair(t)))).collect::<serde_json::Map<_, _>>(),
            "cpuPerPairNanoseconds": Tracer::MEASURED.iter().map(|&t| (t.key().to_string(), json!(cpu_per_pair(t)))).collect::<serde_json::Map<_, _>>(),
            "floors": ctx.floors.as_ref().map(|f| json!({
                "placed": f.placed.iter().map(|p| json!({"symbol": p.symbol, "path": p.path, "fileOffset": p.file_offset, "return": p.ret})).collect::<Vec<_>>(),
                "entry": f.entry.iter().map(|p| json!({"symbol": p.symbol, "path": p.path, "fileOffset": p.file_offset, "return": p.ret})).collect::<Vec<_>>(),
            })),
            "pipeline": pipeline.iter().map(PipelineRow::json).collect::<Vec<_>>(),
            "pipelineErrors": pipeline_errors,
            "liveAllocations": live_memory.map(|m| json!({
                "allocations": plan.live_allocations, "peakRssBytes": m.peak, "rssBytes": m.rss, "bpfMapBytes": m.maps, "bpfMappedBytes": m.mapped, "totalBytes": m.total(), "heapLiveCount": m.live_count,
            })),
            "targets": targets.iter().map(|t| json!({"target": t.name, "measured": t.measured, "met": t.met})).collect::<Vec<_>>(),
            "notes": counted.keys().collect::<Vec<_>>(),
            "suiteSeconds": began.elapsed().as_secs_f64(),
        });
        write_json(path, &doc)?;
        eprintln!("bench: results written to {}", path.display());
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn write_json(path: &Path, doc: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", PathBuf::from(path).display()))
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| {
        if r >= 100.0 {
            format!("{r:.0}x")
        } else if r >= 10.0 {
            format!("{r:.1}x")
        } else {
            format!("{r:.3}x")
        }
    })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn or_missing(v: &str) -> &str {
    if v.is_empty() {
        "(missing)"
    } else {
        v
    }
}

/// memtrace's memory in the live-allocations run (its report's `agent` figures).
#[derive(Clone, Copy)]
struct LiveMemory {
    peak: u64,
    rss: u64,
    /// The kernel memory of its BPF maps.
    maps: u64,
    /// The part of the maps mapped into memtrace (ring buffer, unwind rows), in its RSS as well.
    mapped: u64,
    live_count: u64,
}

impl LiveMemory {
    /// Peak RSS and BPF maps, the maps mapped into the process counted once.
    fn total(&self) -> u64 {
        (self.peak + self.maps).saturating_sub(self.mapped)
    }
}
