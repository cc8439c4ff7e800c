use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;

mod cli;

use cli::{AgentArgs, Cli, Command};
use memtrace::config::{Config, ConfigOverrides};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An empty RUST_LOG counts as unset.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| cli.log.clone());
    let mut logger = env_logger::Builder::new();
    logger.parse_filters(&filter);
    if cli.log_format == cli::LogFormat::Json {
        logger.format(|out, record| {
            let line = serde_json::json!({
                "ts": humantime_utc(std::time::SystemTime::now()),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(out, "{line}")
        });
    }
    logger.init();
    match cli.command {
        Command::Agent(args) => agent(args),
        Command::Trace(args) => {
            let trace_args = memtrace::trace::TraceArgs {
                pid: args.pid,
                command: args.command,
                duration: args.duration.map(Duration::from_secs_f64),
                options: args.probes.over(&Default::default()),
                attribution: memtrace::config::TrackingConfig {
                    leak_age: args.leak_age,
                    stack_trace_depth: u32::try_from(args.stack_depth).unwrap_or(u32::MAX),
                    wrappers: args.wrappers,
                    debug_dirs: if args.debug_dirs.is_empty() {
                        memtrace::config::TrackingConfig::default().debug_dirs
                    } else {
                        args.debug_dirs
                    },
                    ..Default::default()
                },
            };
            let report = memtrace::trace::run(&trace_args).context("memtrace trace")?;
            if let Some(path) = &args.pprof {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let profile = memtrace::reports::heap_profile(
                    &report.attribution,
                    &memtrace::reports::PprofOptions {
                        kind: memtrace::reports::HeapProfile::Heap,
                        time_nanos: i64::try_from(now.as_nanos()).unwrap_or(i64::MAX),
                        duration_nanos: (report.duration_seconds * 1e9) as i64,
                    },
                );
                let bytes = memtrace::reports::gzip(&profile).context("the pprof profile")?;
                write_out(Some(path), &bytes)?;
            }
            let text = if args.json {
                serde_json::to_string_pretty(&report).context("encoding the report")? + "\n"
            } else {
                memtrace::trace::render_text(&report)
            };
            write_out(args.output.as_deref(), text.as_bytes())
        }
        Command::Analyze(args) => {
            let config = match &args.config {
                Some(path) => {
                    Config::load(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => Config::default(),
            };
            let pattern = config.pattern();
            let (snapshots, skipped) = memtrace::analysis::read_snapshots_jsonl(&args.input)
                .context("memtrace analyze")?;
            if skipped > 0 {
                log::warn!(
                    "{skipped} corrupted lines of {} skipped",
                    args.input.display()
                );
            }
            let patterns = memtrace::analysis::analyze_snapshots(&snapshots, &pattern);
            let text = if args.json {
                serde_json::to_string_pretty(&patterns).context("encoding the result")? + "\n"
            } else {
                memtrace::analysis::render_text(&patterns)
            };
            write_out(None, text.as_bytes())
        }
        Command::Report(args) => report(&args),
    }
}

/// `memtrace report`: asks the running agent, and says what it answered when it refuses.
fn report(args: &cli::ReportArgs) -> anyhow::Result<()> {
    let mut url = format!(
        "{}/api/memory/report?format={}",
        args.url.trim_end_matches('/'),
        args.format
    );
    if let Some(pid) = args.pid {
        url.push_str(&format!("&pid={pid}"));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(args.timeout.max(1))))
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = &args.token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .call()
        .with_context(|| format!("asking the agent at {url}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .context("reading the report")?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        anyhow::bail!("the agent at {url} answered {status}: {message}");
    }
    write_out(args.output.as_deref(), &body)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time (RFC 3339, UTC).
fn humantime_utc(time: std::time::SystemTime) -> String {
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let date = memtrace::store::UtcDate::from_unix_ms(ms);
    let seconds = (ms / 1000) % 86_400;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        date.year(),
        date.month(),
        date.day(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms % 1000
    )
}

fn write_out(path: Option<&std::path::Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
        }
        None => std::io::stdout()
            .write_all(bytes)
            .context("writing to standard output"),
    }
}

fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let flag = |set: bool, value: bool| set.then_some(value);
    let overrides = ConfigOverrides {
        snapshot_interval: args.snapshot_interval,
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        webhook_url: args.webhook_url.clone(),
        pids: args.pids.clone(),
        malloc_all: flag(args.malloc_all, true),
        history: args.history,
        top: args.top,
        persist: flag(args.no_persist, false),
        bpf_stats: flag(args.bpf_stats, true),
        ring_buffer_mb: args.probes.ring_buffer_mb,
        inflight_entries: args.probes.inflight_entries,
        stack_entries: args.probes.stack_entries,
        capture_stacks: flag(args.probes.no_stacks, false),
        drilldown_enabled: flag(args.no_drilldown, false),
        drilldown_window: args.drilldown_window,
        drilldown_max: args.drilldown_max,
    };
    let config = match &args.config {
        Some(path) => Config::load_with(path, &overrides)
            .with_context(|| format!("configuration {} with the command line", path.display()))?,
        None => {
            let mut config = Config::default();
            config.apply(&overrides).context("command line options")?;
            config
        }
    };
    if args.token.is_some() {
        log::warn!(
            "--token is visible to every user of this host (/proc/PID/cmdline): prefer the \
             MEMTRACE_TOKEN environment variable or monitor.tokenFile"
        );
    }
    let token = config
        .resolve_token(args.token.as_deref())
        .context("reading the API token")?;
    let listen = config.monitor.listen;
    if !memtrace::http::is_loopback(listen.ip()) && token.is_none() {
        anyhow::bail!(
            "refusing to listen on {listen} (not loopback) without a token: set monitor.token, \
             MEMTRACE_TOKEN or monitor.tokenFile"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // The HTTP side yields the CPU to event intake and analysis (their own threads).
        .on_thread_start(|| memtrace::os::set_thread_nice(memtrace::agent::HTTP_NICE))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Bind first, so that a taken port fails before any probe is loaded.
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        memtrace::agent::run(config, move |agent, mut stop| async move {
            let shutdown = async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            };
            if let Err(err) = memtrace::http::serve_listener(listener, token, agent, shutdown).await
            {
                log::error!("HTTP server: {}", memtrace::error_chain(&err));
            }
        })
        .await
        .context("memtrace agent")
    })
}
