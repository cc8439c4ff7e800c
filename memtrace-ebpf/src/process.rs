//! Process lifetime: the agent drops a process's state when its thread group dies and resets it when
//! the process replaces its address space with `execve`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use memtrace_common::{KIND_EXEC, KIND_EXIT};

use crate::maps::{current, emit, emit_code_event, event, INFLIGHT, UNWIND_PROC_SLOTS};

// name: sched_process_exit
// field:char comm[16];    offset:8;  size:16; signed:0;
// field:pid_t pid;        offset:24; size:4;  signed:1;
// field:int prio;         offset:28; size:4;  signed:1;
// field:bool group_dead;  offset:32; size:1;  signed:0;
const EXIT_GROUP_DEAD: usize = 32;

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    // A thread that dies inside an allocator call leaves its entry behind: drop it.
    let _ = INFLIGHT.remove(id);
    // SAFETY: offset from the tracepoint's format above; a failed read reads as "not dead".
    let group_dead = unsafe { ctx.read_at::<u8>(EXIT_GROUP_DEAD) }.unwrap_or(0);
    if group_dead != 0 {
        // The process's mapping table dies with it (absent already is fine).
        let _ = UNWIND_PROC_SLOTS.remove((id >> 32) as u32);
        emit(&event(KIND_EXIT, id));
    }
    0
}

// name: sched_process_exec
// field:__data_loc char[] filename; offset:8;  size:4; signed:0;
// field:pid_t pid;                  offset:12; size:4; signed:1;
// field:pid_t old_pid;              offset:16; size:4; signed:1;
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some(id) = current() else { return 0 };
    // The old address space's mapping table no longer applies; the agent registers the new one.
    let _ = UNWIND_PROC_SLOTS.remove((id >> 32) as u32);
    emit_code_event(&event(KIND_EXEC, id), (id >> 32) as u32);
    0
}
