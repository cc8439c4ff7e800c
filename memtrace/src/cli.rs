//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use memtrace::config::ProbesConfig;

#[derive(Debug, Parser)]
#[command(
    name = "memtrace",
    version,
    about = "eBPF host memory tracer: which process and which library holds memory, and how it grows"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    /// Log lines as text, or as JSON objects (one per line: ts, level, target, msg) for log
    /// collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MEMTRACE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the long-lived agent: host-wide accounting, snapshots, analysis, alerts, HTTP.
    Agent(AgentArgs),
    /// Trace one process (a PID, or a command after --) and report its memory exactly.
    Trace(TraceCli),
    /// Run the pattern detector over a recorded snapshots file (snapshots_YYYY-MM-DD.jsonl).
    Analyze(AnalyzeArgs),
    /// Print the running agent's report (what grew, patterns, alerts, top consumers).
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Snapshots file, one JSON snapshot per line.
    #[arg(long, short)]
    pub input: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Configuration file whose patternDetection section to use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The agent's address.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    pub url: String,
    /// text, json, flamegraph (SVG) or pprof (gzipped profile; needs --pid).
    #[arg(long, default_value = "text")]
    pub format: String,
    #[arg(long)]
    pub pid: Option<u32>,
    /// Bearer token (also MEMTRACE_TOKEN).
    #[arg(long, env = "MEMTRACE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Seconds to wait for the agent's answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Sizes of the eBPF side (the `[probes]` section; a flag overrides the file).
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Ring buffer size in MiB, a power of two (probes.ringBufferMB, default 8).
    #[arg(long, value_parser = parse_ring_mib)]
    pub ring_buffer_mb: Option<u32>,
    /// Allocator calls that can be in flight at once (probes.inflightEntries, default 16384).
    #[arg(long)]
    pub inflight_entries: Option<u32>,
    /// Distinct user stacks kept in the kernel's stack map (probes.stackEntries, default 8192).
    #[arg(long)]
    pub stack_entries: Option<u32>,
    /// Do not capture user stacks: cheaper, no call-site attribution (probes.captureStacks = false).
    #[arg(long)]
    pub no_stacks: bool,
    /// Put each malloc-family probe on its function's entry instead of the first instruction the
    /// kernel emulates (probes.entryProbes; a single-stepped entry costs ~10x more per call).
    #[arg(long)]
    pub entry_probes: bool,
}

impl ProbeArgs {
    /// These flags over `base`.
    pub fn over(&self, base: &ProbesConfig) -> ProbesConfig {
        let mut probes = base.clone();
        if let Some(v) = self.ring_buffer_mb {
            probes.ring_buffer_mb = v;
        }
        if let Some(v) = self.inflight_entries {
            probes.inflight_entries = v;
        }
        if let Some(v) = self.stack_entries {
            probes.stack_entries = v;
        }
        if self.no_stacks {
            probes.capture_stacks = false;
        }
        if self.entry_probes {
            probes.entry_probes = true;
        }
        probes
    }
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of MiB"))?;
    if mib == 0 || !mib.is_power_of_two() || mib > 1024 {
        return Err(format!(
            "{mib} MiB: the ring buffer must be a power of two between 1 and 1024 MiB"
        ));
    }
    Ok(mib)
}

/// Longest `--duration`: a year (beyond it the monotonic clock's deadline could overflow).
const MAX_DURATION_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// `--duration`: a finite number of seconds, from 0 to a year (so `Duration::from_secs_f64` and
/// the deadline computed from it cannot fail).
fn parse_duration_seconds(s: &str) -> Result<f64, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !seconds.is_finite() || !(0.0..=MAX_DURATION_SECONDS).contains(&seconds) {
        return Err(format!(
            "the duration must be a number of seconds from 0 to {MAX_DURATION_SECONDS} (a year)"
        ));
    }
    Ok(seconds)
}

/// `memtrace agent`. Every setting here also exists in the configuration file (named in each
/// help line); a flag overrides the file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Trace the malloc family of this process (repeatable; agent.pids). Other processes pay
    /// nothing.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Trace the malloc family of every process on the host (agent.mallocAll). Every malloc and
    /// free then costs traps (cargo xtask bench: about 1.4 µs a call on a 2-core VM; see
    /// docs/benchmarks.md): allocation-heavy programs slow down many times.
    #[arg(long)]
    pub malloc_all: bool,
    /// Configuration file (TOML); see memtrace.example.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Seconds between snapshots (monitor.snapshotInterval).
    #[arg(long)]
    pub snapshot_interval: Option<u64>,
    /// HTTP listener, IP:port (monitor.listen). Beyond loopback a token is required.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory (monitor.dataDir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Alert webhook URL (alerting.webhookUrl).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// API token. Visible to every user in /proc/PID/cmdline: prefer the MEMTRACE_TOKEN
    /// environment variable or monitor.tokenFile. Order: this flag, MEMTRACE_TOKEN, monitor.token,
    /// monitor.tokenFile; a blank value counts as unset.
    #[arg(long)]
    pub token: Option<String>,
    /// Do not write the data directory (agent.persist = false).
    #[arg(long)]
    pub no_persist: bool,
    /// Snapshots kept in memory (agent.history, default 240).
    #[arg(long)]
    pub history: Option<usize>,
    /// Do not trace growing processes' heaps automatically (drilldown.enabled = false).
    #[arg(long)]
    pub no_drilldown: bool,
    /// Seconds a drill-down traces a growing process's heap (drilldown.window, default 60).
    #[arg(long)]
    pub drilldown_window: Option<u64>,
    /// Turn on the kernel's BPF run-time statistics (agent.bpfStats;
    /// memtrace_bpf_program_run_time_seconds_total).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Processes drilled into at once (drilldown.maxProcesses, default 2).
    #[arg(long)]
    pub drilldown_max: Option<usize>,
    /// Processes listed in the per-snapshot table at debug level (agent.top, default 10).
    #[arg(long)]
    pub top: Option<usize>,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

#[derive(Debug, Args)]
pub struct TraceCli {
    /// Process to trace.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Stop after this many seconds (default: when the process exits, or on Ctrl-C).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_duration_seconds)]
    pub duration: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Also write the process's heap as a gzipped pprof profile (`go tool pprof FILE`): live and
    /// allocated bytes and objects by stack, opening on inuse_space.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Live allocations older than this many seconds are listed as possible leaks.
    #[arg(long, default_value_t = 30)]
    pub leak_age: u64,
    /// Frames kept per stack (the JSON output and --pprof; the text shows the first 6).
    #[arg(long, default_value_t = memtrace_common::UNWIND_MAX_FRAMES)]
    pub stack_depth: usize,
    /// A directory searched for separate debug files, by build id and by .gnu_debuglink
    /// (repeatable; default /usr/lib/debug and /lib/debug).
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// An allocation wrapper whose frames are skipped when attributing (repeatable).
    #[arg(long = "wrapper")]
    pub wrappers: Vec<String>,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Command to start and trace from its first instruction (after --).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards issue 11 item 3: `--duration` values that `Duration::from_secs_f64` would panic on are
    /// refused by the parser.
    #[test]
    fn duration_must_be_finite_and_in_range() {
        for bad in [
            "-1", "nan", "NaN", "inf", "-inf", "1e300", "31536001", "x", "",
        ] {
            assert!(parse_duration_seconds(bad).is_err(), "{bad}");
        }
        for (good, seconds) in [("0", 0.0), ("2.5", 2.5), ("31536000", MAX_DURATION_SECONDS)] {
            assert_eq!(parse_duration_seconds(good), Ok(seconds));
            assert!(std::time::Duration::try_from_secs_f64(seconds).is_ok());
        }
    }
}
