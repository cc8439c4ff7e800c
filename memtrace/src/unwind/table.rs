//! Compact unwind tables from an object's CFI (`.eh_frame`, then `.debug_frame` for what
//! `.eh_frame` does not cover), the form the kernel unwinder reads: rows sorted by address, each
//! saying how to find the canonical frame address (rsp or rbp plus an offset) and where the
//! caller's rbp was saved. The return address is at CFA - 8 on x86-64.
//!
//! Pure functions of the ELF bytes: nothing here touches a process or the kernel.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Reader as _,
    Register, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use memtrace_common::{
    UnwindRow, ROW_CFA_RBP, ROW_CFA_RSP, ROW_END, ROW_PLT, ROW_UNDEFINED, ROW_UNSUPPORTED,
    UNWIND_MAX_TABLE_ROWS,
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not an ELF object")]
    Parse(#[source] object::read::Error),
    #[error("not an x86-64 ELF object")]
    Architecture,
    #[error("malformed CFI in {section}")]
    Cfi {
        section: &'static str,
        #[source]
        source: gimli::Error,
    },
    #[error("{rows} unwind rows, over the limit of {UNWIND_MAX_TABLE_ROWS}")]
    TooLarge { rows: usize },
}

/// An object's compact table and what building it found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Sorted by `pc`, no two consecutive rows alike.
    pub rows: Vec<UnwindRow>,
    /// FDEs read from `.eh_frame` and `.debug_frame`.
    pub fdes: usize,
    /// Rows whose rule the kernel does not evaluate (it falls back to frame pointers there).
    pub unsupported: usize,
}

impl Table {
    /// The row covering `pc` (an ELF virtual address), as the kernel finds it: the last row at or
    /// below `pc`.
    pub fn lookup(&self, pc: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(pc).ok()?;
        let index = self.rows.partition_point(|row| row.pc <= pc);
        self.rows.get(index.checked_sub(1)?)
    }

    pub fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<UnwindRow>()
    }
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Builds the table of an x86-64 ELF object. An object without CFI gives an empty table.
pub fn build(elf: &[u8]) -> Result<Table, TableError> {
    let file = object::File::parse(elf).map_err(TableError::Parse)?;
    if file.architecture() != object::Architecture::X86_64 {
        return Err(TableError::Architecture);
    }
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut out = Vec::new();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    let mut table = Table::default();
    if let Some(section) = file.section_by_name(".eh_frame") {
        if let Ok(data) = section.data() {
            let bases = bases.clone().set_eh_frame(section.address());
            let eh = EhFrame::new(data, LittleEndian);
            collect(
                &eh,
                &bases,
                ".eh_frame",
                &[],
                &mut out,
                &mut covered,
                &mut table,
            )?;
        }
    }
    if let Some(section) = file.section_by_name(".debug_frame") {
        // Compressed sections (SHF_COMPRESSED) come back as an error here: skipped.
        if let Ok(data) = section.data() {
            let mut debug = DebugFrame::new(data, LittleEndian);
            debug.set_address_size(8);
            let mut already = covered.clone();
            already.sort_unstable();
            collect(
                &debug,
                &bases,
                ".debug_frame",
                &already,
                &mut out,
                &mut covered,
                &mut table,
            )?;
        }
    }
    table.rows = compact(out);
    if table.rows.len() > UNWIND_MAX_TABLE_ROWS as usize {
        return Err(TableError::TooLarge {
            rows: table.rows.len(),
        });
    }
    Ok(table)
}

/// A row before sorting: `rank` orders rows at the same address (a function's row wins over the
/// end marker of the function before it).
struct Raw {
    row: UnwindRow,
    rank: u8,
}

fn collect<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    name: &'static str,
    skip: &[(u64, u64)],
    out: &mut Vec<Raw>,
    covered: &mut Vec<(u64, u64)>,
    table: &mut Table,
) -> Result<(), TableError>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let err = |source| TableError::Cfi {
        section: name,
        source,
    };
    let mut ctx = Box::new(UnwindContext::<usize>::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(err)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) =
            partial.parse(|section, bases, offset| section.cie_from_offset(bases, offset))
        else {
            continue;
        };
        let (start, end) = (fde.initial_address(), fde.end_address());
        if start >= end || start > u64::from(u32::MAX) {
            continue;
        }
        // `.debug_frame` only fills what `.eh_frame` left out.
        let index = skip.partition_point(|&(s, _)| s <= start);
        if index > 0 && start < skip[index - 1].1 {
            continue;
        }
        table.fdes += 1;
        covered.push((start, end));
        let Ok(mut rows) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = rows.next_row() {
            let compact = convert(section, row);
            if compact.kind == ROW_UNSUPPORTED {
                table.unsupported += 1;
            }
            let Ok(pc) = u32::try_from(row.start_address()) else {
                break;
            };
            out.push(Raw {
                row: UnwindRow { pc, ..compact },
                rank: 1,
            });
        }
        if let Ok(pc) = u32::try_from(end) {
            out.push(Raw {
                row: UnwindRow {
                    pc,
                    kind: ROW_UNDEFINED,
                    ..UnwindRow::default()
                },
                rank: 0,
            });
        }
    }
    Ok(())
}

const RSP: Register = X86_64::RSP;
const RBP: Register = X86_64::RBP;

/// One gimli row as a compact row (its `pc` is set by the caller).
fn convert<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    row: &gimli::UnwindTableRow<usize>,
) -> UnwindRow {
    let unsupported = UnwindRow {
        kind: ROW_UNSUPPORTED,
        ..UnwindRow::default()
    };
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            return UnwindRow {
                kind: ROW_END,
                ..UnwindRow::default()
            }
        }
        Some(RegisterRule::Offset(-8)) | None => {}
        Some(_) => return unsupported,
    }
    let (kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i16::try_from(*offset) else {
                return unsupported;
            };
            match *register {
                RSP => (ROW_CFA_RSP, offset),
                RBP => (ROW_CFA_RBP, offset),
                _ => return unsupported,
            }
        }
        CfaRule::Expression(expression) => {
            match expression
                .get(section)
                .ok()
                .and_then(|e| e.0.to_slice().ok().and_then(|b| plt_threshold(&b)))
            {
                Some(threshold) => (ROW_PLT, i16::from(threshold)),
                None => return unsupported,
            }
        }
    };
    let rbp_offset = match row.register(RBP) {
        Some(RegisterRule::Offset(offset)) if offset % 8 == 0 => match i8::try_from(offset / 8) {
            Ok(offset) if offset != 0 => offset,
            _ => return unsupported,
        },
        Some(RegisterRule::Undefined | RegisterRule::SameValue) | None => 0,
        Some(_) => return unsupported,
    };
    UnwindRow {
        pc: 0,
        cfa_offset,
        rbp_offset,
        kind,
    }
}

/// The expression every x86-64 linker gives PLT entries: `rsp + 8 + ((rip & 15) >= N) << 3`.
/// Returns N.
fn plt_threshold(bytes: &[u8]) -> Option<u8> {
    const BREG7_8: [u8; 2] = [0x77, 0x08];
    const BREG16_0: [u8; 2] = [0x80, 0x00];
    const LIT15_AND: [u8; 2] = [0x3f, 0x1a];
    const GE_LIT3_SHL_PLUS: [u8; 4] = [0x2a, 0x33, 0x24, 0x22];
    if bytes.len() != 11
        || bytes[0..2] != BREG7_8
        || bytes[2..4] != BREG16_0
        || bytes[4..6] != LIT15_AND
        || bytes[7..11] != GE_LIT3_SHL_PLUS
    {
        return None;
    }
    // DW_OP_lit0..DW_OP_lit31 are 0x30..0x4f.
    bytes[6].checked_sub(0x30).filter(|n| *n < 16)
}

/// Sorts, keeps one row per address (a function's row over an end marker, the first section's
/// over a later one) and drops rows that repeat the previous one.
fn compact(mut raw: Vec<Raw>) -> Vec<UnwindRow> {
    raw.sort_by(|a, b| a.row.pc.cmp(&b.row.pc).then(b.rank.cmp(&a.rank)));
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(raw.len());
    let mut last_pc = None;
    for Raw { row, .. } in raw {
        if last_pc == Some(row.pc) {
            continue;
        }
        last_pc = Some(row.pc);
        if let Some(previous) = rows.last() {
            if (previous.kind, previous.cfa_offset, previous.rbp_offset)
                == (row.kind, row.cfa_offset, row.rbp_offset)
            {
                continue;
            }
        }
        rows.push(row);
    }
    rows
}

/// The ELF virtual address of `file_offset` in an object, from the program header that loads
/// it: run-time address - this = the mapping's bias.
pub fn vaddr_of_offset(elf: &[u8], file_offset: u64) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    file.segments().find_map(|segment| {
        let (start, size) = segment.file_range();
        (start..start + size.max(1))
            .contains(&file_offset)
            .then(|| segment.address() + (file_offset - start))
    })
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;

    fn build_file(path: &str) -> Option<Table> {
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("{path} is not on this machine: skipped");
            return None;
        };
        Some(build(&bytes).expect("builds"))
    }

    /// `readelf -wF`'s interpretation of the CFA and rbp columns, row by row: an independent
    /// reading of the same CFI.
    fn readelf_rows(path: &str) -> Vec<(u64, String, String)> {
        let out = Command::new("readelf")
            .args(["-wF", path])
            .output()
            .expect("readelf (binutils) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut rows = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        let mut in_fde = false;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"LOC") && in_fde {
                columns = fields.iter().map(|f| f.to_string()).collect();
                continue;
            }
            if line.contains(" CIE") || line.contains(" FDE") {
                columns.clear();
                in_fde = line.contains(" FDE");
                continue;
            }
            if columns.is_empty() || fields.len() != columns.len() {
                continue;
            }
            let Ok(pc) = u64::from_str_radix(fields[0], 16) else {
                continue;
            };
            let rbp = columns
                .iter()
                .position(|c| c == "rbp")
                .map(|i| fields[i].to_string())
                .unwrap_or_else(|| "u".into());
            let ra_undefined = columns
                .iter()
                .position(|c| c == "ra")
                .is_some_and(|i| fields[i] == "u");
            let cfa = if ra_undefined {
                "end".to_string()
            } else {
                fields[1].to_string()
            };
            rows.push((pc, cfa, rbp));
        }
        rows
    }

    fn rule(row: &UnwindRow) -> (String, String) {
        let cfa = match row.kind {
            ROW_CFA_RSP => format!("rsp+{}", row.cfa_offset),
            ROW_CFA_RBP => format!("rbp+{}", row.cfa_offset),
            ROW_PLT => "exp".into(),
            ROW_END => "end".into(),
            other => format!("kind{other}"),
        };
        let rbp = if row.rbp_offset == 0 {
            "u".into()
        } else {
            format!("c{}", i32::from(row.rbp_offset) * 8)
        };
        (cfa, rbp)
    }

    /// Every CFA and rbp rule that readelf reads in `path` is the one our table gives at that
    /// address (sampled: every `step`-th row).
    fn agrees_with_readelf(path: &str, table: &Table, step: usize) -> usize {
        let mut checked = 0;
        for (pc, cfa, rbp) in readelf_rows(path).into_iter().step_by(step) {
            if !["exp", "rsp", "rbp", "end"]
                .iter()
                .any(|p| cfa.starts_with(p))
            {
                continue;
            }
            let row = table.lookup(pc).expect("a row covers every FDE address");
            let (our_cfa, our_rbp) = rule(row);
            assert_eq!(our_cfa, cfa, "{path}: CFA at {pc:#x}");
            if cfa == "end" {
                continue;
            }
            let expected_rbp = if rbp == "u" || rbp == "s" { "u" } else { &rbp };
            assert_eq!(our_rbp, expected_rbp, "{path}: rbp at {pc:#x}");
            checked += 1;
        }
        checked
    }

    fn symbol(path: &str, name: &str) -> u64 {
        let bytes = std::fs::read(path).expect("reads");
        let file = object::File::parse(&*bytes).expect("parses");
        use object::ObjectSymbol as _;
        file.dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .unwrap_or_else(|| panic!("{name} in {path}"))
    }

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const PYTHON: &str = "/usr/bin/python3.11";
    const SQLITE: &str = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0";

    #[test]
    fn libc_table_matches_readelf() {
        let Some(table) = build_file(LIBC) else {
            return;
        };
        assert!(table.rows.len() > 10_000, "{} rows", table.rows.len());
        assert!(table.fdes > 2_000, "{} FDEs", table.fdes);
        assert!(agrees_with_readelf(LIBC, &table, 7) > 1_000);
        // At malloc's first instruction the return address is at rsp: CFA = rsp + 8.
        let malloc = symbol(LIBC, "malloc");
        let row = table.lookup(malloc).expect("malloc has CFI");
        assert_eq!((row.kind, row.cfa_offset), (ROW_CFA_RSP, 8));
    }

    #[test]
    fn python_table_matches_readelf() {
        let Some(table) = build_file(PYTHON) else {
            return;
        };
        assert!(table.rows.len() > 50_000, "{} rows", table.rows.len());
        assert!(agrees_with_readelf(PYTHON, &table, 31) > 1_000);
        let resize = symbol(PYTHON, "PyByteArray_Resize");
        let row = table.lookup(resize).expect("PyByteArray_Resize has CFI");
        assert_eq!((row.kind, row.cfa_offset), (ROW_CFA_RSP, 8));
        // Built without frame pointers: somewhere inside the function the CFA is rsp-based with
        // a larger offset.
        let inside = table
            .rows
            .iter()
            .find(|r| u64::from(r.pc) > resize && u64::from(r.pc) < resize + 64)
            .expect("rows inside the function");
        assert_eq!(inside.kind, ROW_CFA_RSP);
        assert!(inside.cfa_offset > 8);
    }

    #[test]
    fn sqlite_table_matches_readelf() {
        let Some(table) = build_file(SQLITE) else {
            return;
        };
        assert!(table.rows.len() > 10_000, "{} rows", table.rows.len());
        assert!(agrees_with_readelf(SQLITE, &table, 5) > 1_000);
        let step = symbol(SQLITE, "sqlite3_step");
        assert_eq!(
            table.lookup(step).map(|r| (r.kind, r.cfa_offset)),
            Some((ROW_CFA_RSP, 8))
        );
    }

    fn compile(dir: &Path, name: &str, flags: &[&str]) -> std::path::PathBuf {
        let source = dir.join(format!("{name}.c"));
        std::fs::write(
            &source,
            "#include <stdlib.h>\n\
             __attribute__((noinline)) void *leaf(unsigned long n) { return malloc(n); }\n\
             __attribute__((noinline)) void *mid(unsigned long n) { volatile char b[300]; b[n % 300] = 1; \
             void *p = leaf(n + b[3]); return p; }\n\
             int main(int argc, char **argv) { (void)argv; return mid(argc) != 0; }\n",
        )
        .expect("writes");
        let out = dir.join(name);
        let status = Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&source)
            .status()
            .expect("cc runs");
        assert!(status.success());
        out
    }

    #[test]
    fn omit_frame_pointer_workload() {
        let dir = std::env::temp_dir().join(format!("memtrace-unwind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = compile(&dir, "nofp", &["-O2", "-fomit-frame-pointer"]);
        let path = path.to_str().expect("utf-8");
        let table = build_file(path).expect("just built");
        agrees_with_readelf(path, &table, 1);
        // `mid` keeps a 300-byte buffer on the stack and no frame pointer: its CFA is rsp plus
        // the part of the buffer outside the 128-byte red zone and more.
        let mid = symbol(path, "mid");
        let deepest = table
            .rows
            .iter()
            .filter(|r| u64::from(r.pc) >= mid && u64::from(r.pc) < mid + 64)
            .map(|r| (r.kind, r.cfa_offset))
            .max_by_key(|r| r.1)
            .expect("rows for mid");
        assert_eq!(deepest.0, ROW_CFA_RSP);
        assert!(deepest.1 >= 300 - 128, "{deepest:?}");

        // Without asynchronous unwind tables (and no -g) gcc still emits .eh_frame for C? It
        // does not: such an object has no CFI and an empty table.
        let bare = compile(
            &dir,
            "nocfi",
            &[
                "-O2",
                "-fomit-frame-pointer",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
            ],
        );
        let bare = bare.to_str().expect("utf-8");
        let table = build_file(bare).expect("just built");
        let main = symbol(bare, "main");
        assert!(
            table.lookup(main).is_none_or(|r| r.kind == ROW_UNDEFINED),
            "{:?}",
            table.lookup(main)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plt_expression() {
        assert_eq!(
            plt_threshold(&[0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22]),
            Some(11)
        );
        assert_eq!(plt_threshold(&[0x77, 8]), None);
    }

    #[test]
    fn compact_keeps_function_rows_over_end_markers() {
        let row = |pc, kind, cfa_offset| Raw {
            row: UnwindRow {
                pc,
                cfa_offset,
                kind,
                ..UnwindRow::default()
            },
            rank: u8::from(kind != ROW_UNDEFINED),
        };
        let rows = compact(vec![
            row(0x20, ROW_UNDEFINED, 0),
            row(0x10, ROW_CFA_RSP, 8),
            row(0x14, ROW_CFA_RSP, 16),
            row(0x20, ROW_CFA_RSP, 8),
            row(0x24, ROW_CFA_RSP, 8),
            row(0x30, ROW_UNDEFINED, 0),
        ]);
        let pcs: Vec<u32> = rows.iter().map(|r| r.pc).collect();
        assert_eq!(pcs, [0x10, 0x14, 0x20, 0x30]);
        let table = Table {
            rows,
            ..Table::default()
        };
        assert_eq!(table.lookup(0x26).map(|r| r.cfa_offset), Some(8));
        assert_eq!(table.lookup(0x40).map(|r| r.kind), Some(ROW_UNDEFINED));
        assert!(table.lookup(0x8).is_none());
    }
}
