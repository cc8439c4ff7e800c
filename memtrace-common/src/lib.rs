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
/// Stacks that could not be captured (stack map full or stack unreadable).
pub const COUNTER_STACK_FAILURES: u32 = 5;
pub const COUNTERS_LEN: u32 = 8;

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
    use super::{Event, InFlight, SyscallArgs};

    // SAFETY: `Event` is `repr(C)`, made only of integers, and has no padding (size asserted).
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SyscallArgs {}
}
