//! Turning addresses into `function (library+0xoffset) file:line` with blazesym.
//!
//! Names come from the object's `.symtab`, then `.dynsym`, then its separate debug file, found by
//! build id (`<debug dir>/.build-id/xx/yyyy.debug`) or `.gnu_debuglink` (next to the object, then
//! in the debug directories); where DWARF is present an address in inlined code gives one frame per
//! inlined function, innermost first, each with its file:line.
//!
//! Addresses are resolved through the mapped objects (modules) of their process, recorded when the
//! process was first seen, so a process that has exited still gets named frames. Results are
//! cached by the object's build id (or path) and file offset: a library loaded by many processes is
//! symbolized once.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use blazesym::symbolize::Symbolizer as Blazesym;
use blazesym::symbolize::{
    source::{Elf, Source},
    CodeInfo, Input, Symbolized,
};
use serde::Serialize;

use crate::accounting::modules::Modules;

/// A symbolized frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Frame {
    pub addr: u64,
    /// File name of the mapped object, or `[unknown]`.
    pub module: String,
    /// Offset of the address in the object file.
    pub offset: u64,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The source file with its directory as the debug information names it (`file` is its last
    /// component). Not part of the JSON.
    #[serde(skip)]
    pub source_path: Option<String>,
    /// Code of this function inlined into the next frame, at the same address.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
    /// The mapping of the object the address is in, as the process had it (pprof's mappings are
    /// made from these). Not part of the JSON.
    #[serde(skip)]
    pub object: Option<Arc<MappedObject>>,
}

/// One mapping of an object file in a process: what a pprof `Mapping` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappedObject {
    /// Address range `[start, end)` of the mapping.
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    /// Path of the object as the process sees it.
    pub path: String,
    /// GNU build id in lowercase hex, when the object has one.
    pub build_id: Option<String>,
}

impl Frame {
    pub fn unknown(addr: u64) -> Self {
        Self {
            addr,
            module: "[unknown]".into(),
            offset: addr,
            ..Self::default()
        }
    }

    /// `function (module+0xoffset) file:line`, or `module+0xoffset` without a symbol; `[jit]` for
    /// JIT code the runtime did not name; ` [inlined]` after a function inlined into the next.
    pub fn display(&self) -> String {
        if self.module == JIT && self.function.is_none() {
            return JIT.into();
        }
        let location = format!("{}+{:#x}", self.module, self.offset);
        let mut text = match &self.function {
            Some(function) => format!("{function} ({location})"),
            None => location,
        };
        if let Some(file) = &self.file {
            text.push(' ');
            text.push_str(file);
            if let Some(line) = self.line {
                text.push_str(&format!(":{line}"));
            }
        }
        if self.inlined {
            text.push_str(" [inlined]");
        }
        text
    }

    /// The function name, or `module+0xoffset` (`[jit]` for unnamed JIT code).
    pub fn name(&self) -> String {
        if self.module == JIT && self.function.is_none() {
            return JIT.into();
        }
        self.function
            .clone()
            .unwrap_or_else(|| format!("{}+{:#x}", self.module, self.offset))
    }
}

/// The GNU build id of an ELF object in lowercase hex, if it has one and can be read.
pub fn build_id(path: &Path) -> Option<String> {
    build_id_of(&crate::os::files::open_regular(path).ok()?)
}

/// [`build_id`] of an object already open.
fn build_id_of(file: &std::fs::File) -> Option<String> {
    match blazesym::helper::read_elf_build_id(&crate::os::files::reopen_path(file)) {
        Ok(Some(id)) if !id.is_empty() => Some(id.iter().map(|b| format!("{b:02x}")).collect()),
        _ => None,
    }
}

/// What one address resolved to: the function it is in and, innermost first, the functions
/// inlined into it there.
#[derive(Clone, Debug, Default)]
struct Resolved {
    function: Option<String>,
    place: Place,
    /// Innermost first.
    inlined: Vec<(String, Place)>,
}

/// A source location.
#[derive(Clone, Debug, Default)]
struct Place {
    file: Option<String>,
    source_path: Option<String>,
    line: Option<u32>,
}

impl Place {
    fn of(info: Option<&CodeInfo<'_>>) -> Self {
        match info {
            Some(info) => Self {
                file: Some(info.file.to_string_lossy().into_owned()),
                source_path: Some(info.to_path().to_string_lossy().into_owned()),
                line: info.line,
            },
            None => Self::default(),
        }
    }
}

/// What identifies an object file: its build id when it has one.
#[derive(Clone, Debug)]
struct ObjectKey {
    /// The build id (hex), else the path: the cache key of its symbols.
    key: String,
    build_id: Option<String>,
    debug: DebugSearch,
}

/// Where an object's separate debug file may be looked for.
#[derive(Clone, Debug)]
enum DebugSearch {
    /// blazesym's own search (build id, then `.gnu_debuglink` next to the object and in the debug
    /// directories): the object links no debug file (nothing is searched), or the directories
    /// searched next to it can be written by root alone.
    Blazesym,
    /// The object links a debug file but lies where others can write: a FIFO planted under the
    /// link's name would stall the symbolizer, so only the debug directories are searched, by build
    /// id. Names then come from that debug file (by address: `segments` turn file offsets into
    /// addresses), else from the object's own `.symtab` and `.dynsym`.
    Restricted {
        debug_file: Option<PathBuf>,
        /// `(file offset, size, address)` of each loadable segment.
        segments: Vec<(u64, u64, u64)>,
    },
}

/// The module name of frames in JIT code (anonymous executable memory of a process that writes a
/// perf map).
pub const JIT: &str = "[jit]";

/// A cache keyed by object (build id, else path) and file offset in front of blazesym. blazesym's
/// own symbolizer is not `Send`, so callers make one per batch of lookups and pass it in.
pub struct Symbolizer {
    /// Directories searched for separate debug files (`tracking.debugDirs`).
    pub debug_dirs: Vec<PathBuf>,
    cache: HashMap<(String, u64), Resolved>,
    keys: HashMap<PathBuf, ObjectKey>,
    /// JIT symbols of processes, from their `/tmp/perf-PID.map`.
    perf_maps: HashMap<u32, PerfMap>,
    /// Frames that could not be named (shown as `module+0xoffset`).
    pub unnamed: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

const CACHE_MAX: usize = 1 << 18;

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            debug_dirs: crate::config::DEFAULT_DEBUG_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            cache: HashMap::new(),
            keys: HashMap::new(),
            perf_maps: HashMap::new(),
            unnamed: 0,
        }
    }

    fn key(&mut self, path: &Path) -> ObjectKey {
        if let Some(key) = self.keys.get(path) {
            return key.clone();
        }
        let file = crate::os::files::open_regular(path).ok();
        let build_id = file.as_ref().and_then(build_id_of);
        let debug = file.map_or(DebugSearch::Blazesym, |file| {
            debug_search(&file, build_id.as_deref(), &self.debug_dirs)
        });
        let key = ObjectKey {
            key: build_id
                .clone()
                .unwrap_or_else(|| path.display().to_string()),
            build_id,
            debug,
        };
        self.keys.insert(path.to_path_buf(), key.clone());
        key
    }

    /// Symbolizes `addr` of a process with these modules: the frame of the function it is in,
    /// preceded by one frame per function inlined there (innermost first). Never fails: unknown
    /// frames come back as `module+0xoffset` (or `[unknown]+0xaddr`).
    pub fn frames(&mut self, inner: &Blazesym, modules: &Modules, addr: u64) -> Vec<Frame> {
        let Some(module) = modules.find(addr) else {
            return vec![self.jit_frame(modules.pid(), addr)];
        };
        let offset = addr - module.start + module.offset;
        let path = module.open_path.clone();
        let object = self.key(&path);
        let key = (object.key, offset);
        let resolved = match self.cache.get(&key) {
            Some(resolved) => resolved.clone(),
            None => {
                let resolved = lookup(inner, &path, offset, &object.debug);
                if self.cache.len() >= CACHE_MAX {
                    self.cache.clear();
                }
                self.cache.insert(key, resolved.clone());
                resolved
            }
        };
        if resolved.function.is_none() {
            self.unnamed += 1;
        }
        let mapped = Arc::new(MappedObject {
            start: module.start,
            end: module.end,
            offset: module.offset,
            path: module.path.clone(),
            build_id: object.build_id,
        });
        let frame = |function: Option<String>, place: Place, inlined: bool| Frame {
            addr,
            module: module.name().to_string(),
            offset,
            function,
            file: place.file,
            line: place.line,
            source_path: place.source_path,
            inlined,
            object: Some(Arc::clone(&mapped)),
        };
        let mut frames: Vec<Frame> = resolved
            .inlined
            .into_iter()
            .map(|(name, place)| frame(Some(name), place, true))
            .collect();
        frames.push(frame(resolved.function, resolved.place, false));
        frames
    }

    /// The frame of the function `addr` is in (the outermost of [`Self::frames`]).
    #[cfg(test)]
    pub fn frame(&mut self, inner: &Blazesym, modules: &Modules, addr: u64) -> Frame {
        let mut frames = self.frames(inner, modules, addr);
        frames.pop().unwrap_or_else(|| Frame::unknown(addr))
    }
}

impl Symbolizer {
    /// A frame outside every mapped file: named from the process's perf map when it writes one
    /// (`[jit]` when the map does not name the address), else `[unknown]`.
    fn jit_frame(&mut self, pid: u32, addr: u64) -> Frame {
        if pid == 0 {
            return Frame::unknown(addr);
        }
        let map = self.perf_maps.entry(pid).or_default();
        map.refresh(pid);
        if !map.present {
            return Frame::unknown(addr);
        }
        let function = map.find(addr).map(str::to_string);
        if function.is_none() {
            self.unnamed += 1;
        }
        Frame {
            addr,
            module: JIT.into(),
            offset: addr,
            function,
            ..Frame::default()
        }
    }

    /// Forgets the perf map of a process that is gone.
    pub fn forget(&mut self, pid: u32) {
        self.perf_maps.remove(&pid);
    }
}

/// Largest perf map read (runtimes append to it for as long as they run).
const PERF_MAP_MAX_BYTES: u64 = 64 << 20;

/// The JIT symbols a runtime wrote to `/tmp/perf-PID.map` (`START SIZE name` per line, hex),
/// read through the process's root and re-read when the file grew.
#[derive(Debug, Default)]
struct PerfMap {
    present: bool,
    /// (start, end, name) sorted by start; a later line for the same range wins.
    symbols: Vec<(u64, u64, String)>,
    read_bytes: u64,
    checked: Option<std::time::Instant>,
}

impl PerfMap {
    fn refresh(&mut self, pid: u32) {
        // At most one look at the file per second per process.
        if self
            .checked
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.checked = Some(std::time::Instant::now());
        let Some(changed) = read_perf_map(pid, self.read_bytes) else {
            return;
        };
        self.present = true;
        if let Some(text) = changed {
            self.read_bytes = text.len() as u64;
            self.symbols = parse_perf_map(&text);
        }
    }

    fn find(&self, addr: u64) -> Option<&str> {
        let index = self.symbols.partition_point(|(start, _, _)| *start <= addr);
        let (_, end, name) = self.symbols.get(index.checked_sub(1)?)?;
        (addr < *end).then_some(name.as_str())
    }
}

/// `None` when the process has no perf map; `Some(None)` when it still has `known` bytes; else its
/// text. The file
/// is controlled by the traced process: opened through its root without following a final
/// symlink and without blocking (a FIFO), it must be a regular file, and is read up to a bound.
fn read_perf_map(pid: u32, known: u64) -> Option<Option<String>> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    // The file is named after the pid the process sees in its own namespace.
    let nspid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(pid);
    let path = format!("/proc/{pid}/root/tmp/perf-{nspid}.map");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let size = meta.len().min(PERF_MAP_MAX_BYTES);
    if size == known {
        return Some(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(PERF_MAP_MAX_BYTES).read_to_end(&mut bytes).ok()?;
    Some(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `START SIZE name` lines (hex, with or without `0x`); malformed lines are skipped.
fn parse_perf_map(text: &str) -> Vec<(u64, u64, String)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut symbols: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = hex(parts.next()?)?;
            let size = hex(parts.next()?)?;
            let name = parts.next()?.trim();
            (size > 0 && !name.is_empty())
                .then(|| (start, start.saturating_add(size), name.to_string()))
        })
        .collect();
    // Stable: of two entries for one start, the later line (newer code) is kept.
    symbols.sort_by_key(|(start, _, _)| *start);
    symbols.reverse();
    symbols.dedup_by_key(|(start, _, _)| *start);
    symbols.reverse();
    symbols
}

fn lookup(inner: &Blazesym, path: &Path, offset: u64, debug: &DebugSearch) -> Resolved {
    if let DebugSearch::Restricted {
        debug_file: Some(debug_file),
        segments,
    } = debug
    {
        let address = segments
            .iter()
            .find(|&&(start, size, _)| offset >= start && offset - start < size)
            .map(|&(start, _, address)| address + (offset - start));
        if let Some(address) = address {
            // A root-owned file in a debug directory, found by build id.
            let source = Source::Elf(Elf::new(debug_file));
            let resolved = resolve(inner.symbolize_single(&source, Input::VirtOffset(address)));
            if resolved.function.is_some() {
                return resolved;
            }
        }
    }
    // The file belongs to a traced process: blazesym opens it through a descriptor checked to be a
    // regular file (a FIFO put in its place must not hang the symbolizer).
    let Ok(file) = crate::os::files::open_regular(path) else {
        return Resolved::default();
    };
    let mut elf = Elf::new(crate::os::files::reopen_path(&file));
    elf.debug_syms = matches!(debug, DebugSearch::Blazesym);
    match inner.symbolize_single(&Source::Elf(elf.clone()), Input::FileOffset(offset)) {
        // Debug information that cannot be read (a compression blazesym is not built with, a
        // damaged debug file) leaves the names of .symtab and .dynsym.
        Err(err) if elf.debug_syms => {
            log::debug!("debug information of {}: {err}", path.display());
            elf.debug_syms = false;
            resolve(inner.symbolize_single(&Source::Elf(elf), Input::FileOffset(offset)))
        }
        symbolized => resolve(symbolized),
    }
}

fn resolve(symbolized: blazesym::Result<Symbolized<'_>>) -> Resolved {
    match symbolized {
        Ok(Symbolized::Sym(sym)) => {
            // blazesym lists inlined functions outermost first, each with the place in it.
            let inlined = sym
                .inlined
                .iter()
                .rev()
                .map(|f| (f.name.to_string(), Place::of(f.code_info.as_ref())))
                .collect();
            Resolved {
                function: Some(sym.name.to_string()),
                place: Place::of(sym.code_info.as_deref()),
                inlined,
            }
        }
        _ => Resolved::default(),
    }
}

/// Where `file`'s separate debug file may be looked for (see [`DebugSearch`]).
fn debug_search(file: &std::fs::File, build_id: Option<&str>, dirs: &[PathBuf]) -> DebugSearch {
    use object::{Object, ObjectSegment};
    let data = object::ReadCache::new(file);
    let Ok(object) = object::File::parse(&data) else {
        return DebugSearch::Blazesym;
    };
    if !matches!(object.gnu_debuglink(), Ok(Some(_))) {
        return DebugSearch::Blazesym;
    }
    // blazesym searches the directory of the object's real path and its `.debug`.
    let real = std::fs::read_link(crate::os::files::reopen_path(file)).ok();
    if let Some(dir) = real.as_deref().and_then(Path::parent) {
        let dot_debug = dir.join(".debug");
        if only_root_writes(dir)
            && (std::fs::symlink_metadata(&dot_debug).is_err() || only_root_writes(&dot_debug))
        {
            return DebugSearch::Blazesym;
        }
    }
    let debug_file = build_id.filter(|id| id.len() > 2).and_then(|id| {
        dirs.iter()
            .map(|dir| {
                dir.join(".build-id")
                    .join(&id[..2])
                    .join(format!("{}.debug", &id[2..]))
            })
            .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file()))
    });
    let segments = object
        .segments()
        .filter_map(|segment| {
            let (start, size) = segment.file_range();
            (size > 0).then(|| (start, size, segment.address()))
        })
        .collect();
    DebugSearch::Restricted {
        debug_file,
        segments,
    }
}

/// Whether only root can add, remove or rename entries of `dir`: it and every directory above it
/// are root's, and none is writable by others unless sticky (which keeps others from renaming
/// root's entries), `dir` itself not writable by others at all.
fn only_root_writes(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().enumerate().all(|(i, path)| {
        std::fs::symlink_metadata(path).is_ok_and(|m| {
            let others_write = m.mode() & 0o022 != 0;
            let sticky = m.mode() & 0o1000 != 0;
            m.is_dir() && m.uid() == 0 && (!others_write || (i > 0 && sticky))
        })
    })
}

/// blazesym's symbolizer, with `dirs` searched for separate debug files (by build id, then by
/// `.gnu_debuglink`; the directory of the object itself is searched first for the latter).
pub fn blazesym(dirs: &[PathBuf]) -> Blazesym {
    Blazesym::builder().set_debug_dirs(Some(dirs)).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(start: u64, end: u64, offset: u64, path: &str) -> crate::os::procfs::MapLine {
        crate::os::procfs::MapLine {
            start,
            end,
            offset,
            inode: 1,
            path: path.into(),
        }
    }

    #[test]
    fn unknown_frames_keep_their_address() {
        let mut symbolizer = Symbolizer::new();
        let inner = Blazesym::new();
        let frame = symbolizer.frame(&inner, &Modules::default(), 0xdead);
        assert_eq!(frame.display(), "[unknown]+0xdead");
        let modules =
            Modules::from_maps(0, &[line(0x1000, 0x2000, 0x500, "/nonexistent/libgone.so")]);
        let frame = symbolizer.frame(&inner, &modules, 0x1010);
        assert_eq!(frame.display(), "libgone.so+0x510");
    }

    #[test]
    fn perf_map_lines() {
        let symbols = parse_perf_map(
            "7f0000001000 40 LazyCompile:*grow /app/x.js:3\n\
             garbage\n\
             0x7f0000002000 0x10 Builtin:ArrayPush\n\
             7f0000001000 20 LazyCompile:~grow /app/x.js:3\n",
        );
        let map = PerfMap {
            present: true,
            symbols,
            ..PerfMap::default()
        };
        assert_eq!(
            map.find(0x7f00_0000_1010),
            Some("LazyCompile:~grow /app/x.js:3")
        );
        assert_eq!(map.find(0x7f00_0000_2008), Some("Builtin:ArrayPush"));
        assert_eq!(map.find(0x7f00_0000_2010), None);
        assert_eq!(map.find(0x10), None);
    }

    #[test]
    fn symbolizes_this_test_binary() {
        // A function of this very binary, found through our own mappings.
        let maps = crate::os::procfs::maps(std::process::id()).expect("own maps");
        let modules = Modules::from_maps(std::process::id(), &maps);
        let addr = symbolizes_this_test_binary as *const () as u64;
        let mut symbolizer = Symbolizer::new();
        let frame = symbolizer.frame(&Blazesym::new(), &modules, addr);
        assert!(
            frame
                .function
                .as_deref()
                .is_some_and(|f| f.contains("symbolizes_this_test_binary")),
            "{frame:?}"
        );
        // The mapping it is in, with this binary's path and build id, and the source path.
        let object = frame.object.as_deref().expect("a mapped object");
        assert!(object.start <= addr && addr < object.end, "{object:?}");
        let exe = std::fs::read_link("/proc/self/exe").expect("own exe");
        assert_eq!(Path::new(&object.path), exe);
        let build_id = blazesym::helper::read_elf_build_id(&exe)
            .expect("readable")
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(object.build_id, build_id);
        assert_eq!(super::build_id(&exe), build_id);
        assert_eq!(frame.file.as_deref(), Some("symbols.rs"));
        assert!(
            frame
                .source_path
                .as_deref()
                .is_some_and(|p| p.ends_with("attribution/symbols.rs")),
            "{frame:?}"
        );
    }
}
