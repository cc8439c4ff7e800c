//! Uprobes on the malloc family. Entry probes keep the arguments by thread in `INFLIGHT`; one return
//! probe, attached to every function's return, sends the event once the result is known.
//!
//! glibc calls its own public entry points internally (`realloc(NULL, n)` calls `malloc`,
//! `memalign` with a small alignment calls `malloc`, `realloc(p, 0)` calls `free`), so a call that
//! starts while another allocator call of the same thread is in flight only bumps a depth counter:
//! the outer call accounts for it.
//!
//! C++ `operator new` has an entry probe only: it leaves its caller and stack in `INFLIGHT`
//! (`KIND_NEW_PENDING`), and the `malloc` it calls right away takes them over and accounts for the
//! allocation with its own return probe. One trap fewer per `new` than probing its return too.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use memtrace_common::{
    InFlight, COUNTER_INFLIGHT_FULL, COUNTER_NESTED, COUNTER_RETURN_WITHOUT_ENTRY,
    KIND_ALIGNED_ALLOC, KIND_CALLOC, KIND_FREE, KIND_MALLOC, KIND_MEMALIGN, KIND_NEW_PENDING,
    KIND_POSIX_MEMALIGN, KIND_PVALLOC, KIND_REALLOC, KIND_VALLOC,
};

use crate::{
    maps::{bump, current, emit, event, event_at, now, INFLIGHT},
    unwind,
};

/// An in-flight entry older than this belongs to a thread that died inside the allocator; its id
/// has been reused, so the entry is replaced rather than treated as an outer call.
const STALE_NS: u64 = 5_000_000_000;

/// An `operator new` entry not taken over by an allocator call within this long is ignored:
/// `operator new` calls `malloc` first thing, so anything later is another call.
const PENDING_NS: u64 = 10_000_000;

#[inline(always)]
fn caller(ctx: &ProbeContext) -> u64 {
    // SAFETY: at function entry the return address is the word at the stack pointer; the read goes
    // through bpf_probe_read_user and yields 0 on failure.
    unsafe {
        let sp = (*ctx.regs).rsp;
        bpf_probe_read_user(sp as *const u64).unwrap_or(0)
    }
}

/// What is in flight for this thread.
enum Outer {
    None,
    /// An allocator call: this call is nested in it.
    Call(*mut InFlight),
    /// An `operator new` waiting for its allocator call.
    New(*mut InFlight),
}

#[inline(always)]
fn outer(id: u64) -> Outer {
    let Some(outer) = INFLIGHT.get_ptr_mut(id) else {
        return Outer::None;
    };
    // SAFETY: the pointer comes from a successful lookup in a map only this thread writes for
    // this key.
    let (kind, ts) = unsafe { ((*outer).kind, (*outer).ts_ns) };
    let age = now().saturating_sub(ts);
    if kind == KIND_NEW_PENDING {
        if age > PENDING_NS {
            Outer::None
        } else {
            Outer::New(outer)
        }
    } else if age > STALE_NS {
        Outer::None
    } else {
        Outer::Call(outer)
    }
}

/// True when an outer allocator call of this thread is in flight (then this call is skipped). With
/// `has_return`, the outer call's depth counts this call until its return probe undoes it. A
/// pending `operator new` is not an allocator call.
#[inline(always)]
fn nested(id: u64, has_return: bool) -> bool {
    let Outer::Call(outer) = outer(id) else {
        return false;
    };
    if has_return {
        // SAFETY: as in `outer`.
        unsafe { (*outer).depth += 1 };
    }
    bump(COUNTER_NESTED);
    true
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u32, size: u64, old_addr: u64, old_size: u64) -> u32 {
    let Some(id) = current() else { return 0 };
    let (caller, stack_id) = match outer(id) {
        Outer::Call(outer) => {
            // SAFETY: as in `outer`.
            unsafe { (*outer).depth += 1 };
            bump(COUNTER_NESTED);
            return 0;
        }
        // The allocation `operator new` asked for: its caller and stack are the C++ code's.
        // SAFETY: as in `outer`.
        Outer::New(pending) => unsafe { ((*pending).caller, (*pending).stack_id) },
        // The caller is the return address, which the return probe finds in the instruction
        // pointer for free: no user memory read here.
        Outer::None => (0, unwind::from_uprobe(ctx.regs)),
    };
    let state = InFlight {
        kind,
        depth: 0,
        size,
        old_addr,
        old_size,
        caller,
        stack_id,
        ts_ns: now(),
    };
    if INFLIGHT.insert(id, state, 0).is_err() {
        bump(COUNTER_INFLIGHT_FULL);
    }
    0
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// C++ `operator new` (entry only): keeps its caller and stack for the allocator call it makes. An
/// `operator new` called from another (`new[]` jumps to `new`) leaves the outer one's.
#[uprobe]
pub fn new_enter(ctx: ProbeContext) -> u32 {
    let Some(id) = current() else { return 0 };
    if !matches!(outer(id), Outer::None) {
        return 0;
    }
    let state = InFlight {
        kind: KIND_NEW_PENDING,
        caller: caller(&ctx),
        stack_id: unwind::from_uprobe(ctx.regs),
        ts_ns: now(),
        ..InFlight::default()
    };
    if INFLIGHT.insert(id, state, 0).is_err() {
        bump(COUNTER_INFLIGHT_FULL);
    }
    0
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_MALLOC, arg(&ctx, 0), 0, 0)
}

/// `calloc(nmemb, size)`: `nmemb` travels in `size`, the element size in `old_size`; the agent
/// multiplies with an overflow check.
#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_CALLOC, arg(&ctx, 0), 0, arg(&ctx, 1))
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_REALLOC, arg(&ctx, 1), arg(&ctx, 0), 0)
}

/// `posix_memalign(memptr, alignment, size)`: the out-parameter is read at return.
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        KIND_POSIX_MEMALIGN,
        arg(&ctx, 2),
        arg(&ctx, 0),
        arg(&ctx, 1),
    )
}

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_ALIGNED_ALLOC, arg(&ctx, 1), 0, arg(&ctx, 0))
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_MEMALIGN, arg(&ctx, 1), 0, arg(&ctx, 0))
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_VALLOC, arg(&ctx, 0), 0, 0)
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, KIND_PVALLOC, arg(&ctx, 0), 0, 0)
}

/// `free` needs no return probe: the event is sent at entry, before the memory can be reused.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let ptr = arg(&ctx, 0);
    if ptr == 0 || nested(id, false) {
        return 0;
    }
    let mut ev = event(KIND_FREE, id);
    ev.old_addr = ptr;
    emit(&ev);
    0
}

/// The return probe of every allocating function.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(id) = current() else { return 0 };
    let Some(state) = INFLIGHT.get_ptr_mut(id) else {
        bump(COUNTER_RETURN_WITHOUT_ENTRY);
        return 0;
    };
    // SAFETY: the pointer comes from a successful lookup; only this thread uses this key.
    let state = unsafe {
        if (*state).kind == KIND_NEW_PENDING {
            // Not this call's entry: an `operator new` whose allocator call was not seen.
            bump(COUNTER_RETURN_WITHOUT_ENTRY);
            return 0;
        }
        if (*state).depth > 0 {
            (*state).depth -= 1;
            return 0;
        }
        *state
    };
    let _ = INFLIGHT.remove(id);
    let ret: u64 = ctx.ret();
    let mut ev = event_at(state.kind, id, state.ts_ns);
    ev.addr = match state.kind {
        KIND_POSIX_MEMALIGN => {
            if ret as u32 != 0 {
                return 0;
            }
            // SAFETY: user memory read through the helper; a failure sends nothing.
            match unsafe { bpf_probe_read_user(state.old_addr as *const u64) } {
                Ok(addr) => addr,
                Err(_) => return 0,
            }
        }
        _ => ret,
    };
    // A failed allocation changes nothing; `realloc` returning NULL is decided by the agent (it is
    // a free when the size was 0, a failure otherwise).
    if ev.addr == 0 && state.kind != KIND_REALLOC {
        return 0;
    }
    ev.size = state.size;
    ev.old_addr = if state.kind == KIND_POSIX_MEMALIGN {
        0
    } else {
        state.old_addr
    };
    ev.old_size = state.old_size;
    // At a return probe the kernel has put the original return address back in the instruction
    // pointer: that is the caller (unless `operator new`'s caller was kept at its entry).
    ev.caller = if state.caller != 0 {
        state.caller
    } else {
        // SAFETY: the context of a uretprobe is the user register frame.
        unsafe { (*ctx.regs).rip }
    };
    ev.stack_id = state.stack_id;
    emit(&ev);
    0
}
