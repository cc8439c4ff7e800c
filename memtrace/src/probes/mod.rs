//! Loading the eBPF object and attaching its programs: the host-wide syscall and process
//! tracepoints at load, and the malloc-family uprobes per process (or host-wide on request).

use std::{collections::HashMap, ffi::CString, io, num::NonZeroU32, os::fd::AsFd as _, path::Path};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope},
        ProgramError, TracePoint, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use memtrace_common::{ProcMappings, StackTrace, UnwindRow, UnwindTable, COUNTERS_LEN};

use self::{
    elf::{ElfCode, FunctionCode},
    placement::{Placement, Signature},
};
use crate::{
    os::procfs,
    unwind::{TableManager, UnwindError, UnwindLimits, UnwindMaps, UnwindStats, UnwindWorker},
};

pub mod budget;
mod elf;
pub mod placement;
mod target;

pub use self::target::{
    allocator_for_command, allocator_of, defines_symbol, host_libc, AllocatorTarget,
};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Tracepoints attached at load: (category, name, program).
const TRACEPOINTS: [(&str, &str); 9] = [
    ("syscalls", "sys_enter_mmap"),
    ("syscalls", "sys_exit_mmap"),
    ("syscalls", "sys_enter_munmap"),
    ("syscalls", "sys_exit_munmap"),
    ("syscalls", "sys_enter_mremap"),
    ("syscalls", "sys_exit_mremap"),
    ("syscalls", "sys_exit_brk"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_exec"),
];

/// A probed allocator function.
struct Function {
    symbol: &'static str,
    /// The entry program (the return program is `RETURN_PROGRAM`).
    entry: &'static str,
    has_return: bool,
    /// A missing required function is an error; a missing optional one is reported.
    required: bool,
    /// Integer arguments of its C prototype (what a moved probe must find unchanged).
    arguments: usize,
}

impl Function {
    const fn new(
        symbol: &'static str,
        entry: &'static str,
        has_return: bool,
        required: bool,
        arguments: usize,
    ) -> Self {
        Self {
            symbol,
            entry,
            has_return,
            required,
            arguments,
        }
    }

    fn signature(&self) -> Signature {
        Signature {
            arguments: self.arguments,
            // free(NULL) sends nothing (free_enter returns at once on a NULL pointer).
            null_is_noop: self.entry == "free_enter",
            has_return: self.has_return,
        }
    }
}

/// The malloc family.
const ALLOCATOR: [Function; 9] = [
    Function::new("malloc", "malloc_enter", true, true, 1),
    Function::new("calloc", "calloc_enter", true, true, 2),
    Function::new("realloc", "realloc_enter", true, true, 2),
    Function::new("free", "free_enter", false, true, 1),
    Function::new("posix_memalign", "posix_memalign_enter", true, true, 3),
    Function::new("aligned_alloc", "aligned_alloc_enter", true, true, 2),
    Function::new("memalign", "memalign_enter", true, true, 2),
    Function::new("valloc", "valloc_enter", true, false, 1),
    Function::new("pvalloc", "pvalloc_enter", true, false, 1),
];

const RETURN_PROGRAM: &str = "alloc_return";

/// C++ `operator new` variants in libstdc++ (all take the size first). Their entry probe records
/// the C++ caller and stack exactly, even though libstdc++ has no frame pointers; the allocator
/// call they make accounts for the allocation with that caller (no return probe of their own).
const CXX_NEW: [Function; 6] = [
    Function::new("_Znwm", NEW_PROGRAM, false, false, 1),
    Function::new("_Znam", NEW_PROGRAM, false, false, 1),
    Function::new("_ZnwmRKSt9nothrow_t", NEW_PROGRAM, false, false, 2),
    Function::new("_ZnamRKSt9nothrow_t", NEW_PROGRAM, false, false, 2),
    Function::new("_ZnwmSt11align_val_t", NEW_PROGRAM, false, false, 2),
    Function::new("_ZnamSt11align_val_t", NEW_PROGRAM, false, false, 2),
];

const NEW_PROGRAM: &str = "new_enter";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed (memtrace needs root, or \
         CAP_SYS_ADMIN, to mount it)"
    )]
    Tracefs(#[source] io::Error),
    #[error(
        "the kernel refused to load memtrace's eBPF programs: memtrace must run as root (or with \
         CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
    )]
    Privileges(#[source] EbpfError),
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program or map named {0}")]
    Missing(&'static str),
    #[error("loading eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching to tracepoint {category}:{name}")]
    Tracepoint {
        category: &'static str,
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching a uprobe to {symbol}+{offset} in {}", library.display())]
    Uprobe {
        symbol: &'static str,
        offset: u64,
        /// Boxed: the error stays small enough to be returned by value everywhere.
        library: Box<Path>,
        #[source]
        source: ProgramError,
    },
    #[error("process {pid}: no allocator found (no libc mapped and no malloc in its executable)")]
    NoAllocator { pid: u32 },
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("cannot read the mappings of process {pid}")]
    Unreadable {
        pid: u32,
        #[source]
        source: procfs::ProcfsError,
    },
    #[error("memtrace does not trace itself (pid {0})")]
    SelfTrace(u32),
    #[error("enabling BPF run-time statistics")]
    Stats(#[source] io::Error),
    #[error("mapping the unwind row array into memory")]
    MapRows(#[source] io::Error),
    #[error("starting the unwind table thread")]
    UnwindWorker(#[source] io::Error),
    #[error("reading map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Sizes and switches fixed at load time: the `[probes]` section of the configuration.
pub type ProbeOptions = crate::config::ProbesConfig;

/// Mounts tracefs at [`TRACEFS`] when it is not there. A mount made here is left in place when
/// memtrace exits: tracefs is shared by every tracer of the host (another agent, bpftrace, perf), and
/// nothing tells whether one of them started using it meanwhile, so unmounting it could pull it from
/// under them.
fn ensure_tracefs() -> Result<(), ProbeError> {
    let path = Path::new(TRACEFS);
    let populated = path
        .read_dir()
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if populated {
        return Ok(());
    }
    let target = CString::new(TRACEFS).map_err(|e| ProbeError::Tracefs(io::Error::other(e)))?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no data.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(ProbeError::Tracefs(io::Error::last_os_error()));
    }
    log::info!(
        "tracefs was not mounted: mounted it at {TRACEFS}; it stays mounted when memtrace exits \
         (other tracers may use it)"
    );
    Ok(())
}

/// Raises RLIMIT_MEMLOCK for kernels that charge BPF maps to it (< 5.11). Newer kernels charge
/// the memory cgroup instead, so a failure is only logged.
fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK) failed ({}); not needed on kernels >= 5.11, going on",
            io::Error::last_os_error()
        );
    }
}

/// The loaded object with its tracepoints attached, and the uprobe links per traced process.
pub struct Probes {
    ebpf: Ebpf,
    links: HashMap<Option<u32>, Vec<(&'static str, UProbeLinkId)>>,
    /// Keeps the kernel's BPF statistics on while held (closing it turns them off).
    stats: Option<std::os::fd::OwnedFd>,
    /// The unwind tables, managed on a thread of their own.
    unwind: UnwindWorker,
    /// Entry probes stay on the entry (`ProbeOptions::entry_probes`).
    entry_probes: bool,
    /// Detaches uprobe links off the caller's thread.
    reaper: Reaper,
}

/// Detaches uprobe links on a thread of its own. The kernel waits for RCU grace periods on each
/// uprobe it removes (~130 ms a link here, 2.3 s for a process's 17): on the intake thread that
/// held event reading for seconds at every detach and pause, and a busy host's ring buffer
/// overflowed meanwhile. The links' events keep coming until each goes; the caller has already
/// stopped counting them as traced.
struct Reaper(Option<std::sync::mpsc::Sender<Vec<UProbeLink>>>);

impl Reaper {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
        let spawned = std::thread::Builder::new()
            .name("memtrace-detach".into())
            .spawn(move || {
                for links in rx {
                    drop(links);
                }
            });
        match spawned {
            Ok(_) => Self(Some(tx)),
            Err(err) => {
                log::warn!("no thread to detach probes on ({err}): detaching in place");
                Self(None)
            }
        }
    }

    /// Detaches `links`, in their order, in the background (in place without the thread).
    fn detach(&self, links: Vec<UProbeLink>) {
        if let Some(tx) = &self.0 {
            if let Err(std::sync::mpsc::SendError(links)) = tx.send(links) {
                drop(links);
            }
        }
    }
}

/// What attaching the malloc family did.
#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<&'static str>,
    /// Optional functions the allocator does not have.
    pub missing: Vec<&'static str>,
    /// Where the entry probe of each attached function sits (its return probe shares it).
    pub placements: Vec<Placement>,
}

impl Probes {
    /// Loads the object with the given options, never tracing this process, and attaches the
    /// host-wide tracepoints.
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        ensure_tracefs()?;
        raise_memlock();
        let self_tgid = std::process::id();
        let capture = u32::from(options.capture_stacks);
        let depth = options
            .unwind_depth
            .clamp(1, memtrace_common::UNWIND_MAX_FRAMES as u32);
        let limits = UnwindLimits {
            rows: ((u64::from(options.unwind_table_mb) << 20)
                / std::mem::size_of::<UnwindRow>() as u64)
                .clamp(1, u64::from(u32::MAX)) as u32,
            tables: 4096,
            processes: options.unwind_processes.max(1),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("CAPTURE_STACKS", &capture, true)
            .override_global("UNWIND_DEPTH", &depth, true)
            .override_global(
                "WAKEUP_BYTES",
                &options
                    .wakeup_bytes
                    .min(u64::from(options.ring_buffer_bytes()) / 4),
                true,
            )
            .map_max_entries("EVENTS", options.ring_buffer_bytes())
            .map_max_entries("INFLIGHT", options.inflight_entries)
            .map_max_entries("STACK_TRACES", options.stack_entries)
            .map_max_entries("UNWIND_ROWS", limits.rows)
            .map_max_entries("UNWIND_TABLES", limits.tables)
            .map_max_entries("UNWIND_PROCS", limits.processes)
            .map_max_entries("UNWIND_PROC_SLOTS", limits.processes)
            .load(crate::EBPF)
            .map_err(|err| {
                if is_permission(&err) {
                    ProbeError::Privileges(err)
                } else {
                    ProbeError::Load(err)
                }
            })?;
        for (category, name) in TRACEPOINTS {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| ProbeError::Program { name, source })?;
            program
                .attach(category, name)
                .map_err(|source| ProbeError::Tracepoint {
                    category,
                    name,
                    source,
                })?;
        }
        for function in &ALLOCATOR {
            load_uprobe(&mut ebpf, function.entry)?;
        }
        load_uprobe(&mut ebpf, RETURN_PROGRAM)?;
        let rows = RowsMmap::new(&ebpf, limits.rows)?;
        let manager = TableManager::new(limits);
        load_uprobe(&mut ebpf, NEW_PROGRAM)?;
        let maps = KernelUnwindMaps::new(&ebpf, rows)?;
        let unwind =
            UnwindWorker::start(manager, Box::new(maps)).map_err(ProbeError::UnwindWorker)?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            stats: None,
            unwind,
            entry_probes: options.entry_probes,
            reaper: Reaper::start(),
        })
    }

    /// Attaches the malloc family of `target`, scoped to its process (or host-wide when `pid` is
    /// `None`). Optional functions that are absent are reported, not fatal.
    pub fn attach_allocator(
        &mut self,
        target: &AllocatorTarget,
    ) -> Result<AttachReport, ProbeError> {
        let prepared = Prepared::read(target.clone(), self.entry_probes);
        self.attach_prepared(&prepared)
    }

    /// Attaches what [`Prepared::read`] prepared: only the attach system calls, no file read (so
    /// the thread that drains the ring buffer can do it without stalling).
    pub fn attach_prepared(&mut self, prepared: &Prepared) -> Result<AttachReport, ProbeError> {
        let target = &prepared.target;
        if target.pid == Some(std::process::id()) {
            return Err(ProbeError::SelfTrace(std::process::id()));
        }
        let scope = match target.pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        // Attached again: the old links go, the unwind tables stay (the caller registers again).
        self.pause_allocator(target.pid);
        if let Some(pid) = target.pid {
            // Calls in flight when the probes went (their return probes never ran) would hold
            // the threads' next calls as nested.
            self.forget_in_flight(pid);
        }
        let mut report = AttachReport::default();
        let mut links = Vec::new();
        let result = (|| {
            let code = &prepared.code;
            // `free` first: a block allocated while the allocating probes were on but `free`'s
            // not yet would look live for ever, where a free of a block allocated before attach
            // is only counted as unknown.
            let (frees, allocs): (Vec<&Function>, Vec<&Function>) =
                ALLOCATOR.iter().partition(|f| f.entry == "free_enter");
            for function in frees.into_iter().chain(allocs) {
                let (location, placement, _) = code.locate(function);
                match attach_function(&mut self.ebpf, function, location, &target.path, scope) {
                    Ok((function_links, at_entry)) => {
                        links.extend(function_links);
                        if let Some(placement) = placement.map(|p| p.refused(at_entry)) {
                            log_once(&placement);
                            report.placements.push(placement);
                        }
                    }
                    Err(err) if !function.required => {
                        log::warn!("{err}: skipping the optional {}", function.symbol);
                        report.missing.push(function.symbol);
                        continue;
                    }
                    Err(err) => return Err(err),
                }
                report.attached.push(function.symbol);
            }
            // Reported in the family's order.
            report
                .attached
                .sort_by_key(|symbol| ALLOCATOR.iter().position(|f| f.symbol == *symbol));
            if let (Some(cxx), Some(code)) = (&target.cxx, &prepared.cxx) {
                for function in &CXX_NEW {
                    let (location, placement, tail) = code.locate(function);
                    // `new[]` only jumps to `new`: the probe of `new` sees the same call, with
                    // the same arguments and return address. One trap fewer per `new[]`.
                    if let (Some(tail), Some(placement)) = (tail, placement.as_ref()) {
                        if tail != function.symbol && report.attached.contains(&tail.as_str()) {
                            let placement = Placement {
                                note: Some(format!(
                                    "tail call to {tail}, probed: not probed itself"
                                )),
                                ..placement.clone()
                            };
                            log_once(&placement);
                            report.placements.push(placement);
                            continue;
                        }
                    }
                    match attach_function(&mut self.ebpf, function, location, cxx, scope) {
                        Ok((function_links, at_entry)) => {
                            links.extend(function_links);
                            if let Some(placement) = placement.map(|p| p.refused(at_entry)) {
                                log_once(&placement);
                                report.placements.push(placement);
                            }
                        }
                        Err(err) => {
                            log::debug!("{} in {}: {err}", function.symbol, cxx.display());
                            continue;
                        }
                    }
                    report.attached.push(function.symbol);
                }
            }
            Ok(())
        })();
        self.links.insert(target.pid, links);
        self.set_stack_pid(target.pid, true);
        if let Err(err) = result {
            self.detach_allocator(target.pid);
            return Err(err);
        }
        Ok(report)
    }

    /// Has the kernel stop `pid` whenever it execs or maps code (see `Session::gate`), or no longer.
    pub fn set_gated(&mut self, pid: u32, on: bool) -> Result<(), ProbeError> {
        self.set_pid_flag("GATED", pid, on)
    }

    /// Marks (or unmarks) a process whose syscall events carry user stacks (key 0: all).
    fn set_stack_pid(&mut self, pid: Option<u32>, on: bool) {
        let key = pid.unwrap_or(0);
        if let Err(err) = self.set_pid_flag("STACK_PIDS", key, on) {
            log::warn!("stacks of pid {key}'s mappings: {err}");
        }
    }

    /// Puts `pid` in (or takes it out of) the kernel's set `name`, a hash map of pids to 1.
    fn set_pid_flag(&mut self, name: &'static str, pid: u32, on: bool) -> Result<(), ProbeError> {
        let map = self.ebpf.map_mut(name).ok_or(ProbeError::Missing(name))?;
        let mut map = aya::maps::HashMap::<_, u32, u8>::try_from(map)
            .map_err(|source| ProbeError::Map { name, source })?;
        if on {
            map.insert(pid, 1, 0)
                .map_err(|source| ProbeError::Map { name, source })
        } else {
            // Absent already is fine.
            let _ = map.remove(&pid);
            Ok(())
        }
    }

    /// Detaches the malloc family of `pid` (`None`: the host-wide attachment). Returns whether
    /// anything was attached.
    pub fn detach_allocator(&mut self, pid: Option<u32>) -> bool {
        if let Some(pid) = pid {
            self.unwind().unregister(pid);
        }
        self.pause_allocator(pid)
    }

    /// Removes the in-flight allocator calls of `pid`'s threads.
    fn forget_in_flight(&mut self, pid: u32) {
        let Some(map) = self.ebpf.map_mut("INFLIGHT") else {
            return;
        };
        let Ok(mut map) = aya::maps::HashMap::<_, u64, memtrace_common::InFlight>::try_from(map)
        else {
            return;
        };
        let stale: Vec<u64> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|id| (id >> 32) as u32 == pid)
            .collect();
        for id in stale {
            let _ = map.remove(&id);
        }
    }

    /// Detaches the allocator probes of `pid` but keeps its unwind tables, for a pause between
    /// two sampling windows. Returns whether anything was attached.
    pub fn pause_allocator(&mut self, pid: Option<u32>) -> bool {
        self.set_stack_pid(pid, false);
        let Some(links) = self.links.remove(&pid) else {
            return false;
        };
        // The entry probes in the reverse order of attach (`free`'s last: the blocks seen
        // allocated are seen freed), then the return probes: new calls stop being seen first,
        // and a call seen entering is seen returning.
        let (returns, entries): (Vec<_>, Vec<_>) = links
            .into_iter()
            .rev()
            .partition(|(program, _)| *program == RETURN_PROGRAM);
        let owned = entries
            .into_iter()
            .chain(returns)
            .filter_map(|(program, link)| take_link(&mut self.ebpf, program, link))
            .collect();
        self.reaper.detach(owned);
        true
    }

    /// Processes whose malloc family is attached (`None` is the host-wide attachment).
    pub fn traced(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        self.links.keys().copied()
    }

    /// Takes the ring buffer, for the reader task.
    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::Missing("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Kernel-side counters summed over CPUs, indexed by `memtrace_common::COUNTER_*`.
    pub fn counters(&self) -> Result<[u64; COUNTERS_LEN as usize], ProbeError> {
        self.kernel_counters()?.read()
    }

    /// A handle on the kernel-side counters that another thread can read.
    pub fn kernel_counters(&self) -> Result<KernelCounters, ProbeError> {
        let array = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(self.shared_map("COUNTERS")?))
            .map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        Ok(KernelCounters(array))
    }

    /// The stack map, to resolve the stack ids that events carry (a handle of its own, so that
    /// another thread can symbolize while this one collects).
    pub fn stacks(&self) -> Result<KernelStacks, ProbeError> {
        let map = aya::maps::HashMap::try_from(Map::HashMap(self.shared_map("STACK_TRACES")?))
            .map_err(|source| ProbeError::Map {
                name: "STACK_TRACES",
                source,
            })?;
        Ok(KernelStacks(map))
    }

    /// The unwind tables: register a process when it is attached and when it maps new code.
    pub fn unwind(&self) -> &UnwindWorker {
        &self.unwind
    }

    /// Whether probes stay on their functions' entries (`probes.entryProbes`).
    pub fn entry_probes(&self) -> bool {
        self.entry_probes
    }

    /// Figures of the unwind tables (for the agent's memory figures and metrics).
    pub fn unwind_stats(&self) -> UnwindStats {
        self.unwind().stats()
    }

    /// A second handle on one of the object's maps: the same kernel map, its own descriptor.
    fn shared_map(&self, name: &'static str) -> Result<MapData, ProbeError> {
        shared_map(&self.ebpf, name)
    }

    /// The ids of the loaded programs, by name (for their run-time statistics).
    pub fn program_ids(&self) -> ProgramIds {
        ProgramIds(
            self.ebpf
                .programs()
                .filter_map(|(name, program)| Some((name.to_string(), program.info().ok()?.id())))
                .collect(),
        )
    }

    /// Turns on the kernel's BPF run-time statistics for as long as this value lives.
    pub fn enable_stats(&mut self) -> Result<(), ProbeError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|err| ProbeError::Stats(io::Error::other(err.to_string())))?;
        self.stats = Some(fd);
        Ok(())
    }
}

/// The kernel-side counters (`COUNTERS`), readable from any thread.
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    /// The counters summed over CPUs, indexed by `memtrace_common::COUNTER_*`.
    pub fn read(&self) -> Result<[u64; COUNTERS_LEN as usize], ProbeError> {
        let mut out = [0u64; COUNTERS_LEN as usize];
        for (index, slot) in out.iter_mut().enumerate() {
            let values = self
                .0
                .get(&(index as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// The loaded programs' ids by name.
#[derive(Clone, Debug, Default)]
pub struct ProgramIds(Vec<(String, u32)>);

impl ProgramIds {
    /// Run time (ns) and run count of each program, from `/proc/self/fdinfo` (non-zero only while
    /// BPF statistics are enabled: `agent.bpfStats` or `kernel.bpf_stats_enabled=1`). Programs that
    /// never ran are left out.
    pub fn stats(&self) -> Vec<(String, u64, u64)> {
        let mut by_id: HashMap<u32, (u64, u64)> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") {
            for entry in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(entry.path()) else {
                    continue;
                };
                let field = |key: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                if let (Some(id), Some(time), Some(count)) =
                    (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
                {
                    by_id.insert(id as u32, (time, count));
                }
            }
        }
        self.0
            .iter()
            .filter_map(|(name, id)| {
                let (time, count) = by_id.get(id).copied()?;
                (count > 0).then(|| (name.clone(), time, count))
            })
            .collect()
    }
}

/// The functions of one object, with their code when placement looks at it.
/// Finds the allocator of `pid` and reads its code ([`allocator_of`], [`Prepared::read`]): the
/// part of starting to trace a process that reads files, for a thread that may take its time.
pub fn prepare(pid: u32, entry_probes: bool) -> Result<Prepared, ProbeError> {
    Ok(Prepared::read(allocator_of(pid)?, entry_probes))
}

/// An allocator target with the code of its functions read and decoded: everything attaching needs
/// that reads the object files (the traced process's files, possibly large), done before attaching
/// and on any thread.
pub struct Prepared {
    pub target: AllocatorTarget,
    code: Code,
    cxx: Option<Code>,
}

impl Prepared {
    /// Reads the allocator's object (and libstdc++) to place the probes; `entry_probes` keeps
    /// every probe on its function's entry (`probes.entryProbes`).
    pub fn read(target: AllocatorTarget, entry_probes: bool) -> Self {
        let code = Code::read(&target.path, entry_probes);
        let cxx = target
            .cxx
            .as_deref()
            .map(|cxx| Code::read(cxx, entry_probes));
        Self { target, code, cxx }
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

struct Code {
    elf: Option<ElfCode>,
    object: String,
    /// Why entry probes stay on the entry when there is no code to look at.
    entry_reason: Option<String>,
}

impl Code {
    fn read(path: &Path, entry_probes: bool) -> Self {
        let object = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (elf, entry_reason) = if entry_probes {
            (
                ElfCode::read(path).ok(),
                Some("entry probes forced".to_string()),
            )
        } else if !cfg!(target_arch = "x86_64") {
            (
                None,
                Some("probe placement is measured on x86-64 only".to_string()),
            )
        } else {
            match ElfCode::read(path) {
                Ok(elf) => (Some(elf), None),
                Err(err) => {
                    let reason = crate::error_chain(&err);
                    log::warn!("probe placement: {reason}: entry probes on {object}");
                    (None, Some(reason))
                }
            }
        };
        Self {
            elf,
            object,
            entry_reason,
        }
    }

    /// Where `function`'s probes go: the file offset of the chosen instruction, or the symbol
    /// itself (aya resolves it) when the code was not found; the placement to report; and the
    /// function the probed instruction jumps to when it is a tail call.
    fn locate(
        &self,
        function: &Function,
    ) -> (
        UProbeAttachLocation<'static>,
        Option<Placement>,
        Option<String>,
    ) {
        let code: Option<FunctionCode> =
            self.elf.as_ref().and_then(|e| e.function(function.symbol));
        let (Some(elf), Some(code)) = (self.elf.as_ref(), code) else {
            return (UProbeAttachLocation::Symbol(function.symbol), None, None);
        };
        let decision = match &self.entry_reason {
            Some(reason) => placement::at_entry(&code.bytes, reason),
            None => placement::decide(&code.bytes, function.signature()),
        };
        let location = UProbeAttachLocation::AbsoluteOffset(code.file_offset + decision.offset);
        let tail = decision
            .tail_call
            .and_then(|target| elf.jump_target(code.address.wrapping_add_signed(target)));
        let placement = decision.placement(function.symbol, &self.object, code.file_offset);
        (location, Some(placement), tail)
    }
}

/// Logs a placement at info level the first time it is seen (by object and symbol), at debug
/// level after that: the agent attaches to the same libc again and again.
fn log_once(placement: &Placement) {
    static SEEN: std::sync::Mutex<Vec<(String, String, u64)>> = std::sync::Mutex::new(Vec::new());
    let key = (
        placement.object.clone(),
        placement.symbol.clone(),
        placement.offset,
    );
    let first = match SEEN.lock() {
        Ok(mut seen) if !seen.contains(&key) => {
            seen.push(key);
            true
        }
        _ => false,
    };
    if first {
        log::info!("probe placement in {}: {placement}", placement.object);
    } else {
        log::debug!("probe placement in {}: {placement}", placement.object);
    }
}

/// Links of one function's probes.
type Links = Vec<(&'static str, UProbeLinkId)>;

/// Attaches `function`'s entry program, and the return program when it has one, at `location`
/// (one breakpoint: both share it). When the kernel refuses a moved location, the symbol's entry
/// is used instead (then `true` comes back with the links).
fn attach_function(
    ebpf: &mut Ebpf,
    function: &Function,
    location: UProbeAttachLocation<'static>,
    path: &Path,
    scope: UProbeScope,
) -> Result<(Links, bool), ProbeError> {
    let mut links = Vec::new();
    // The return probe first: an entry recorded before its function's return probe exists would
    // stay in flight, and every later call of the thread would count as nested in it until it is
    // stale (seconds of a busy process's calls unseen). Detached in the reverse order.
    let attached = (|| {
        if function.has_return {
            links.push((
                RETURN_PROGRAM,
                attach_uprobe(
                    ebpf,
                    RETURN_PROGRAM,
                    function.symbol,
                    &location,
                    path,
                    scope,
                )?,
            ));
        }
        links.push((
            function.entry,
            attach_uprobe(
                ebpf,
                function.entry,
                function.symbol,
                &location,
                path,
                scope,
            )?,
        ));
        Ok(())
    })();
    match attached {
        Ok(()) => Ok((links, false)),
        Err(err) => {
            for (program, link) in links.drain(..) {
                detach_link(ebpf, program, link);
            }
            if matches!(location, UProbeAttachLocation::Symbol(_)) {
                return Err(err);
            }
            log::warn!(
                "{}: attaching at the entry instead",
                crate::error_chain(&err)
            );
            let (links, _) = attach_function(
                ebpf,
                function,
                UProbeAttachLocation::Symbol(function.symbol),
                path,
                scope,
            )?;
            Ok((links, true))
        }
    }
}

/// The owned link `link` of `program`: detached when dropped.
fn take_link(ebpf: &mut Ebpf, program: &'static str, link: UProbeLinkId) -> Option<UProbeLink> {
    let uprobe = <&mut UProbe>::try_from(ebpf.program_mut(program)?).ok()?;
    uprobe
        .take_link(link)
        .inspect_err(|err| log::debug!("detaching {program}: {err}"))
        .ok()
}

fn detach_link(ebpf: &mut Ebpf, program: &'static str, link: UProbeLinkId) {
    if let Some(Ok(uprobe)) = ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
        if let Err(err) = uprobe.detach(link) {
            log::debug!("detaching {program}: {err}");
        }
    }
}

/// Attaches the loaded uprobe `program` to `location` (in `symbol`) in the object at `path`.
fn attach_uprobe(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    location: &UProbeAttachLocation<'static>,
    path: &Path,
    scope: UProbeScope,
) -> Result<UProbeLinkId, ProbeError> {
    let uprobe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Missing(program))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            name: program,
            source,
        })?;
    let (point, offset) = match location {
        UProbeAttachLocation::Symbol(s) => (UProbeAttachLocation::Symbol(s), 0),
        UProbeAttachLocation::SymbolOffset(s, o) => (UProbeAttachLocation::SymbolOffset(s, *o), *o),
        UProbeAttachLocation::AbsoluteOffset(o) => (UProbeAttachLocation::AbsoluteOffset(*o), *o),
    };
    uprobe
        .attach(point, path, scope)
        .map_err(|source| ProbeError::Uprobe {
            symbol,
            offset,
            library: path.into(),
            source,
        })
}

/// A second handle on one of the object's maps: the same kernel map, its own descriptor.
fn shared_map(ebpf: &Ebpf, name: &'static str) -> Result<MapData, ProbeError> {
    let map = ebpf.map(name).ok_or(ProbeError::Missing(name))?;
    let data = match map {
        Map::PerCpuArray(data) | Map::HashMap(data) | Map::Array(data) => data,
        _ => return Err(ProbeError::Missing(name)),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| ProbeError::Map {
            name,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: err,
            }),
        })?;
    MapData::from_fd(fd).map_err(|source| ProbeError::Map { name, source })
}

/// The program `name` of the object, as its type (`UProbe`, `TracePoint`).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

fn load_uprobe(ebpf: &mut Ebpf, name: &'static str) -> Result<(), ProbeError> {
    let program: &mut UProbe = program(ebpf, name)?;
    program
        .load()
        .map_err(|source| ProbeError::Program { name, source })
}

fn is_permission(err: &EbpfError) -> bool {
    let text = format!("{err:?}");
    text.contains("PermissionDenied")
        || text.contains("EPERM")
        || text.contains("Operation not permitted")
}

/// Human names of the kernel counters, for reports and metrics, indexed by
/// `memtrace_common::COUNTER_*` (the last two slots are unused).
pub const COUNTER_NAMES: [&str; 14] = [
    "ring_buffer_full",
    "inflight_map_full",
    "return_without_entry",
    "events",
    "nested_allocator_calls",
    "stack_failures",
    "unwind_truncated",
    "unwind_read_failed",
    "unwind_frame_pointer_frames",
    "unwind_no_cfi_row",
    "unwind_unsupported_rule",
    "unwind_table_evicted",
    "unwind_process_without_tables",
    "unwind_bad_frame",
];

const _: () = assert!(COUNTER_NAMES.len() as u32 == memtrace_common::COUNTER_UNWIND_BAD_FRAME + 1);
const _: () = assert!(COUNTER_NAMES.len() as u32 <= COUNTERS_LEN);

/// The kernel's stack map (stacks by hash, unwound in the kernel) as a source of stacks for
/// attribution; a handle of its own, readable from another thread.
pub struct KernelStacks(aya::maps::HashMap<MapData, u64, StackTrace>);

impl crate::attribution::StackSource for KernelStacks {
    fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>> {
        let id = u64::try_from(stack_id).ok()?;
        let stack = self.0.get(&id, 0).ok()?;
        let len = (stack.len as usize).min(stack.pcs.len());
        Some(stack.pcs[..len].to_vec())
    }
}

/// The row array of the loaded object, mapped into this process (`BPF_F_MMAPABLE`): rows are
/// written with plain stores instead of a syscall per row.
struct RowsMmap {
    ptr: *mut UnwindRow,
    rows: u32,
    len: usize,
    /// The last `UNWIND_GENERATION` written.
    generation: u32,
}

// SAFETY: the mapping is owned by this value alone and only written through `&mut self`.
unsafe impl Send for RowsMmap {}
// SAFETY: as above; shared references only read the pointer value.
unsafe impl Sync for RowsMmap {}

impl RowsMmap {
    fn new(ebpf: &Ebpf, rows: u32) -> Result<Self, ProbeError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let map = ebpf
            .map("UNWIND_ROWS")
            .ok_or(ProbeError::Missing("UNWIND_ROWS"))?;
        let aya::maps::Map::Array(data) = map else {
            return Err(ProbeError::Missing("UNWIND_ROWS"));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (rows as usize * std::mem::size_of::<UnwindRow>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, of the map's size rounded to pages (the
        // kernel's array value area); checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::MapRows(io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            rows,
            len,
            generation: 0,
        })
    }
}

impl Drop for RowsMmap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The kernel's unwind maps, with handles of their own (so that the worker thread owns them).
struct KernelUnwindMaps {
    rows: RowsMmap,
    tables: Array<MapData, UnwindTable>,
    procs: Array<MapData, ProcMappings>,
    slots: aya::maps::HashMap<MapData, u32, u32>,
    generation: Array<MapData, u32>,
}

fn unwind_map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> UnwindError {
    move |source| UnwindError::Map { name, source }
}

impl KernelUnwindMaps {
    fn new(ebpf: &Ebpf, rows: RowsMmap) -> Result<Self, ProbeError> {
        let typed = |name: &'static str, source| ProbeError::Map { name, source };
        Ok(Self {
            rows,
            tables: Array::try_from(Map::Array(shared_map(ebpf, "UNWIND_TABLES")?))
                .map_err(|e| typed("UNWIND_TABLES", e))?,
            procs: Array::try_from(Map::Array(shared_map(ebpf, "UNWIND_PROCS")?))
                .map_err(|e| typed("UNWIND_PROCS", e))?,
            slots: aya::maps::HashMap::try_from(Map::HashMap(shared_map(
                ebpf,
                "UNWIND_PROC_SLOTS",
            )?))
            .map_err(|e| typed("UNWIND_PROC_SLOTS", e))?,
            generation: Array::try_from(Map::Array(shared_map(ebpf, "UNWIND_GENERATION")?))
                .map_err(|e| typed("UNWIND_GENERATION", e))?,
        })
    }

    /// Invalidates the kernel's cache of rows (after a table or a process's mappings changed).
    fn next_generation(&mut self) -> Result<(), UnwindError> {
        self.rows.generation = self.rows.generation.wrapping_add(1);
        self.generation
            .set(0, self.rows.generation, 0)
            .map_err(unwind_map_error("UNWIND_GENERATION"))
    }
}

impl UnwindMaps for KernelUnwindMaps {
    fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), UnwindError> {
        let end = first as usize + rows.len();
        if end > self.rows.rows as usize {
            return Err(UnwindError::NotMapped);
        }
        // SAFETY: `first..end` lies inside the mapped array (checked above); the mapping is
        // writable and `UnwindRow` is plain data with the array's 8-byte element size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr(),
                self.rows.ptr.add(first as usize),
                rows.len(),
            )
        };
        Ok(())
    }

    fn set_table(&mut self, id: u32, table: UnwindTable) -> Result<(), UnwindError> {
        self.tables
            .set(id, table, 0)
            .map_err(unwind_map_error("UNWIND_TABLES"))?;
        self.next_generation()
    }

    fn set_process(
        &mut self,
        pid: u32,
        slot: u32,
        mappings: &ProcMappings,
    ) -> Result<(), UnwindError> {
        self.procs
            .set(slot, mappings, 0)
            .map_err(unwind_map_error("UNWIND_PROCS"))?;
        self.slots
            .insert(pid, slot, 0)
            .map_err(unwind_map_error("UNWIND_PROC_SLOTS"))?;
        self.next_generation()
    }

    fn remove_process(&mut self, pid: u32) {
        // Absent already (the kernel drops it at exit and exec) is fine.
        let _ = self.slots.remove(&pid);
    }

    fn has_process(&self, pid: u32) -> bool {
        self.slots.get(&pid, 0).is_ok()
    }
}
