//! Turning addresses into `function (library+0xoffset) file:line` with blazesym.
//!
//! Addresses are resolved through the mapped objects (modules) of their process, recorded when the
//! process was first seen, so a process that has exited still gets named frames. Results are
//! cached by the object's build id (or path) and file offset: a library loaded by many processes is
//! symbolized once.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

pub use blazesym::symbolize::Symbolizer as Blazesym;
use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized,
};
use serde::Serialize;

use crate::procfs::MapLine;

/// One mapped object of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    /// Path as the process sees it.
    pub path: String,
    /// Path to open from here (through `/proc/PID/root` so containers work), if it still exists.
    pub open_path: PathBuf,
}

impl Module {
    pub fn name(&self) -> &str {
        Path::new(&self.path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.path)
    }
}

/// The file-backed mappings of one process, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct Modules {
    modules: Vec<Module>,
}

impl Modules {
    pub fn from_maps(pid: u32, lines: &[MapLine]) -> Self {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        // Paths are opened through /proc/PID/root only for processes in another mount namespace
        // (containers): that path disappears with the process, the plain one does not.
        let same_root = std::fs::read_link(&root)
            .map(|target| target == Path::new("/"))
            .unwrap_or(true);
        let mut modules: Vec<Module> = lines
            .iter()
            .filter(|l| l.is_file() && l.path.starts_with('/'))
            .map(|l| Module {
                start: l.start,
                end: l.end,
                offset: l.offset,
                path: l.path.clone(),
                open_path: if same_root {
                    PathBuf::from(&l.path)
                } else {
                    root.join(l.path.trim_start_matches('/'))
                },
            })
            .collect();
        modules.sort_by_key(|m| m.start);
        Self { modules }
    }

    pub fn find(&self, addr: u64) -> Option<&Module> {
        let index = self.modules.partition_point(|m| m.start <= addr);
        let module = self.modules.get(index.checked_sub(1)?)?;
        (addr < module.end).then_some(module)
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

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

    /// `function (module+0xoffset) file:line`, or `module+0xoffset` without a symbol.
    pub fn display(&self) -> String {
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
        text
    }

    /// The function name, or `module+0xoffset`.
    pub fn name(&self) -> String {
        self.function
            .clone()
            .unwrap_or_else(|| format!("{}+{:#x}", self.module, self.offset))
    }
}

#[derive(Clone, Debug)]
struct Resolved {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

/// A cache keyed by object (build id, else path) and file offset in front of blazesym. blazesym's
/// own symbolizer is not `Send`, so callers make one per batch of lookups and pass it in.
pub struct Symbolizer {
    cache: HashMap<(String, u64), Resolved>,
    keys: HashMap<PathBuf, String>,
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
            cache: HashMap::new(),
            keys: HashMap::new(),
            unnamed: 0,
        }
    }

    fn key(&mut self, path: &Path) -> String {
        if let Some(key) = self.keys.get(path) {
            return key.clone();
        }
        let key = match blazesym::helper::read_elf_build_id(&path) {
            Ok(Some(id)) => id.iter().map(|b| format!("{b:02x}")).collect(),
            _ => path.display().to_string(),
        };
        self.keys.insert(path.to_path_buf(), key.clone());
        key
    }

    /// Symbolizes `addr` of a process with these modules. Never fails: unknown frames come back as
    /// `module+0xoffset` (or `[unknown]+0xaddr`).
    pub fn frame(&mut self, inner: &Blazesym, modules: &Modules, addr: u64) -> Frame {
        let Some(module) = modules.find(addr) else {
            return Frame::unknown(addr);
        };
        let offset = addr - module.start + module.offset;
        let path = module.open_path.clone();
        let key = (self.key(&path), offset);
        let resolved = match self.cache.get(&key) {
            Some(resolved) => resolved.clone(),
            None => {
                let resolved = lookup(inner, &path, offset);
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
        Frame {
            addr,
            module: module.name().to_string(),
            offset,
            function: resolved.function,
            file: resolved.file,
            line: resolved.line,
        }
    }
}

fn lookup(inner: &Blazesym, path: &Path, offset: u64) -> Resolved {
    let source = Source::Elf(Elf::new(path));
    match inner.symbolize_single(&source, Input::FileOffset(offset)) {
        Ok(Symbolized::Sym(sym)) => {
            let (file, line) = match &sym.code_info {
                Some(info) => (Some(info.file.to_string_lossy().into_owned()), info.line),
                None => (None, None),
            };
            Resolved {
                function: Some(sym.name.to_string()),
                file,
                line,
            }
        }
        _ => Resolved {
            function: None,
            file: None,
            line: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(start: u64, end: u64, offset: u64, path: &str) -> MapLine {
        MapLine {
            start,
            end,
            offset,
            inode: 1,
            path: path.into(),
        }
    }

    #[test]
    fn module_lookup() {
        let modules = Modules::from_maps(
            0,
            &[
                line(0x2000, 0x3000, 0x1000, "/lib/libb.so"),
                line(0x1000, 0x2000, 0, "/lib/liba.so"),
            ],
        );
        assert_eq!(modules.find(0x1800).map(|m| m.name()), Some("liba.so"));
        assert_eq!(modules.find(0x2000).map(|m| m.name()), Some("libb.so"));
        assert_eq!(modules.find(0x3000), None);
        assert_eq!(modules.find(0x10), None);
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
    fn symbolizes_this_test_binary() {
        // A function of this very binary, found through our own mappings.
        let maps = crate::procfs::maps(std::process::id()).expect("own maps");
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
    }
}
