pub mod alerts;
pub mod config;
pub mod snapshot;
pub mod store;

/// The eBPF object, built by build.rs.
pub static EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));
