//! One run of one workload under one tracer.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use super::proc::{cpu_seconds, free_port, Proc};

/// Where tracefs takes uprobe definitions.
const UPROBE_EVENTS: &str = "/sys/kernel/tracing/uprobe_events";

/// How long one workload run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracer {
    Bare,
    /// `memtrace agent --no-persist --listen 127.0.0.1:PORT` in the background: the default,
    /// host-wide tier (syscall and process tracepoints, kernel RSS counters; no malloc uprobes).
    Agent,
    /// `memtrace trace --json --output F -- CMD`: malloc-family uprobes on the process, stacks,
    /// each entry probe on the first instruction the kernel emulates.
    Trace,
    TraceNoStacks,
    /// The same with every probe on its function's entry (`--entry-probes`).
    TraceEntry,
    /// The trap floor: perf counting uprobes (no BPF program) at the file offsets memtrace uses,
    /// entry and return probes on the same functions as memtrace (`perf stat -e ...`).
    PerfPlaced,
    /// The same at the functions' entries.
    PerfEntry,
    /// bpftrace counting entry and return uprobes on the malloc family, at the entries.
    BpftraceEntryReturn,
    /// heaptrack (LD_PRELOAD).
    Heaptrack,
}

impl Tracer {
    pub const MEASURED: [Tracer; 8] = [
        Tracer::Agent,
        Tracer::Trace,
        Tracer::TraceNoStacks,
        Tracer::TraceEntry,
        Tracer::PerfPlaced,
        Tracer::PerfEntry,
        Tracer::BpftraceEntryReturn,
        Tracer::Heaptrack,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Tracer::Bare => "bare",
            Tracer::Agent => "memtrace-agent",
            Tracer::Trace => "memtrace-trace",
            Tracer::TraceNoStacks => "memtrace-trace-no-stacks",
            Tracer::TraceEntry => "memtrace-trace-entry-probes",
            Tracer::PerfPlaced => "perf-floor-placed",
            Tracer::PerfEntry => "perf-floor-entry",
            Tracer::BpftraceEntryReturn => "bpftrace-entry-return",
            Tracer::Heaptrack => "heaptrack",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tracer::Bare => "none (bare)",
            Tracer::Agent => "memtrace agent (default)",
            Tracer::Trace => "memtrace trace",
            Tracer::TraceNoStacks => "memtrace trace --no-stacks",
            Tracer::TraceEntry => "memtrace trace --entry-probes",
            Tracer::PerfPlaced => "perf uprobes, memtrace offsets",
            Tracer::PerfEntry => "perf uprobes, entries",
            Tracer::BpftraceEntryReturn => "bpftrace uprobes, entry+ret",
            Tracer::Heaptrack => "heaptrack",
        }
    }

    pub fn is_bpftrace(self) -> bool {
        self == Tracer::BpftraceEntryReturn
    }

    pub fn is_perf(self) -> bool {
        matches!(self, Tracer::PerfPlaced | Tracer::PerfEntry)
    }

    /// Tracers that put a uprobe (or an LD_PRELOAD hook) on every allocator call get the smaller
    /// size of a workload; the host-wide tier gets the larger one, which resolves 1%.
    pub fn per_call(self) -> bool {
        !matches!(self, Tracer::Bare | Tracer::Agent)
    }
}

/// One uprobe of the perf floor: a file offset in an object, with a return probe or not.
#[derive(Clone, Debug)]
pub struct FloorProbe {
    pub symbol: String,
    pub path: PathBuf,
    pub file_offset: u64,
    pub ret: bool,
}

/// The perf floors' probes: at memtrace's placements, and at the entries.
#[derive(Clone, Debug, Default)]
pub struct Floors {
    pub placed: Vec<FloorProbe>,
    pub entry: Vec<FloorProbe>,
}

/// What the suite knows to run things.
pub struct Ctx {
    pub memtrace: PathBuf,
    pub perf: Option<PathBuf>,
    pub floors: Option<Floors>,
    pub bpftrace: Option<PathBuf>,
    pub heaptrack: Option<PathBuf>,
    /// Directory holding the private libc copy (LD_LIBRARY_PATH for bpftrace pairs).
    pub private_libc: Option<PathBuf>,
    pub work: PathBuf,
    pub ticks: f64,
}

/// A workload command and what it reads on standard input.
pub struct Job<'a> {
    pub argv: Vec<String>,
    pub input: &'a [u8],
    /// Prints "ready" before waiting on its gate (the C workloads; sqlite3 just reads its script).
    pub says_ready: bool,
}

/// The result of one run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Seconds of the work loop, as the workload measured it.
    pub elapsed: f64,
    /// CPU seconds of the work loop (the workload's own and its children's), when it says.
    pub cpu: Option<f64>,
    /// Seconds of the whole process (for a tracer that starts it, the tracer's whole process).
    pub wall: f64,
    /// Allocator calls the workload reports making (0 when it does not know).
    pub calls: u64,
    pub pid: u32,
    /// memtrace trace's JSON report.
    pub report: Option<Value>,
    /// bpftrace and perf: hits counted on the entry probes, and on the return probes.
    pub entry_hits: Option<u64>,
    pub return_hits: Option<u64>,
    /// memtrace agent: CPU seconds it used while the workload ran.
    pub agent_cpu: Option<f64>,
    pub notes: Vec<String>,
}

fn parse_workload(text: &str) -> anyhow::Result<(f64, Option<f64>, u64)> {
    let mut elapsed = None;
    let mut cpu = None;
    let mut calls = 0;
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("elapsed ") {
            elapsed = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.trim().strip_prefix("cpu ") {
            cpu = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.trim().strip_prefix("calls ") {
            calls = v.trim().parse().unwrap_or(0);
        }
    }
    let elapsed = elapsed.ok_or_else(|| anyhow!("the workload printed no `elapsed` line"))?;
    Ok((elapsed, cpu, calls))
}

fn finish(p: &mut Proc, what: &str) -> anyhow::Result<Outcome> {
    let status = p.wait(RUN_TIMEOUT)?;
    if !status.success() {
        bail!("{what} exited with {status}:\n{}", p.tail());
    }
    let (elapsed, cpu, calls) =
        parse_workload(&p.output()).with_context(|| format!("{what}:\n{}", p.tail()))?;
    Ok(Outcome {
        elapsed,
        cpu,
        wall: p.wall(),
        calls,
        pid: p.pid,
        ..Outcome::default()
    })
}

fn env_for(ctx: &Ctx, private_libc: bool) -> Vec<(String, String)> {
    match (&ctx.private_libc, private_libc) {
        (Some(dir), true) => vec![("LD_LIBRARY_PATH".into(), dir.to_string_lossy().into_owned())],
        _ => Vec::new(),
    }
}

/// Runs `job` under `tracer`. `private_libc`: run the workload on the private libc copy (bpftrace
/// pairs, bare runs included, so that both sides of a pair load the same files).
pub fn run(
    ctx: &Ctx,
    tracer: Tracer,
    job: &Job<'_>,
    private_libc: bool,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let env = env_for(ctx, private_libc);
    match tracer {
        Tracer::Bare => bare(ctx, job, &env, tag),
        Tracer::Agent => agent(ctx, job, &env, tag),
        Tracer::Trace | Tracer::TraceNoStacks => {
            trace(ctx, job, &env, tag, tracer == Tracer::TraceNoStacks, &[])
        }
        Tracer::TraceEntry => trace(ctx, job, &env, tag, false, &["--entry-probes"]),
        Tracer::PerfPlaced | Tracer::PerfEntry => {
            let floors = ctx
                .floors
                .as_ref()
                .ok_or_else(|| anyhow!("no probe offsets for the perf floor"))?;
            let probes = if tracer == Tracer::PerfPlaced {
                &floors.placed
            } else {
                &floors.entry
            };
            perf(ctx, job, &env, tag, probes)
        }
        Tracer::BpftraceEntryReturn => bpftrace(ctx, job, &env, tag, true),
        Tracer::Heaptrack => heaptrack(ctx, job, &env, tag),
    }
}

fn bare(ctx: &Ctx, job: &Job<'_>, env: &[(String, String)], tag: &str) -> anyhow::Result<Outcome> {
    let mut p = Proc::spawn(&job.argv, env, &ctx.work, tag, true)?;
    p.feed(job.input)?;
    finish(&mut p, &job.argv[0])
}

fn agent(ctx: &Ctx, job: &Job<'_>, env: &[(String, String)], tag: &str) -> anyhow::Result<Outcome> {
    let port = free_port()?;
    let argv: Vec<String> = [
        ctx.memtrace.to_string_lossy().as_ref(),
        "agent",
        "--no-persist",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Proc::spawn(&argv, &[], &ctx.work, &format!("{tag}-agent"), false)?;
    agent.wait_until("\"memtrace agent running\"", Duration::from_secs(60), |p| {
        p.errors().contains("memtrace agent running")
    })?;
    let cpu_before = cpu_seconds(agent.pid, ctx.ticks);
    let result = bare(ctx, job, env, tag);
    let cpu_after = cpu_seconds(agent.pid, ctx.ticks);
    let alive = agent.exited()?.is_none();
    let stopped = agent.stop(Duration::from_secs(30))?;
    let mut outcome = result?;
    if !alive {
        bail!(
            "memtrace agent exited while the workload ran:\n{}",
            agent.tail()
        );
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        outcome.agent_cpu = Some(b - a);
    }
    if !stopped {
        outcome
            .notes
            .push("memtrace agent did not stop within 30 s of SIGINT (killed)".into());
    }
    let log = agent.errors();
    if log.contains(&format!("pid {} ", outcome.pid)) && log.contains("drill-down") {
        outcome
            .notes
            .push("the agent drilled into the workload (malloc uprobes attached to it)".into());
    }
    for line in log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
    {
        outcome
            .notes
            .push(format!("memtrace agent: {}", line.trim()));
    }
    Ok(outcome)
}

/// `memtrace trace --json --output F [--no-stacks] [extra] -- CMD`.
pub fn trace(
    ctx: &Ctx,
    job: &Job<'_>,
    env: &[(String, String)],
    tag: &str,
    no_stacks: bool,
    extra: &[&str],
) -> anyhow::Result<Outcome> {
    let report_path = ctx.work.join(format!("{tag}.json"));
    let _ = fs::remove_file(&report_path);
    let mut argv: Vec<String> = vec![
        ctx.memtrace.to_string_lossy().into_owned(),
        "trace".into(),
        "--json".into(),
        "--output".into(),
    ];
    argv.push(report_path.to_string_lossy().into_owned());
    if no_stacks {
        argv.push("--no-stacks".into());
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.push("--".into());
    argv.extend(job.argv.iter().cloned());
    let mut p = Proc::spawn(&argv, env, &ctx.work, tag, true)?;
    p.feed(job.input)?;
    let mut outcome = finish(&mut p, "memtrace trace")?;
    let text = fs::read_to_string(&report_path)
        .with_context(|| format!("memtrace trace wrote no report:\n{}", p.tail()))?;
    let report: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "memtrace trace's report {} is not JSON",
            report_path.display()
        )
    })?;
    if report["exited"] != Value::Bool(true) || report["exitCode"].as_i64() != Some(0) {
        bail!(
            "memtrace trace reports exited={} exitCode={} for the workload",
            report["exited"],
            report["exitCode"]
        );
    }
    outcome.pid = report["pid"].as_u64().unwrap_or(0) as u32;
    outcome.report = Some(report);
    let _ = fs::remove_file(&report_path);
    Ok(outcome)
}

fn heaptrack(
    ctx: &Ctx,
    job: &Job<'_>,
    env: &[(String, String)],
    tag: &str,
) -> anyhow::Result<Outcome> {
    let heaptrack = ctx
        .heaptrack
        .as_ref()
        .ok_or_else(|| anyhow!("heaptrack is not available"))?;
    let prefix = format!("{tag}-heaptrack");
    let mut argv = vec![
        heaptrack.to_string_lossy().into_owned(),
        "-o".into(),
        ctx.work.join(&prefix).to_string_lossy().into_owned(),
    ];
    argv.extend(job.argv.iter().cloned());
    let mut p = Proc::spawn(&argv, env, &ctx.work, tag, true)?;
    p.feed(job.input)?;
    let outcome = finish(&mut p, "heaptrack");
    if let Ok(entries) = fs::read_dir(&ctx.work) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    outcome
}

/// The malloc family memtrace probes: (symbol, has a return probe in memtrace).
const ALLOCATOR: [(&str, bool); 9] = [
    ("malloc", true),
    ("calloc", true),
    ("realloc", true),
    ("free", false),
    ("posix_memalign", true),
    ("aligned_alloc", true),
    ("memalign", true),
    ("valloc", true),
    ("pvalloc", true),
];

/// The bpftrace program: count every entry (and return) of the malloc family in process `pid`.
/// BEGIN runs once every probe is attached: its line is the signal to release the workload.
pub fn bpftrace_program(libc: &Path, pid: u32, returns: bool) -> String {
    let lib = libc.display();
    let entries: Vec<String> = ALLOCATOR
        .iter()
        .map(|(s, _)| format!("uprobe:{lib}:{s}"))
        .collect();
    let mut program = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} {} /pid == {pid}/ {{ @[probe] = count(); }}",
        entries.join(",")
    );
    if returns {
        let rets: Vec<String> = ALLOCATOR
            .iter()
            .filter(|(_, r)| *r)
            .map(|(s, _)| format!("uretprobe:{lib}:{s}"))
            .collect();
        program.push_str(&format!(
            " {} /pid == {pid}/ {{ @[probe] = count(); }}",
            rets.join(",")
        ));
    }
    program
}

fn bpftrace(
    ctx: &Ctx,
    job: &Job<'_>,
    env: &[(String, String)],
    tag: &str,
    returns: bool,
) -> anyhow::Result<Outcome> {
    let bpftrace = ctx
        .bpftrace
        .as_ref()
        .ok_or_else(|| anyhow!("bpftrace is not available"))?;
    let libc = ctx
        .private_libc
        .as_ref()
        .ok_or_else(|| anyhow!("no private libc copy for bpftrace"))?
        .join("libc.so.6");
    let mut w = Proc::spawn(&job.argv, env, &ctx.work, tag, true)?;
    let maps = format!("/proc/{}/maps", w.pid);
    let libc_text = libc.to_string_lossy().into_owned();
    let says_ready = job.says_ready;
    w.wait_until("its start gate", Duration::from_secs(30), |p| {
        (!says_ready || p.output().contains("ready"))
            && fs::read_to_string(&maps).is_ok_and(|m| m.contains(&libc_text))
    })?;
    let program = bpftrace_program(&libc, w.pid, returns);
    let argv = vec![
        bpftrace.to_string_lossy().into_owned(),
        "-p".into(),
        w.pid.to_string(),
        "-e".into(),
        program,
    ];
    let mut bt = Proc::spawn(&argv, &[], &ctx.work, &format!("{tag}-bpftrace"), false)?;
    bt.wait_until(
        "\"ready\" from its BEGIN probe",
        Duration::from_secs(120),
        |p| p.output().lines().any(|l| l.trim() == "ready"),
    )?;
    w.feed(job.input)?;
    let result = finish(&mut w, &job.argv[0]);
    // Let bpftrace see the last events, then have it print its counts.
    thread::sleep(Duration::from_millis(50));
    let stopped = bt.stop(Duration::from_secs(30))?;
    let mut outcome = result?;
    if !stopped {
        outcome
            .notes
            .push("bpftrace did not stop within 30 s of SIGINT (killed)".into());
    }
    let (mut entry, mut ret) = (0u64, 0u64);
    for line in bt.output().lines() {
        let Some((probe, count)) = line
            .trim()
            .strip_prefix("@[")
            .and_then(|l| l.split_once("]:"))
        else {
            continue;
        };
        let count: u64 = count.trim().parse().unwrap_or(0);
        if probe.starts_with("uretprobe:") {
            ret += count;
        } else if probe.starts_with("uprobe:") {
            entry += count;
        }
    }
    outcome.entry_hits = Some(entry);
    outcome.return_hits = Some(ret);
    if outcome.calls > 0 && entry < outcome.calls {
        outcome.notes.push(format!(
            "bpftrace counted {entry} entries of {} allocator calls",
            outcome.calls
        ));
    }
    Ok(outcome)
}

/// Uprobe events defined in tracefs for one perf run, removed on drop.
struct TracefsEvents {
    group: String,
    names: Vec<String>,
}

impl TracefsEvents {
    /// Defines `e_SYMBOL` (and `x_SYMBOL` for a return probe) in `group` for each probe. Event
    /// names must not look like perf's raw events (`rNNN`), hence the prefixes.
    fn define(group: &str, probes: &[FloorProbe]) -> anyhow::Result<Self> {
        use std::io::Write as _;
        let mut events = Self {
            group: group.to_string(),
            names: Vec::new(),
        };
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(UPROBE_EVENTS)
            .with_context(|| format!("opening {UPROBE_EVENTS}"))?;
        for probe in probes {
            let mut lines = vec![('p', format!("e_{}", probe.symbol))];
            if probe.ret {
                lines.push(('r', format!("x_{}", probe.symbol)));
            }
            for (kind, name) in lines {
                let line = format!(
                    "{kind}:{group}/{name} {}:{:#x}\n",
                    probe.path.display(),
                    probe.file_offset
                );
                file.write_all(line.as_bytes())
                    .with_context(|| format!("defining {}", line.trim()))?;
                events.names.push(name);
            }
        }
        Ok(events)
    }

    fn perf_args(&self) -> Vec<String> {
        self.names
            .iter()
            .flat_map(|name| ["-e".to_string(), format!("{}:{name}", self.group)])
            .collect()
    }
}

impl Drop for TracefsEvents {
    fn drop(&mut self) {
        use std::io::Write as _;
        if let Ok(mut file) = fs::OpenOptions::new().append(true).open(UPROBE_EVENTS) {
            for name in &self.names {
                let _ = file.write_all(format!("-:{}/{name}\n", self.group).as_bytes());
            }
        }
    }
}

/// `perf stat -e GROUP:e_malloc,... -- CMD`: the uprobes count hits and run no BPF program, so
/// the slowdown is the traps alone. perf opens the events for the command only, so no other
/// process pays.
fn perf(
    ctx: &Ctx,
    job: &Job<'_>,
    env: &[(String, String)],
    tag: &str,
    probes: &[FloorProbe],
) -> anyhow::Result<Outcome> {
    let perf = ctx
        .perf
        .as_ref()
        .ok_or_else(|| anyhow!("perf is not available"))?;
    let group = format!("mtbench{}", std::process::id());
    let events = TracefsEvents::define(&group, probes)?;
    let counts = ctx.work.join(format!("{tag}.perf"));
    let mut argv = vec![
        perf.to_string_lossy().into_owned(),
        "stat".into(),
        "-x,".into(),
        "-o".into(),
        counts.to_string_lossy().into_owned(),
    ];
    argv.extend(events.perf_args());
    argv.push("--".into());
    argv.extend(job.argv.iter().cloned());
    let mut p = Proc::spawn(&argv, env, &ctx.work, tag, true)?;
    p.feed(job.input)?;
    let mut outcome = finish(&mut p, "perf stat")?;
    drop(events);
    let text = fs::read_to_string(&counts)
        .with_context(|| format!("perf stat wrote no counts:\n{}", p.tail()))?;
    let (mut entry, mut ret) = (0u64, 0u64);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(count), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        match event.split_once('/').map_or(*event, |(_, n)| n) {
            name if name.contains(":e_") => entry += count,
            name if name.contains(":x_") => ret += count,
            _ => {}
        }
    }
    let _ = fs::remove_file(&counts);
    outcome.entry_hits = Some(entry);
    outcome.return_hits = Some(ret);
    if outcome.calls > 0 && entry < outcome.calls / 2 {
        outcome.notes.push(format!(
            "perf counted {entry} entries of {} allocator calls",
            outcome.calls
        ));
    }
    Ok(outcome)
}
