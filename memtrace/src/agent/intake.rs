//! The intake half of the agent: the probes, the ring buffer and the exact accounting, owned by one
//! thread. It applies kernel events as they come, starts and stops heap tracing (configured pids,
//! API requests, drill-downs), and at every snapshot interval hands the core a [`Collected`]: the
//! kernel's figures of every process and a copy of what attribution needs of traced ones.
//!
//! Heap tracing of a process ends when it exits or execs into another program (its probes are
//! detached, so a new process that gets the same pid is never shown as traced), when its
//! drill-down window is over, on request, or when its allocator calls cost it more than its CPU
//! budget ([`Meter`]): every traced process is measured for its first half second and then again
//! while traced, and is traced all the time, in windows (sampled, its figures partial), or not at
//! all.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
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
    api::{
        Drilldown, TraceBudget, TraceReason, TraceRefusal, TraceStarted, TraceStopped,
        TracedProcess,
    },
    attribution::{AttributionInput, StackSource},
    config::Config,
    events::{PipelineStats, DRAIN_INTERVAL},
    os::clock,
    probes::{
        self,
        budget::{self, Action, Budget, Meter},
        KernelCounters, Prepared, ProbeError, ProgramIds,
    },
    session::Session,
    snapshot::{HostSnapshot, ProcessSnapshot},
};

/// A turn of the intake loop longer than this is logged (with what took the time).
const SLOW_TURN: Duration = Duration::from_millis(250);

/// Processes let go for their budget, kept for the status answer.
const REFUSALS_KEPT: usize = 20;

/// How long a process let go for its budget is not drilled into again (each drill-down costs it
/// a half-second measurement at full cost).
const REFUSED_DRILL_PAUSE_MS: u64 = 3_600_000;

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
#[derive(Clone, Debug, thiserror::Error)]
pub enum TraceError {
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("pid {0} is not traced")]
    NotTraced(u32),
    /// The request cannot be carried out as asked (the agent itself, no allocator, unreadable).
    #[error("{0}")]
    Refused(String),
    /// Tracing it would cost the process more than its CPU budget (measured while traced for
    /// the first half second).
    #[error("not tracing pid {pid}: {reason}")]
    OverBudget { pid: u32, reason: String },
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
    /// Start tracing `pid`; its allocator's files were read by the sender ([`probes::prepare`]).
    TraceStart {
        pid: u32,
        prepared: Box<Result<Prepared, ProbeError>>,
        reply: mpsc::SyncSender<Result<TraceStarted, TraceError>>,
    },
    TraceStop {
        pid: u32,
        reply: mpsc::SyncSender<Result<TraceStopped, TraceError>>,
    },
    /// From the analysis: trace a growing process for `drilldown.window` (if the cap allows),
    /// with its allocator's files read by the sender.
    Drilldown(DrillRequest, Box<Result<Prepared, ProbeError>>),
}

/// One process whose heap the intake traces.
#[derive(Debug)]
struct Traced {
    start_time: u64,
    comm: String,
    reason: TraceReason,
    since_ms: u64,
    library: PathBuf,
    functions: Vec<&'static str>,
    missing: Vec<&'static str>,
    placements: Vec<crate::probes::placement::Placement>,
    drilldown: Option<DrillState>,
    /// Its CPU budget and where it stands against it.
    meter: Meter,
    /// What attaching needs again after a sampling pause.
    prepared: Arc<Prepared>,
    /// The request that started it, answered when the budget first decides.
    reply: Option<mpsc::SyncSender<Result<TraceStarted, TraceError>>>,
}

impl Traced {
    fn started(&self, pid: u32) -> TraceStarted {
        TraceStarted {
            pid,
            traced: true,
            library: self.library.display().to_string(),
            attached: self.functions.iter().map(|s| s.to_string()).collect(),
            missing: self.missing.iter().map(|s| s.to_string()).collect(),
            placements: self.placements.clone(),
            budget: TraceBudget::of(&self.meter),
        }
    }
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
    /// Processes let go for their budget (since start, and the latest).
    traces_refused: u64,
    refusals: VecDeque<TraceRefusal>,
    /// Processes let go for their budget, by pid: their start time and until when (monotonic ms)
    /// no drill-down measures them again.
    no_drill: HashMap<u32, (u64, u64)>,
    /// Processes switched to sampling since start.
    traces_sampled: u64,
    next_snapshot_ms: u64,
    /// Snapshots the core could not take in time (its queue was full).
    snapshots_dropped: Arc<AtomicU64>,
}

impl Intake {
    /// Loads the probes and attaches what the configuration asks for (`agent.mallocAll`,
    /// `agent.pids`). The first snapshot is due at once.
    pub fn start(config: Arc<Config>, now: Now) -> Result<Self, AgentError> {
        let mut session = Session::start(&config.probes)?;
        // Unwind tables are built on their own thread: event intake never waits for them.
        session.set_unwind_wait(None);
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
            traces_refused: 0,
            refusals: VecDeque::new(),
            no_drill: HashMap::new(),
            traces_sampled: 0,
            next_snapshot_ms: now.mono_ms,
            snapshots_dropped: Arc::default(),
        };
        for &pid in &config.agent.pids {
            let prepared = probes::prepare(pid, config.probes.entry_probes);
            intake
                .trace(pid, prepared, TraceReason::Configured, None, None, now)
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
    /// allocator's probes, mark it traced, and start measuring what that costs it. `reply` is
    /// answered when its budget first decides (half a second later), or at once on an error.
    fn trace(
        &mut self,
        pid: u32,
        prepared: Result<Prepared, ProbeError>,
        reason: TraceReason,
        drilldown: Option<DrillState>,
        reply: Option<mpsc::SyncSender<Result<TraceStarted, TraceError>>>,
        now: Now,
    ) -> Result<(), TraceError> {
        let fail = |reply: Option<mpsc::SyncSender<_>>, err: TraceError| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(err.clone()));
            }
            Err(err)
        };
        if self.config.agent.malloc_all {
            return fail(
                reply,
                TraceError::Refused(format!(
                    "every process's heap is traced already (agent.mallocAll); pid {pid} is included"
                )),
            );
        }
        let limit = self.budget_of(reason);
        if let Some(traced) = self.traced.get_mut(&pid) {
            // A request for a process under drill-down keeps it traced with no end, on the
            // request's budget.
            log::debug!(
                "pid {pid} was traced already ({:?}); now {reason:?}",
                traced.reason
            );
            if reason != TraceReason::Drilldown {
                traced.reason = reason;
                traced.drilldown = None;
                if !traced.meter.attached() {
                    if let Err(err) = self.session.resume_pid(pid, &traced.prepared) {
                        return fail(reply, err.into());
                    }
                }
                let count = calls(&self.session, pid);
                traced.meter = Meter::new(limit, traced.meter.per_call_ns(), now.mono_ms, count);
            }
            return match (reply, traced.reply.is_none()) {
                (Some(reply), true) => {
                    traced.reply = Some(reply);
                    Ok(())
                }
                (Some(reply), false) => {
                    let _ = reply.send(Ok(traced.started(pid)));
                    Ok(())
                }
                (None, _) => Ok(()),
            };
        }
        let prepared = match prepared {
            Ok(prepared) => Arc::new(prepared),
            Err(err) => return fail(reply, err.into()),
        };
        let report = match self.session.trace_prepared(pid, &prepared) {
            Ok(report) => report,
            Err(err) => return fail(reply, err.into()),
        };
        let state = self.session.accounting.state(pid);
        let (start_time, comm) = (state.start_time, state.comm.clone());
        self.traces_started += 1;
        let meter = Meter::new(
            limit,
            budget::per_call_ns(&report.placements),
            now.mono_ms,
            calls(&self.session, pid),
        );
        log::info!(
            "tracing the malloc family of pid {pid} ({comm}) in {} ({:?}): {}; measuring its \
             allocator call rate against a budget of {:.1}% of a core",
            prepared.target.path.display(),
            reason,
            report.attached.join(", "),
            meter.budget().cores * 100.0
        );
        self.traced.insert(
            pid,
            Traced {
                start_time,
                comm,
                reason,
                since_ms: now.wall_ms,
                library: prepared.target.path.clone(),
                functions: report.attached,
                missing: report.missing,
                placements: report.placements,
                drilldown,
                meter,
                prepared,
                reply,
            },
        );
        Ok(())
    }

    fn budget_of(&self, reason: TraceReason) -> Budget {
        match reason {
            TraceReason::Drilldown => Budget {
                cores: self.config.drilldown.cpu_budget,
                ..Budget::drilldown()
            },
            TraceReason::Configured | TraceReason::Requested => Budget {
                cores: self.config.probes.cpu_budget,
                ..Budget::explicit()
            },
        }
    }

    /// The one way heap tracing stops.
    fn untrace(&mut self, pid: u32) -> Option<Traced> {
        let mut traced = self.traced.remove(&pid)?;
        self.session.untrace_pid(pid);
        self.traces_stopped += 1;
        if let Some(reply) = traced.reply.take() {
            // It went before its budget decided (it exited, a stop request): it was traced.
            let _ = reply.send(Ok(traced.started(pid)));
        }
        Some(traced)
    }

    /// Keeps every traced process within its budget: measures, pauses and resumes sampling,
    /// lets go of a process far over its budget. Returns what ended (drill-downs let go).
    fn meter(&mut self, now: Now) -> (bool, Vec<CoreMessage>) {
        let mut changed = false;
        let mut out = Vec::new();
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            let count = calls(&self.session, pid);
            let Some(traced) = self.traced.get_mut(&pid) else {
                continue;
            };
            let was_partial = traced.meter.partial();
            let decided = traced.meter.decision().is_some();
            let action = traced.meter.step(now.mono_ms, count);
            let decides = !decided && traced.meter.decision().is_some();
            if action == Action::Keep && !decides {
                continue;
            }
            changed = true;
            match action {
                Action::Keep => {}
                Action::Detach => {
                    if !was_partial {
                        self.traces_sampled += 1;
                        log::warn!(
                            "pid {pid} ({}): {}",
                            traced.comm,
                            traced
                                .meter
                                .decision()
                                .map(|d| d.reason())
                                .unwrap_or_default()
                        );
                    }
                    self.session.pause_pid(pid);
                }
                Action::Attach => {
                    if let Err(err) = self.session.resume_pid(pid, &traced.prepared) {
                        let reason = format!(
                            "attaching for a sampling window failed: {}",
                            crate::error_chain(&err)
                        );
                        log::warn!("pid {pid}: {reason}: no longer traced");
                        if let Some(end) = self.let_go(pid, reason, now, false) {
                            out.push(end);
                        }
                        continue;
                    }
                }
                Action::Stop(reason) => {
                    if let Some(end) = self.let_go(pid, reason, now, true) {
                        out.push(end);
                    }
                    continue;
                }
            }
            if decides {
                let Some(traced) = self.traced.get_mut(&pid) else {
                    continue;
                };
                let budget = TraceBudget::of(&traced.meter);
                log::info!(
                    "pid {pid} ({}): {}",
                    traced.comm,
                    budget.reason.as_deref().unwrap_or_default()
                );
                if let Some(reply) = traced.reply.take() {
                    let _ = reply.send(Ok(traced.started(pid)));
                }
            }
        }
        (changed, out)
    }

    /// Stops tracing `pid` for its budget (or a failed re-attach), says so to whoever asked, and
    /// hands an ended drill-down to the core.
    fn let_go(&mut self, pid: u32, reason: String, now: Now, budget: bool) -> Option<CoreMessage> {
        let traced = self.traced.get_mut(&pid)?;
        if let Some(reply) = traced.reply.take() {
            let err = if budget {
                TraceError::OverBudget {
                    pid,
                    reason: reason.clone(),
                }
            } else {
                TraceError::Failed(reason.clone())
            };
            let _ = reply.send(Err(err));
        }
        let drill = traced.drilldown.is_some();
        let ended = if drill {
            let traced = &self.traced[&pid];
            traced
                .drilldown
                .clone()
                .map(|d| self.drilldown_ended(pid, traced.comm.clone(), d, now))
        } else {
            None
        };
        let traced = self.untrace(pid)?;
        if budget {
            log::warn!(
                "not tracing the heap of pid {pid} ({}, {:?}) any more: {reason}",
                traced.comm,
                traced.reason
            );
            self.traces_refused += 1;
            self.no_drill.retain(|_, (_, until)| *until > now.mono_ms);
            self.no_drill.insert(
                pid,
                (
                    traced.start_time,
                    now.mono_ms.saturating_add(REFUSED_DRILL_PAUSE_MS),
                ),
            );
            if self.refusals.len() == REFUSALS_KEPT {
                self.refusals.pop_front();
            }
            self.refusals.push_back(TraceRefusal {
                pid,
                comm: traced.comm,
                trace_reason: traced.reason,
                at: now.wall_ms,
                reason,
            });
        }
        ended.map(CoreMessage::DrilldownEnded)
    }

    /// Carries out a command.
    pub fn execute(&mut self, command: IntakeCommand, now: Now, shared: &Shared) {
        match command {
            IntakeCommand::TraceStart {
                pid,
                prepared,
                reply,
            } => {
                // Answered when the budget decides (or at once on an error).
                let _ = self.trace(
                    pid,
                    *prepared,
                    TraceReason::Requested,
                    None,
                    Some(reply),
                    now,
                );
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
            IntakeCommand::Drilldown(request, prepared) => {
                let pid = request.pid;
                if let Err(reason) = self.start_drilldown(request, *prepared, now) {
                    log::info!("drill-down into pid {pid} not started: {reason}");
                }
            }
        }
        self.publish(shared);
    }

    fn start_drilldown(
        &mut self,
        request: DrillRequest,
        prepared: Result<Prepared, ProbeError>,
        now: Now,
    ) -> Result<(), String> {
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
        if let Some(&(start_time, until)) = self.no_drill.get(&request.pid) {
            let same = self
                .session
                .accounting
                .process(request.pid)
                .is_some_and(|p| p.start_time == start_time);
            if same && now.mono_ms < until {
                return Err(
                    "its allocator calls were over its drill-down budget within the hour"
                        .to_string(),
                );
            }
        }
        let window_ms = options.window.saturating_mul(1000);
        let state = DrillState {
            started_at: now.wall_ms,
            ends_at: now.wall_ms.saturating_add(window_ms),
            deadline_ms: now.mono_ms.saturating_add(window_ms),
            reason: request.reason.clone(),
            alert_id: request.alert_id.clone(),
        };
        self.trace(
            request.pid,
            prepared,
            TraceReason::Drilldown,
            Some(state),
            None,
            now,
        )
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
        let (metered, ended) = self.meter(now);
        changed |= metered;
        out.extend(ended);
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
            let Some(traced) = self.traced.get(&pid) else {
                continue;
            };
            let Some(drill) = traced.drilldown.clone() else {
                continue;
            };
            let ended = self.drilldown_ended(pid, traced.comm.clone(), drill, now);
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
                budget: TraceBudget::of(&t.meter),
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
            traces_refused: self.traces_refused,
            traces_sampled: self.traces_sampled,
            refusals: self.refusals.iter().cloned().collect(),
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
            let turn = std::time::Instant::now();
            let events = self.poll();
            let polled = turn.elapsed();
            let now = Now::current();
            let mut commands_run = 0;
            while let Ok(command) = commands.try_recv() {
                self.execute(command, now, shared);
                commands_run += 1;
            }
            let commanded = turn.elapsed();
            for message in self.step(now, shared) {
                self.send(shared, to_core, message);
            }
            // The ring buffer holds about a second of events at high rates: a turn this long
            // risks losing some. Say what took the time.
            if turn.elapsed() > SLOW_TURN {
                log::warn!(
                    "event intake: one turn took {:?} ({events} events applied in {polled:?}, \
                     {commands_run} commands in {:?}, snapshot and drill-downs in {:?})",
                    turn.elapsed(),
                    commanded.saturating_sub(polled),
                    turn.elapsed().saturating_sub(commanded)
                );
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

/// Allocator calls of `pid` counted since its probes were last attached.
fn calls(session: &Session, pid: u32) -> u64 {
    session.accounting.process(pid).map_or(0, |state| {
        let heap = &state.heap;
        heap.total_allocs + heap.total_frees + heap.total_reallocs
    })
}
