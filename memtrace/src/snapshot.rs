//! The figures memtrace reports, as they appear in its JSON (API, data files, `--json`). Field names
//! are camelCase like the origin monitor's.

use serde::{Deserialize, Serialize};

/// Memory of one process at one instant. Byte counts are exact at the time of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProcessSnapshot {
    pub pid: u32,
    /// Command name (`/proc/PID/comm`).
    pub comm: String,
    /// Resident set size and its parts, from the kernel (`/proc/PID/status`).
    pub rss_bytes: u64,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    pub rss_shmem_bytes: u64,
    pub swap_bytes: u64,
    /// True when malloc-family calls of this process are traced, so the heap figures are known.
    pub heap_traced: bool,
    /// Live bytes (requested sizes) of allocations made while traced and not yet freed.
    pub heap_live_bytes: u64,
    pub heap_live_count: u64,
    pub heap_peak_bytes: u64,
    pub heap_total_allocs: u64,
    pub heap_total_frees: u64,
    /// Frees of pointers the tracer never saw allocated (allocated before tracing started).
    pub heap_unknown_frees: u64,
    /// Live bytes of anonymous and of file-backed mappings made with `mmap`/`mremap`.
    pub mapped_anon_bytes: u64,
    pub mapped_file_bytes: u64,
    /// Extent of the program break above its start (`brk - start_brk`).
    pub brk_bytes: u64,
    /// RSS minus live heap bytes, where the heap is traced.
    pub external_bytes: Option<u64>,
    /// External bytes over live heap bytes, where the heap is traced and not empty.
    pub external_ratio: Option<f64>,
    /// Per-library live bytes (filled by attribution where the heap is traced).
    pub libraries: Vec<LibrarySnapshot>,
}

/// Live memory one library (mapped object) asked for, through the allocator or mapped directly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LibrarySnapshot {
    pub library: String,
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub calls: u64,
}

/// One snapshot of the host: one line of `snapshots_YYYY-MM-DD.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostSnapshot {
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    pub processes: Vec<ProcessSnapshot>,
}

impl ProcessSnapshot {
    /// Fills `external_bytes` and `external_ratio` from RSS and the live heap.
    pub fn derive_external(&mut self) {
        // Without an RSS reading (a process that exited before one) there is nothing to subtract from.
        if self.heap_traced && self.rss_bytes > 0 {
            let external = self.rss_bytes.saturating_sub(self.heap_live_bytes);
            self.external_bytes = Some(external);
            self.external_ratio =
                (self.heap_live_bytes > 0).then(|| external as f64 / self.heap_live_bytes as f64);
        } else {
            self.external_bytes = None;
            self.external_ratio = None;
        }
    }
}
