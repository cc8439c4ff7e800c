//! The ABI between memtrace's eBPF programs and its agent.
//!
//! Everything here is `#[repr(C)]` with integer fields only, so that the kernel side writes and the
//! agent reads the same bytes. Kinds are plain `u32` constants; the agent converts them with
//! `TryFrom<u32>` and rejects unknown values instead of transmuting.
#![cfg_attr(target_arch = "bpf", no_std)]

use core::mem::size_of;

/// `malloc(size)` returned `addr`.
pub const KIND_MALLOC: u32 = 1;
/// `calloc(nmemb = size, elem = old_size)` returned `addr`.
pub const KIND_CALLOC: u32 = 2;
/// `realloc(old_addr, size)` returned `addr` (0 on failure or when `size` is 0).
pub const KIND_REALLOC: u32 = 3;
/// `free(old_addr)`.
pub const KIND_FREE: u32 = 4;
/// `posix_memalign(&addr, align = old_size, size)` returned 0 and stored `addr`.
pub const KIND_POSIX_MEMALIGN: u32 = 5;
/// `aligned_alloc(align = old_size, size)` returned `addr`.
pub const KIND_ALIGNED_ALLOC: u32 = 6;
/// `memalign(align = old_size, size)` returned `addr`.
pub const KIND_MEMALIGN: u32 = 7;
/// `valloc(size)` returned `addr`.
pub const KIND_VALLOC: u32 = 8;
/// `pvalloc(size)` returned `addr`.
pub const KIND_PVALLOC: u32 = 9;
/// `mmap(.., len = size, prot, flags, fd, ..)` returned `addr`.
pub const KIND_MMAP: u32 = 10;
/// `munmap(old_addr, size)` returned 0.
pub const KIND_MUNMAP: u32 = 11;
/// `mremap(old_addr, old_size, size, flags, ..)` returned `addr`.
pub const KIND_MREMAP: u32 = 12;
/// `brk(size)` returned the program break `addr` (a query when `size` is 0).
pub const KIND_BRK: u32 = 13;
/// The whole thread group exited.
pub const KIND_EXIT: u32 = 14;
/// The process called `execve`: its address space was replaced.
pub const KIND_EXEC: u32 = 15;
/// Not an event: an in-flight entry left by C++ `operator new`, which has no return probe. It holds
/// the C++ caller and stack until the allocator call that `operator new` makes takes it over.
pub const KIND_NEW_PENDING: u32 = 16;

/// `mmap` flag bits the agent needs (x86-64 and aarch64 values).
pub const MAP_SHARED: u32 = 0x01;
pub const MAP_ANONYMOUS: u32 = 0x20;
pub const MAP_FIXED: u32 = 0x10;

/// `mmap` protection bit of executable mappings (code of a loaded library).
pub const PROT_EXEC: u64 = 0x4;

/// Whether an `mmap` event (its `flags`, and its `aux`: protection in the high half) maps code from
/// a file: a library or program the unwinder needs the tables of.
#[inline(always)]
pub fn maps_file_code(flags: u32, aux: u64) -> bool {
    flags & MAP_ANONYMOUS == 0 && (aux >> 32) & PROT_EXEC != 0
}

/// Set in `Event::flags` of `mmap`, `mremap` and `brk` events made while an allocator call of the
/// same thread was in flight: memory the allocator maps for itself, accounted in the process's
/// mappings but not attributed as a direct mapping of the caller.
pub const FLAG_ALLOCATOR_INTERNAL: u32 = 1 << 31;

/// No stack was captured for the event.
pub const NO_STACK: i64 = -1;

/// One event from the kernel. The meaning of `addr`, `size`, `old_addr` and `old_size` depends on
/// `kind`; see the `KIND_*` constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `mmap` flags (low 32 bits), `mremap` flags.
    pub flags: u32,
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub old_size: u64,
    /// `mmap`: the file descriptor (`u64::MAX` for none); `mmap`/`mremap`: `prot` in the high half.
    pub aux: u64,
    /// The return address at uprobe entry (the allocator's immediate caller), read from the stack
    /// pointer: right even without frame pointers. 0 when not captured.
    pub caller: u64,
    /// Id in the `STACKS` map of the user stack at entry, or [`NO_STACK`].
    pub stack_id: i64,
}

pub const EVENT_SIZE: usize = 80;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

/// Indexes of the per-CPU `COUNTERS` array.
pub const COUNTER_RINGBUF_DROPS: u32 = 0;
/// An entry probe could not record its arguments (the in-flight map was full).
pub const COUNTER_INFLIGHT_FULL: u32 = 1;
/// A return probe found no entry state (attached mid-call, or the entry was dropped).
pub const COUNTER_RETURN_WITHOUT_ENTRY: u32 = 2;
/// Events submitted to the ring buffer.
pub const COUNTER_EVENTS: u32 = 3;
/// Allocator calls nested in another allocator call of the same thread (skipped: the outer call
/// accounts for them).
pub const COUNTER_NESTED: u32 = 4;
/// Stacks that could not be stored (the stack map was full).
pub const COUNTER_STACK_FAILURES: u32 = 5;
/// Stacks cut at the depth limit while frames remained.
pub const COUNTER_UNWIND_TRUNCATED: u32 = 6;
/// Stacks cut because a read of the user stack failed (bad or paged-out address).
pub const COUNTER_UNWIND_READ_FAILED: u32 = 7;
/// Frames unwound with the frame pointer because their code has no unwind table loaded (JIT code,
/// objects without CFI, processes whose tables are not registered).
pub const COUNTER_UNWIND_FP_FRAMES: u32 = 8;
/// Frames unwound with the frame pointer because their table has no row for the address (a gap
/// between FDEs).
pub const COUNTER_UNWIND_NO_ROW: u32 = 9;
/// Frames unwound with the frame pointer because their CFI rule is not supported (DWARF
/// expressions other than the PLT's).
pub const COUNTER_UNWIND_UNSUPPORTED: u32 = 10;
/// Frames unwound with the frame pointer because their table was evicted (over the memory cap).
pub const COUNTER_UNWIND_EVICTED: u32 = 11;
/// Stacks of processes with no mapping table (frame pointers only).
pub const COUNTER_UNWIND_NO_PROCESS: u32 = 12;
/// Stacks cut because the next frame was implausible (null or non-increasing frame pointer or
/// stack pointer).
pub const COUNTER_UNWIND_BAD_FRAME: u32 = 13;
pub const COUNTERS_LEN: u32 = 16;

/// Most frames the kernel unwinder records per stack (the configured depth is at most this).
pub const UNWIND_MAX_FRAMES: usize = 64;
/// Most executable mappings with an unwind table per process (a power of two: binary search).
pub const UNWIND_MAX_MAPPINGS: usize = 256;
/// Most rows in one object's table (2^22: the kernel's binary search runs 22 steps).
pub const UNWIND_MAX_TABLE_ROWS: u32 = 1 << 22;
/// Binary search steps over one table's rows.
pub const UNWIND_ROW_SEARCH_STEPS: u32 = 22;
/// A mapping whose object has no table loaded.
pub const UNWIND_NO_TABLE: u32 = u32::MAX;

/// No unwind information at this address (a gap between FDEs, or the end of an FDE).
pub const ROW_UNDEFINED: u8 = 0;
/// CFA = rsp + `cfa_offset`.
pub const ROW_CFA_RSP: u8 = 1;
/// CFA = rbp + `cfa_offset`.
pub const ROW_CFA_RBP: u8 = 2;
/// The return address is undefined: the outermost frame (`_start`, a thread's start).
pub const ROW_END: u8 = 3;
/// A rule the kernel does not evaluate (a DWARF expression, a register other than rsp/rbp).
pub const ROW_UNSUPPORTED: u8 = 4;
/// The PLT's expression: CFA = rsp + 8, + 8 more once `(rip & 15) >= cfa_offset`.
pub const ROW_PLT: u8 = 5;

/// One row of a compact unwind table: from `pc` (an address of the object's ELF virtual address
/// space) up to the next row's `pc`, how to find the canonical frame address (CFA) and the
/// caller's rbp. The return address is always at CFA - 8 (x86-64 ABI). 8 bytes: an array map
/// rounds values up to 8 bytes anyway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_offset: i16,
    /// Where the caller's rbp was saved, relative to the CFA, in units of 8 bytes; 0: rbp is
    /// unchanged.
    pub rbp_offset: i8,
    /// `ROW_*`.
    pub kind: u8,
}

const _: () = assert!(size_of::<UnwindRow>() == 8);

/// Where one object's rows sit in the row array. `count` 0: not loaded (evicted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    pub first: u32,
    pub count: u32,
}

const _: () = assert!(size_of::<UnwindTable>() == 8);

/// One executable mapping of a process: `[start, end)` at run time, `bias` = run-time address -
/// ELF virtual address, and the object's table id (or [`UNWIND_NO_TABLE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<UnwindMapping>() == 32);

/// The executable mappings of one process, sorted by `start`, the first `count` valid.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcMappings {
    pub count: u32,
    pub _pad: u32,
    pub entries: [UnwindMapping; UNWIND_MAX_MAPPINGS],
}

const _: () = assert!(size_of::<ProcMappings>() == 8 + 32 * UNWIND_MAX_MAPPINGS);

impl Default for ProcMappings {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            entries: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        }
    }
}

/// A user stack unwound in the kernel: `len` program counters, innermost first (the first is the
/// instruction pointer at the probe, the others return addresses). Stored by hash; events carry
/// the hash as their stack id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    pub len: u32,
    pub _pad: u32,
    pub pcs: [u64; UNWIND_MAX_FRAMES],
}

const _: () = assert!(size_of::<StackTrace>() == 8 + 8 * UNWIND_MAX_FRAMES);

/// Per-CPU scratch state of one unwind (too large for the BPF stack).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnwindState {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    pub hash: u64,
    pub tgid: u32,
    /// The process's slot in the mapping tables, or `u32::MAX`.
    pub slot: u32,
    /// The `COUNTER_*` that ended the walk early, or 0.
    pub stop: u32,
    pub depth: u32,
    /// `UNWIND_GENERATION` when the walk started.
    pub generation: u32,
    pub _pad: u32,
    /// The user address `window` holds, `UNWIND_WINDOW`-aligned, or 1 (none) at a walk's start.
    pub window_base: u64,
    /// A copy of the `UNWIND_WINDOW` bytes of user stack at `window_base`: one read serves every
    /// frame in it.
    pub window: [u64; UNWIND_WINDOW / 8],
    pub trace: StackTrace,
}

/// Bytes of user stack the unwinder copies at once: a power of two that divides the page size, so
/// an aligned window lies in one page and reads whole whenever any word of it can be read.
pub const UNWIND_WINDOW: usize = 2048;
const _: () = assert!(UNWIND_WINDOW.is_power_of_two() && 4096 % UNWIND_WINDOW == 0);

const _: () = assert!(size_of::<UnwindState>() == 64 + UNWIND_WINDOW + size_of::<StackTrace>());

/// Slots of the per-CPU cache of rows found (a power of two).
pub const UNWIND_CACHE_SLOTS: u32 = 4096;

/// A row the unwinder found for `pc` of process `tgid`, valid while the agent's table generation
/// (bumped at every table or mapping change) is `generation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindCacheEntry {
    pub pc: u64,
    pub tgid: u32,
    pub generation: u32,
    pub row: UnwindRow,
}

const _: () = assert!(size_of::<UnwindCacheEntry>() == 24);

/// Entry arguments of an allocator call, kept until its return probe. Keyed by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlight {
    pub kind: u32,
    /// Allocator calls entered while this one is in flight (glibc's `realloc(NULL, n)` calls
    /// `malloc`, `memalign` with a small alignment calls `malloc`, ...).
    pub depth: u32,
    pub size: u64,
    pub old_addr: u64,
    pub old_size: u64,
    pub caller: u64,
    pub stack_id: i64,
    pub ts_ns: u64,
}

const _: () = assert!(size_of::<InFlight>() == 56);

/// Arguments of a syscall kept from `sys_enter_*` to `sys_exit_*`. Keyed by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallArgs {
    pub kind: u32,
    pub flags: u32,
    pub addr: u64,
    pub len: u64,
    pub old_len: u64,
    pub aux: u64,
}

const _: () = assert!(size_of::<SyscallArgs>() == 40);

#[cfg(feature = "user")]
mod user {
    use super::{
        Event, InFlight, ProcMappings, StackTrace, SyscallArgs, UnwindCacheEntry, UnwindMapping,
        UnwindRow, UnwindState, UnwindTable,
    };

    // SAFETY: `Event` is `repr(C)`, made only of integers, and has no padding (size asserted).
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SyscallArgs {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindTable {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindMapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProcMappings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTrace {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindCacheEntry {}
}
