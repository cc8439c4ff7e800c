//! Memory limits a forecast can aim at: the cgroup v2 `memory.max` of a process, and `MemTotal`.
//! Reading never fails loudly: anything missing or unparsable is `None`. The parsing is in pure
//! functions over the files' text.

use std::path::{Component, Path, PathBuf};

/// Where cgroup v2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup v2 path of a process from the text of `/proc/PID/cgroup`: the line `0::/path`.
/// `None` without such a line (cgroup v1 only).
pub fn parse_cgroup_v2_path(proc_pid_cgroup: &str) -> Option<&str> {
    proc_pid_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
}

/// A `memory.max` value in bytes; `None` for `max` (no limit) or anything unparsable.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok()
}

/// `MemTotal` in bytes from the text of `/proc/meminfo` (`MemTotal:  16318412 kB`).
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let rest = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut fields = rest.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The directories whose `memory.max` bound a cgroup: the cgroup's own and its ancestors', below
/// the root (which has no `memory.max`). `None` for paths that are not plain absolute paths.
pub fn cgroup_dirs(root: &Path, cgroup_path: &str) -> Option<Vec<PathBuf>> {
    let mut dir = root.to_path_buf();
    let mut dirs = Vec::new();
    for component in Path::new(cgroup_path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => {
                dir.push(part);
                dirs.push(dir.clone());
            }
            _ => return None,
        }
    }
    Some(dirs)
}

/// The memory limit of a process's cgroup (v2): the smallest `memory.max` of its cgroup and its
/// ancestors, since any of them caps it. `None` when unlimited, not cgroup v2, or unreadable.
pub fn cgroup_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = parse_cgroup_v2_path(&text)?;
    cgroup_dirs(Path::new(CGROUP_ROOT), path)?
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("memory.max")).ok())
        .filter_map(|text| parse_memory_max(&text))
        .min()
}

/// The host's `MemTotal` in bytes.
pub fn mem_total() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The limit a process's memory runs into first: its cgroup limit, or else `MemTotal`.
pub fn process_limit(pid: u32) -> Option<u64> {
    match (cgroup_limit(pid), mem_total()) {
        (Some(cgroup), Some(total)) => Some(cgroup.min(total)),
        (cgroup, total) => cgroup.or(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_v2_line() {
        let v2 = "0::/system.slice/memtrace.service\n";
        assert_eq!(
            parse_cgroup_v2_path(v2),
            Some("/system.slice/memtrace.service")
        );
        let hybrid =
            "12:memory:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/session-2.scope\n";
        assert_eq!(
            parse_cgroup_v2_path(hybrid),
            Some("/user.slice/session-2.scope")
        );
        assert_eq!(parse_cgroup_v2_path("4:memory:/docker/abc\n"), None);
        assert_eq!(parse_cgroup_v2_path(""), None);
    }

    #[test]
    fn parses_memory_max() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory_max(""), None);
        assert_eq!(parse_memory_max("garbage"), None);
    }

    #[test]
    fn parses_mem_total() {
        let meminfo = "MemTotal:       16318412 kB\nMemFree:         1234567 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(16_318_412 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn cgroup_dirs_walk_ancestors_and_refuse_dotdot() {
        let dirs = cgroup_dirs(Path::new("/sys/fs/cgroup"), "/a.slice/b.service").unwrap();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/a.slice"),
                PathBuf::from("/sys/fs/cgroup/a.slice/b.service"),
            ]
        );
        assert_eq!(
            cgroup_dirs(Path::new("/sys/fs/cgroup"), "/").unwrap().len(),
            0
        );
        assert!(cgroup_dirs(Path::new("/sys/fs/cgroup"), "/../etc").is_none());
    }

    #[test]
    fn live_limits_do_not_panic() {
        // Whatever the machine offers, these return a value or None.
        let _ = cgroup_limit(std::process::id());
        let _ = cgroup_limit(u32::MAX);
        if let Some(total) = mem_total() {
            assert!(total > 0);
        }
        let _ = process_limit(std::process::id());
    }
}
