//! Memory limits a forecast can aim at: the cgroup v2 `memory.max` of a process, and `MemTotal`.
//! Reading never fails loudly: anything missing is `None`.

use crate::os::{cgroup, procfs};

/// The host's `MemTotal` in bytes.
pub fn mem_total() -> Option<u64> {
    procfs::meminfo()
        .ok()
        .map(|info| info.total)
        .filter(|&total| total > 0)
}

/// The limit a process's memory runs into first: its cgroup limit, or else `MemTotal`.
pub fn process_limit(pid: u32) -> Option<u64> {
    match (cgroup::cgroup_limit(pid), mem_total()) {
        (Some(cgroup), Some(total)) => Some(cgroup.min(total)),
        (cgroup, total) => cgroup.or(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_limits_do_not_panic() {
        if let Some(total) = mem_total() {
            assert!(total > 0);
        }
        let _ = process_limit(std::process::id());
    }
}
