//! memtrace: an eBPF host memory tracer. The modules follow an event from the kernel to a figure,
//! in this order:
//!
//! 1. `probes`: load the eBPF object, attach tracepoints host-wide and the malloc family per process;
//! 2. `events`: decode what the kernel puts in the ring buffer;
//! 3. `accounting`: exact per-process figures (heap, mappings, brk, call sites), with RSS from `os`;
//! 4. `snapshot`: the figures as reported;
//! 5. `attribution`: call sites symbolized into consumers and library roll-ups;
//! 6. `analysis`: growth patterns over the snapshot history;
//! 7. `alerts`: thresholds and patterns become alerts, delivered to channels;
//! 8. `store`: the data directory;
//! 9. `api`: the typed answers; `http` serves them, `reports` renders them.
//!
//! `agent` runs stages 1-3 in its intake thread and 4-8 in its core thread; `session` and `trace`
//! drive the same stages synchronously for `memtrace trace`. `os` holds what is read from the
//! operating system (`/proc`, cgroups, clocks, launching a command); `config` the settings.

pub mod os;

pub mod probes;

pub mod events;

pub mod accounting;

pub mod snapshot;

pub mod attribution;

pub mod analysis;

pub mod alerts;

pub mod store;

pub mod api;

pub mod agent;
pub mod config;
pub mod fuzzing;
pub mod http;
pub mod reports;
pub mod session;
pub mod trace;
pub mod unwind;

/// An error and its sources on one line (`a: b: c`), for logs and messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The eBPF object, built by build.rs.
pub static EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));
