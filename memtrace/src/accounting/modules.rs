//! The mapped objects (modules) of a process, read from `/proc/PID/maps`: what its stacks are
//! symbolized against, kept with the process's state so that a process that has exited still gets
//! named frames.

use std::path::{Path, PathBuf};

use crate::os::procfs::MapLine;

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
    /// Distinct for every reading of a process's maps (0: never read), so that users of the
    /// modules (the unwind tables) see when they changed.
    version: u64,
    /// The process they belong to (0: unknown).
    pid: u32,
}

static NEXT_VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
        Self {
            modules,
            version: NEXT_VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            pid,
        }
    }

    /// The process these modules were read from (0: unknown).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Changes whenever the modules are read again.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn find(&self, addr: u64) -> Option<&Module> {
        let index = self.modules.partition_point(|m| m.start <= addr);
        let module = self.modules.get(index.checked_sub(1)?)?;
        (addr < module.end).then_some(module)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Module> {
        self.modules.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
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
}
