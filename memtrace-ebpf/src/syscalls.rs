//! Host-wide tracepoints on the memory-mapping syscalls. Arguments are kept at `sys_enter_*` and the
//! event is sent at `sys_exit_*` with the result, so that failed calls are never accounted.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memtrace_common::{
    maps_file_code, SyscallArgs, FLAG_ALLOCATOR_INTERNAL, KIND_BRK, KIND_MMAP, KIND_MREMAP,
    KIND_MUNMAP,
};

use crate::{
    maps::{current, emit, emit_code_event, event, syscall_caller, INFLIGHT, STACK_PIDS, SYSCALLS},
    unwind,
};

/// Offset of the first syscall argument in every `syscalls:sys_enter_*` record, and of `ret` in
/// every `syscalls:sys_exit_*` record (after the common header and `int __syscall_nr`).
const ARG0: usize = 16;
const RET: usize = 16;

/// Largest errno a syscall returns as `-errno`.
const MAX_ERRNO: i64 = 4095;

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the offsets are those of the tracepoint's `format` (see the comments on each hook);
    // `read_at` copies with bpf_probe_read_kernel and fails cleanly on a bad offset.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> Option<u64> {
    // SAFETY: as in `arg`.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.ok()?;
    if (-MAX_ERRNO..0).contains(&ret) {
        None
    } else {
        Some(ret as u64)
    }
}

/// Marks an event made inside an allocator call of this thread (the allocator mapping memory for
/// itself); otherwise records who made it.
#[inline(always)]
fn attribute(id: u64, ev: &mut memtrace_common::Event) {
    // SAFETY: the pointer comes from a successful lookup; only this thread writes this key.
    let in_allocator = INFLIGHT
        .get_ptr(id)
        .is_some_and(|state| unsafe { (*state).kind } != memtrace_common::KIND_NEW_PENDING);
    if in_allocator {
        ev.flags |= FLAG_ALLOCATOR_INTERNAL;
    } else {
        if STACK_PIDS.get_ptr(0u32).is_some() || STACK_PIDS.get_ptr((id >> 32) as u32).is_some() {
            ev.stack_id = unwind::from_syscall();
        }
        ev.caller = syscall_caller();
    }
}

#[inline(always)]
fn keep(id: u64, args: SyscallArgs) {
    // A full map only loses this call: the exit probe then finds nothing and sends nothing.
    let _ = SYSCALLS.insert(id, args, 0);
}

#[inline(always)]
fn take(id: u64, kind: u32) -> Option<SyscallArgs> {
    // SAFETY: the value is copied out before the entry is removed.
    let args = unsafe { SYSCALLS.get(id) }.copied();
    let _ = SYSCALLS.remove(id);
    args.filter(|args| args.kind == kind)
}

// name: sys_enter_mmap
// field:unsigned long addr;   offset:16; size:8; signed:0;
// field:unsigned long len;    offset:24; size:8; signed:0;
// field:unsigned long prot;   offset:32; size:8; signed:0;
// field:unsigned long flags;  offset:40; size:8; signed:0;
// field:unsigned long fd;     offset:48; size:8; signed:0;
// field:unsigned long off;    offset:56; size:8; signed:0;
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    keep(
        id,
        SyscallArgs {
            kind: KIND_MMAP,
            flags: arg(&ctx, 3) as u32,
            addr: arg(&ctx, 0),
            len: arg(&ctx, 1),
            old_len: 0,
            // fd in the low half, prot in the high half.
            aux: (arg(&ctx, 4) & 0xffff_ffff) | (arg(&ctx, 2) << 32),
        },
    );
    0
}

// name: sys_exit_mmap
// field:long ret; offset:16; size:8; signed:1;
#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let Some(args) = take(id, KIND_MMAP) else {
        return 0;
    };
    let Some(addr) = ret(&ctx) else { return 0 };
    let mut ev = event(KIND_MMAP, id);
    ev.addr = addr;
    ev.size = args.len;
    ev.flags = args.flags;
    ev.aux = args.aux;
    attribute(id, &mut ev);
    if maps_file_code(args.flags, args.aux) {
        emit_code_event(&ev, (id >> 32) as u32);
    } else {
        emit(&ev);
    }
    0
}

// name: sys_enter_munmap
// field:unsigned long addr; offset:16; size:8; signed:0;
// field:size_t len;         offset:24; size:8; signed:0;
#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    keep(
        id,
        SyscallArgs {
            kind: KIND_MUNMAP,
            addr: arg(&ctx, 0),
            len: arg(&ctx, 1),
            ..SyscallArgs::default()
        },
    );
    0
}

// name: sys_exit_munmap
// field:long ret; offset:16; size:8; signed:1;
#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let Some(args) = take(id, KIND_MUNMAP) else {
        return 0;
    };
    if ret(&ctx).is_none() {
        return 0;
    }
    let mut ev = event(KIND_MUNMAP, id);
    ev.old_addr = args.addr;
    ev.size = args.len;
    emit(&ev);
    0
}

// name: sys_enter_mremap
// field:unsigned long addr;     offset:16; size:8; signed:0;
// field:unsigned long old_len;  offset:24; size:8; signed:0;
// field:unsigned long new_len;  offset:32; size:8; signed:0;
// field:unsigned long flags;    offset:40; size:8; signed:0;
// field:unsigned long new_addr; offset:48; size:8; signed:0;
#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    keep(
        id,
        SyscallArgs {
            kind: KIND_MREMAP,
            flags: arg(&ctx, 3) as u32,
            addr: arg(&ctx, 0),
            old_len: arg(&ctx, 1),
            len: arg(&ctx, 2),
            aux: 0,
        },
    );
    0
}

// name: sys_exit_mremap
// field:long ret; offset:16; size:8; signed:1;
#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let Some(args) = take(id, KIND_MREMAP) else {
        return 0;
    };
    let Some(addr) = ret(&ctx) else { return 0 };
    let mut ev = event(KIND_MREMAP, id);
    ev.addr = addr;
    ev.size = args.len;
    ev.old_addr = args.addr;
    ev.old_size = args.old_len;
    ev.flags = args.flags;
    attribute(id, &mut ev);
    emit(&ev);
    0
}

// name: sys_exit_brk (brk returns the new program break, or the old one when it fails: either way
// the current break, so no entry state is needed)
// field:long ret; offset:16; size:8; signed:1;
#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let Some(addr) = ret(&ctx) else { return 0 };
    let mut ev = event(KIND_BRK, id);
    ev.addr = addr;
    attribute(id, &mut ev);
    emit(&ev);
    0
}
