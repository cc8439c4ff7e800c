//! Loading the eBPF object and attaching its programs: the host-wide syscall and process
//! tracepoints at load, and the malloc-family uprobes per process (or host-wide on request).

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    num::NonZeroU32,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        ProgramError, TracePoint, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use memtrace_common::COUNTERS_LEN;

use crate::os::procfs;

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

/// Allocator functions: (symbol, entry program, has a return probe, required).
const ALLOCATOR: [(&str, &str, bool, bool); 9] = [
    ("malloc", "malloc_enter", true, true),
    ("calloc", "calloc_enter", true, true),
    ("realloc", "realloc_enter", true, true),
    ("free", "free_enter", false, true),
    ("posix_memalign", "posix_memalign_enter", true, true),
    ("aligned_alloc", "aligned_alloc_enter", true, true),
    ("memalign", "memalign_enter", true, true),
    ("valloc", "valloc_enter", true, false),
    ("pvalloc", "pvalloc_enter", true, false),
];

const RETURN_PROGRAM: &str = "alloc_return";

/// C++ `operator new` variants in libstdc++ (all take the size first). Probing them records the
/// C++ caller exactly, even though libstdc++ has no frame pointers; the `malloc` they call is
/// nested and skipped.
const CXX_NEW: [&str; 6] = [
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
];

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
    #[error("attaching a uprobe to {symbol} in {}", library.display())]
    Uprobe {
        symbol: &'static str,
        library: PathBuf,
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
    #[error("reading map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Sizes and switches fixed at load time: the `[probes]` section of the configuration.
pub type ProbeOptions = crate::config::ProbesConfig;

/// Unmounts tracefs on drop when memtrace mounted it.
struct TracefsMount {
    mounted_here: bool,
}

impl TracefsMount {
    fn ensure() -> Result<Self, ProbeError> {
        let path = Path::new(TRACEFS);
        let populated = path
            .read_dir()
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if populated {
            return Ok(Self {
                mounted_here: false,
            });
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
        log::info!("tracefs was not mounted: mounted it at {TRACEFS} (it is unmounted on exit)");
        Ok(Self { mounted_here: true })
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.mounted_here {
            if let Ok(target) = CString::new(TRACEFS) {
                // SAFETY: valid NUL-terminated path. MNT_DETACH: users of the mount keep it until done.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
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
    _tracefs: TracefsMount,
    links: HashMap<Option<u32>, Vec<(&'static str, UProbeLinkId)>>,
    /// Keeps the kernel's BPF statistics on while held (closing it turns them off).
    stats: Option<std::os::fd::OwnedFd>,
}

/// What attaching the malloc family did.
#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<&'static str>,
    /// Optional functions the allocator does not have.
    pub missing: Vec<&'static str>,
}

impl Probes {
    /// Loads the object with the given options, never tracing this process, and attaches the
    /// host-wide tracepoints.
    pub fn load(options: &ProbeOptions) -> Result<Self, ProbeError> {
        let tracefs = TracefsMount::ensure()?;
        raise_memlock();
        let self_tgid = std::process::id();
        let capture = u32::from(options.capture_stacks);
        let mut ebpf = EbpfLoader::new()
            .override_global("SELF_TGID", &self_tgid, true)
            .override_global("CAPTURE_STACKS", &capture, true)
            .override_global(
                "WAKEUP_BYTES",
                &options
                    .wakeup_bytes
                    .min(u64::from(options.ring_buffer_bytes()) / 4),
                true,
            )
            .map_max_entries("EVENTS", options.ring_buffer_bytes())
            .map_max_entries("INFLIGHT", options.inflight_entries)
            .map_max_entries("STACKS", options.stack_entries)
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
        for (_, name, _, _) in ALLOCATOR {
            load_uprobe(&mut ebpf, name)?;
        }
        load_uprobe(&mut ebpf, RETURN_PROGRAM)?;
        Ok(Self {
            ebpf,
            _tracefs: tracefs,
            links: HashMap::new(),
            stats: None,
        })
    }

    /// Attaches the malloc family of `target`, scoped to its process (or host-wide when `pid` is
    /// `None`). Optional functions that are absent are reported, not fatal.
    pub fn attach_allocator(
        &mut self,
        target: &AllocatorTarget,
    ) -> Result<AttachReport, ProbeError> {
        if target.pid == Some(std::process::id()) {
            return Err(ProbeError::SelfTrace(std::process::id()));
        }
        let scope = match target.pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        self.detach_allocator(target.pid);
        let mut report = AttachReport::default();
        let mut links = Vec::new();
        let result = (|| {
            for (symbol, entry, has_return, required) in ALLOCATOR {
                match attach_uprobe(&mut self.ebpf, entry, symbol, &target.path, scope) {
                    Ok(link) => links.push((entry, link)),
                    Err(err) if !required => {
                        log::warn!("{err}: skipping the optional {symbol}");
                        report.missing.push(symbol);
                        continue;
                    }
                    Err(err) => return Err(err),
                }
                if has_return {
                    let link =
                        attach_uprobe(&mut self.ebpf, RETURN_PROGRAM, symbol, &target.path, scope)?;
                    links.push((RETURN_PROGRAM, link));
                }
                report.attached.push(symbol);
            }
            if let Some(cxx) = &target.cxx {
                for symbol in CXX_NEW {
                    match attach_uprobe(&mut self.ebpf, "malloc_enter", symbol, cxx, scope) {
                        Ok(link) => links.push(("malloc_enter", link)),
                        Err(err) => {
                            log::debug!("{symbol} in {}: {err}", cxx.display());
                            continue;
                        }
                    }
                    match attach_uprobe(&mut self.ebpf, RETURN_PROGRAM, symbol, cxx, scope) {
                        Ok(link) => links.push((RETURN_PROGRAM, link)),
                        Err(err) => {
                            log::warn!("return probe of {symbol} in {}: {err}", cxx.display())
                        }
                    }
                    report.attached.push(symbol);
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

    /// Marks (or unmarks) a process whose syscall events carry user stacks (key 0: all).
    fn set_stack_pid(&mut self, pid: Option<u32>, on: bool) {
        let key = pid.unwrap_or(0);
        let result = self
            .ebpf
            .map_mut("STACK_PIDS")
            .ok_or(ProbeError::Missing("STACK_PIDS"))
            .and_then(|map| {
                let mut map =
                    aya::maps::HashMap::<_, u32, u8>::try_from(map).map_err(|source| {
                        ProbeError::Map {
                            name: "STACK_PIDS",
                            source,
                        }
                    })?;
                if on {
                    map.insert(key, 1, 0).map_err(|source| ProbeError::Map {
                        name: "STACK_PIDS",
                        source,
                    })
                } else {
                    // Absent already is fine.
                    let _ = map.remove(&key);
                    Ok(())
                }
            });
        if let Err(err) = result {
            log::warn!("stacks of pid {key}'s mappings: {err}");
        }
    }

    /// Detaches the malloc family of `pid` (`None`: the host-wide attachment). Returns whether
    /// anything was attached.
    pub fn detach_allocator(&mut self, pid: Option<u32>) -> bool {
        self.set_stack_pid(pid, false);
        let Some(links) = self.links.remove(&pid) else {
            return false;
        };
        for (program, link) in links {
            if let Some(Ok(uprobe)) = self.ebpf.program_mut(program).map(<&mut UProbe>::try_from) {
                if let Err(err) = uprobe.detach(link) {
                    log::debug!("detaching {program}: {err}");
                }
            }
        }
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
        let map = StackTraceMap::try_from(Map::StackTraceMap(self.shared_map("STACKS")?)).map_err(
            |source| ProbeError::Map {
                name: "STACKS",
                source,
            },
        )?;
        Ok(KernelStacks(map))
    }

    /// A second handle on one of the object's maps: the same kernel map, its own descriptor.
    fn shared_map(&self, name: &'static str) -> Result<MapData, ProbeError> {
        let map = self.ebpf.map(name).ok_or(ProbeError::Missing(name))?;
        let data = match map {
            Map::PerCpuArray(data) | Map::StackTraceMap(data) => data,
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

/// Attaches the loaded uprobe `program` to `symbol` in the object at `path`.
fn attach_uprobe(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
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
    uprobe
        .attach(symbol, path, scope)
        .map_err(|source| ProbeError::Uprobe {
            symbol,
            library: path.to_path_buf(),
            source,
        })
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

/// Human names of the kernel counters, for reports and metrics.
pub const COUNTER_NAMES: [&str; 6] = [
    "ring_buffer_full",
    "inflight_map_full",
    "return_without_entry",
    "events",
    "nested_allocator_calls",
    "stack_failures",
];

/// The kernel's stack map as a source of stacks for attribution.
pub struct KernelStacks(StackTraceMap<MapData>);

impl crate::attribution::StackSource for KernelStacks {
    fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>> {
        let id = u32::try_from(stack_id).ok()?;
        let stack = self.0.get(&id, 0).ok()?;
        Some(stack.frames().iter().map(|frame| frame.ip).collect())
    }
}
