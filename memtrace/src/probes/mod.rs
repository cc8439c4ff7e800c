//! Loading the eBPF object and attaching its programs: the host-wide syscall and process
//! tracepoints at load, and the malloc-family uprobes per process (or host-wide on request).

use std::{collections::HashMap, ffi::CString, io, num::NonZeroU32, path::Path};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        ProgramError, TracePoint, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use memtrace_common::COUNTERS_LEN;

use self::{
    elf::{ElfCode, FunctionCode},
    placement::{Placement, Signature},
};
use crate::os::procfs;

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
    #[error("reading map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Sizes and switches fixed at load time.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (a power of two multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Allocator calls in flight at once (entries of the in-flight map).
    pub inflight_entries: u32,
    /// Distinct user stacks kept (entries of the stack map).
    pub stack_entries: u32,
    pub capture_stacks: bool,
    /// Bytes waiting in the ring buffer before the reader is woken (it also drains on a timer).
    pub wakeup_bytes: u64,
    /// Put every entry probe on its function's first instruction instead of the first one the
    /// kernel emulates (see `placement`).
    pub entry_probes: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 << 20,
            inflight_entries: 16384,
            stack_entries: 8192,
            capture_stacks: true,
            wakeup_bytes: 256 << 10,
            entry_probes: false,
        }
    }
}

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
    /// Entry probes stay on the entry (`ProbeOptions::entry_probes`).
    entry_probes: bool,
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
                    .min(u64::from(options.ring_buffer_bytes) / 4),
                true,
            )
            .map_max_entries("EVENTS", options.ring_buffer_bytes)
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
        for function in &ALLOCATOR {
            load_uprobe(&mut ebpf, function.entry)?;
        }
        load_uprobe(&mut ebpf, RETURN_PROGRAM)?;
        load_uprobe(&mut ebpf, NEW_PROGRAM)?;
        Ok(Self {
            ebpf,
            _tracefs: tracefs,
            links: HashMap::new(),
            stats: None,
            entry_probes: options.entry_probes,
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
        let entry_probes = self.entry_probes;
        let result = (|| {
            let code = Code::read(&target.path, entry_probes);
            for function in &ALLOCATOR {
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
            if let Some(cxx) = &target.cxx {
                let code = Code::read(cxx, entry_probes);
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
            detach_link(&mut self.ebpf, program, link);
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
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(ProbeError::Missing("COUNTERS"))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|source| ProbeError::Map {
            name: "COUNTERS",
            source,
        })?;
        let mut out = [0u64; COUNTERS_LEN as usize];
        for (index, slot) in out.iter_mut().enumerate() {
            let values = array
                .get(&(index as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// The stack map, to resolve the stack ids that events carry.
    pub fn stacks(&self) -> Result<StackTraceMap<&MapData>, ProbeError> {
        let map = self
            .ebpf
            .map("STACKS")
            .ok_or(ProbeError::Missing("STACKS"))?;
        StackTraceMap::try_from(map).map_err(|source| ProbeError::Map {
            name: "STACKS",
            source,
        })
    }
}

/// The functions of one object, with their code when placement looks at it.
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
    let attached = (|| {
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
pub struct KernelStacks<'a>(pub StackTraceMap<&'a MapData>);

impl crate::attribution::StackSource for KernelStacks<'_> {
    fn frames(&mut self, stack_id: i64) -> Option<Vec<u64>> {
        let id = u32::try_from(stack_id).ok()?;
        let stack = self.0.get(&id, 0).ok()?;
        Some(stack.frames().iter().map(|frame| frame.ip).collect())
    }
}

impl Probes {
    /// Run time (ns) and run count of each program, from `/proc/self/fdinfo` (non-zero only while
    /// BPF statistics are enabled: `--bpf-stats` or `kernel.bpf_stats_enabled=1`).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
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
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let id = program.info().ok()?.id();
                let (time, count) = by_id.get(&id).copied().unwrap_or((0, 0));
                Some((name.to_string(), time, count))
            })
            .collect()
    }

    /// Turns on the kernel's BPF run-time statistics for as long as this value lives.
    pub fn enable_stats(&mut self) -> Result<(), ProbeError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|err| ProbeError::Stats(io::Error::other(err.to_string())))?;
        self.stats = Some(fd);
        Ok(())
    }
}
