//! Which unwind tables are in the kernel: built from an object's CFI the first time a registered
//! process maps it, placed in the shared row array under a memory cap (least recently used
//! objects evicted first), and listed per process as its executable mappings (run-time range,
//! load bias, table id).
//!
//! The manager is pure bookkeeping over a [`UnwindMaps`] sink: the probes implement it with the
//! eBPF maps, the unit tests with vectors.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use memtrace_common::{
    ProcMappings, UnwindMapping, UnwindRow, UnwindTable, UNWIND_MAX_MAPPINGS, UNWIND_NO_TABLE,
};
use object::{Object as _, ObjectSegment as _};
use serde::Serialize;

use super::table::{self, TableError};
use crate::accounting::modules::Modules;

/// Objects larger than this are not read (their mappings are unwound with frame pointers).
const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// Objects remembered (with or without a table loaded) before the cache is trimmed.
const MAX_OBJECTS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("writing the kernel's unwind map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the unwind row array is not mapped")]
    NotMapped,
    #[error("no free process slot for pid {pid} ({max} processes have unwind tables)")]
    NoSlot { pid: u32, max: u32 },
}

/// Where the manager's decisions go: the kernel's maps, or vectors in tests.
pub trait UnwindMaps {
    /// Writes rows at `first` in the row array.
    fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), UnwindError>;
    fn set_table(&mut self, id: u32, table: UnwindTable) -> Result<(), UnwindError>;
    /// Writes a process's mapping table into `slot` and points `pid` at it.
    fn set_process(
        &mut self,
        pid: u32,
        slot: u32,
        mappings: &ProcMappings,
    ) -> Result<(), UnwindError>;
    fn remove_process(&mut self, pid: u32);
    /// Whether the kernel still has `pid`'s slot (it drops it at exit and exec).
    fn has_process(&self, pid: u32) -> bool;
}

/// Sizes of the kernel's unwind maps.
#[derive(Clone, Copy, Debug)]
pub struct UnwindLimits {
    /// Rows the row array holds (its memory cap / 8 bytes).
    pub rows: u32,
    /// Table ids.
    pub tables: u32,
    /// Processes with a mapping table at once.
    pub processes: u32,
}

/// Figures for reports and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnwindStats {
    /// Objects whose table is in the kernel.
    pub tables_loaded: u64,
    /// Rows in use, and their bytes in the kernel (8 bytes a row).
    pub rows_used: u64,
    pub table_bytes: u64,
    /// The row array's size: the memory cap, allocated by the kernel at load.
    pub capacity_bytes: u64,
    /// Bytes of the per-process mapping tables in use.
    pub process_bytes: u64,
    pub processes: u64,
    /// Tables evicted to stay under the cap.
    pub evictions: u64,
    /// Executable objects without CFI (unwound with frame pointers).
    pub objects_without_cfi: u64,
    /// Objects whose table could not be built (unreadable, malformed, too large).
    pub build_failures: u64,
    /// Executable mappings left out of a process's table (over `UNWIND_MAX_MAPPINGS`).
    pub mappings_dropped: u64,
}

/// An object file identified as the kernel does: device, inode, and its size and mtime so that
/// a file replaced in place is seen as new.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
}

/// An executable `PT_LOAD` segment: file range and virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExecSegment {
    offset: u64,
    size: u64,
    vaddr: u64,
}

#[derive(Clone, Debug, Default)]
struct Object {
    path: PathBuf,
    segments: Vec<ExecSegment>,
    table: Option<u32>,
    /// The object has no CFI, or its table cannot be built: not tried again.
    no_table: bool,
}

#[derive(Clone, Debug)]
struct Loaded {
    key: ObjectKey,
    first: u32,
    count: u32,
    last_used: u64,
}

#[derive(Clone, Debug)]
struct Registered {
    slot: u32,
    tables: Vec<u32>,
    mappings: usize,
}

/// What one registration did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    /// Executable mappings in the process's table, and how many have an unwind table.
    pub mappings: usize,
    pub with_table: usize,
    /// Tables built for objects seen for the first time (or again after eviction).
    pub built: usize,
}

pub struct TableManager {
    limits: UnwindLimits,
    /// Free row ranges (first, count), sorted and coalesced.
    free: Vec<(u32, u32)>,
    objects: HashMap<ObjectKey, Object>,
    tables: HashMap<u32, Loaded>,
    next_id: u32,
    processes: HashMap<u32, Registered>,
    free_slots: Vec<u32>,
    tick: u64,
    stats: UnwindStats,
}

impl TableManager {
    pub fn new(limits: UnwindLimits) -> Self {
        Self {
            limits,
            free: if limits.rows > 0 {
                vec![(0, limits.rows)]
            } else {
                Vec::new()
            },
            objects: HashMap::new(),
            tables: HashMap::new(),
            next_id: 0,
            processes: HashMap::new(),
            free_slots: (0..limits.processes).rev().collect(),
            tick: 0,
            stats: UnwindStats {
                capacity_bytes: u64::from(limits.rows) * 8,
                ..UnwindStats::default()
            },
        }
    }

    pub fn stats(&self) -> UnwindStats {
        let rows_used: u64 = self.tables.values().map(|t| u64::from(t.count)).sum();
        UnwindStats {
            tables_loaded: self.tables.len() as u64,
            rows_used,
            table_bytes: rows_used * std::mem::size_of::<UnwindRow>() as u64,
            processes: self.processes.len() as u64,
            process_bytes: self.processes.len() as u64 * std::mem::size_of::<ProcMappings>() as u64,
            ..self.stats
        }
    }

    /// Loads the tables of every executable object `pid` maps (building those not loaded yet)
    /// and writes its mapping table. Called when a process is attached and when it maps new code;
    /// cheap when every object is loaded already.
    pub fn register(
        &mut self,
        maps: &mut dyn UnwindMaps,
        pid: u32,
        modules: &Modules,
    ) -> Result<Registration, UnwindError> {
        self.tick += 1;
        let mut report = Registration::default();
        let mut entries: Vec<UnwindMapping> = Vec::new();
        let mut used = Vec::new();
        for module in modules.iter() {
            let Some(key) = object_key(&module.open_path) else {
                continue;
            };
            if !self.objects.contains_key(&key) {
                if self.objects.len() >= MAX_OBJECTS {
                    self.objects.retain(|_, o| o.table.is_some());
                }
                let object = self.discover(&module.open_path);
                self.objects.insert(key.clone(), object);
            }
            let Some(object) = self.objects.get(&key) else {
                continue;
            };
            let length = module.end.saturating_sub(module.start);
            let Some(segment) = object
                .segments
                .iter()
                .find(|s| module.offset < s.offset + s.size && s.offset < module.offset + length)
                .copied()
            else {
                continue;
            };
            let table = match (object.table, object.no_table) {
                (Some(id), _) => Some(id),
                (None, true) => None,
                (None, false) => {
                    report.built += 1;
                    self.load(maps, &key)?
                }
            };
            if let Some(id) = table {
                if let Some(loaded) = self.tables.get_mut(&id) {
                    loaded.last_used = self.tick;
                }
                used.push(id);
                report.with_table += 1;
            }
            let vaddr_at_start = segment
                .vaddr
                .wrapping_add(module.offset)
                .wrapping_sub(segment.offset);
            entries.push(UnwindMapping {
                start: module.start,
                end: module.end,
                bias: module.start.wrapping_sub(vaddr_at_start),
                table: table.unwrap_or(UNWIND_NO_TABLE),
                _pad: 0,
            });
        }
        entries.sort_by_key(|e| e.start);
        if entries.len() > UNWIND_MAX_MAPPINGS {
            // Keep the ones with tables: the others unwind with frame pointers either way.
            self.stats.mappings_dropped += (entries.len() - UNWIND_MAX_MAPPINGS) as u64;
            entries.sort_by_key(|e| (e.table == UNWIND_NO_TABLE, e.start));
            entries.truncate(UNWIND_MAX_MAPPINGS);
            entries.sort_by_key(|e| e.start);
        }
        report.mappings = entries.len();
        let mut mappings = ProcMappings {
            count: entries.len() as u32,
            ..ProcMappings::default()
        };
        mappings.entries[..entries.len()].copy_from_slice(&entries);
        let slot = self.slot(maps, pid)?;
        maps.set_process(pid, slot, &mappings)?;
        used.sort_unstable();
        used.dedup();
        self.processes.insert(
            pid,
            Registered {
                slot,
                tables: used,
                mappings: entries.len(),
            },
        );
        Ok(report)
    }

    /// Forgets a process (it exited or is no longer traced).
    pub fn unregister(&mut self, maps: &mut dyn UnwindMaps, pid: u32) {
        if let Some(registered) = self.processes.remove(&pid) {
            maps.remove_process(pid);
            self.free_slots.push(registered.slot);
        }
    }

    /// Mappings in the registered table of `pid`.
    pub fn mappings_of(&self, pid: u32) -> Option<usize> {
        self.processes.get(&pid).map(|r| r.mappings)
    }

    fn slot(&mut self, maps: &dyn UnwindMaps, pid: u32) -> Result<u32, UnwindError> {
        if let Some(registered) = self.processes.get(&pid) {
            return Ok(registered.slot);
        }
        if self.free_slots.is_empty() {
            // Processes the kernel dropped at exit or exec free their slots.
            let gone: Vec<u32> = self
                .processes
                .keys()
                .copied()
                .filter(|p| !maps.has_process(*p))
                .collect();
            for pid in gone {
                if let Some(registered) = self.processes.remove(&pid) {
                    self.free_slots.push(registered.slot);
                }
            }
        }
        self.free_slots.pop().ok_or(UnwindError::NoSlot {
            pid,
            max: self.limits.processes,
        })
    }

    /// Reads an object's executable segments and whether it is worth a table.
    fn discover(&mut self, path: &Path) -> Object {
        let mut object = Object {
            path: path.to_path_buf(),
            ..Object::default()
        };
        match read_object(path) {
            Some(bytes) => match exec_segments(&bytes) {
                Some(segments) => object.segments = segments,
                None => object.no_table = true,
            },
            None => object.no_table = true,
        }
        object
    }

    /// Builds and places the table of an object; `None` when it has no CFI or cannot be built.
    fn load(
        &mut self,
        maps: &mut dyn UnwindMaps,
        key: &ObjectKey,
    ) -> Result<Option<u32>, UnwindError> {
        let Some(path) = self.objects.get(key).map(|o| o.path.clone()) else {
            return Ok(None);
        };
        let built = read_object(&path)
            .ok_or(None)
            .and_then(|bytes| table::build(&bytes).map_err(Some));
        let rows = match built {
            Ok(table) if table.rows.is_empty() => {
                self.stats.objects_without_cfi += 1;
                self.mark_no_table(key);
                return Ok(None);
            }
            Ok(table) => table.rows,
            Err(err) => {
                if let Some(err @ TableError::TooLarge { .. }) = &err {
                    log::warn!("unwind table of {}: {err}", path.display());
                } else {
                    log::debug!("unwind table of {}: {err:?}", path.display());
                }
                self.stats.build_failures += 1;
                self.mark_no_table(key);
                return Ok(None);
            }
        };
        let count = rows.len() as u32;
        let Some(first) = self.place(maps, count)? else {
            log::warn!(
                "unwind table of {} ({} rows) does not fit the cap of {} rows",
                path.display(),
                count,
                self.limits.rows
            );
            self.stats.build_failures += 1;
            self.mark_no_table(key);
            return Ok(None);
        };
        let Some(id) = self.table_id() else {
            self.release(first, count);
            return Ok(None);
        };
        maps.write_rows(first, &rows)?;
        maps.set_table(id, UnwindTable { first, count })?;
        self.tables.insert(
            id,
            Loaded {
                key: key.clone(),
                first,
                count,
                last_used: self.tick,
            },
        );
        if let Some(object) = self.objects.get_mut(key) {
            object.table = Some(id);
        }
        Ok(Some(id))
    }

    fn mark_no_table(&mut self, key: &ObjectKey) {
        if let Some(object) = self.objects.get_mut(key) {
            object.no_table = true;
        }
    }

    /// A free range of `count` rows, evicting least recently used tables (not those used by
    /// the registration under way) until one fits. `None` when it cannot fit.
    fn place(&mut self, maps: &mut dyn UnwindMaps, count: u32) -> Result<Option<u32>, UnwindError> {
        if count > self.limits.rows {
            return Ok(None);
        }
        loop {
            if let Some(first) = self.allocate(count) {
                return Ok(Some(first));
            }
            let victim = self
                .tables
                .iter()
                .filter(|(_, t)| t.last_used < self.tick)
                .min_by_key(|(id, t)| (t.last_used, **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Ok(None);
            };
            self.evict(maps, victim)?;
        }
    }

    fn evict(&mut self, maps: &mut dyn UnwindMaps, id: u32) -> Result<(), UnwindError> {
        let Some(loaded) = self.tables.remove(&id) else {
            return Ok(());
        };
        // The kernel stops reading the rows before they are reused.
        maps.set_table(id, UnwindTable::default())?;
        self.release(loaded.first, loaded.count);
        if let Some(object) = self.objects.get_mut(&loaded.key) {
            object.table = None;
        }
        self.stats.evictions += 1;
        Ok(())
    }

    /// A table id not loaded and not listed by any registered process.
    fn table_id(&mut self) -> Option<u32> {
        if self.next_id < self.limits.tables {
            self.next_id += 1;
            return Some(self.next_id - 1);
        }
        (0..self.limits.tables).find(|id| {
            !self.tables.contains_key(id) && !self.processes.values().any(|p| p.tables.contains(id))
        })
    }

    /// First fit.
    fn allocate(&mut self, count: u32) -> Option<u32> {
        let index = self.free.iter().position(|&(_, n)| n >= count)?;
        let (first, n) = self.free[index];
        if n == count {
            self.free.remove(index);
        } else {
            self.free[index] = (first + count, n - count);
        }
        Some(first)
    }

    fn release(&mut self, first: u32, count: u32) {
        let index = self.free.partition_point(|&(f, _)| f < first);
        self.free.insert(index, (first, count));
        // Coalesce with the neighbours.
        if index + 1 < self.free.len()
            && self.free[index].0 + self.free[index].1 == self.free[index + 1].0
        {
            self.free[index].1 += self.free[index + 1].1;
            self.free.remove(index + 1);
        }
        if index > 0 && self.free[index - 1].0 + self.free[index - 1].1 == self.free[index].0 {
            self.free[index - 1].1 += self.free[index].1;
            self.free.remove(index);
        }
    }
}

fn object_key(path: &Path) -> Option<ObjectKey> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| ObjectKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
    })
}

/// An object's bytes, if it is a regular file of reasonable size. Opened without following a
/// final symlink swap and without blocking on a FIFO: the path comes from another process.
fn read_object(path: &Path) -> Option<Vec<u8>> {
    crate::os::files::read_regular(path, MAX_OBJECT_BYTES).ok()
}

/// The executable `PT_LOAD` segments of an ELF object.
fn exec_segments(bytes: &[u8]) -> Option<Vec<ExecSegment>> {
    let file = object::File::parse(bytes).ok()?;
    let segments: Vec<ExecSegment> = file
        .segments()
        .filter(|s| match s.flags() {
            object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => false,
        })
        .map(|s| {
            let (offset, size) = s.file_range();
            ExecSegment {
                offset,
                size,
                vaddr: s.address(),
            }
        })
        .collect();
    (!segments.is_empty()).then_some(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::procfs::MapLine;

    /// The kernel's maps as vectors.
    #[derive(Default)]
    struct FakeMaps {
        rows: Vec<UnwindRow>,
        tables: HashMap<u32, UnwindTable>,
        processes: HashMap<u32, (u32, ProcMappings)>,
    }

    impl UnwindMaps for FakeMaps {
        fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), UnwindError> {
            let end = first as usize + rows.len();
            if self.rows.len() < end {
                self.rows.resize(end, UnwindRow::default());
            }
            self.rows[first as usize..end].copy_from_slice(rows);
            Ok(())
        }
        fn set_table(&mut self, id: u32, table: UnwindTable) -> Result<(), UnwindError> {
            self.tables.insert(id, table);
            Ok(())
        }
        fn set_process(
            &mut self,
            pid: u32,
            slot: u32,
            mappings: &ProcMappings,
        ) -> Result<(), UnwindError> {
            self.processes.insert(pid, (slot, *mappings));
            Ok(())
        }
        fn remove_process(&mut self, pid: u32) {
            self.processes.remove(&pid);
        }
        fn has_process(&self, pid: u32) -> bool {
            self.processes.contains_key(&pid)
        }
    }

    impl FakeMaps {
        /// What the kernel would find for `pc` of `pid`: the row, as the unwinder's searches do.
        fn lookup(&self, pid: u32, pc: u64) -> Option<UnwindRow> {
            let (_, mappings) = self.processes.get(&pid)?;
            let entries = &mappings.entries[..mappings.count as usize];
            let index = entries.partition_point(|e| e.start <= pc).checked_sub(1)?;
            let mapping = entries[index];
            if pc >= mapping.end || mapping.table == UNWIND_NO_TABLE {
                return None;
            }
            let table = self.tables.get(&mapping.table)?;
            if table.count == 0 {
                return None;
            }
            let rows = &self.rows[table.first as usize..(table.first + table.count) as usize];
            let rel = u32::try_from(pc - mapping.bias).ok()?;
            let index = rows.partition_point(|r| r.pc <= rel).checked_sub(1)?;
            Some(rows[index])
        }
    }

    /// This test process's own modules.
    fn own_modules() -> Modules {
        let maps = crate::os::procfs::maps(std::process::id()).expect("own maps");
        Modules::from_maps(std::process::id(), &maps)
    }

    fn limits(rows: u32) -> UnwindLimits {
        UnwindLimits {
            rows,
            tables: 64,
            processes: 4,
        }
    }

    #[test]
    fn registers_this_process_and_finds_libc_malloc() {
        let mut maps = FakeMaps::default();
        let mut manager = TableManager::new(limits(4 << 20));
        let report = manager
            .register(&mut maps, 1, &own_modules())
            .expect("registers");
        assert!(report.with_table >= 2, "{report:?}");
        // The run-time address of malloc, through the table: CFA = rsp + 8 at its entry.
        let malloc = libc::malloc as *const () as u64;
        let row = maps.lookup(1, malloc).expect("libc's table covers malloc");
        assert_eq!(
            (row.kind, row.cfa_offset),
            (memtrace_common::ROW_CFA_RSP, 8)
        );
        // Registering again builds nothing.
        let again = manager
            .register(&mut maps, 2, &own_modules())
            .expect("registers");
        assert_eq!(again.built, 0);
        assert_eq!(manager.stats().processes, 2);
    }

    /// Modules of a fake process mapping `paths` (their first executable segment each).
    /// Modules as `/proc/PID/maps` shows them: canonical paths (never a symlink such as
    /// `libsqlite3.so.0`, which the agent refuses to follow).
    fn modules_of(paths: &[&str]) -> Modules {
        let mut lines = Vec::new();
        let mut base = 0x1000_0000u64;
        for path in paths {
            let canonical = std::fs::canonicalize(path).expect("object path");
            let path = canonical.to_str().expect("utf-8 path");
            let bytes = std::fs::read(path).expect("object");
            let segment = exec_segments(&bytes).expect("segments")[0];
            let start_offset = segment.offset & !0xfff;
            let length = (segment.offset + segment.size - start_offset + 0xfff) & !0xfff;
            lines.push(MapLine {
                start: base,
                end: base + length,
                offset: start_offset,
                inode: 1,
                path: path.to_string(),
            });
            base += 0x1000_0000;
        }
        Modules::from_maps(0, &lines)
    }

    #[test]
    fn evicts_least_recently_used_under_the_cap() {
        const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
        const SQLITE: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";
        if !Path::new(SQLITE).exists() {
            eprintln!("{SQLITE} is not on this machine: skipped");
            return;
        }
        let libc_rows = table::build(&std::fs::read(LIBC).expect("libc"))
            .expect("table")
            .rows
            .len() as u32;
        let sqlite_rows = table::build(&std::fs::read(SQLITE).expect("sqlite"))
            .expect("table")
            .rows
            .len() as u32;
        // Room for either, not both.
        let cap = libc_rows.max(sqlite_rows) + 10;
        let mut maps = FakeMaps::default();
        let mut manager = TableManager::new(limits(cap));
        let first = manager
            .register(&mut maps, 10, &modules_of(&[LIBC]))
            .expect("registers");
        assert_eq!(first.with_table, 1);
        let second = manager
            .register(&mut maps, 11, &modules_of(&[SQLITE]))
            .expect("registers");
        assert_eq!(second.with_table, 1);
        let stats = manager.stats();
        assert_eq!(stats.evictions, 1);
        assert_eq!(stats.tables_loaded, 1);
        assert_eq!(stats.rows_used, u64::from(sqlite_rows));
        assert!(stats.table_bytes <= stats.capacity_bytes);
        // Process 10's libc table was evicted: the kernel sees count 0 there (frame pointers).
        let (_, mappings) = maps.processes[&10];
        let libc_table = mappings.entries[0].table;
        assert_eq!(maps.tables[&libc_table].count, 0);
        // Registering process 10 again brings libc back and evicts sqlite.
        let again = manager
            .register(&mut maps, 10, &modules_of(&[LIBC]))
            .expect("registers");
        assert_eq!(again.built, 1);
        assert_eq!(manager.stats().evictions, 2);
        // Both at once cannot fit: one of them is left to frame pointers, nothing fails.
        let both = manager
            .register(&mut maps, 12, &modules_of(&[LIBC, SQLITE]))
            .expect("registers");
        assert_eq!(both.mappings, 2);
        assert_eq!(both.with_table, 1);
    }

    #[test]
    fn free_ranges_coalesce() {
        let mut manager = TableManager::new(limits(100));
        let a = manager.allocate(30).expect("fits");
        let b = manager.allocate(30).expect("fits");
        let c = manager.allocate(30).expect("fits");
        assert_eq!((a, b, c), (0, 30, 60));
        assert!(manager.allocate(20).is_none());
        manager.release(a, 30);
        manager.release(c, 30);
        manager.release(b, 30);
        assert_eq!(manager.free, vec![(0, 100)]);
    }

    #[test]
    fn slots_of_processes_the_kernel_dropped_are_reused() {
        let mut maps = FakeMaps::default();
        let mut manager = TableManager::new(limits(16));
        for pid in 1..=4 {
            manager
                .register(&mut maps, pid, &Modules::default())
                .expect("registers");
        }
        assert!(matches!(
            manager.register(&mut maps, 5, &Modules::default()),
            Err(UnwindError::NoSlot { pid: 5, .. })
        ));
        // The kernel drops pid 2 at its exit: its slot is free again.
        maps.processes.remove(&2);
        manager
            .register(&mut maps, 5, &Modules::default())
            .expect("reuses the slot");
        manager.unregister(&mut maps, 5);
        assert_eq!(manager.stats().processes, 3);
    }
}
