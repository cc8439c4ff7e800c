//! Exact per-process accounting, kept current from kernel events: live heap (malloc family), direct
//! mappings (mmap, munmap, mremap), the program break, and per call site figures that attribution
//! turns into consumers. RSS comes from the kernel at snapshot time.

pub mod heap;
pub mod mappings;
pub mod modules;

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use memtrace_common::{Event, FLAG_ALLOCATOR_INTERNAL, MAP_ANONYMOUS};
use rustc_hash::FxHashMap as HashMap;

use self::{
    heap::{Change, Heap, LiveAlloc},
    mappings::{MapKind, Mappings, Removed, NO_SITE},
    modules::Modules,
};
use crate::{
    events::Kind,
    os::{
        cgroup::{self, CgroupInfo},
        clock::{boot_time_ms, monotonic_ns},
        procfs::{self, MapLine, Stat, Status},
    },
    snapshot::{HostSnapshot, ProcessSnapshot},
};

/// `mremap` flag: keep the old range mapped.
const MREMAP_DONTUNMAP: u32 = 4;

/// How a site got its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteClass {
    Malloc,
    Mmap,
    Brk,
}

impl SiteClass {
    /// The name used in JSON and consumer ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Mmap => "mmap",
            Self::Brk => "brk",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub class: SiteClass,
    /// User stack id in the kernel's stack map, or -1.
    pub stack_id: i64,
    /// Return address at the allocator's entry (0 for syscalls).
    pub caller: u64,
}

/// Figures of one call site (one stack, or one caller when stacks are off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    pub key: SiteKey,
    pub live_bytes: u64,
    pub live_count: u64,
    pub peak_bytes: u64,
    pub total_calls: u64,
    pub total_bytes: u64,
}

/// Call sites of one process. Past `max` sites, new ones share one overflow site per class, and
/// the overflow is counted.
#[derive(Clone, Debug)]
pub struct Sites {
    stats: Vec<SiteStats>,
    index: HashMap<SiteKey, u32>,
    max: usize,
    pub overflowed: u64,
}

impl Sites {
    fn new(max: usize) -> Self {
        Self {
            stats: Vec::new(),
            index: HashMap::default(),
            max: max.max(3),
            overflowed: 0,
        }
    }

    fn intern(&mut self, key: SiteKey) -> u32 {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let key = if self.stats.len() + 3 >= self.max {
            self.overflowed += 1;
            SiteKey {
                class: key.class,
                stack_id: -2,
                caller: 0,
            }
        } else {
            key
        };
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.stats.len() as u32;
        self.stats.push(SiteStats {
            key,
            live_bytes: 0,
            live_count: 0,
            peak_bytes: 0,
            total_calls: 0,
            total_bytes: 0,
        });
        self.index.insert(key, id);
        id
    }

    fn add(&mut self, site: u32, bytes: u64, call: bool) {
        if let Some(stats) = self.stats.get_mut(site as usize) {
            stats.live_bytes = stats.live_bytes.saturating_add(bytes);
            stats.live_count += 1;
            stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
            if call {
                stats.total_calls += 1;
                stats.total_bytes = stats.total_bytes.saturating_add(bytes);
            }
        }
    }

    fn sub(&mut self, site: u32, bytes: u64) {
        if let Some(stats) = self.stats.get_mut(site as usize) {
            stats.live_bytes = stats.live_bytes.saturating_sub(bytes);
            stats.live_count = stats.live_count.saturating_sub(1);
        }
    }

    /// Forgets the heap figures of every allocator call site (the sites stay, with their ids):
    /// what a heap trace that starts afresh needs.
    fn forget_heap(&mut self) {
        for stats in &mut self.stats {
            if stats.key.class == SiteClass::Malloc {
                stats.live_bytes = 0;
                stats.live_count = 0;
                stats.peak_bytes = 0;
                stats.total_calls = 0;
                stats.total_bytes = 0;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &SiteStats)> {
        self.stats.iter().enumerate().map(|(i, s)| (i as u32, s))
    }

    pub fn get(&self, site: u32) -> Option<&SiteStats> {
        self.stats.get(site as usize)
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}

/// The program break: where it started and where it is.
#[derive(Clone, Debug, Default)]
pub struct Brk {
    pub start: Option<u64>,
    pub current: Option<u64>,
    /// Growth by site, most recent last; shrinking gives back the most recent growth first.
    growth: Vec<(u32, u64)>,
}

impl Brk {
    pub fn bytes(&self) -> u64 {
        match (self.start, self.current) {
            (Some(start), Some(current)) => current.saturating_sub(start),
            _ => 0,
        }
    }
}

/// Everything memtrace knows about one process.
#[derive(Clone, Debug)]
pub struct ProcessState {
    pub pid: u32,
    pub comm: String,
    pub start_time: u64,
    pub heap: Heap,
    pub mappings: Mappings,
    pub brk: Brk,
    pub sites: Sites,
    pub heap_traced: bool,
    /// The heap is traced from the process's first allocation (launched under the tracer, or an
    /// exec seen while traced): live heap is the whole heap. Otherwise tracing began mid-life.
    pub heap_from_start: bool,
    /// For a heap traced since attach: RSS and live heap bytes when tracing began (taken at the
    /// first reading of RSS after it), the base of `external_growth_bytes`.
    pub attach_baseline: Option<(u64, u64)>,
    /// Container and memory limit from the process's cgroup (read once, when seeded).
    pub cgroup: CgroupInfo,
    pub status: Status,
    /// Mapped objects, to symbolize this process's stacks (also after it exits).
    pub modules: Arc<Modules>,
    /// An executable file mapping appeared since `modules` was read.
    pub modules_dirty: bool,
    /// Whether what the kernel shows of the process (`/proc`) has been read. Processes seen only
    /// through events are read lazily (at a snapshot, or when traced): a short-lived process costs
    /// no `/proc` reads at all.
    pub seeded: bool,
    /// When the state was seeded from `/proc` (kernel monotonic ns): events older than this are
    /// already reflected in it.
    pub seeded_ns: u64,
}

/// A process that exited: its last figures, and its state for attribution.
#[derive(Clone, Debug)]
pub struct Exited {
    pub snapshot: ProcessSnapshot,
    pub state: ProcessState,
}

/// Where the accounting learns what a process looked like before its events: `/proc` in the agent,
/// nothing in unit tests.
pub trait ProcessSource: Send {
    fn stat(&self, pid: u32) -> Option<Stat>;
    fn maps(&self, pid: u32) -> Option<Vec<MapLine>>;
    fn status(&self, pid: u32) -> Option<Status>;
    /// The process's container and cgroup memory limit.
    fn cgroup(&self, _pid: u32) -> Option<CgroupInfo> {
        None
    }
}

pub struct Procfs;

impl ProcessSource for Procfs {
    fn stat(&self, pid: u32) -> Option<Stat> {
        procfs::stat(pid).ok()
    }

    fn maps(&self, pid: u32) -> Option<Vec<MapLine>> {
        procfs::maps(pid).ok()
    }

    fn status(&self, pid: u32) -> Option<Status> {
        procfs::status(pid).ok()
    }

    fn cgroup(&self, pid: u32) -> Option<CgroupInfo> {
        cgroup::cgroup_info(pid)
    }
}

/// A source that knows nothing (synthetic events in tests).
pub struct NoSource;

impl ProcessSource for NoSource {
    fn stat(&self, _: u32) -> Option<Stat> {
        None
    }

    fn maps(&self, _: u32) -> Option<Vec<MapLine>> {
        None
    }

    fn status(&self, _: u32) -> Option<Status> {
        None
    }
}

/// One recorded allocator operation (the origin's operations log): allocations of at least the
/// configured size, by traced processes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Kernel monotonic nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub kind: String,
    pub size: u64,
    pub addr: u64,
    pub stack_id: i64,
    pub caller: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AccountingStats {
    /// Events applied.
    pub applied: u64,
    pub processes_seen: u64,
    pub processes_exited: u64,
    /// States reset because the PID now belongs to another process.
    pub pid_reuses: u64,
}

pub struct Accounting {
    procs: HashMap<u32, ProcessState>,
    source: Box<dyn ProcessSource>,
    page: u64,
    max_sites: usize,
    /// Processes whose malloc family is traced (their heap figures are known).
    traced: HashSet<u32>,
    /// When the probes of an untraced process were detached (monotonic ns, the events' clock):
    /// its heap events stamped later are ignored (its probes go in the background, and a heap
    /// no longer traced must not change).
    untraced_at: HashMap<u32, u64>,
    trace_all: bool,
    /// Processes that exited, most recent last (bounded).
    exited: VecDeque<Exited>,
    /// Recent operations of at least `min_operation_size` bytes (bounded by `max_operations`).
    operations: VecDeque<Operation>,
    /// Operations recorded since the last `take_new_operations`.
    new_operations: usize,
    min_operation_size: u64,
    max_operations: usize,
    pub operations_dropped: u64,
    pub stats: AccountingStats,
    /// What turns kernel figures into snapshot fields (boot time, clock ticks, `MemTotal`).
    clocks: SnapshotContext,
    /// Exits and execs of traced processes since the last `take_lifecycle`.
    lifecycle: Vec<(u32, Lifecycle)>,
}

/// Host facts a snapshot needs besides the process's own figures.
#[derive(Clone, Copy, Debug, Default)]
struct SnapshotContext {
    /// When the machine booted (ms since the epoch), to turn start times into wall time.
    boot_ms: Option<u64>,
    /// Clock ticks per second of `/proc/PID/stat` start times.
    ticks_per_second: u64,
    /// `MemTotal`, the limit of processes without a cgroup limit (read at each host snapshot).
    mem_total: Option<u64>,
}

/// What happened to a traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Its thread group exited.
    Exited,
    /// It replaced its program with `execve`.
    Exec,
}

const EXITED_KEPT: usize = 16;

impl Accounting {
    pub fn new(source: Box<dyn ProcessSource>) -> Self {
        Self {
            procs: HashMap::default(),
            source,
            page: procfs::page_size(),
            max_sites: 65536,
            traced: HashSet::new(),
            untraced_at: HashMap::default(),
            trace_all: false,
            exited: VecDeque::new(),
            operations: VecDeque::new(),
            new_operations: 0,
            min_operation_size: 1024,
            max_operations: 0,
            operations_dropped: 0,
            stats: AccountingStats::default(),
            clocks: SnapshotContext {
                boot_ms: boot_time_ms(),
                ticks_per_second: procfs::clock_ticks_per_second(),
                mem_total: None,
            },
            lifecycle: Vec::new(),
        }
    }

    /// Records allocations of at least `min_size` bytes, keeping the last `max` (0: none).
    pub fn with_operations(mut self, min_size: u64, max: usize) -> Self {
        self.min_operation_size = min_size;
        self.max_operations = max;
        self
    }

    /// Recent operations, oldest first.
    pub fn operations(&self) -> impl DoubleEndedIterator<Item = &Operation> {
        self.operations.iter()
    }

    /// Operations recorded since the previous call (for persistence).
    pub fn take_new_operations(&mut self) -> Vec<Operation> {
        let n = self.new_operations.min(self.operations.len());
        self.new_operations = 0;
        self.operations
            .iter()
            .skip(self.operations.len() - n)
            .cloned()
            .collect()
    }

    pub fn with_max_sites(mut self, max_sites: usize) -> Self {
        self.max_sites = max_sites;
        self
    }

    /// Exits and execs of traced processes seen since the previous call, in event order.
    pub fn take_lifecycle(&mut self) -> Vec<(u32, Lifecycle)> {
        std::mem::take(&mut self.lifecycle)
    }

    /// Marks a process's heap as traced (its malloc-family probes were just attached to the running
    /// process) or not. A heap traced this way is traced *since attach*: the blocks the process
    /// allocated before are unknown, so its external memory is only known as growth since now
    /// (`externalBasis: "since-attach"`). A process already traced keeps its basis. For a process
    /// whose heap is traced from its start, see [`Accounting::set_traced_from_start`].
    pub fn set_traced(&mut self, pid: u32, traced: bool) {
        if traced {
            self.traced.insert(pid);
            self.untraced_at.remove(&pid);
        } else if self.traced.remove(&pid) {
            self.untraced_at
                .insert(pid, crate::os::clock::monotonic_ns());
        }
        let trace_all = self.trace_all;
        if traced {
            let status = self.source.status(pid);
            let state = self.state(pid);
            if !state.heap_traced {
                // A heap traced before (a drill-down, a sampling window, a stopped request) lost
                // the frees made while it was not: its figures start afresh, since this attach.
                state.heap = Heap::default();
                state.sites.forget_heap();
                state.heap_traced = true;
                state.heap_from_start = false;
                state.attach_baseline = status
                    .filter(|s| s.rss > 0)
                    .map(|s| (s.rss, state.heap.live_bytes));
            }
        } else if let Some(state) = self.procs.get_mut(&pid) {
            state.heap_traced = trace_all;
            if !state.heap_traced {
                state.heap_from_start = false;
                state.attach_baseline = None;
            }
        }
    }

    /// Marks a process's heap as traced from its start: the probes were attached before it ran
    /// its program (`memtrace trace -- CMD`: the child waits for them before it execs), so live
    /// heap is its whole heap and external memory is RSS minus live heap
    /// (`externalBasis: "full"`). An exec seen while a process is traced does the same by itself.
    pub fn set_traced_from_start(&mut self, pid: u32) {
        self.traced.insert(pid);
        let state = self.state(pid);
        state.heap_traced = true;
        state.heap_from_start = true;
        state.attach_baseline = None;
    }

    pub fn set_trace_all(&mut self, all: bool) {
        self.trace_all = all;
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessState> {
        self.procs.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessState> {
        self.procs.values()
    }

    pub fn exited(&self) -> impl DoubleEndedIterator<Item = &ProcessSnapshot> {
        self.exited.iter().map(|e| &e.snapshot)
    }

    /// The last state of an exited process.
    pub fn exited_state(&self, pid: u32) -> Option<&ProcessState> {
        self.exited
            .iter()
            .rev()
            .find(|e| e.state.pid == pid)
            .map(|e| &e.state)
    }

    /// Re-reads the mapped objects of a live process (after it loaded a library).
    pub fn refresh_modules(&mut self, pid: u32) {
        let Some(maps) = self.source.maps(pid) else {
            return;
        };
        if let Some(state) = self.procs.get_mut(&pid) {
            state.modules = Arc::new(Modules::from_maps(pid, &maps));
            state.modules_dirty = false;
        }
    }

    /// Re-reads the mapped objects of traced processes that mapped executable code since they were
    /// last read, so their stacks stay symbolizable after they exit.
    pub fn refresh_dirty_modules(&mut self) {
        let dirty: Vec<u32> = self
            .procs
            .values()
            .filter(|s| s.modules_dirty && s.heap_traced)
            .map(|s| s.pid)
            .collect();
        for pid in dirty {
            self.refresh_modules(pid);
        }
    }

    /// The state of `pid`, created on first sight, and seeded from the source (`/proc`) if it was
    /// not yet.
    pub fn state(&mut self, pid: u32) -> &mut ProcessState {
        let Self {
            procs,
            source,
            page,
            max_sites,
            traced,
            trace_all,
            stats,
            ..
        } = self;
        let state = procs.entry(pid).or_insert_with(|| {
            stats.processes_seen += 1;
            blank_state(pid, *page, *max_sites, *trace_all || traced.contains(&pid))
        });
        if !state.seeded {
            seed(state, source.as_ref());
        }
        state
    }

    /// The state of `pid` as events know it, created on first sight without reading `/proc`.
    fn event_state(&mut self, pid: u32) -> &mut ProcessState {
        let Self {
            procs,
            page,
            max_sites,
            traced,
            trace_all,
            stats,
            ..
        } = self;
        procs.entry(pid).or_insert_with(|| {
            stats.processes_seen += 1;
            blank_state(pid, *page, *max_sites, *trace_all || traced.contains(&pid))
        })
    }

    pub fn apply_batch(&mut self, batch: &[(Kind, Event)]) {
        for (kind, event) in batch {
            self.apply(*kind, event);
        }
    }

    pub fn apply(&mut self, kind: Kind, ev: &Event) {
        self.stats.applied += 1;
        let pid = ev.tgid;
        match kind {
            Kind::Exit => {
                self.untraced_at.remove(&pid);
                if self.traced.contains(&pid) {
                    self.lifecycle.push((pid, Lifecycle::Exited));
                }
                if let Some(mut state) = self.procs.remove(&pid) {
                    self.stats.processes_exited += 1;
                    let snapshot = snapshot_of(&mut state, None, &self.clocks);
                    if self.exited.len() == EXITED_KEPT {
                        self.exited.pop_front();
                    }
                    self.exited.push_back(Exited { snapshot, state });
                }
                return;
            }
            Kind::Exec => {
                // The address space was replaced: start over from what the kernel shows now,
                // unless the state was read from the kernel after this exec already.
                if self
                    .procs
                    .get(&pid)
                    .is_some_and(|state| state.seeded && state.seeded_ns > ev.ts_ns)
                {
                    return;
                }
                self.procs.remove(&pid);
                if self.traced.contains(&pid) {
                    self.lifecycle.push((pid, Lifecycle::Exec));
                }
                // A traced process is read at once (its libraries are needed to name its stacks);
                // others when a snapshot first needs them. The new program's heap starts empty
                // under the probes: it is traced from its start.
                if self.trace_all || self.traced.contains(&pid) {
                    self.state(pid).heap_from_start = true;
                } else {
                    self.event_state(pid);
                }
                return;
            }
            _ => {}
        }
        let born_s = (ev.ts_ns / 1_000_000_000) as u32;
        let page = self.page;
        if kind.is_heap() {
            if self.max_operations > 0 && kind != Kind::Free {
                let size = if kind == Kind::Calloc {
                    ev.size.saturating_mul(ev.old_size)
                } else {
                    ev.size
                };
                if size >= self.min_operation_size && ev.addr != 0 {
                    if self.operations.len() >= self.max_operations {
                        self.operations.pop_front();
                        self.operations_dropped += 1;
                    }
                    self.operations.push_back(Operation {
                        ts_ns: ev.ts_ns,
                        pid,
                        kind: kind.name().to_string(),
                        size,
                        addr: ev.addr,
                        stack_id: ev.stack_id,
                        caller: ev.caller,
                    });
                    self.new_operations += 1;
                }
            }
            // Events of a process whose probes were just detached (still in the ring buffer)
            // are counted but do not mark its heap traced again; those of calls made after
            // the detach (its probes go in the background) are ignored.
            let traced = self.trace_all || self.traced.contains(&pid);
            if !traced && self.untraced_at.get(&pid).is_some_and(|&at| ev.ts_ns > at) {
                return;
            }
            let state = self.event_state(pid);
            state.heap_traced |= traced;
            let site = state.sites.intern(SiteKey {
                class: SiteClass::Malloc,
                stack_id: ev.stack_id,
                caller: ev.caller,
            });
            let alloc = LiveAlloc {
                size: ev.size,
                site,
                born_s,
            };
            let change = match kind {
                Kind::Malloc
                | Kind::PosixMemalign
                | Kind::AlignedAlloc
                | Kind::Memalign
                | Kind::Valloc
                | Kind::Pvalloc => state.heap.alloc(ev.addr, alloc),
                Kind::Calloc => state
                    .heap
                    .calloc(ev.addr, ev.size, ev.old_size, site, born_s),
                Kind::Realloc => state.heap.realloc(ev.old_addr, ev.addr, alloc),
                Kind::Free => state.heap.free(ev.old_addr),
                _ => Change::default(),
            };
            if let Some(removed) = change.removed {
                state.sites.sub(removed.site, removed.size);
            }
            if let Some(added) = change.added {
                state.sites.add(added.site, added.size, true);
            }
            return;
        }
        let state = self.event_state(pid);
        // Memory the allocator maps for itself is the heap's, not a direct mapping of a caller.
        let internal = ev.flags & FLAG_ALLOCATOR_INTERNAL != 0;
        match kind {
            Kind::Mmap => {
                let map_kind = if ev.flags & MAP_ANONYMOUS != 0 {
                    MapKind::Anon
                } else {
                    MapKind::File
                };
                let site = if internal {
                    NO_SITE
                } else {
                    state.sites.intern(SiteKey {
                        class: SiteClass::Mmap,
                        stack_id: ev.stack_id,
                        caller: ev.caller,
                    })
                };
                if memtrace_common::maps_file_code(ev.flags, ev.aux) {
                    state.modules_dirty = true;
                }
                let removed = state.mappings.insert(ev.addr, ev.size, map_kind, site);
                give_back(&mut state.sites, &removed);
                let bytes = ev.size.div_ceil(page).saturating_mul(page);
                state.sites.add(site, bytes, true);
            }
            Kind::Munmap => {
                let removed = state.mappings.remove(ev.old_addr, ev.size);
                give_back(&mut state.sites, &removed);
            }
            Kind::Mremap => {
                let keep_old = ev.flags & MREMAP_DONTUNMAP != 0;
                let (removed, added, _, site) =
                    state
                        .mappings
                        .remap(ev.old_addr, ev.old_size, ev.addr, ev.size, keep_old);
                give_back(&mut state.sites, &removed);
                if site != NO_SITE {
                    state.sites.add(site, added, false);
                }
            }
            Kind::Brk => {
                let previous = state.brk.current.unwrap_or(ev.addr);
                state.brk.start.get_or_insert(ev.addr);
                state.brk.current = Some(ev.addr);
                if ev.addr > previous {
                    let site = if internal {
                        NO_SITE
                    } else {
                        state.sites.intern(SiteKey {
                            class: SiteClass::Brk,
                            stack_id: ev.stack_id,
                            caller: ev.caller,
                        })
                    };
                    let grown = ev.addr - previous;
                    state.sites.add(site, grown, true);
                    state.brk.growth.push((site, grown));
                } else {
                    let mut shrink = previous - ev.addr;
                    while shrink > 0 {
                        let Some((site, bytes)) = state.brk.growth.pop() else {
                            break;
                        };
                        let taken = bytes.min(shrink);
                        if let Some(stats) = state.sites.stats.get_mut(site as usize) {
                            stats.live_bytes = stats.live_bytes.saturating_sub(taken);
                        }
                        if bytes > taken {
                            state.brk.growth.push((site, bytes - taken));
                        }
                        shrink -= taken;
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads the kernel's figures for `pid` and returns its snapshot. A PID now held by another
    /// process (start time changed) has its old state dropped first.
    pub fn snapshot(&mut self, pid: u32) -> Option<ProcessSnapshot> {
        let stat = self.source.stat(pid);
        if let (Some(stat), Some(state)) = (&stat, self.procs.get(&pid)) {
            if state.start_time != 0 && stat.start_time != state.start_time {
                self.procs.remove(&pid);
                self.stats.pid_reuses += 1;
            }
        }
        let status = self.source.status(pid);
        if stat.is_none() && status.is_none() && !self.procs.contains_key(&pid) {
            return None;
        }
        let clocks = self.clocks;
        let state = self.state(pid);
        Some(snapshot_of(state, status, &clocks))
    }

    /// Snapshot of every process on the host that has memory (kernel threads are skipped). States of
    /// processes that are gone (an exit event was lost) are dropped.
    pub fn host_snapshot(&mut self, timestamp_ms: u64) -> HostSnapshot {
        let info = procfs::meminfo().unwrap_or_default();
        if info.total > 0 {
            self.clocks.mem_total = Some(info.total);
        }
        let pids = procfs::pids().unwrap_or_default();
        let alive: HashSet<u32> = pids.iter().copied().collect();
        self.procs.retain(|pid, _| alive.contains(pid));
        let mut processes = Vec::new();
        for pid in pids {
            let Some(status) = self.source.status(pid) else {
                continue;
            };
            if !status.has_mm {
                continue;
            }
            if let Some(snapshot) = self.snapshot(pid) {
                processes.push(snapshot);
            }
        }
        processes.sort_by_key(|p| std::cmp::Reverse(p.rss_bytes));
        HostSnapshot {
            timestamp: timestamp_ms,
            mem_total_bytes: info.total,
            mem_available_bytes: info.available,
            processes,
        }
    }
}

/// A process state with nothing known yet.
fn blank_state(pid: u32, page: u64, max_sites: usize, heap_traced: bool) -> ProcessState {
    ProcessState {
        pid,
        comm: String::new(),
        start_time: 0,
        heap: Heap::default(),
        mappings: Mappings::new(page),
        brk: Brk::default(),
        sites: Sites::new(max_sites),
        heap_traced,
        heap_from_start: false,
        attach_baseline: None,
        cgroup: CgroupInfo::default(),
        status: Status::default(),
        modules: Arc::default(),
        modules_dirty: false,
        seeded: false,
        seeded_ns: 0,
    }
}

/// Adds what the kernel shows of the process now: identity, mapped objects, the mappings events
/// did not report (made before memtrace saw the process), and the program break.
fn seed(state: &mut ProcessState, source: &dyn ProcessSource) {
    let pid = state.pid;
    state.seeded = true;
    state.seeded_ns = monotonic_ns();
    if let Some(stat) = source.stat(pid) {
        state.comm = stat.comm;
        if state.start_time == 0 {
            state.start_time = stat.start_time;
        }
        if stat.start_brk != 0 {
            state.brk.start = Some(stat.start_brk);
        }
    }
    if let Some(cgroup) = source.cgroup(pid) {
        state.cgroup = cgroup;
    }
    let maps = source.maps(pid).unwrap_or_default();
    if !maps.is_empty() {
        state.modules = Arc::new(Modules::from_maps(pid, &maps));
        state.modules_dirty = false;
    }
    for line in maps {
        if line.path == "[heap]" {
            state.brk.current.get_or_insert(line.end);
        } else if !line.is_special() {
            let kind = if line.is_file() {
                MapKind::File
            } else {
                MapKind::Anon
            };
            state.mappings.fill(line.start, line.end - line.start, kind);
        }
    }
    if state.brk.current.is_none() {
        state.brk.current = state.brk.start;
    }
}

fn give_back(sites: &mut Sites, removed: &[Removed]) {
    for piece in removed {
        if piece.site != NO_SITE {
            if let Some(stats) = sites.stats.get_mut(piece.site as usize) {
                stats.live_bytes = stats.live_bytes.saturating_sub(piece.bytes);
                // Mappings are cut in pieces: a site's count of live mappings is only known to be
                // zero when its bytes are.
                if stats.live_bytes == 0 {
                    stats.live_count = 0;
                }
            }
        }
    }
}

fn snapshot_of(
    state: &mut ProcessState,
    status: Option<Status>,
    clocks: &SnapshotContext,
) -> ProcessSnapshot {
    if let Some(status) = status {
        state.status = status;
    }
    let status = state.status;
    let start_time_ms = match (clocks.boot_ms, state.start_time) {
        (Some(boot), ticks) if ticks > 0 => {
            Some(boot.saturating_add(ticks.saturating_mul(1000) / clocks.ticks_per_second.max(1)))
        }
        _ => None,
    };
    let limit_bytes = match (state.cgroup.limit, clocks.mem_total) {
        (Some(cgroup), Some(total)) => Some(cgroup.min(total)),
        (cgroup, total) => cgroup.or(total),
    };
    let mut snapshot = ProcessSnapshot {
        pid: state.pid,
        comm: state.comm.clone(),
        cgroup: state.cgroup.path.clone(),
        rss_bytes: status.rss,
        rss_anon_bytes: status.rss_anon,
        rss_file_bytes: status.rss_file,
        rss_shmem_bytes: status.rss_shmem,
        swap_bytes: status.swap,
        heap_traced: state.heap_traced,
        heap_live_bytes: state.heap.live_bytes,
        heap_live_count: state.heap.live_count(),
        heap_peak_bytes: state.heap.peak_bytes,
        heap_total_allocs: state.heap.total_allocs,
        heap_total_frees: state.heap.total_frees,
        heap_unknown_frees: state.heap.unknown_frees,
        mapped_anon_bytes: state.mappings.anon_bytes(),
        mapped_file_bytes: state.mappings.file_bytes(),
        brk_bytes: state.brk.bytes(),
        external_basis: None,
        external_bytes: None,
        external_ratio: None,
        external_growth_bytes: None,
        start_time_ms,
        container: state.cgroup.container.clone(),
        limit_bytes,
        libraries: Vec::new(),
    };
    if state.heap_traced && !state.heap_from_start {
        // The base is the first reading of RSS after tracing began.
        if state.attach_baseline.is_none() && status.rss > 0 {
            state.attach_baseline = Some((status.rss, state.heap.live_bytes));
        }
        let (rss, heap) = state
            .attach_baseline
            .unwrap_or((status.rss, state.heap.live_bytes));
        snapshot.derive_external_since_attach(rss, heap);
    } else {
        snapshot.derive_external();
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use memtrace_common::NO_STACK;

    use super::*;
    use crate::snapshot::ExternalBasis;

    fn ev(kind: Kind, pid: u32, addr: u64, size: u64, old_addr: u64) -> (Kind, Event) {
        (
            kind,
            Event {
                tgid: pid,
                tid: pid,
                addr,
                size,
                old_addr,
                stack_id: NO_STACK,
                ..Event::default()
            },
        )
    }

    fn acct() -> Accounting {
        Accounting::new(Box::new(NoSource))
    }

    #[test]
    fn heap_events_per_process() {
        let mut a = acct();
        a.set_trace_all(true);
        a.apply_batch(&[
            ev(Kind::Malloc, 1, 0x1000, 100, 0),
            ev(Kind::Malloc, 1, 0x2000, 200, 0),
            ev(Kind::Malloc, 2, 0x1000, 50, 0),
            ev(Kind::Free, 1, 0, 0, 0x1000),
            ev(Kind::Realloc, 1, 0x3000, 400, 0x2000),
        ]);
        let p1 = a.process(1).expect("pid 1");
        assert_eq!((p1.heap.live_bytes, p1.heap.live_count()), (400, 1));
        assert_eq!(p1.heap.peak_bytes, 400);
        assert!(p1.heap_traced);
        assert_eq!(a.process(2).expect("pid 2").heap.live_bytes, 50);
        // Per-site figures follow the allocations.
        let site_live: u64 = p1.sites.iter().map(|(_, s)| s.live_bytes).sum();
        assert_eq!(site_live, 400);
    }

    #[test]
    fn calloc_uses_both_factors() {
        let mut a = acct();
        let mut e = ev(Kind::Calloc, 1, 0x1000, 10, 0);
        e.1.old_size = 24;
        a.apply(e.0, &e.1);
        assert_eq!(a.process(1).expect("pid").heap.live_bytes, 240);
    }

    #[test]
    fn mappings_anon_file_and_partial() {
        let mut a = acct();
        let page = procfs::page_size();
        let mut anon = ev(Kind::Mmap, 1, 0x100000, 4 * page, 0);
        anon.1.flags = MAP_ANONYMOUS;
        let file = ev(Kind::Mmap, 1, 0x900000, 2 * page, 0);
        a.apply_batch(&[anon, file, ev(Kind::Munmap, 1, 0, page, 0x100000 + page)]);
        let mut remap = ev(Kind::Mremap, 1, 0x500000, 8 * page, 0x900000);
        remap.1.old_size = 2 * page;
        a.apply(remap.0, &remap.1);
        let p = a.process(1).expect("pid");
        assert_eq!(p.mappings.anon_bytes(), 3 * page);
        assert_eq!(p.mappings.file_bytes(), 8 * page);
    }

    #[test]
    fn allocator_internal_mappings_are_not_direct_consumers() {
        let mut a = acct();
        let page = procfs::page_size();
        let mut internal = ev(Kind::Mmap, 1, 0x100000, 4 * page, 0);
        internal.1.flags = MAP_ANONYMOUS | FLAG_ALLOCATOR_INTERNAL;
        let mut direct = ev(Kind::Mmap, 1, 0x900000, 2 * page, 0);
        direct.1.flags = MAP_ANONYMOUS;
        direct.1.caller = 0x401000;
        a.apply_batch(&[internal, direct]);
        let p = a.process(1).expect("pid");
        assert_eq!(p.mappings.anon_bytes(), 6 * page, "both are mapped");
        let sites: Vec<_> = p
            .sites
            .iter()
            .filter(|(_, s)| s.key.class == SiteClass::Mmap)
            .collect();
        assert_eq!(sites.len(), 1, "only the direct mapping is a call site");
        assert_eq!(sites[0].1.live_bytes, 2 * page);
    }

    #[test]
    fn brk_extent_and_attribution() {
        let mut a = acct();
        a.apply_batch(&[
            ev(Kind::Brk, 1, 0x10000, 0, 0),
            ev(Kind::Brk, 1, 0x30000, 0, 0),
            ev(Kind::Brk, 1, 0x38000, 0, 0),
            ev(Kind::Brk, 1, 0x20000, 0, 0),
        ]);
        let p = a.process(1).expect("pid");
        assert_eq!(p.brk.bytes(), 0x10000);
        let live: u64 = p
            .sites
            .iter()
            .filter(|(_, s)| s.key.class == SiteClass::Brk)
            .map(|(_, s)| s.live_bytes)
            .sum();
        assert_eq!(live, 0x10000);
    }

    #[test]
    fn exit_drops_state_and_keeps_final_figures() {
        let mut a = acct();
        a.apply_batch(&[
            ev(Kind::Malloc, 7, 0x1000, 64, 0),
            ev(Kind::Exit, 7, 0, 0, 0),
        ]);
        assert!(a.process(7).is_none());
        let last = a.exited().last().expect("kept");
        assert_eq!((last.pid, last.heap_live_bytes), (7, 64));
        // A new process with the same PID starts from nothing.
        a.apply_batch(&[ev(Kind::Malloc, 7, 0x5000, 8, 0)]);
        assert_eq!(a.process(7).expect("pid").heap.live_bytes, 8);
    }

    #[test]
    fn exec_resets() {
        let mut a = acct();
        let mut exec = ev(Kind::Exec, 3, 0, 0, 0);
        exec.1.ts_ns = monotonic_ns() + 1_000_000_000;
        a.apply_batch(&[ev(Kind::Malloc, 3, 0x1000, 64, 0), exec]);
        assert_eq!(a.process(3).expect("pid").heap.live_bytes, 0);
    }

    #[test]
    fn exec_older_than_the_seed_is_already_reflected() {
        let mut a = acct();
        a.state(3);
        let exec = ev(Kind::Exec, 3, 0, 0, 0); // ts 0: before the state was read
        a.apply_batch(&[exec, ev(Kind::Malloc, 3, 0x1000, 64, 0)]);
        assert_eq!(a.process(3).expect("pid").heap.live_bytes, 64);
    }

    /// A source whose RSS the test sets, and that knows start times and cgroups.
    #[derive(Clone, Default)]
    struct FakeSource(std::sync::Arc<std::sync::Mutex<HashMap<u32, u64>>>);

    impl FakeSource {
        fn set_rss(&self, pid: u32, rss: u64) {
            self.0.lock().expect("lock").insert(pid, rss);
        }
    }

    impl ProcessSource for FakeSource {
        fn stat(&self, pid: u32) -> Option<Stat> {
            Some(Stat {
                comm: format!("p{pid}"),
                start_time: 500,
                start_brk: 0,
            })
        }

        fn maps(&self, _: u32) -> Option<Vec<MapLine>> {
            None
        }

        fn status(&self, pid: u32) -> Option<Status> {
            let rss = *self.0.lock().expect("lock").get(&pid)?;
            Some(Status {
                rss,
                has_mm: true,
                ..Status::default()
            })
        }

        fn cgroup(&self, _: u32) -> Option<CgroupInfo> {
            Some(CgroupInfo {
                path: format!("/system.slice/docker-0123456789ab{}.scope", "cd".repeat(26)),
                container: "0123456789ab".into(),
                limit: Some(512 << 20),
            })
        }
    }

    fn malloc(pid: u32, addr: u64, size: u64) -> (Kind, Event) {
        ev(Kind::Malloc, pid, addr, size, 0)
    }

    /// Issue 10: a process attached mid-life has no external figure (its heap from before is
    /// unknown), only the growth of RSS since the attach that heap growth does not explain.
    #[test]
    fn heap_traced_since_attach_reports_growth_not_external() {
        let source = FakeSource::default();
        let mut a = Accounting::new(Box::new(source.clone()));
        source.set_rss(5, 200 << 20);
        a.state(5);
        a.set_traced(5, true);
        a.apply_batch(&[malloc(5, 0x1000, 10 << 20)]);
        source.set_rss(5, 230 << 20);
        let p = a.snapshot(5).expect("snapshot");
        assert!(p.heap_traced);
        assert_eq!(p.external_basis, Some(ExternalBasis::SinceAttach));
        assert_eq!((p.external_bytes, p.external_ratio), (None, None));
        // RSS +30 MiB, heap +10 MiB since the attach.
        assert_eq!(p.external_growth_bytes, Some(20 << 20));
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(json["externalBasis"], "since-attach");
        assert_eq!(json["externalBytes"], serde_json::Value::Null);
        // The cgroup gives its path, the container and the limit (below MemTotal, unknown here).
        assert_eq!(
            p.cgroup,
            format!("/system.slice/docker-0123456789ab{}.scope", "cd".repeat(26))
        );
        assert_eq!(p.container, "0123456789ab");
        assert_eq!(p.limit_bytes, Some(512 << 20));
        // Start time: boot time + 500 ticks.
        let boot = boot_time_ms().expect("boot time");
        let ticks = procfs::clock_ticks_per_second();
        assert_eq!(p.start_time_ms, Some(boot + 500 * 1000 / ticks));

        // Attaching again to a process already traced keeps the base.
        a.set_traced(5, true);
        assert_eq!(
            a.snapshot(5).expect("snapshot").external_growth_bytes,
            Some(20 << 20)
        );
        // Untraced: no basis at all.
        a.set_traced(5, false);
        let p = a.snapshot(5).expect("snapshot");
        assert_eq!((p.external_basis, p.external_growth_bytes), (None, None));
    }

    /// Bug: tracing a process again (a second drill-down, a sampling window, a request after a
    /// stop) kept the blocks of the earlier trace as live, though their frees while untraced were
    /// never seen: phantom live bytes and leak candidates. The heap starts afresh at each attach.
    #[test]
    fn tracing_again_starts_the_heap_afresh() {
        let source = FakeSource::default();
        let mut a = Accounting::new(Box::new(source.clone()));
        source.set_rss(5, 100 << 20);
        a.state(5);
        a.set_traced(5, true);
        a.apply_batch(&[malloc(5, 0x1000, 4 << 20), malloc(5, 0x2000, 1 << 20)]);
        assert_eq!(a.process(5).expect("state").heap.live_bytes, 5 << 20);
        a.set_traced(5, false);
        // (0x1000 is freed while untraced: no event.)
        a.set_traced(5, true);
        a.apply_batch(&[malloc(5, 0x3000, 2 << 20)]);
        let state = a.process(5).expect("state");
        assert_eq!(state.heap.live_bytes, 2 << 20);
        assert_eq!(state.heap.total_allocs, 1);
        let site_live: u64 = state.sites.iter().map(|(_, s)| s.live_bytes).sum();
        assert_eq!(site_live, 2 << 20, "call sites start afresh too");
        // The free of a block from before the attach is unknown, not a double count.
        a.apply_batch(&[ev(Kind::Free, 5, 0x2000, 0, 0)]);
        let state = a.process(5).expect("state");
        assert_eq!(state.heap.live_bytes, 2 << 20);
        assert_eq!(state.heap.unknown_frees, 1);
    }

    /// Probes go in the background after an untrace: the calls made after it (stamped later) do
    /// not change the heap, those made before it and read after it still do.
    #[test]
    fn calls_after_an_untrace_are_ignored() {
        let mut a = Accounting::new(Box::new(FakeSource::default()));
        a.state(5);
        a.set_traced(5, true);
        let at = |(kind, event): (Kind, Event), ts_ns: u64| (kind, Event { ts_ns, ..event });
        let before = crate::os::clock::monotonic_ns();
        a.apply_batch(&[at(malloc(5, 0x1000, 100), before)]);
        a.set_traced(5, false);
        let after = crate::os::clock::monotonic_ns() + 1;
        a.apply_batch(&[
            at(malloc(5, 0x2000, 200), before),
            at(malloc(5, 0x3000, 400), after),
            at(ev(Kind::Free, 5, 0, 0, 0x1000), after),
        ]);
        let heap = &a.process(5).expect("state").heap;
        assert_eq!(
            (heap.live_bytes, heap.total_allocs, heap.total_frees),
            (300, 2, 0)
        );
    }

    /// A process traced from its start (`trace -- CMD`) keeps external = RSS - live heap.
    #[test]
    fn heap_traced_from_start_is_full() {
        let source = FakeSource::default();
        let mut a = Accounting::new(Box::new(source.clone()));
        source.set_rss(6, 100 << 20);
        a.set_traced_from_start(6);
        a.apply_batch(&[malloc(6, 0x1000, 40 << 20)]);
        let p = a.snapshot(6).expect("snapshot");
        assert_eq!(p.external_basis, Some(ExternalBasis::Full));
        assert_eq!(p.external_bytes, Some(60 << 20));
        assert_eq!(p.external_ratio, Some(1.5));
        assert_eq!(p.external_growth_bytes, None);
    }

    /// An exec seen while a process is traced (by pid, or with --malloc-all) starts a new heap
    /// under the probes: from its start. Without the exec, --malloc-all found the process running.
    #[test]
    fn exec_under_tracing_starts_a_full_heap() {
        let source = FakeSource::default();
        let mut a = Accounting::new(Box::new(source.clone()));
        a.set_trace_all(true);
        source.set_rss(7, 50 << 20);
        a.apply_batch(&[malloc(7, 0x1000, 1 << 20)]);
        let p = a.snapshot(7).expect("snapshot");
        assert_eq!(p.external_basis, Some(ExternalBasis::SinceAttach));
        let mut exec = ev(Kind::Exec, 7, 0, 0, 0);
        exec.1.ts_ns = monotonic_ns() + 1_000_000_000;
        a.apply_batch(&[exec, malloc(7, 0x2000, 2 << 20)]);
        let p = a.snapshot(7).expect("snapshot");
        assert_eq!(p.external_basis, Some(ExternalBasis::Full));
        assert_eq!(p.external_bytes, Some(48 << 20));

        // Traced by pid: the same.
        let mut b = Accounting::new(Box::new(source.clone()));
        source.set_rss(8, 50 << 20);
        b.state(8);
        b.set_traced(8, true);
        assert_eq!(
            b.snapshot(8).expect("snapshot").external_basis,
            Some(ExternalBasis::SinceAttach)
        );
        let mut exec = ev(Kind::Exec, 8, 0, 0, 0);
        exec.1.ts_ns = monotonic_ns() + 1_000_000_000;
        b.apply_batch(&[exec]);
        assert_eq!(
            b.snapshot(8).expect("snapshot").external_basis,
            Some(ExternalBasis::Full)
        );
    }

    #[test]
    fn site_overflow_is_counted() {
        let mut a = acct().with_max_sites(8);
        for i in 0..20u64 {
            let mut e = ev(Kind::Malloc, 1, 0x1000 + i * 16, 1, 0);
            e.1.caller = 0x400000 + i;
            a.apply(e.0, &e.1);
        }
        let p = a.process(1).expect("pid");
        assert!(p.sites.len() <= 8);
        assert!(p.sites.overflowed > 0);
        assert_eq!(p.sites.iter().map(|(_, s)| s.live_bytes).sum::<u64>(), 20);
    }
}
