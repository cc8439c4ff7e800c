//! `memtrace trace`: trace one process (an existing PID, or a command started under the tracer)
//! for a while and report its memory exactly.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    attribution::{AttributionInput, Attributor, ConsumerReport},
    config::TrackingConfig,
    os::{
        clock::monotonic_seconds,
        launch::{GatedChild, LaunchError},
    },
    probes::{placement::Placement, ProbeError, ProbeOptions, COUNTER_NAMES},
    session::Session,
    snapshot::ProcessSnapshot,
};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("starting the command")]
    Launch(#[from] LaunchError),
    #[error("give either --pid or a command after --, not both")]
    Target,
}

#[derive(Clone, Debug, Default)]
pub struct TraceArgs {
    pub pid: Option<u32>,
    pub command: Vec<String>,
    /// Stop after this long (default: until the process exits, or Ctrl-C).
    pub duration: Option<Duration>,
    pub options: ProbeOptions,
    /// Attribution settings (`[tracking]`: stack depth, wrappers, leak age).
    pub attribution: TrackingConfig,
}

/// What `trace` prints (`--json` prints this as JSON).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceReport {
    pub pid: u32,
    pub comm: String,
    pub duration_seconds: f64,
    /// The process exited while traced; the figures are its last ones.
    pub exited: bool,
    pub exit_code: Option<i32>,
    pub process: ProcessSnapshot,
    /// Allocator functions attached, and optional ones the allocator lacks.
    pub attached: Vec<&'static str>,
    pub missing: Vec<&'static str>,
    /// Where each attached function's entry probe sits (bytes past its entry, the instruction,
    /// whether the kernel emulates it).
    pub placements: Vec<Placement>,
    /// Kernel-side counters (events sent, events lost because the ring buffer was full, ...).
    pub kernel: serde_json::Map<String, serde_json::Value>,
    pub events_received: u64,
    pub events_undecodable: u64,
    /// Library roll-up, consumers with symbolized stacks, and the leak view.
    pub attribution: ConsumerReport,
    /// What tracing cost memtrace itself.
    pub agent: crate::os::procfs::SelfCost,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

pub fn run(args: &TraceArgs) -> Result<TraceReport, TraceError> {
    let mut child = match (&args.pid, args.command.is_empty()) {
        (Some(_), false) | (None, true) => return Err(TraceError::Target),
        (None, false) => Some(GatedChild::spawn(&args.command)?),
        (Some(_), true) => None,
    };
    let pid = match (&child, args.pid) {
        (Some(child), _) => child.pid,
        (None, Some(pid)) => pid,
        (None, None) => return Err(TraceError::Target),
    };
    // A wrong PID is said at once, before the probes are loaded.
    if child.is_none() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(TraceError::Probe(ProbeError::NoProcess(pid)));
    }
    let mut session = Session::start(&args.options)?;
    session.only(&[pid]);
    let report = match args.command.first() {
        Some(program) => {
            let target = crate::probes::allocator_for_command(program, pid)?;
            session.trace_launched(pid, &target)?
        }
        None => session.trace_pid(pid)?,
    };
    log::info!(
        "tracing pid {pid}: attached to {} in its allocator",
        report.attached.join(", ")
    );
    catch_interrupts();
    if let Some(child) = child.as_mut() {
        // The command stops at its exec and at each library it maps until their unwind tables
        // are loaded: its first stacks are whole.
        if let Err(err) = session.gate(pid) {
            log::warn!("{err}: the first stacks of pid {pid} may be cut short");
        }
        if let Err(err) = child.release() {
            session.ungate(pid);
            return Err(err.into());
        }
    }
    let started = Instant::now();
    // A duration too long for the clock is no deadline.
    let deadline = args.duration.and_then(|d| started.checked_add(d));
    let mut exit_code = None;
    let mut last = session.accounting.snapshot(pid);
    let mut last_refresh = Instant::now();
    let exited = loop {
        session.wait(Duration::from_millis(100));
        session.poll();
        let gone = session.accounting.process(pid).is_none()
            && session.accounting.exited().any(|p| p.pid == pid);
        if let Some(child) = child.as_mut() {
            exit_code = if gone { child.wait() } else { child.try_wait() };
        }
        if gone || exit_code.is_some() {
            session.poll();
            break true;
        }
        if last_refresh.elapsed() >= Duration::from_millis(100) {
            last = session.accounting.snapshot(pid).or(last);
            last_refresh = Instant::now();
        }
        if INTERRUPTED.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            session.poll();
            break false;
        }
    };
    // A command still running goes on without memtrace.
    session.ungate(pid);
    let process = if exited {
        session
            .accounting
            .exited()
            .rev()
            .find(|p| p.pid == pid)
            .cloned()
            .or(last)
            .unwrap_or_default()
    } else {
        session
            .accounting
            .snapshot(pid)
            .or(last)
            .unwrap_or_default()
    };
    if !exited {
        session.accounting.refresh_modules(pid);
    }
    let mut attributor = Attributor::new(args.attribution.clone());
    let state = session
        .accounting
        .process(pid)
        .or_else(|| session.accounting.exited_state(pid));
    let attribution = match state {
        Some(state) => {
            let now_s = monotonic_seconds();
            let input =
                AttributionInput::of(state, now_s.saturating_sub(args.attribution.leak_age));
            let mut stacks = session.probes.stacks()?;
            attributor.report(&input, &mut stacks, now_s)
        }
        None => ConsumerReport::default(),
    };
    let mut process = process;
    process.libraries = attribution.libraries.clone();
    let counters = session.probes.counters()?;
    let kernel = COUNTER_NAMES
        .iter()
        .zip(counters)
        .map(|(name, value)| (name.to_string(), value.into()))
        .collect();
    Ok(TraceReport {
        pid,
        comm: process.comm.clone(),
        duration_seconds: started.elapsed().as_secs_f64(),
        exited,
        exit_code,
        process,
        attached: report.attached,
        missing: report.missing,
        placements: report.placements,
        kernel,
        events_received: session.stats.received.load(Ordering::Relaxed),
        events_undecodable: session.stats.undecodable.load(Ordering::Relaxed),
        attribution,
        agent: crate::os::procfs::self_cost(),
    })
}

pub fn render_text(report: &TraceReport) -> String {
    use std::fmt::Write as _;
    let p = &report.process;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {} ({}) traced for {:.1}s{}",
        report.pid,
        report.comm,
        report.duration_seconds,
        if report.exited {
            format!(
                ", exited (code {})",
                report.exit_code.map_or("?".into(), |c| c.to_string())
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  rss          {:>14} bytes (anon {}, file {}, shmem {}), swap {}",
        p.rss_bytes, p.rss_anon_bytes, p.rss_file_bytes, p.rss_shmem_bytes, p.swap_bytes
    );
    let _ = writeln!(
        out,
        "  heap live    {:>14} bytes in {} allocations (peak {})",
        p.heap_live_bytes, p.heap_live_count, p.heap_peak_bytes
    );
    let _ = writeln!(
        out,
        "  heap calls   {:>14} allocations, {} frees, {} frees of memory allocated before tracing",
        p.heap_total_allocs, p.heap_total_frees, p.heap_unknown_frees
    );
    let _ = writeln!(out, "  mmap anon    {:>14} bytes", p.mapped_anon_bytes);
    let _ = writeln!(out, "  mmap file    {:>14} bytes", p.mapped_file_bytes);
    let _ = writeln!(out, "  brk          {:>14} bytes", p.brk_bytes);
    if let Some(external) = p.external_bytes {
        let ratio = p
            .external_ratio
            .map_or("-".to_string(), |r| format!("{r:.2}"));
        let _ = writeln!(
            out,
            "  external     {:>14} bytes (rss - heap), external/heap {ratio}",
            external
        );
    } else if let Some(growth) = p.external_growth_bytes {
        let _ = writeln!(
            out,
            "  external     {:>+14} bytes since tracing began (rss growth not explained by heap \
             growth; the heap allocated before is unknown)",
            growth
        );
    }
    let lost = report
        .kernel
        .get("ring_buffer_full")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "  events       {:>14} received, {} lost (ring buffer full)",
        report.events_received, lost
    );
    if !report.missing.is_empty() {
        let _ = writeln!(
            out,
            "  not in this allocator: {}",
            report.missing.join(", ")
        );
    }
    let stepped: Vec<String> = report
        .placements
        .iter()
        .filter(|p| !p.emulated)
        .map(|p| format!("{} +{}", p.symbol, p.offset))
        .collect();
    if !stepped.is_empty() {
        let _ = writeln!(
            out,
            "  single-stepped probes (slower per call): {}",
            stepped.join(", ")
        );
    }
    render_attribution(&mut out, &report.attribution, 10);
    out
}

/// Library roll-up, top consumers with stacks, and the leak view, as text.
pub fn render_attribution(out: &mut String, a: &ConsumerReport, top: usize) {
    use std::fmt::Write as _;
    if a.consumers.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nlibraries (live bytes they asked for, through the allocator or mapped directly):"
    );
    let _ = writeln!(
        out,
        "  {:>14} {:>14} {:>10}  library",
        "live", "peak", "calls"
    );
    for lib in &a.libraries {
        let _ = writeln!(
            out,
            "  {:>14} {:>14} {:>10}  {}",
            lib.live_bytes, lib.peak_bytes, lib.calls, lib.library
        );
    }
    let _ = writeln!(out, "\ntop consumers:");
    for c in a.consumers.iter().take(top) {
        let flag = if c.metadata.over_limit {
            " [over maxConsumerSize]"
        } else if c.metadata.suspicious {
            " [suspicious]"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {:>14} live in {:>7} allocations ({} calls, avg {} B, peak {})  {} {} in {}{flag}",
            c.allocated_memory,
            c.active_allocations,
            c.total_calls,
            c.average_size,
            c.peak_memory,
            c.kind.as_str(),
            c.name,
            c.category
        );
        for frame in c.stack_trace.iter().take(6) {
            let _ = writeln!(out, "        {frame}");
        }
    }
    if a.evicted_consumers > 0 {
        let _ = writeln!(
            out,
            "  ({} more consumers with {} live bytes not shown: maxConsumers)",
            a.evicted_consumers, a.evicted_bytes
        );
    }
    if !a.leaks.is_empty() {
        let _ = writeln!(out, "\nstill live after the leak age (oldest first):");
        for leak in &a.leaks {
            let _ = writeln!(
                out,
                "  {:>14} in {:>7} allocations, oldest {}s  {} in {}",
                leak.bytes, leak.count, leak.oldest_age_seconds, leak.name, leak.library
            );
            for frame in leak.stack_trace.iter().take(3) {
                let _ = writeln!(out, "        {frame}");
            }
        }
    }
}
