//! Where a process's allocator lives: the object whose malloc family the uprobes attach to.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::ProbeError;
use crate::os::procfs;

/// Where the malloc family of a process lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatorTarget {
    pub pid: Option<u32>,
    /// Path of the object (through `/proc/PID/root` for a process, so containers work).
    pub path: PathBuf,
    /// libstdc++, when the process has it: its `operator new` variants are probed too.
    pub cxx: Option<PathBuf>,
}

/// Finds the object that provides `malloc` for `pid`, as the process resolves it: the executable
/// when it defines its own (static binaries, an allocator linked in), else a mapped allocator
/// library (jemalloc, tcmalloc, mimalloc, also when preloaded), else libc.
pub fn allocator_of(pid: u32) -> Result<AllocatorTarget, ProbeError> {
    let maps = procfs::maps(pid).map_err(|err| match err {
        procfs::ProcfsError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            ProbeError::NoProcess(pid)
        }
        other => ProbeError::Unreadable { pid, source: other },
    })?;
    choose_allocator(pid, &maps, defines_symbol)
}

/// Allocator libraries looked for before libc, in this order.
const ALLOCATORS: [&str; 5] = [
    "libjemalloc",
    "libtcmalloc",
    "libmimalloc",
    "libhoard",
    "libsnmalloc",
];

/// [`allocator_of`] over the process's mappings, with `defines(path, symbol)` telling whether an
/// object defines a symbol.
pub fn choose_allocator(
    pid: u32,
    maps: &[procfs::MapLine],
    defines: impl Fn(&Path, &str) -> bool,
) -> Result<AllocatorTarget, ProbeError> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let in_root = |path: &str| root.join(path.trim_start_matches('/'));
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string()
    };
    let mut libs: Vec<&str> = Vec::new();
    for line in maps
        .iter()
        .filter(|l| l.is_file() && l.path.starts_with('/'))
    {
        if !libs.contains(&line.path.as_str()) {
            libs.push(&line.path);
        }
    }
    let cxx = libs
        .iter()
        .find(|p| name_of(p).starts_with("libstdc++.so"))
        .map(|p| in_root(p));
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if defines(&exe, "malloc") {
        return Ok(AllocatorTarget {
            pid: Some(pid),
            path: exe,
            cxx,
        });
    }
    let is_libc = |p: &&&str| {
        let name = name_of(p);
        name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so"))
    };
    let candidates = ALLOCATORS
        .iter()
        .flat_map(|a| libs.iter().filter(move |p| name_of(p).starts_with(a)))
        .chain(libs.iter().filter(is_libc));
    for path in candidates {
        let path = in_root(path);
        if defines(&path, "malloc") {
            return Ok(AllocatorTarget {
                pid: Some(pid),
                path,
                cxx,
            });
        }
    }
    Err(ProbeError::NoAllocator { pid })
}

/// Largest object file read to look for a symbol.
const MAX_ELF_BYTES: u64 = 2 << 30;

/// Whether the ELF file at `path` defines (not merely imports) `symbol`.
pub fn defines_symbol(path: &Path, symbol: &str) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    // The path comes from another process: never block on it, read a regular file only.
    let Ok(data) = crate::os::files::read_regular(path, MAX_ELF_BYTES) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    file.dynamic_symbols()
        .chain(file.symbols())
        .any(|s| s.is_definition() && s.name() == Ok(symbol))
}

/// The allocator a command will use once started: the program itself when it defines `malloc`
/// (static binaries), else the host's libc. Used before the command is exec'd, when its process
/// still looks like memtrace.
pub fn allocator_for_command(program: &str, pid: u32) -> Result<AllocatorTarget, ProbeError> {
    let path = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    };
    // The user's own command, resolved as exec will (files of traced processes are opened without
    // following links, and `/usr/bin/python3` is one).
    let path = path.map(|p| p.canonicalize().unwrap_or(p));
    let mut target = host_libc()?;
    target.pid = Some(pid);
    if let Some(path) = path.filter(|p| defines_symbol(p, "malloc")) {
        target.path = path;
    }
    Ok(target)
}

/// libc of the agent itself, used for host-wide malloc tracing.
pub fn host_libc() -> Result<AllocatorTarget, ProbeError> {
    let me = std::process::id();
    let mut target = allocator_of(me)?;
    let strip = |path: &Path| {
        PathBuf::from(
            path.to_string_lossy()
                .replace(&format!("/proc/{me}/root"), ""),
        )
    };
    target.pid = None;
    target.path = strip(&target.path);
    target.cxx = [
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/usr/lib64/libstdc++.so.6",
        "/usr/lib/libstdc++.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    // The host's own library, by its real file: `libstdc++.so.6` is a link, and the placement
    // opens libraries without following links (it found none, and put every `operator new`
    // probe on its single-stepped entry, for every C++ program run under `trace -- CMD`).
    .and_then(|p| p.canonicalize().ok())
    .or_else(|| target.cxx.as_deref().map(strip));
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::procfs::MapLine;

    /// The host's allocator files are ones the placement can open (no link left in their path).
    #[test]
    fn the_hosts_allocator_files_open_as_regular_files() {
        let target = host_libc().expect("this host has a libc");
        for path in std::iter::once(&target.path).chain(target.cxx.as_ref()) {
            crate::os::files::open_regular(path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }
    }

    fn map(path: &str) -> MapLine {
        MapLine {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            inode: 7,
            path: path.into(),
        }
    }

    fn maps(paths: &[&str]) -> Vec<MapLine> {
        let mut lines: Vec<MapLine> = paths.iter().map(|p| map(p)).collect();
        // Anonymous mappings and pseudo-paths are never candidates.
        lines.push(MapLine {
            inode: 0,
            path: String::new(),
            ..map("")
        });
        lines.push(MapLine {
            inode: 0,
            ..map("[heap]")
        });
        lines
    }

    /// `defines` that says yes for objects whose path ends with one of `with`.
    fn defining(with: &'static [&'static str]) -> impl Fn(&Path, &str) -> bool {
        move |path, symbol| {
            symbol == "malloc" && with.iter().any(|w| path.to_string_lossy().ends_with(w))
        }
    }

    #[test]
    fn libc_by_default_seen_through_the_process_root() {
        let m = maps(&["/usr/bin/app", "/usr/lib/x86_64-linux-gnu/libc.so.6"]);
        let target = choose_allocator(42, &m, defining(&["libc.so.6"])).unwrap();
        assert_eq!(
            target.path,
            PathBuf::from("/proc/42/root/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(target.pid, Some(42));
        assert_eq!(target.cxx, None);
    }

    #[test]
    fn an_allocator_library_wins_over_libc_and_libstdcxx_is_found() {
        let m = maps(&[
            "/usr/bin/app",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        ]);
        let target = choose_allocator(7, &m, defining(&["libc.so.6", "libjemalloc.so.2"])).unwrap();
        assert!(target.path.ends_with("libjemalloc.so.2"), "{target:?}");
        assert_eq!(
            target.cxx,
            Some(PathBuf::from(
                "/proc/7/root/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
            ))
        );
    }

    #[test]
    fn an_executable_with_its_own_malloc_is_the_target() {
        let m = maps(&["/opt/static-app", "/usr/lib/x86_64-linux-gnu/libc.so.6"]);
        let target = choose_allocator(9, &m, defining(&["exe", "libc.so.6"])).unwrap();
        assert_eq!(target.path, PathBuf::from("/proc/9/exe"));
    }

    #[test]
    fn a_library_named_like_an_allocator_without_malloc_is_skipped() {
        let m = maps(&[
            "/usr/lib/libtcmalloc_debug_helpers.so",
            "/usr/lib/x86_64-linux-gnu/libc-2.31.so",
        ]);
        let target = choose_allocator(3, &m, defining(&["libc-2.31.so"])).unwrap();
        assert!(target.path.ends_with("libc-2.31.so"));
    }

    #[test]
    fn no_allocator_is_an_error_naming_the_pid() {
        let m = maps(&["/usr/bin/app"]);
        let err = choose_allocator(5, &m, defining(&[])).unwrap_err();
        assert!(matches!(err, ProbeError::NoAllocator { pid: 5 }), "{err}");
    }
}
