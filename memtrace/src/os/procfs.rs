//! What the kernel already counts, read from `/proc`: RSS and its parts, swap, the start of the
//! program break, process start times (to tell a reused PID from the process it replaced) and the
//! mappings a process had before memtrace saw it.
//!
//! Parsers take `&str` so they are tested on sample text; readers add the file I/O.

use std::{fs, io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: unexpected format ({what})")]
    Format { path: PathBuf, what: &'static str },
}

fn read(path: PathBuf) -> Result<String, ProcfsError> {
    fs::read_to_string(&path).map_err(|source| ProcfsError::Read { path, source })
}

/// Memory figures of `/proc/PID/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub swap: u64,
    /// Kernel threads have no memory figures at all.
    pub has_mm: bool,
}

pub fn parse_status(text: &str) -> Status {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let field = match key {
            "VmRSS" => &mut status.rss,
            "RssAnon" => &mut status.rss_anon,
            "RssFile" => &mut status.rss_file,
            "RssShmem" => &mut status.rss_shmem,
            "VmSwap" => &mut status.swap,
            _ => continue,
        };
        let kb = value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        *field = kb.saturating_mul(1024);
        if key == "VmRSS" {
            status.has_mm = true;
        }
    }
    status
}

pub fn status(pid: u32) -> Result<Status, ProcfsError> {
    read(PathBuf::from(format!("/proc/{pid}/status"))).map(|text| parse_status(&text))
}

/// Fields of `/proc/PID/stat` memtrace needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// Start time after boot, in clock ticks (field 22): with the PID, identifies a process.
    pub start_time: u64,
    /// Address above which the program break grows (field 47).
    pub start_brk: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the command name start at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        comm,
        start_time: field(22)?,
        start_brk: field(47).unwrap_or(0),
    })
}

pub fn stat(pid: u32) -> Result<Stat, ProcfsError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = read(path.clone())?;
    parse_stat(&text).ok_or(ProcfsError::Format {
        path,
        what: "stat fields",
    })
}

/// Whether `pid` is still the process seen as `comm` at `seen_ms` (milliseconds since the Unix
/// epoch): it exists, is not a zombie, has that command name (an empty `comm` matches any), and
/// started no later than `seen_ms` (a later start is another process that got the PID). Used to
/// resolve restored alerts about processes that are gone.
pub fn process_alive_since(pid: u32, comm: &str, seen_ms: u64) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(stat) = parse_stat(&text) else {
        return false;
    };
    let zombie = text
        .rfind(')')
        .and_then(|close| text.get(close + 1..)?.split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X" | "x"));
    if zombie || (!comm.is_empty() && stat.comm != comm) {
        return false;
    }
    started_at_ms(stat.start_time)
        .is_none_or(|start| start <= seen_ms.saturating_add(START_SLACK_MS))
}

/// Tolerance of [`process_alive_since`] on start times: clock ticks and the boot time derived from
/// two clocks read one after the other.
const START_SLACK_MS: u64 = 1000;

/// Wall time (ms since the Unix epoch) of a start time in clock ticks after boot (`/proc/PID/stat`
/// field 22), `None` if the clocks cannot be read.
pub fn started_at_ms(start_ticks: u64) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&hz| hz > 0)?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let since_boot_ms = u64::try_from(ts.tv_sec).ok()?.saturating_mul(1000)
        + u64::try_from(ts.tv_nsec).ok()? / 1_000_000;
    let boot_ms = crate::os::clock::now_ms().checked_sub(since_boot_ms)?;
    Some(boot_ms.saturating_add(start_ticks.saturating_mul(1000) / hz))
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, ...); empty for anonymous mappings.
    pub path: String,
}

impl MapLine {
    /// Mappings the kernel or the loader made that are not `mmap` calls of the program: the heap
    /// (counted as brk), stacks and the vDSO.
    pub fn is_special(&self) -> bool {
        self.path.starts_with('[') && !self.path.starts_with("[anon")
    }

    pub fn is_file(&self) -> bool {
        self.inode != 0
    }
}

pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(6, ' ');
            let (start, end) = parts.next()?.split_once('-')?;
            let _perms = parts.next()?;
            let offset = parts.next()?;
            let _dev = parts.next()?;
            let inode = parts.next()?;
            let path = parts.next().unwrap_or("").trim().to_string();
            Some(MapLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                inode: inode.parse().ok()?,
                path,
            })
        })
        .collect()
}

pub fn maps(pid: u32) -> Result<Vec<MapLine>, ProcfsError> {
    read(PathBuf::from(format!("/proc/{pid}/maps"))).map(|text| parse_maps(&text))
}

/// Host memory from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let bytes = value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            * 1024;
        match key {
            "MemTotal" => info.total = bytes,
            "MemAvailable" => info.available = bytes,
            _ => {}
        }
    }
    info
}

pub fn meminfo() -> Result<MemInfo, ProcfsError> {
    read(PathBuf::from("/proc/meminfo")).map(|text| parse_meminfo(&text))
}

/// Process ids currently in `/proc`.
pub fn pids() -> Result<Vec<u32>, ProcfsError> {
    let entries = fs::read_dir("/proc").map_err(|source| ProcfsError::Read {
        path: PathBuf::from("/proc"),
        source,
    })?;
    Ok(entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect())
}

/// What memtrace itself costs: CPU time, memory, and the kernel memory of its BPF maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfCost {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Sum of `memlock` of this process's BPF map descriptors (`/proc/self/fdinfo`).
    pub bpf_map_bytes: u64,
    /// Resident bytes of the BPF maps mapped into this process (the ring buffer, mapped twice,
    /// and the unwind rows): the same kernel pages are in `rss_bytes`/`peak_rss_bytes` and in
    /// `bpf_map_bytes`, so a total counts them once by taking this off.
    pub bpf_mapped_bytes: u64,
}

pub fn self_cost() -> SelfCost {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid out-pointer for getrusage.
    let cpu_seconds = if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0 {
        // SAFETY: getrusage succeeded and filled it.
        let usage = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    } else {
        0.0
    };
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let mut bpf_map_bytes = 0;
    if let Ok(entries) = fs::read_dir("/proc/self/fdinfo") {
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            if !text.contains("map_type:") {
                continue;
            }
            bpf_map_bytes += text
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    SelfCost {
        cpu_seconds,
        rss_bytes: field("VmRSS:"),
        peak_rss_bytes: field("VmHWM:"),
        bpf_map_bytes,
        bpf_mapped_bytes: fs::read_to_string("/proc/self/smaps")
            .map(|smaps| bpf_mapped_bytes(&smaps))
            .unwrap_or(0),
    }
}

/// The `Rss` of the `anon_inode:bpf-map` mappings of an `smaps` text, in bytes.
fn bpf_mapped_bytes(smaps: &str) -> u64 {
    let mut in_map = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if in_map {
                kib += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|range| range.contains('-') && !range.ends_with(':'))
        {
            // A mapping's first line: `start-end perms offset dev inode [path]`.
            in_map = line.split_whitespace().nth(5) == Some("anon_inode:bpf-map");
        }
    }
    kib * 1024
}

/// Clock ticks per second of the start times in `/proc/PID/stat` (`_SC_CLK_TCK`, 100 almost
/// everywhere).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bpf_maps_mapped_into_the_process_are_summed_from_smaps() {
        let smaps = "\
55d0c0a00000-55d0c0c00000 r--p 00000000 fe:01 1234 /usr/bin/memtrace
Size:               2048 kB
Rss:                1500 kB
7f0000000000-7f0001000000 rw-s 00000000 00:0f 77 anon_inode:bpf-map
Size:              16388 kB
Rss:               16388 kB
7f0002000000-7f0002800000 rw-s 00000000 00:0f 78 anon_inode:bpf-map
Size:               8192 kB
Rss:                8192 kB
7f0003000000-7f0003100000 rw-p 00000000 00:00 0
Rss:                 100 kB
";
        assert_eq!(bpf_mapped_bytes(smaps), (16388 + 8192) * 1024);
    }

    use super::*;

    #[test]
    fn status_fields_in_bytes() {
        let text =
            "Name:\tcat\nVmRSS:\t    1924 kB\nRssAnon:\t      88 kB\nRssFile:\t    1836 kB\n\
                    RssShmem:\t       0 kB\nVmSwap:\t       4 kB\n";
        let status = parse_status(text);
        assert_eq!(status.rss, 1924 * 1024);
        assert_eq!(status.rss_anon, 88 * 1024);
        assert_eq!(status.rss_file, 1836 * 1024);
        assert_eq!(status.rss_shmem, 0);
        assert_eq!(status.swap, 4096);
        assert!(status.has_mm);
        assert!(!parse_status("Name:\tkthreadd\nThreads:\t1\n").has_mm);
    }

    /// Guards issue 11 item 7: a process counts as the one an alert was about only if it exists, is
    /// not a zombie, has the alert's command name and started before the alert.
    #[test]
    fn process_alive_since_tells_gone_and_reused_pids() {
        let me = std::process::id();
        let comm = stat(me).unwrap().comm;
        let now = crate::os::clock::now_ms();
        assert!(process_alive_since(me, &comm, now));
        assert!(process_alive_since(me, "", now));
        assert!(!process_alive_since(me, "not-my-name", now));
        // An alert older than this process: the PID was another process's then.
        assert!(!process_alive_since(me, &comm, now - 3_600_000));
        let start = started_at_ms(stat(me).unwrap().start_time).unwrap();
        assert!(start <= now && now - start < 3_600_000, "{start} {now}");
        // A zombie is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_alive_since(pid, "", now + 60_000) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(!process_alive_since(pid, "", now + 60_000));
    }

    #[test]
    fn stat_with_parentheses_in_comm() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let text = format!("1234 (a (b) c) {}", fields.join(" "));
        let stat = parse_stat(&text).expect("parses");
        assert_eq!(stat.comm, "a (b) c");
        assert_eq!(stat.start_time, 22);
        assert_eq!(stat.start_brk, 47);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn maps_lines() {
        let text = "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234     /usr/bin/cat\n\
                    55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0        [heap]\n\
                    7f0000000000-7f0000100000 rw-p 00000000 00:00 0 \n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0        [stack]\n";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].start, 0x55d0c0a00000);
        assert!(maps[0].is_file());
        assert!(maps[1].is_special());
        assert_eq!(maps[2].path, "");
        assert!(!maps[2].is_file() && !maps[2].is_special());
    }

    #[test]
    fn meminfo_fields() {
        let info = parse_meminfo(
            "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   23000000 kB\n",
        );
        assert_eq!(info.total, 24_000_000 * 1024);
        assert_eq!(info.available, 23_000_000 * 1024);
    }
}
