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
    /// Control group (`/proc/PID/cgroup`): the cgroup v2 path, on cgroup v1 hosts the memory
    /// controller's; empty when unknown. With `comm`, the identity `/metrics` keys series by.
    pub cgroup: String,
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
    /// What the external figures below stand on: `full` when the heap is traced from the
    /// process's start (live heap is the whole heap), `since-attach` when tracing began while the
    /// process ran (the heap it had before is unknown), none when the heap is not traced.
    pub external_basis: Option<ExternalBasis>,
    /// RSS minus live heap bytes; only on the `full` basis.
    pub external_bytes: Option<u64>,
    /// External bytes over live heap bytes; only on the `full` basis, with a non-empty heap.
    pub external_ratio: Option<f64>,
    /// Only on the `since-attach` basis: growth of RSS since tracing began that the growth of the
    /// live heap since then does not explain, in bytes (negative when the heap grew more). A lower
    /// bound of the external memory the process holds now.
    pub external_growth_bytes: Option<i64>,
    /// When the process started, milliseconds since the Unix epoch (from `/proc/PID/stat`).
    pub start_time_ms: Option<u64>,
    /// Container id (first 12 hex digits) from the process's cgroup; empty on the host.
    pub container: String,
    /// Bytes of memory the process runs into first: its cgroup's `memory.max`, or `MemTotal`.
    pub limit_bytes: Option<u64>,
    /// Per-library live bytes (filled by attribution where the heap is traced).
    pub libraries: Vec<LibrarySnapshot>,
}

/// The basis of a process's external memory figures (see [`ProcessSnapshot::external_basis`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExternalBasis {
    /// The heap is traced from the process's start: external = RSS - live heap.
    Full,
    /// The heap is traced since memtrace attached to the running process: only growth since then
    /// is known.
    SinceAttach,
}

impl ExternalBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::SinceAttach => "since-attach",
        }
    }
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
    /// Fills the external figures of a process whose heap is traced from its start (`full` basis):
    /// `external_bytes` and `external_ratio` from RSS and the live heap. Untraced: none.
    pub fn derive_external(&mut self) {
        self.external_growth_bytes = None;
        // Without an RSS reading (a process that exited before one) there is nothing to subtract from.
        if self.heap_traced && self.rss_bytes > 0 {
            let external = self.rss_bytes.saturating_sub(self.heap_live_bytes);
            self.external_basis = Some(ExternalBasis::Full);
            self.external_bytes = Some(external);
            self.external_ratio =
                (self.heap_live_bytes > 0).then(|| external as f64 / self.heap_live_bytes as f64);
        } else {
            self.external_basis = self.heap_traced.then_some(ExternalBasis::Full);
            self.external_bytes = None;
            self.external_ratio = None;
        }
    }

    /// Fills the external figures of a process whose heap is traced since memtrace attached to it
    /// (`since-attach` basis), given its RSS and live heap when tracing began: no external bytes or
    /// ratio (the heap from before is unknown), only `external_growth_bytes`.
    pub fn derive_external_since_attach(&mut self, rss_at_attach: u64, heap_at_attach: u64) {
        self.external_basis = Some(ExternalBasis::SinceAttach);
        self.external_bytes = None;
        self.external_ratio = None;
        self.external_growth_bytes = (self.heap_traced && self.rss_bytes > 0).then(|| {
            let rss = i128::from(self.rss_bytes) - i128::from(rss_at_attach);
            let heap = i128::from(self.heap_live_bytes) - i128::from(heap_at_attach);
            i64::try_from(rss - heap).unwrap_or(if rss > heap { i64::MAX } else { i64::MIN })
        });
    }

    /// Age of the process at `now_ms` (milliseconds since the Unix epoch), when its start is known.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        self.start_time_ms.map(|start| now_ms.saturating_sub(start))
    }
}
