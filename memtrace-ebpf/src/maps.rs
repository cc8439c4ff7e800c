//! Maps, load-time configuration and the helpers every hook shares.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use memtrace_common::{
    Event, InFlight, ProcMappings, StackTrace, SyscallArgs, UnwindCacheEntry, UnwindRow,
    UnwindState, UnwindTable, COUNTERS_LEN, UNWIND_CACHE_SLOTS, UNWIND_MAX_FRAMES,
};

/// The agent's own process id: it is never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: Global<u32> = Global::new(0);

/// 1 to capture a user stack id with each allocator call and each `mmap`.
#[unsafe(no_mangle)]
pub static CAPTURE_STACKS: Global<u32> = Global::new(1);

/// The reader is woken only once this many bytes wait in the ring buffer (it also drains on a
/// short timer): a wake-up per event would cost two context switches per allocation.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: Global<u64> = Global::new(256 * 1024);

/// Every event goes through this ring buffer. Its size is set by the agent at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU counters indexed by `memtrace_common::COUNTER_*`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Allocator calls between entry and return, by thread. Sized by the agent at load time.
#[map]
pub static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(16384, 0);

/// Syscall arguments between `sys_enter_*` and `sys_exit_*`, by thread.
#[map]
pub static SYSCALLS: LruHashMap<u64, SyscallArgs> = LruHashMap::with_max_entries(16384, 0);

/// Processes whose heap is traced: only their `mmap`/`mremap`/`brk` events carry a user stack (a stack
/// walk for every mapping on the host would be wasted: attribution is for traced processes). Key 0
/// stands for every process (host-wide malloc tracing). Filled by the agent.
#[map]
pub static STACK_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Processes stopped (SIGSTOP) whenever they map code, until the agent has loaded its unwind
/// tables and continues them (`memtrace trace -- CMD`: the command's first stacks are whole).
/// Filled by the agent.
#[map]
pub static GATED: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// Frames the unwinder records at most (at most `UNWIND_MAX_FRAMES`).
#[unsafe(no_mangle)]
pub static UNWIND_DEPTH: Global<u32> = Global::new(UNWIND_MAX_FRAMES as u32);

/// Deduplicated user stacks by hash; events carry the hash as their stack id. Sized by the agent.
#[map]
pub static STACK_TRACES: HashMap<u64, StackTrace> = HashMap::with_max_entries(16384, 0);

/// Every loaded object's unwind rows, each object's rows contiguous and sorted. Sized by the
/// agent from its table memory cap; the agent places and evicts tables, writing rows through a
/// shared mapping of the array (`BPF_F_MMAPABLE`).
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> =
    Array::with_max_entries(1, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Where each table id's rows are in `UNWIND_ROWS` (count 0: not loaded).
#[map]
pub static UNWIND_TABLES: Array<UnwindTable> = Array::with_max_entries(4096, 0);

/// Executable mappings of registered processes, one slot each.
#[map]
pub static UNWIND_PROCS: Array<ProcMappings> = Array::with_max_entries(256, 0);

/// A registered process's slot in `UNWIND_PROCS`, by tgid. Removed by the kernel at exit and exec.
#[map]
pub static UNWIND_PROC_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// Rows found recently, per CPU, by program counter and process: stacks repeat, and a hit saves
/// the two binary searches.
#[map]
pub static UNWIND_CACHE: PerCpuArray<UnwindCacheEntry> =
    PerCpuArray::with_max_entries(UNWIND_CACHE_SLOTS, 0);

/// Bumped by the agent whenever a table or a process's mappings change: cached rows of an older
/// generation are not used.
#[map]
pub static UNWIND_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Scratch state of the unwinder, per CPU.
#[map]
pub static UNWIND_SCRATCH: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a per-CPU counter and returns its new value (0 when the counter is missing).
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup and only this CPU writes
        // its slot; the program runs with preemption disabled.
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    }
}

/// Current `pid_tgid`, or `None` for the agent itself.
#[inline(always)]
pub fn current() -> Option<u64> {
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == SELF_TGID.load() {
        None
    } else {
        Some(id)
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Builds the common part of an event.
#[inline(always)]
pub fn event(kind: u32, id: u64) -> Event {
    event_at(kind, id, now())
}

/// Builds the common part of an event that happened at `ts_ns`.
#[inline(always)]
pub fn event_at(kind: u32, id: u64, ts_ns: u64) -> Event {
    Event {
        kind,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        ts_ns,
        stack_id: memtrace_common::NO_STACK,
        ..Event::default()
    }
}

/// The fill level of the ring buffer is looked at once in this many events (per CPU): a helper
/// call per event for a figure that moves by 88 bytes.
const WAKEUP_CHECK_EVERY: u64 = 32;

/// Sends an event to the agent, counting it, or counting the drop when the ring buffer is full.
#[inline(always)]
pub fn emit(event: &Event) {
    submit(event, false);
}

/// [`emit`] for an event that maps code in process `tgid` (an exec, an executable file mapping): a
/// gated process is woken for at once and stopped until the agent continues it. It is only
/// stopped when the event is in the ring buffer (the agent continues every process it sees such an
/// event of).
#[inline(always)]
pub fn emit_code_event(event: &Event, tgid: u32) {
    // SAFETY: a lookup in a map the agent fills; the value is not used.
    let gated = unsafe { GATED.get(tgid) }.is_some();
    if submit(event, gated) && gated {
        // SAFETY: signals the current process (the one mapping code), as the helper's contract
        // says.
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGSTOP) };
    }
}

/// Puts `event` in the ring buffer, waking the agent at once when `wake`, else when the buffer
/// fills up; counts it or its drop. Whether it went in.
#[inline(always)]
fn submit(event: &Event, wake: bool) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        bump(memtrace_common::COUNTER_RINGBUF_DROPS);
        return false;
    };
    entry.write(*event);
    let sent = bump(memtrace_common::COUNTER_EVENTS);
    let flags = if wake
        || (sent.is_multiple_of(WAKEUP_CHECK_EVERY)
            && EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA))
                >= WAKEUP_BYTES.load())
    {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP
    } else {
        aya_ebpf::bindings::BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    true
}

const SIGSTOP: u32 = 19;

/// In a syscall tracepoint: the return address at the user stack pointer, i.e. the caller of the
/// libc syscall wrapper (a leaf that pushes nothing before `syscall`). Frame-pointer stacks start
/// one frame above it, so this is what attributes a direct `mmap` to the function that made it.
#[inline(always)]
pub fn syscall_caller() -> u64 {
    // SAFETY: the helpers return the current task and its user register frame; both reads go
    // through probe-read helpers and yield 0 on failure.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            return 0;
        }
        let sp = bpf_probe_read_kernel(&raw const (*regs).rsp).unwrap_or(0);
        if sp == 0 {
            return 0;
        }
        bpf_probe_read_user(sp as *const u64).unwrap_or(0)
    }
}
