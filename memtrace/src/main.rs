use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;

mod cli;

use cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An empty RUST_LOG counts as unset.
    let filter = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty()).unwrap_or_else(|| cli.log.clone());
    env_logger::Builder::new().parse_filters(&filter).init();
    match cli.command {
        Command::Agent(args) => {
            let options = memtrace::agent::AgentOptions {
                pids: args.pids,
                malloc_all: args.malloc_all,
                snapshot_interval: Duration::from_secs(args.snapshot_interval.unwrap_or(30).max(1)),
                top: args.top,
                probes: args.probes.options(),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(memtrace::agent::run(options)).context("memtrace agent")
        }
        Command::Trace(args) => {
            let trace_args = memtrace::trace::TraceArgs {
                pid: args.pid,
                command: args.command,
                duration: args.duration.map(Duration::from_secs_f64),
                options: args.probes.options(),
                attribution: memtrace::attribution::AttributionConfig {
                    leak_age_seconds: args.leak_age,
                    stack_trace_depth: args.stack_depth,
                    wrappers: args.wrappers,
                    ..Default::default()
                },
            };
            let report = memtrace::trace::run(&trace_args).context("memtrace trace")?;
            let text = if args.json {
                serde_json::to_string_pretty(&report).context("encoding the report")? + "\n"
            } else {
                memtrace::trace::render_text(&report)
            };
            match args.output {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().write_all(text.as_bytes()).context("writing the report")?,
            }
            Ok(())
        }
    }
}
