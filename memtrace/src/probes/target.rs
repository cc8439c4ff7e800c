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
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let in_root = |path: &str| root.join(path.trim_start_matches('/'));
    let name_of = |path: &str| {
        Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string()
    };
    let mut libs: Vec<String> = Vec::new();
    for line in maps
        .iter()
        .filter(|l| l.is_file() && l.path.starts_with('/'))
    {
        if !libs.contains(&line.path) {
            libs.push(line.path.clone());
        }
    }
    let cxx = libs
        .iter()
        .find(|p| name_of(p).starts_with("libstdc++.so"))
        .map(|p| in_root(p));
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if defines_symbol(&exe, "malloc") {
        return Ok(AllocatorTarget {
            pid: Some(pid),
            path: exe,
            cxx,
        });
    }
    const ALLOCATORS: [&str; 5] = [
        "libjemalloc",
        "libtcmalloc",
        "libmimalloc",
        "libhoard",
        "libsnmalloc",
    ];
    let candidates = libs
        .iter()
        .filter(|p| ALLOCATORS.iter().any(|a| name_of(p).starts_with(a)))
        .chain(libs.iter().filter(|p| {
            let name = name_of(p);
            name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so"))
        }));
    for path in candidates {
        let path = in_root(path);
        if defines_symbol(&path, "malloc") {
            return Ok(AllocatorTarget {
                pid: Some(pid),
                path,
                cxx,
            });
        }
    }
    Err(ProbeError::NoAllocator { pid })
}

/// Whether the ELF file at `path` defines (not merely imports) `symbol`.
pub fn defines_symbol(path: &Path, symbol: &str) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(data) = std::fs::read(path) else {
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
    .or_else(|| target.cxx.as_deref().map(strip));
    Ok(target)
}
