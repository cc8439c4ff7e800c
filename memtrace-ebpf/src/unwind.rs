//! The user-stack unwinder: walks a stack with the compact CFI tables the agent loads
//! (`UNWIND_ROWS`, `UNWIND_TABLES`, the process's `UNWIND_PROCS` slot), falling back to the frame
//! pointer where an address has no table (JIT code, objects without CFI, processes without a
//! slot). The program counters are hashed as they are found and stored once in `STACK_TRACES`,
//! keyed by that hash; events carry the hash as their stack id.
//!
//! Work is bounded: at most `UNWIND_DEPTH` frames (`bpf_loop`, so the verifier checks one step),
//! each a binary search of at most 8 steps over the process's mappings and 22 over one table.
//! Every walk cut short is counted by reason (`COUNTER_UNWIND_*`).

use aya_ebpf::{
    bindings::{pt_regs, BPF_NOEXIST},
    helpers::{
        bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs, generated,
    },
};
use memtrace_common::{
    UnwindRow, UnwindState, COUNTER_STACK_FAILURES, COUNTER_UNWIND_BAD_FRAME,
    COUNTER_UNWIND_EVICTED, COUNTER_UNWIND_FP_FRAMES, COUNTER_UNWIND_NO_PROCESS,
    COUNTER_UNWIND_NO_ROW, COUNTER_UNWIND_READ_FAILED, COUNTER_UNWIND_TRUNCATED,
    COUNTER_UNWIND_UNSUPPORTED, NO_STACK, ROW_CFA_RBP, ROW_CFA_RSP, ROW_END, ROW_PLT,
    UNWIND_MAX_FRAMES, UNWIND_MAX_MAPPINGS, UNWIND_NO_TABLE, UNWIND_ROW_SEARCH_STEPS,
    UNWIND_WINDOW,
};

use crate::maps::{
    bump, CAPTURE_STACKS, STACK_TRACES, UNWIND_CACHE, UNWIND_DEPTH, UNWIND_GENERATION,
    UNWIND_PROCS, UNWIND_PROC_SLOTS, UNWIND_ROWS, UNWIND_SCRATCH, UNWIND_TABLES,
};

/// `UnwindState::slot` of a process without a mapping table.
const NO_SLOT: u32 = u32::MAX;
/// Binary search steps over a process's mappings (log2 of `UNWIND_MAX_MAPPINGS`).
const MAPPING_SEARCH_STEPS: u32 = 8;
const _: () = assert!(1 << MAPPING_SEARCH_STEPS == UNWIND_MAX_MAPPINGS);

/// `UnwindState::window_base` when the window holds nothing (no aligned address is odd).
const NO_WINDOW: u64 = 1;

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The stack of the current thread from a uprobe's registers (the probed function's entry).
#[inline(always)]
pub fn from_uprobe(regs: *const pt_regs) -> i64 {
    // SAFETY: `regs` is the uprobe context's register frame, valid for the program's run.
    let (pc, sp, bp) = unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) };
    unwind(pc, sp, bp)
}

/// The stack of the current thread from its user registers at syscall entry (tracepoints).
#[inline(always)]
pub fn from_syscall() -> i64 {
    // SAFETY: the helpers return the current task and its user register frame; each field is
    // read with bpf_probe_read_kernel and a failure gives up.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        if regs.is_null() {
            bump(COUNTER_UNWIND_READ_FAILED);
            return NO_STACK;
        }
        let (Ok(pc), Ok(sp), Ok(bp)) = (
            bpf_probe_read_kernel(&raw const (*regs).rip),
            bpf_probe_read_kernel(&raw const (*regs).rsp),
            bpf_probe_read_kernel(&raw const (*regs).rbp),
        ) else {
            bump(COUNTER_UNWIND_READ_FAILED);
            return NO_STACK;
        };
        unwind(pc, sp, bp)
    }
}

#[inline(always)]
fn unwind(pc: u64, sp: u64, bp: u64) -> i64 {
    if CAPTURE_STACKS.load() == 0 {
        return NO_STACK;
    }
    let Some(state) = UNWIND_SCRATCH.get_ptr_mut(0) else {
        return NO_STACK;
    };
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let slot = match UNWIND_PROC_SLOTS.get_ptr(tgid) {
        // SAFETY: pointer from a successful lookup; a u32 read.
        Some(slot) => unsafe { *slot },
        None => {
            bump(COUNTER_UNWIND_NO_PROCESS);
            NO_SLOT
        }
    };
    let depth = UNWIND_DEPTH.load().min(UNWIND_MAX_FRAMES as u32);
    // SAFETY: `state` is this CPU's scratch slot; programs do not nest on one CPU for these hook
    // types (uprobes and syscall tracepoints run with preemption disabled).
    unsafe {
        (*state).pc = pc;
        (*state).sp = sp;
        (*state).bp = bp;
        (*state).hash = FNV_OFFSET;
        (*state).tgid = tgid;
        (*state).slot = slot;
        (*state).stop = 0;
        (*state).depth = depth;
        (*state).generation = UNWIND_GENERATION.get(0).copied().unwrap_or(0);
        (*state).window_base = NO_WINDOW;
        (*state).trace.len = 0;
        // The callback's context must be on the stack: it finds the scratch slot itself.
        let mut unused = 0u64;
        bpf_loop(depth, step as *mut _, (&raw mut unused).cast(), 0);
        if (*state).stop != 0 {
            bump((*state).stop);
        }
        if (*state).trace.len == 0 {
            return NO_STACK;
        }
        let id = (*state).hash >> 1;
        // By reference: the trace is far larger than the BPF stack's 512 bytes.
        #[allow(clippy::needless_borrows_for_generic_args)]
        match STACK_TRACES.insert(id, &(*state).trace, u64::from(BPF_NOEXIST)) {
            Ok(()) => id as i64,
            // EEXIST: the same stack is stored already.
            Err(-17) => id as i64,
            Err(_) => {
                bump(COUNTER_STACK_FAILURES);
                NO_STACK
            }
        }
    }
}

/// Why a frame could not use a table.
enum Lookup {
    Row(UnwindRow),
    /// No mapping with a table covers the address (JIT code, no CFI): counted per frame.
    NoTable,
    Evicted,
    NoRow,
}

/// One frame: records `state.pc` and finds the caller's registers. Returns 1 to stop.
extern "C" fn step(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(state) = UNWIND_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let state: *mut UnwindState = state;
    let i = index as usize;
    if i >= UNWIND_MAX_FRAMES {
        return 1;
    }
    // SAFETY: `state` is this CPU's scratch slot, set up by `unwind` before the loop.
    unsafe {
        let pc = (*state).pc;
        if pc == 0 {
            return 1;
        }
        (*state).trace.pcs[i] = pc;
        (*state).trace.len = (i + 1) as u32;
        (*state).hash = ((*state).hash ^ pc).wrapping_mul(FNV_PRIME);
        if i + 1 >= (*state).depth as usize {
            (*state).stop = COUNTER_UNWIND_TRUNCATED;
            return 1;
        }
        // A return address points after its call: look the call itself up.
        let lookup = if i == 0 { pc } else { pc - 1 };
        let found = if (*state).slot == NO_SLOT {
            Lookup::NoTable
        } else {
            cached_find(&*state, lookup)
        };
        let sp = (*state).sp;
        let (next_pc, next_sp, next_bp) = match found {
            Lookup::Row(row) if row.kind == ROW_END => return 1,
            Lookup::Row(row)
                if row.kind == ROW_CFA_RSP || row.kind == ROW_CFA_RBP || row.kind == ROW_PLT =>
            {
                let cfa = if row.kind == ROW_CFA_RBP {
                    (*state).bp.wrapping_add(row.cfa_offset as i64 as u64)
                } else if row.kind == ROW_PLT {
                    let extra = if (pc & 15) >= row.cfa_offset as u64 {
                        8
                    } else {
                        0
                    };
                    sp + 8 + extra
                } else {
                    sp.wrapping_add(row.cfa_offset as i64 as u64)
                };
                let Ok(ra) = read_stack(state, cfa - 8) else {
                    (*state).stop = COUNTER_UNWIND_READ_FAILED;
                    return 1;
                };
                let bp = if row.rbp_offset != 0 {
                    match read_stack(state, cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64)) {
                        Ok(bp) => bp,
                        Err(()) => {
                            (*state).stop = COUNTER_UNWIND_READ_FAILED;
                            return 1;
                        }
                    }
                } else {
                    (*state).bp
                };
                (ra, cfa, bp)
            }
            other => {
                let reason = match other {
                    Lookup::Evicted => COUNTER_UNWIND_EVICTED,
                    Lookup::NoRow => COUNTER_UNWIND_NO_ROW,
                    Lookup::Row(_) => COUNTER_UNWIND_UNSUPPORTED,
                    Lookup::NoTable => COUNTER_UNWIND_FP_FRAMES,
                };
                if (*state).slot != NO_SLOT {
                    bump(reason);
                }
                match frame_pointer(state, i, sp, (*state).bp) {
                    Ok(Some(next)) => next,
                    Ok(None) => return 1,
                    Err(reason) => {
                        (*state).stop = reason;
                        return 1;
                    }
                }
            }
        };
        if next_sp <= sp {
            (*state).stop = COUNTER_UNWIND_BAD_FRAME;
            return 1;
        }
        (*state).pc = next_pc;
        (*state).sp = next_sp;
        (*state).bp = next_bp;
    }
    0
}

/// One frame-pointer step. The first frame is at a function's entry (a uprobe) or in a leaf
/// syscall wrapper: its return address is at the stack pointer and rbp is still the caller's.
/// Above it, rbp points at the saved rbp with the return address above that. `Ok(None)`: the
/// chain ends (rbp 0).
#[inline(always)]
fn frame_pointer(
    state: *mut UnwindState,
    i: usize,
    sp: u64,
    bp: u64,
) -> Result<Option<(u64, u64, u64)>, u32> {
    if i == 0 {
        let ra = read_stack(state, sp).map_err(|()| COUNTER_UNWIND_READ_FAILED)?;
        return Ok(Some((ra, sp + 8, bp)));
    }
    if bp == 0 {
        return Ok(None);
    }
    if bp < sp {
        return Err(COUNTER_UNWIND_BAD_FRAME);
    }
    let saved = read_stack(state, bp).map_err(|()| COUNTER_UNWIND_READ_FAILED)?;
    let ra = read_stack(state, bp + 8).map_err(|()| COUNTER_UNWIND_READ_FAILED)?;
    Ok(Some((ra, bp + 16, saved)))
}

/// The user word at `addr`, through the walk's window on the stack: a frame's words are mostly in
/// the window the frame below it loaded, so most frames read no user memory at all. A window that
/// cannot be read (and an unaligned address) falls back to reading the one word.
#[inline(always)]
fn read_stack(state: *mut UnwindState, addr: u64) -> Result<u64, ()> {
    const WINDOW: u64 = UNWIND_WINDOW as u64;
    let base = addr & !(WINDOW - 1);
    // SAFETY: `state` is this CPU's scratch slot; user memory is read through the helper and
    // every index into the window is masked into it.
    unsafe {
        if addr & 7 == 0 {
            if (*state).window_base != base {
                let window = (&raw mut (*state).window).cast::<core::ffi::c_void>();
                if generated::bpf_probe_read_user(window, WINDOW as u32, base as *const _) == 0 {
                    (*state).window_base = base;
                } else {
                    (*state).window_base = NO_WINDOW;
                }
            }
            if (*state).window_base == base {
                let index = ((addr - base) / 8) as usize & (UNWIND_WINDOW / 8 - 1);
                return Ok((*state).window[index]);
            }
        }
        bpf_probe_read_user(addr as *const u64).map_err(|_| ())
    }
}

/// `find` through the per-CPU cache of rows.
#[inline(always)]
fn cached_find(state: &UnwindState, pc: u64) -> Lookup {
    let index = ((pc ^ (pc >> 12) ^ u64::from(state.tgid)) as u32)
        & (memtrace_common::UNWIND_CACHE_SLOTS - 1);
    let entry = UNWIND_CACHE.get_ptr_mut(index);
    if let Some(entry) = entry {
        // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on one CPU here.
        let hit = unsafe {
            (*entry).pc == pc
                && (*entry).tgid == state.tgid
                && (*entry).generation == state.generation
        };
        if hit {
            // SAFETY: as above.
            return Lookup::Row(unsafe { (*entry).row });
        }
    }
    let found = find(state.slot, pc);
    if let (Some(entry), Lookup::Row(row)) = (entry, &found) {
        // SAFETY: as above.
        unsafe {
            (*entry).pc = pc;
            (*entry).tgid = state.tgid;
            (*entry).generation = state.generation;
            (*entry).row = *row;
        }
    }
    found
}

/// The row for `pc` of the process in `slot`.
#[inline(always)]
fn find(slot: u32, pc: u64) -> Lookup {
    let Some(procs) = UNWIND_PROCS.get_ptr(slot) else {
        return Lookup::NoTable;
    };
    // SAFETY: `procs` is a map value; every entry index is masked into the array.
    let mapping = unsafe {
        let count = (*procs).count.min(UNWIND_MAX_MAPPINGS as u32);
        if count == 0 {
            return Lookup::NoTable;
        }
        // Last mapping whose start is <= pc.
        let mut lo = 0u32;
        let mut n = count;
        for _ in 0..MAPPING_SEARCH_STEPS {
            if n <= 1 {
                break;
            }
            let half = n / 2;
            let mid = lo + half;
            if (*procs).entries[(mid as usize) & (UNWIND_MAX_MAPPINGS - 1)].start <= pc {
                lo = mid;
            }
            n -= half;
        }
        (*procs).entries[(lo as usize) & (UNWIND_MAX_MAPPINGS - 1)]
    };
    if pc < mapping.start || pc >= mapping.end || mapping.table == UNWIND_NO_TABLE {
        return Lookup::NoTable;
    }
    let Some(table) = UNWIND_TABLES.get(mapping.table) else {
        return Lookup::NoTable;
    };
    if table.count == 0 {
        return Lookup::Evicted;
    }
    let rel = pc.wrapping_sub(mapping.bias);
    if rel > u64::from(u32::MAX) {
        return Lookup::NoRow;
    }
    let rel = rel as u32;
    let mut lo = table.first;
    let mut n = table.count;
    for _ in 0..UNWIND_ROW_SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        let mid = lo + half;
        match UNWIND_ROWS.get(mid) {
            Some(row) if row.pc <= rel => lo = mid,
            Some(_) => {}
            None => return Lookup::NoRow,
        }
        n -= half;
    }
    match UNWIND_ROWS.get(lo) {
        Some(row) if row.pc <= rel && row.kind != memtrace_common::ROW_UNDEFINED => {
            Lookup::Row(*row)
        }
        _ => Lookup::NoRow,
    }
}
