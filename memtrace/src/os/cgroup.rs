//! Control groups (v2): the cgroup of a process, the memory limit it runs under (`memory.max` of
//! its cgroup and ancestors) and the container it belongs to. Reading never fails loudly: anything
//! missing or unparsable is `None` (or empty). The parsing is in pure functions over the text.

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

/// The cgroup of a process from the text of `/proc/PID/cgroup`, as one path: the cgroup v2 path
/// (`0::/path`) where there is one, else (cgroup v1 only) the `memory` controller's path, else the
/// first line's. `None` for text without any `id:controllers:path` line.
pub fn parse_cgroup_path(proc_pid_cgroup: &str) -> Option<&str> {
    if let Some(path) = parse_cgroup_v2_path(proc_pid_cgroup) {
        return Some(path);
    }
    let lines = proc_pid_cgroup.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some((controllers, path.trim()))
    });
    let mut first = None;
    for (controllers, path) in lines {
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path);
        }
        first.get_or_insert(path);
    }
    first
}

/// A `memory.max` value in bytes; `None` for `max` (no limit) or anything unparsable.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok()
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

/// What memtrace keeps of a process's cgroup: its path, the container it belongs to and its
/// memory limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The cgroup (see [`parse_cgroup_path`]), or "".
    pub path: String,
    /// Container id (first 12 hex digits), or "" on the host.
    pub container: String,
    /// The smallest `memory.max` of the cgroup (v2) and its ancestors; `None` when unlimited.
    pub limit: Option<u64>,
}

/// Cgroup, container and memory limit of a process, from one read of `/proc/PID/cgroup` and the
/// `memory.max` files of its cgroup (v2). `None` when the process's cgroup file cannot be read.
pub fn cgroup_info(pid: u32) -> Option<CgroupInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let limit = parse_cgroup_v2_path(&text)
        .and_then(|path| cgroup_dirs(Path::new(CGROUP_ROOT), path))
        .and_then(|dirs| {
            dirs.iter()
                .filter_map(|dir| std::fs::read_to_string(dir.join("memory.max")).ok())
                .filter_map(|text| parse_memory_max(&text))
                .min()
        });
    Some(CgroupInfo {
        path: parse_cgroup_path(&text).unwrap_or_default().to_string(),
        container: container_from_cgroup(&text),
        limit,
    })
}

/// Container id of a process from its cgroup path (docker, containerd, cri-o, podman), or "".
pub fn container_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    container_from_cgroup(&text)
}

/// The first 12 hex digits of a 64-digit container id in the text of `/proc/PID/cgroup`, or "".
pub fn container_from_cgroup(text: &str) -> String {
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for part in path.split('/').rev() {
            let id = part
                .trim_end_matches(".scope")
                .rsplit(['-', ':'])
                .next()
                .unwrap_or("");
            if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                return id[..12].to_string();
            }
        }
    }
    String::new()
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
    fn cgroup_path_prefers_v2_then_the_memory_controller() {
        let hybrid = "12:memory:/docker/abc\n1:name=systemd:/user.slice\n0::/user.slice/s.scope\n";
        assert_eq!(parse_cgroup_path(hybrid), Some("/user.slice/s.scope"));
        let v1 = "5:cpu,cpuacct:/docker/x\n4:memory:/docker/abc\n1:name=systemd:/docker/y\n";
        assert_eq!(parse_cgroup_path(v1), Some("/docker/abc"));
        assert_eq!(parse_cgroup_path("3:cpu:/a\n2:pids:/b\n"), Some("/a"));
        assert_eq!(parse_cgroup_path(""), None);
        assert_eq!(parse_cgroup_path("garbage\n"), None);
    }

    #[test]
    fn cgroup_info_of_this_process_has_its_path() {
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let info = cgroup_info(std::process::id()).expect("readable");
        assert_eq!(Some(info.path.as_str()), parse_cgroup_path(&own));
        assert!(info.path.starts_with('/'), "{:?}", info.path);
        assert!(cgroup_info(u32::MAX).is_none());
    }

    #[test]
    fn parses_memory_max() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory_max(""), None);
        assert_eq!(parse_memory_max("garbage"), None);
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
    fn container_ids_from_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            container_from_cgroup(&format!("0::/system.slice/docker-{id}.scope\n")),
            "0123456789ab"
        );
        assert_eq!(
            container_from_cgroup(&format!(
                "0::/kubepods/besteffort/pod1/cri-containerd-{id}.scope\n"
            )),
            "0123456789ab"
        );
        assert_eq!(
            container_from_cgroup(&format!("0::/kubepods/pod1/{id}\n")),
            "0123456789ab"
        );
        assert_eq!(
            container_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            ""
        );
    }

    #[test]
    fn live_limit_does_not_panic() {
        let _ = cgroup_limit(std::process::id());
        let _ = cgroup_limit(u32::MAX);
        assert!(cgroup_info(std::process::id()).is_some());
        assert_eq!(cgroup_info(u32::MAX), None);
        assert_eq!(
            cgroup_info(std::process::id()).map(|i| i.limit),
            Some(cgroup_limit(std::process::id()))
        );
    }
}
