//! The intake half of the agent: the probes, the ring buffer and the exact accounting, owned by one
//! thread. It applies kernel events as they come, starts and stops heap tracing (configured pids,
//! API requests, drill-downs), and at every snapshot interval hands the core a [`Collected`]: the
//! kernel's figures of every process and a copy of what attribution needs of traced ones.
//!
//! Heap tracing of a process ends when it exits or execs into another program (its probes are
//! detached, so a new process that gets the same pid is never shown as traced), when its
//! drill-down window is over, or on request.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use super::{core::CoreMessage, view::IntakeView, AgentError, Now, Shared};
use crate::{
    accounting::{Lifecycle, Operation},
    alerts::rules::DrillRequest,
    api::{Drilldown, TraceReason, TraceStarted, TraceStopped, TracedProcess},
    attribution::{AttributionInput, StackSource},
    config::Config,
    events::{PipelineStats, DRAIN_INTERVAL},
    os::clock,
    probes::{allocator_of, KernelCounters, ProbeError, ProgramIds},
    session::Session,
    snapshot::{HostSnapshot, ProcessSnapshot},
};

/// What the intake hands the core at each snapshot interval.
#[derive(Debug)]
pub struct Collected {
    pub at: Now,
    /// The kernel's figures of every process (libraries are filled in by the core).
    pub snapshot: HostSnapshot,
    /// Traced processes, for attribution.
    pub inputs: Vec<AttributionInput>,
    /// Allocations of at least `tracking.minAllocationSize` recorded since the last collection.
    pub operations: Vec<Operation>,
    /// The last figures of recently exited processes.
    pub exited: Vec<ProcessSnapshot>,
}

/// A drill-down whose window is over (or whose process exited): what its tracing found.
#[derive(Debug)]
pub struct DrilldownEnded {
    pub pid: u32,
    pub comm: String,
    pub alert_id: Option<String>,
    /// The process's state at the end, for attribution (`None` when it was never seen).
    pub input: Option<AttributionInput>,
}

/// Why a trace request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("pid {0} is not traced")]
    NotTraced(u32),
    /// The request cannot be carried out as asked (the agent itself, no allocator, unreadable).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
    #[error("the agent is not collecting (its intake thread stopped)")]
    Unavailable,
}

impl From<ProbeError> for TraceError {
    fn from(err: ProbeError) -> Self {
        match err {
            ProbeError::NoProcess(pid) => Self::NoProcess(pid),
            err @ (ProbeError::SelfTrace(_)
            | ProbeError::NoAllocator { .. }
            | ProbeError::Unreadable { .. }) => Self::Refused(crate::error_chain(&err)),
            other => Self::Failed(crate::error_chain(&other)),
        }
    }
}

/// Requests to the intake.
pub enum IntakeCommand {
    TraceStart {
        pid: u32,
        reply: mpsc::SyncSender<Result<TraceStarted, TraceError>>,
    },
    TraceStop {
        pid: u32,
        reply: mpsc::SyncSender<Result<TraceStopped, TraceError>>,
    },
    /// From the analysis: trace a growing process for `drilldown.window` (if the cap allows).
    Drilldown(DrillRequest),
}

/// One process whose heap the intake traces.
#[derive(Clone, Debug)]
struct Traced {
    start_time: u64,
    comm: String,
    reason: TraceReason,
    since_ms: u64,
    library: PathBuf,
    functions: Vec<&'static str>,
    placements: Vec<crate::probes::placement::Placement>,
    drilldown: Option<DrillState>,
}

#[derive(Clone, Debug)]
struct DrillState {
    started_at: u64,
    ends_at: u64,
    /// Monotonic deadline.
    deadline_ms: u64,
    reason: String,
    alert_id: Option<String>,
}

pub struct Intake {
    config: Arc<Config>,
    session: Session,
    traced: BTreeMap<u32, Traced>,
    drilldowns_total: u64,
    traces_started: u64,
    traces_stopped: u64,
    next_snapshot_ms: u64,
    /// Snapshots the core could not take in time (its queue was full).
    snapshots_dropped: Arc<AtomicU64>,
}

impl Intake {
    /// Loads the probes and attaches what the configuration asks for (`agent.mallocAll`,
    /// `agent.pids`). The first snapshot is due at once.
    pub fn start(config: Arc<Config>, now: Now) -> Result<Self, AgentError> {
        let mut session = Session::start(&config.probes)?;
        let tracking = &config.tracking;
        session.record_operations(
            tracking.min_allocation_size,
            if tracking.enabled {
                tracking.max_operations as usize
            } else {
                0
            },
        );
        if config.agent.bpf_stats {
            session.probes.enable_stats()?;
            log::info!(
                "BPF run-time statistics on while the agent runs (a few ns per program run)"
            );
        }
        if config.agent.malloc_all {
            log::warn!(
                "agent.mallocAll: every malloc and free of every process now costs a uprobe hit; \
                 allocation-heavy programs will run many times slower"
            );
            session.trace_all()?;
        }
        let mut intake = Self {
            config: Arc::clone(&config),
            session,
            traced: BTreeMap::new(),
            drilldowns_total: 0,
            traces_started: 0,
            traces_stopped: 0,
            next_snapshot_ms: now.mono_ms,
            snapshots_dropped: Arc::default(),
        };
        for &pid in &config.agent.pids {
            intake
                .trace(pid, TraceReason::Configured, None, now)
                .map_err(|source| AgentError::Trace { pid, source })?;
        }
        Ok(intake)
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        Arc::clone(&self.session.stats)
    }

    pub fn kernel_counters(&self) -> Result<KernelCounters, ProbeError> {
        self.session.probes.kernel_counters()
    }

    pub fn program_ids(&self) -> ProgramIds {
        self.session.probes.program_ids()
    }

    /// A reader of the kernel's stack map for the core's attribution.
    pub fn stack_source(&self) -> Result<Box<dyn StackSource + Send>, ProbeError> {
        Ok(Box::new(self.session.probes.stacks()?))
    }

    /// The accounting, for tests and the pipeline.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Drains the ring buffer and applies every event. Returns how many were read.
    pub fn poll(&mut self) -> usize {
        self.session.poll()
    }

    /// The one way heap tracing starts: seed the process's state from `/proc`, attach its
    /// allocator's probes, mark it traced.
    fn trace(
        &mut self,
        pid: u32,
        reason: TraceReason,
        drilldown: Option<DrillState>,
        now: Now,
    ) -> Result<TraceStarted, TraceError> {
        if self.config.agent.malloc_all {
            return Err(TraceError::Refused(format!(
                "every process's heap is traced already (agent.mallocAll); pid {pid} is included"
            )));
        }
        let target = allocator_of(pid)?;
        let report = self.session.trace_target(pid, &target)?;
        let state = self.session.accounting.state(pid);
        let (start_time, comm) = (state.start_time, state.comm.clone());
        self.traces_started += 1;
        let previous = self.traced.insert(
            pid,
            Traced {
                start_time,
                comm: comm.clone(),
                reason,
                since_ms: now.wall_ms,
                library: target.path.clone(),
                functions: report.attached.clone(),
                placements: report.placements.clone(),
                drilldown,
            },
        );
        if let Some(previous) = previous {
            // A request for a process under drill-down keeps it traced with no end.
            log::debug!(
                "pid {pid} was traced already ({:?}); now {reason:?}",
                previous.reason
            );
        }
        log::info!(
            "tracing the malloc family of pid {pid} ({comm}) in {} ({:?}): {}",
            target.path.display(),
            reason,
            report.attached.join(", ")
        );
        Ok(TraceStarted {
            pid,
            traced: true,
            library: target.path.display().to_string(),
            attached: report.attached.iter().map(|s| s.to_string()).collect(),
            missing: report.missing.iter().map(|s| s.to_string()).collect(),
            placements: report.placements,
        })
    }

    /// The one way heap tracing stops.
    fn untrace(&mut self, pid: u32) -> Option<Traced> {
        let traced = self.traced.remove(&pid)?;
        self.session.untrace_pid(pid);
        self.traces_stopped += 1;
        Some(traced)
    }

    /// Carries out a command.
    pub fn execute(&mut self, command: IntakeCommand, now: Now, shared: &Shared) {
        match command {
            IntakeCommand::TraceStart { pid, reply } => {
                let result = self.trace(pid, TraceReason::Requested, None, now);
                let _ = reply.send(result);
            }
            IntakeCommand::TraceStop { pid, reply } => {
                let result = match self.untrace(pid) {
                    Some(_) => {
                        log::info!("stopped tracing the heap of pid {pid} on request");
                        Ok(TraceStopped {
                            pid,
                            traced: false,
                            was_traced: true,
                        })
                    }
                    None => Err(TraceError::NotTraced(pid)),
                };
                let _ = reply.send(result);
            }
            IntakeCommand::Drilldown(request) => {
                if let Err(reason) = self.start_drilldown(request.clone(), now) {
                    log::info!("drill-down into pid {} not started: {reason}", request.pid);
                }
            }
        }
        self.publish(shared);
    }

    fn start_drilldown(&mut self, request: DrillRequest, now: Now) -> Result<(), String> {
        let config = Arc::clone(&self.config);
        let options = &config.drilldown;
        if !options.enabled || self.traced.contains_key(&request.pid) {
            return Ok(());
        }
        let running = self
            .traced
            .values()
            .filter(|t| t.drilldown.is_some())
            .count();
        if running >= options.max_processes {
            return Err(format!(
                "{running} drill-downs already running (drilldown.maxProcesses)"
            ));
        }
        let window_ms = options.window.saturating_mul(1000);
        let state = DrillState {
            started_at: now.wall_ms,
            ends_at: now.wall_ms.saturating_add(window_ms),
            deadline_ms: now.mono_ms.saturating_add(window_ms),
            reason: request.reason.clone(),
            alert_id: request.alert_id.clone(),
        };
        self.trace(request.pid, TraceReason::Drilldown, Some(state), now)
            .map_err(|e| e.to_string())?;
        self.drilldowns_total += 1;
        log::info!(
            "drill-down: tracing the heap of pid {} ({}) for {} s: {}",
            request.pid,
            request.comm,
            options.window,
            request.reason
        );
        Ok(())
    }

    /// Everything time-driven at `now`: traced processes that exited or exec'd are detached,
    /// drill-downs whose window is over end, and a snapshot is collected when due.
    pub fn step(&mut self, now: Now, shared: &Shared) -> Vec<CoreMessage> {
        let mut out = Vec::new();
        let mut changed = false;
        for (pid, what) in self.session.accounting.take_lifecycle() {
            let Some(traced) = self.untrace(pid) else {
                continue;
            };
            changed = true;
            log::info!(
                "pid {pid} ({}) {}: its heap is no longer traced",
                traced.comm,
                match what {
                    Lifecycle::Exited => "exited",
                    Lifecycle::Exec => "replaced its program (exec)",
                }
            );
            if let Some(drill) = traced.drilldown {
                out.push(CoreMessage::DrilldownEnded(self.drilldown_ended(
                    pid,
                    traced.comm,
                    drill,
                    now,
                )));
            }
        }
        let due: Vec<u32> = self
            .traced
            .iter()
            .filter(|(_, t)| {
                t.drilldown
                    .as_ref()
                    .is_some_and(|d| now.mono_ms >= d.deadline_ms)
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            // Attribution reads the state before the probes go.
            let Some(traced) = self.traced.get(&pid).cloned() else {
                continue;
            };
            let Some(drill) = traced.drilldown else {
                continue;
            };
            let ended = self.drilldown_ended(pid, traced.comm, drill, now);
            self.untrace(pid);
            changed = true;
            out.push(CoreMessage::DrilldownEnded(ended));
        }
        if now.mono_ms >= self.next_snapshot_ms {
            let interval = self.config.monitor.snapshot_interval.saturating_mul(1000);
            // The next one a whole interval after this one was due (a late one does not bunch up).
            self.next_snapshot_ms = self
                .next_snapshot_ms
                .saturating_add(interval)
                .max(now.mono_ms.saturating_add(interval / 2));
            out.push(CoreMessage::Collected(Box::new(self.collect(now))));
        }
        if changed {
            self.publish(shared);
        }
        out
    }

    fn drilldown_ended(
        &self,
        pid: u32,
        comm: String,
        drill: DrillState,
        now: Now,
    ) -> DrilldownEnded {
        let accounting = &self.session.accounting;
        let state = accounting
            .process(pid)
            .or_else(|| accounting.exited_state(pid));
        let cutoff = self.leak_cutoff(now);
        DrilldownEnded {
            pid,
            comm,
            alert_id: drill.alert_id,
            input: state.map(|s| AttributionInput::of(s, cutoff)),
        }
    }

    /// Kernel monotonic seconds before which a live allocation is a leak candidate.
    fn leak_cutoff(&self, _now: Now) -> u64 {
        clock::monotonic_seconds().saturating_sub(self.config.tracking.leak_age)
    }

    /// The kernel's figures of every process now, and what attribution needs of traced ones.
    pub fn collect(&mut self, now: Now) -> Collected {
        let snapshot = self.session.accounting.host_snapshot(now.wall_ms);
        let cutoff = self.leak_cutoff(now);
        let accounting = &self.session.accounting;
        let inputs = accounting
            .processes()
            .filter(|p| p.heap_traced)
            .map(|p| AttributionInput::of(p, cutoff))
            .collect();
        let exited = accounting.exited().cloned().collect();
        Collected {
            at: now,
            snapshot,
            inputs,
            operations: self.session.accounting.take_new_operations(),
            exited,
        }
    }

    /// Publishes what is traced now.
    pub fn publish(&self, shared: &Shared) {
        let traced = self
            .traced
            .iter()
            .map(|(&pid, t)| TracedProcess {
                pid,
                comm: t.comm.clone(),
                reason: t.reason,
                since: t.since_ms,
                library: t.library.display().to_string(),
                functions: t.functions.iter().map(|f| f.to_string()).collect(),
                placements: t.placements.clone(),
            })
            .collect();
        let drilldowns = self
            .traced
            .iter()
            .filter_map(|(&pid, t)| {
                let d = t.drilldown.as_ref()?;
                Some(Drilldown {
                    pid,
                    comm: t.comm.clone(),
                    started_at: d.started_at,
                    ends_at: d.ends_at,
                    reason: d.reason.clone(),
                    alert_id: d.alert_id.clone(),
                })
            })
            .collect();
        shared.intake.store(Arc::new(IntakeView {
            traced,
            drilldowns,
            drilldowns_total: self.drilldowns_total,
            snapshots_dropped: self.snapshots_dropped.load(Ordering::Relaxed),
            traces_started: self.traces_started,
            traces_stopped: self.traces_stopped,
            start_times: self
                .traced
                .iter()
                .map(|(&pid, t)| (pid, t.start_time))
                .collect(),
        }));
    }

    /// The intake thread: drains events every 20 ms (or when the kernel wakes it), carries out
    /// commands, and hands snapshots and ended drill-downs to the core, until `stop`; then drains
    /// once more and tells the core to stop.
    pub fn run(
        mut self,
        shared: &Shared,
        commands: &mpsc::Receiver<IntakeCommand>,
        to_core: &mpsc::SyncSender<CoreMessage>,
        stop: &AtomicBool,
    ) {
        loop {
            let now = Now::current();
            shared.health.intake_beat(now);
            let until_snapshot = self.next_snapshot_ms.saturating_sub(now.mono_ms);
            self.session
                .wait(DRAIN_INTERVAL.min(Duration::from_millis(until_snapshot)));
            self.poll();
            let now = Now::current();
            while let Ok(command) = commands.try_recv() {
                self.execute(command, now, shared);
            }
            for message in self.step(now, shared) {
                self.send(shared, to_core, message);
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        self.poll();
        // The core takes this from its queue after everything sent before it.
        if to_core.send(CoreMessage::Stop).is_err() {
            log::debug!("the core stopped before the intake");
        }
    }

    fn send(&self, shared: &Shared, to_core: &mpsc::SyncSender<CoreMessage>, message: CoreMessage) {
        match to_core.try_send(message) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(CoreMessage::Collected(_))) => {
                let dropped = self.snapshots_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.publish(shared);
                log::warn!(
                    "the core is behind (symbolizing or writing): snapshot dropped ({dropped} so far)"
                );
            }
            Err(mpsc::TrySendError::Full(message)) => {
                // Rare (an ended drill-down): worth waiting for.
                let _ = to_core.send(message);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}
