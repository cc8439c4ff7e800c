//! memtrace: an eBPF host memory tracer. The modules follow an event from the kernel to a figure:
//! `probes` (load and attach) -> `events` (ring buffer, decoding) -> `accounting` (exact
//! per-process figures) -> `snapshot` (what is reported) -> `analysis` (growth patterns);
//! `session`, `trace` and `agent` drive them.

pub mod accounting;
pub mod agent;
pub mod alerts;
pub mod analysis;
pub mod attribution;
pub mod config;
pub mod events;
pub mod fuzzing;
pub mod http;
pub mod os;
pub mod probes;
pub mod reports;
pub mod service;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod trace;

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
