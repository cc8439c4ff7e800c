//! `memtrace agent`: the long-lived daemon, in two threads that each own their state.
//!
//! - **Intake** ([`intake::Intake`], thread `memtrace-intake`) owns the probes, the ring buffer and
//!   the exact accounting. It drains kernel events every 20 ms, attaches and detaches heap tracing
//!   (configured pids, API requests, drill-downs), and at each snapshot interval hands the core a
//!   [`intake::Collected`]: the host's kernel figures and a copy of what attribution needs. It does
//!   no symbolization and writes no file, so nothing else can hold up event intake.
//! - **Core** ([`core::Core`], thread `memtrace-core`) owns everything derived: attribution
//!   (symbolization), the snapshot history, pattern analysis, alerts, persistence. It asks intake
//!   for drill-downs.
//!
//! Each publishes an immutable view after every change ([`view::IntakeView`],
//! [`view::CoreView`]); the HTTP side ([`Agent`], which implements `http::Backend`) only reads
//! those views and sends commands (trace a pid, resolve an alert, analyze now) over channels. A
//! request can therefore never block collection. Tests drive both halves without threads or a
//! runtime through [`Pipeline::tick`].

mod backend;
pub mod core;
pub mod intake;
pub mod view;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use self::{
    core::{Core, CoreMessage},
    intake::{Intake, IntakeCommand},
    view::{CoreView, IntakeView},
};
pub use crate::error_chain as chain;
use crate::{
    alerts::channels::Dispatcher,
    api::StreamEvent,
    config::Config,
    events::PipelineStats,
    os::clock,
    probes::{KernelCounters, ProbeError, ProgramIds},
    store::Store,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("the probe loader task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("opening the data directory")]
    Store(#[from] crate::store::StoreError),
    #[error("starting the alert channels")]
    Channels(#[from] crate::alerts::channels::ChannelError),
    #[error("starting thread {0}")]
    Thread(&'static str, #[source] std::io::Error),
    #[error("tracing pid {pid} (agent.pids, --pid)")]
    Trace {
        pid: u32,
        #[source]
        source: intake::TraceError,
    },
    #[error("listening for signals")]
    Signals(#[source] std::io::Error),
}

/// The two clocks at one instant: wall time for timestamps, monotonic time for intervals and
/// deadlines (so a clock step does not stop snapshots or stretch a drill-down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Milliseconds of the monotonic clock.
    pub mono_ms: u64,
}

impl Now {
    pub fn current() -> Self {
        Self {
            wall_ms: clock::now_ms(),
            mono_ms: clock::monotonic_ns() / 1_000_000,
        }
    }

    /// This instant plus `ms` milliseconds on both clocks.
    pub fn plus_ms(self, ms: u64) -> Self {
        Self {
            wall_ms: self.wall_ms.saturating_add(ms),
            mono_ms: self.mono_ms.saturating_add(ms),
        }
    }
}

/// What both halves and the HTTP side share: the published views, the live stream, and counters
/// that any thread may read.
pub struct Shared {
    pub config: Arc<Config>,
    pub intake: ArcSwap<IntakeView>,
    pub core: ArcSwap<CoreView>,
    pub events: broadcast::Sender<StreamEvent>,
    pub stats: Arc<PipelineStats>,
    pub counters: Option<KernelCounters>,
    pub programs: ProgramIds,
    pub dispatcher: Arc<Dispatcher>,
    pub store: Option<Arc<Store>>,
    pub health: Health,
    /// When the agent started (ms since the Unix epoch).
    pub started_at: u64,
    started: Instant,
}

impl Shared {
    /// Shared state without probes or a data directory, for tests of the core.
    #[cfg(test)]
    pub(crate) fn for_tests(config: Config) -> Arc<Self> {
        let config = Arc::new(config);
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            dispatcher: Arc::new(
                Dispatcher::new(&config.alerting, None).expect("no webhook thread to start"),
            ),
            config,
            intake: ArcSwap::from_pointee(IntakeView::default()),
            core: ArcSwap::from_pointee(CoreView::default()),
            events,
            stats: Arc::default(),
            counters: None,
            programs: ProgramIds::default(),
            store: None,
            health: Health::default(),
            started_at: 0,
            started: Instant::now(),
        })
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends an event to the live stream (no subscriber is not an error).
    pub fn publish(&self, event: StreamEvent) {
        let _ = self.events.send(event);
    }

    /// Kernel counters summed over CPUs (zeros when they cannot be read).
    pub fn kernel_counters(&self) -> [u64; memtrace_common::COUNTERS_LEN as usize] {
        self.counters
            .as_ref()
            .and_then(|c| c.read().ok())
            .unwrap_or_default()
    }
}

/// Whether the agent's threads are working; `/health` says `degraded` with the reason otherwise.
#[derive(Default)]
pub struct Health {
    intake_stopped: AtomicBool,
    core_stopped: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Monotonic ms of the intake loop's last turn (0 before the thread runs).
    intake_beat_ms: AtomicU64,
    /// Monotonic ms since which the core has been handling one message (0 when idle).
    core_busy_since_ms: AtomicU64,
}

/// The intake loop turns every 20 ms: this long without a turn, it is stuck.
const INTAKE_STALLED_MS: u64 = 10_000;
/// The core may symbolize a large program for a while: this long on one message, it is stuck.
const CORE_STUCK_MS: u64 = 120_000;

impl Health {
    /// The intake loop is turning.
    pub fn intake_beat(&self, now: Now) {
        self.intake_beat_ms.store(now.mono_ms, Ordering::Relaxed);
    }

    /// The core starts (`Some`) or ends (`None`) handling a message.
    pub fn core_busy(&self, since: Option<Now>) {
        self.core_busy_since_ms
            .store(since.map_or(0, |n| n.mono_ms.max(1)), Ordering::Relaxed);
    }

    /// Why the agent is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        let now = Now::current().mono_ms;
        let beat = self.intake_beat_ms.load(Ordering::Relaxed);
        if beat > 0 && now.saturating_sub(beat) > INTAKE_STALLED_MS {
            return Some(format!(
                "event intake stalled: its loop last turned {} s ago",
                now.saturating_sub(beat) / 1000
            ));
        }
        let busy = self.core_busy_since_ms.load(Ordering::Relaxed);
        if busy > 0 && now.saturating_sub(busy) > CORE_STUCK_MS {
            return Some(format!(
                "the analysis side has been busy with one task for {} s (symbolizing a program's \
                 files, or a hung disk)",
                now.saturating_sub(busy) / 1000
            ));
        }
        if self.intake_stopped.load(Ordering::Relaxed) || self.core_stopped.load(Ordering::Relaxed)
        {
            let reason = self
                .reason
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|e| e.into_inner().clone());
            return Some(reason.unwrap_or_else(|| "a thread of the agent stopped".into()));
        }
        None
    }

    pub fn intake_running(&self) -> bool {
        !self.intake_stopped.load(Ordering::Relaxed)
    }

    fn stopped(&self, which: &'static str, flag: &AtomicBool, panicked: bool) {
        flag.store(true, Ordering::Relaxed);
        if panicked {
            let text = format!("the {which} thread stopped after a panic (see the log)");
            log::error!("{text}");
            match self.reason.lock() {
                Ok(mut reason) => *reason = Some(text),
                Err(poisoned) => *poisoned.into_inner() = Some(text),
            }
        }
    }
}

/// Marks a thread as stopped when dropped (also when it unwinds from a panic).
struct ThreadGuard {
    shared: Arc<Shared>,
    which: &'static str,
    normal_exit: bool,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let health = &self.shared.health;
        let flag = if self.which == "intake" {
            &health.intake_stopped
        } else {
            &health.core_stopped
        };
        health.stopped(
            self.which,
            flag,
            !self.normal_exit || std::thread::panicking(),
        );
    }
}

/// Both halves of the agent, driven by hand: what `run` splits into two threads, and what tests
/// drive without threads or a runtime.
pub struct Pipeline {
    pub intake: Intake,
    pub core: Core,
    pub shared: Arc<Shared>,
}

impl Pipeline {
    /// Loads the probes, attaches what the configuration asks for, opens the data directory and
    /// restores alerts and history.
    pub fn start(config: Config) -> Result<Self, AgentError> {
        let config = Arc::new(config);
        let now = Now::current();
        let intake = Intake::start(Arc::clone(&config), now)?;
        let store = if config.agent.persist {
            let store = Store::open(&config.monitor.data_dir, config.retention.clone())?;
            log::info!("data directory: {}", config.monitor.data_dir.display());
            Some(Arc::new(store))
        } else {
            None
        };
        let dispatcher = Arc::new(Dispatcher::with_external_url(
            &config.alerting,
            Some(config.external_url()),
            store
                .clone()
                .map(|s| s as Arc<dyn crate::alerts::AlertSink>),
        )?);
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            config: Arc::clone(&config),
            intake: ArcSwap::from_pointee(IntakeView::default()),
            core: ArcSwap::from_pointee(CoreView::default()),
            events,
            stats: intake.stats(),
            counters: intake.kernel_counters().ok(),
            programs: intake.program_ids(),
            dispatcher,
            store,
            health: Health::default(),
            started_at: now.wall_ms,
            started: Instant::now(),
        });
        intake.publish(&shared);
        let core = Core::start(Arc::clone(&shared), intake.stack_source()?, now);
        Ok(Self {
            intake,
            core,
            shared,
        })
    }

    /// One turn of both halves at `now`: applies the kernel events waiting, ends drill-downs whose
    /// window is over, takes a snapshot and runs the analysis when they are due (drill-downs the
    /// analysis asks for start at once).
    pub fn tick(&mut self, now: Now) {
        self.intake.poll();
        for message in self.intake.step(now, &self.shared) {
            self.core.handle(message, now);
        }
        if let Some(requests) = self.core.analyze_if_due(now) {
            for request in requests {
                let prepared = Box::new(crate::probes::prepare(
                    request.pid,
                    self.shared.config.probes.entry_probes,
                ));
                self.intake.execute(
                    IntakeCommand::Drilldown(request, prepared),
                    now,
                    &self.shared,
                );
            }
        }
    }
}

/// The running agent as the HTTP side sees it: the shared views, and the channels to both halves.
pub struct Agent {
    shared: Arc<Shared>,
    intake: mpsc::Sender<IntakeCommand>,
    core: mpsc::SyncSender<CoreMessage>,
    /// Which process identities have their own `/metrics` series, kept across scrapes.
    metrics_state: std::sync::Mutex<crate::http::MetricsState>,
}

impl Agent {
    pub fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Messages waiting for the core at most (snapshots dropped beyond, and counted).
const CORE_QUEUE: usize = 64;

/// Nice values of the agent's threads: event intake above everything else of the agent, the
/// analysis above the HTTP side ([`HTTP_NICE`], set on the async runtime's threads), so that
/// readers never slow collection down, even competing for the CPU.
const INTAKE_NICE: i32 = -5;
const CORE_NICE: i32 = 5;
/// Nice value of the HTTP side's threads (the async runtime's workers and blocking pool).
pub const HTTP_NICE: i32 = 10;

/// Runs the agent until SIGINT or SIGTERM; `serve` runs the HTTP side alongside and stops when
/// its receiver turns true.
pub async fn run<F, Fut>(config: Config, serve: F) -> Result<(), AgentError>
where
    F: FnOnce(Arc<dyn crate::http::Backend>, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let pipeline = tokio::task::spawn_blocking(move || Pipeline::start(config))
        .await
        .map_err(AgentError::Join)??;
    let Pipeline {
        intake,
        core,
        shared,
    } = pipeline;
    let (intake_tx, intake_rx) = mpsc::channel();
    let (core_tx, core_rx) = mpsc::sync_channel(CORE_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));

    let intake_thread = {
        let shared = Arc::clone(&shared);
        let core_tx = core_tx.clone();
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("memtrace-intake".into())
            .spawn(move || {
                // Event intake first: under CPU contention (a traced process allocating flat out,
                // heavy API clients) it must keep draining the ring buffer.
                crate::os::set_thread_nice(INTAKE_NICE);
                let mut guard = ThreadGuard {
                    shared: Arc::clone(&shared),
                    which: "intake",
                    normal_exit: false,
                };
                intake.run(&shared, &intake_rx, &core_tx, &stop);
                guard.normal_exit = true;
            })
            .map_err(|e| AgentError::Thread("memtrace-intake", e))?
    };
    let core_thread = {
        let shared = Arc::clone(&shared);
        let intake_tx = intake_tx.clone();
        std::thread::Builder::new()
            .name("memtrace-core".into())
            .spawn(move || {
                crate::os::set_thread_nice(CORE_NICE);
                let mut guard = ThreadGuard {
                    shared,
                    which: "core",
                    normal_exit: false,
                };
                core.run(&core_rx, &intake_tx);
                guard.normal_exit = true;
            })
            .map_err(|e| AgentError::Thread("memtrace-core", e))?
    };

    let agent = Arc::new(Agent {
        metrics_state: std::sync::Mutex::new(crate::http::MetricsState::new(
            &shared.config.metrics,
        )),
        shared: Arc::clone(&shared),
        intake: intake_tx,
        core: core_tx,
    });
    let (stop_http, stop_http_rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        Arc::clone(&agent) as Arc<dyn crate::http::Backend>,
        stop_http_rx,
    ));

    let config = &shared.config;
    log::info!(
        "memtrace agent running (pid {}): snapshots every {} s, analysis every {} s",
        std::process::id(),
        config.monitor.snapshot_interval,
        config.monitor.analysis_interval
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    log::info!("shutting down: draining events, flushing data, detaching probes");
    stop_http.send_replace(true);
    stop.store(true, Ordering::Relaxed);
    // The intake drains what the kernel submitted, then tells the core to stop; the core flushes.
    let joined = tokio::task::spawn_blocking(move || {
        if intake_thread.join().is_err() {
            log::warn!("the intake thread ended with a panic");
        }
        if core_thread.join().is_err() {
            log::warn!("the core thread ended with a panic");
        }
    })
    .await;
    if let Err(err) = joined {
        log::warn!("waiting for the agent's threads: {err}");
    }
    // Slow HTTP clients do not hold up the exit for long.
    if tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .is_err()
    {
        log::warn!("HTTP connections still open 3 s after shutdown: closing them");
    }
    drop(agent);
    match Arc::try_unwrap(shared) {
        Ok(shared) => match Arc::try_unwrap(shared.dispatcher) {
            Ok(dispatcher) => dispatcher.shutdown(Duration::from_secs(2)),
            Err(_) => log::debug!("alert channels still referenced at exit"),
        },
        Err(_) => log::debug!("agent state still referenced at exit"),
    }
    Ok(())
}
