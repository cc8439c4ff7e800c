//! A tracing session driven synchronously: the probes, their ring buffer and the accounting in one
//! value. `memtrace trace` and the integration tests use it; `poll` drains every event the kernel
//! has submitted so far, so figures read right after it are exact.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use crate::{
    accounting::{Accounting, Procfs},
    events::{self, Batch, PipelineStats},
    probes::{
        allocator_of, host_libc, AllocatorTarget, AttachReport, Prepared, ProbeError, ProbeOptions,
        Probes,
    },
};

pub struct Session {
    pub probes: Probes,
    ring: RingBuf<MapData>,
    pub accounting: Accounting,
    pub stats: Arc<PipelineStats>,
    batch: Batch,
    /// Only events of these processes are applied (all when empty).
    only: Vec<u32>,
    /// The modules version each traced process's unwind tables were registered from.
    unwound: HashMap<u32, u64>,
    /// How long registering a process's unwind tables may wait for them to be in place (`None`:
    /// not at all, the agent's intake never waits).
    unwind_wait: Option<Duration>,
    /// Processes the kernel stops whenever they map code ([`Session::gate`]).
    gated: Vec<u32>,
}

impl Session {
    pub fn start(options: &ProbeOptions) -> Result<Self, ProbeError> {
        let mut probes = Probes::load(options)?;
        let ring = probes.take_ring_buffer()?;
        Ok(Self {
            probes,
            ring,
            accounting: Accounting::new(Box::new(Procfs)),
            stats: Arc::new(PipelineStats::default()),
            batch: Vec::with_capacity(4096),
            only: Vec::new(),
            unwound: HashMap::new(),
            unwind_wait: Some(Duration::from_secs(30)),
            gated: Vec::new(),
        })
    }

    /// Has the kernel stop `pid` (SIGSTOP) whenever it execs or maps code, and [`Session::poll`]
    /// continue it (SIGCONT) once it has loaded the unwind tables of that code: even the first
    /// stacks of a command traced from its start are whole, where they would otherwise be walked
    /// with frame pointers while its tables are built. For `memtrace trace -- CMD`.
    pub fn gate(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.probes.set_gated(pid, true)?;
        self.gated.push(pid);
        Ok(())
    }

    /// Ends [`Session::gate`] for `pid` and continues it, should it be stopped by the gate.
    pub fn ungate(&mut self, pid: u32) {
        if !self.gated.contains(&pid) {
            return;
        }
        if let Err(err) = self.probes.set_gated(pid, false) {
            log::warn!("pid {pid} stays gated: {err}");
        }
        self.gated.retain(|&p| p != pid);
        cont(pid);
    }

    /// Applies only the events of these processes from now on (cheaper when the host is busy).
    pub fn only(&mut self, pids: &[u32]) {
        self.only = pids.to_vec();
    }

    /// How long tracing a process waits for its unwind tables (built on their own thread) before
    /// going on: `memtrace trace` and tests wait, so that the first stacks are complete; the agent
    /// does not (`None`), so that event intake never stalls on a large program's tables.
    pub fn set_unwind_wait(&mut self, wait: Option<Duration>) {
        self.unwind_wait = wait;
    }

    /// Records allocations of at least `min_size` bytes, keeping the last `max` (0: none).
    pub fn record_operations(&mut self, min_size: u64, max: usize) {
        let accounting = std::mem::replace(&mut self.accounting, Accounting::new(Box::new(Procfs)));
        self.accounting = accounting.with_operations(min_size, max);
    }

    /// Traces the malloc family of every process on the host (the host's libc).
    pub fn trace_all(&mut self) -> Result<AttachReport, ProbeError> {
        let report = self.probes.attach_allocator(&host_libc()?)?;
        self.accounting.set_trace_all(true);
        Ok(report)
    }

    /// Starts tracing the malloc family of `pid`, scoped to that process. Its state is seeded from
    /// `/proc` first, so mappings it already has are known.
    pub fn trace_pid(&mut self, pid: u32) -> Result<AttachReport, ProbeError> {
        let target = allocator_of(pid)?;
        self.trace_target(pid, &target)
    }

    pub fn trace_target(
        &mut self,
        pid: u32,
        target: &AllocatorTarget,
    ) -> Result<AttachReport, ProbeError> {
        let prepared = Prepared::read(target.clone(), self.probes.entry_probes());
        self.trace_prepared(pid, &prepared)
    }

    /// [`Session::trace_target`] with the target's files already read ([`Prepared::read`], on
    /// another thread): only `/proc` reads and attach system calls here.
    pub fn trace_prepared(
        &mut self,
        pid: u32,
        prepared: &Prepared,
    ) -> Result<AttachReport, ProbeError> {
        if pid == std::process::id() {
            return Err(ProbeError::SelfTrace(pid));
        }
        self.accounting.state(pid);
        let report = self.probes.attach_prepared(prepared)?;
        self.accounting.set_traced(pid, true);
        self.register_unwind(pid);
        Ok(report)
    }

    /// Detaches the allocator probes of `pid` for a pause between two sampling windows (its
    /// unwind tables stay for the next window); its heap is untraced meanwhile.
    pub fn pause_pid(&mut self, pid: u32) {
        self.probes.pause_allocator(Some(pid));
        self.accounting.set_traced(pid, false);
    }

    /// Attaches the allocator probes of `pid` again after [`Session::pause_pid`]: its heap's
    /// figures start afresh.
    pub fn resume_pid(
        &mut self,
        pid: u32,
        prepared: &Prepared,
    ) -> Result<AttachReport, ProbeError> {
        let report = self.probes.attach_prepared(prepared)?;
        self.accounting.set_traced(pid, true);
        Ok(report)
    }

    /// Like [`Session::trace_target`], for a child that has not yet run its program (it waits
    /// for the probes before it execs): its heap is traced from its start.
    pub fn trace_launched(
        &mut self,
        pid: u32,
        target: &AllocatorTarget,
    ) -> Result<AttachReport, ProbeError> {
        let report = self.trace_target(pid, target)?;
        self.accounting.set_traced_from_start(pid);
        Ok(report)
    }

    /// Loads the unwind tables of the code `pid` maps now. A failure leaves its stacks to frame
    /// pointers (logged, counted by the kernel), never stops tracing.
    fn register_unwind(&mut self, pid: u32) {
        let Some(state) = self.accounting.process(pid) else {
            return;
        };
        let version = state.modules.version();
        if runs_this_executable(pid) {
            // A child of this process waiting to exec the command to trace: its tables are
            // registered once it has exec'd (the modules are read again then).
            self.unwound.insert(pid, version);
            return;
        }
        let ticket = self
            .probes
            .unwind()
            .register(pid, std::sync::Arc::clone(&state.modules));
        if let Some(wait) = self.unwind_wait {
            if !self.probes.unwind().wait(ticket, wait) {
                log::warn!(
                    "the unwind tables of pid {pid} are not ready after {wait:?}: its stacks use \
                     frame pointers until they are"
                );
            }
        }
        self.unwound.insert(pid, version);
    }

    /// Registers again the traced processes whose modules were read again since (they mapped new
    /// code, or replaced their address space with `execve`).
    fn follow_code(&mut self) {
        let changed: Vec<u32> = self
            .probes
            .traced()
            .flatten()
            .filter(|pid| {
                self.accounting.process(*pid).is_some_and(|state| {
                    !state.modules.is_empty()
                        && self.unwound.get(pid) != Some(&state.modules.version())
                })
            })
            .collect();
        for pid in changed {
            self.register_unwind(pid);
        }
        self.unwound
            .retain(|pid, _| self.accounting.process(*pid).is_some());
    }

    pub fn untrace_pid(&mut self, pid: u32) {
        self.probes.detach_allocator(Some(pid));
        self.unwound.remove(&pid);
        self.accounting.set_traced(pid, false);
    }

    /// Drains the ring buffer and applies every event. Returns how many records were read.
    pub fn poll(&mut self) -> usize {
        let mut total = 0;
        let mut stopped: Vec<u32> = Vec::new();
        loop {
            self.batch.clear();
            let read = events::drain(&mut self.ring, &mut self.batch, &self.stats);
            total += read;
            if !self.gated.is_empty() {
                stopped.extend(
                    self.batch
                        .iter()
                        .filter(|(kind, ev)| self.gated.contains(&ev.tgid) && maps_code(*kind, ev))
                        .map(|(_, ev)| ev.tgid),
                );
            }
            if self.only.is_empty() {
                self.accounting.apply_batch(&self.batch);
            } else {
                for (kind, event) in &self.batch {
                    if self.only.contains(&event.tgid) {
                        self.accounting.apply(*kind, event);
                    }
                }
            }
            self.accounting.refresh_dirty_modules();
            self.follow_code();
            if read < events::BATCH_MAX {
                // Their new code's tables are in place (follow_code waited for them).
                stopped.sort_unstable();
                stopped.dedup();
                for pid in stopped {
                    cont(pid);
                }
                return total;
            }
        }
    }

    /// Waits until the kernel signals events or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut fd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, ms) };
    }

    pub fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// Whether `pid` runs the same executable as this process (a forked child before its exec).
fn runs_this_executable(pid: u32) -> bool {
    let own = std::fs::metadata("/proc/self/exe");
    let other = std::fs::metadata(format!("/proc/{pid}/exe"));
    match (own, other) {
        (Ok(own), Ok(other)) => {
            use std::os::unix::fs::MetadataExt as _;
            own.dev() == other.dev() && own.ino() == other.ino()
        }
        _ => false,
    }
}

/// Whether the kernel stops a gated process at this event: it exec'd or mapped code from a file.
fn maps_code(kind: events::Kind, ev: &memtrace_common::Event) -> bool {
    match kind {
        events::Kind::Exec => true,
        events::Kind::Mmap => memtrace_common::maps_file_code(ev.flags, ev.aux),
        _ => false,
    }
}

/// Continues a process the gate stopped (a process gone already is fine).
fn cont(pid: u32) {
    // SAFETY: kill(2) with a plain signal number; no memory is passed.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
}
