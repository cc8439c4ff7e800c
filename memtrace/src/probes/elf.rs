//! The machine code of functions in an ELF object, as the kernel sees it: the file offset a uprobe
//! is attached at, and the bytes found there.

use std::{io, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _};

/// At most this many bytes of a function are read: placement looks at its first instructions only.
const MAX_CODE: u64 = 512;
/// Bytes read when the symbol has no size.
const UNSIZED_CODE: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ELF object memtrace can parse")]
    Parse {
        path: String,
        #[source]
        source: object::Error,
    },
}

/// A function's code in its object file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCode {
    /// Virtual address of the function in the object.
    pub address: u64,
    /// File offset of the function's first instruction (what a uprobe is attached at).
    pub file_offset: u64,
    /// Its first bytes (up to the symbol's size, at most `MAX_CODE`).
    pub bytes: Vec<u8>,
}

/// Largest object file read to place probes.
const MAX_OBJECT_BYTES: u64 = 2 << 30;

/// An ELF object read once, to look up the code of several functions.
pub struct ElfCode {
    data: Vec<u8>,
}

impl ElfCode {
    pub fn read(path: &Path) -> Result<Self, ElfError> {
        // The object belongs to the process to trace: never block on it, read a regular file only.
        let data = crate::os::files::read_regular(path, MAX_OBJECT_BYTES).map_err(|source| {
            ElfError::Read {
                path: path.display().to_string(),
                source,
            }
        })?;
        // Parsed once here so that a file that is not ELF is an error now, not a silent miss later.
        object::File::parse(&*data).map_err(|source| ElfError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { data })
    }

    /// The code of the function `symbol` defines (dynamic symbols first, then the symbol table,
    /// as aya resolves a symbol), or `None` when the object does not define it in a section that
    /// is in the file.
    pub fn function(&self, symbol: &str) -> Option<FunctionCode> {
        let file = object::File::parse(&*self.data).ok()?;
        let sym = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.name() == Ok(symbol))?;
        let section = file.section_by_index(sym.section_index()?).ok()?;
        let (section_offset, section_size) = section.file_range()?;
        let within = sym.address().checked_sub(section.address())?;
        if within >= section_size {
            return None;
        }
        let file_offset = section_offset.checked_add(within)?;
        let wanted = match sym.size() {
            0 => UNSIZED_CODE,
            size => size.min(MAX_CODE),
        };
        let len = wanted.min(section_size - within);
        let start = usize::try_from(file_offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let bytes = self.data.get(start..end)?.to_vec();
        Some(FunctionCode {
            address: sym.address(),
            file_offset,
            bytes,
        })
    }

    /// The function a jump to `address` lands in: the symbol defined there, or, for a PLT stub
    /// (`jmp [rip+GOT slot]`, after an `endbr64`), the symbol its GOT slot is relocated to.
    pub fn jump_target(&self, address: u64) -> Option<String> {
        use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, Register};
        let file = object::File::parse(&*self.data).ok()?;
        if let Some(sym) = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.is_definition() && s.address() == address && s.size() > 0)
        {
            return sym.name().ok().map(str::to_string);
        }
        let section = file.sections().find(|s| {
            address >= s.address() && address - s.address() < s.size() && s.file_range().is_some()
        })?;
        let (section_offset, section_size) = section.file_range()?;
        let within = address - section.address();
        let start = usize::try_from(section_offset + within).ok()?;
        let len = usize::try_from((section_size - within).min(16)).ok()?;
        let code = self.data.get(start..start + len)?;
        let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        let mut slot = None;
        for _ in 0..2 {
            if !decoder.can_decode() {
                break;
            }
            let instruction = decoder.decode();
            match instruction.mnemonic() {
                Mnemonic::Endbr64 => continue,
                Mnemonic::Jmp
                    if instruction.code() == Code::Jmp_rm64
                        && instruction.memory_base() == Register::RIP =>
                {
                    slot = Some(instruction.memory_displacement64());
                }
                _ => {}
            }
            break;
        }
        let slot = slot?;
        let (_, relocation) = file
            .dynamic_relocations()?
            .find(|(offset, _)| *offset == slot)?;
        let object::RelocationTarget::Symbol(index) = relocation.target() else {
            return None;
        };
        let symbols = file.dynamic_symbol_table()?;
        let name = symbols.symbol_by_index(index).ok()?.name().ok()?;
        Some(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary's own code: a function it defines is found, at the offset aya would use,
    /// and its bytes are the ones in the file.
    #[test]
    fn finds_a_defined_function_in_this_binary() {
        let exe = std::env::current_exe().expect("test binary");
        let elf = ElfCode::read(&exe).expect("the test binary is ELF");
        let data = std::fs::read(&exe).expect("readable");
        let file = object::File::parse(&*data).expect("ELF");
        let sym = file
            .symbols()
            .find(|s| s.is_definition() && s.kind() == object::SymbolKind::Text && s.size() > 16)
            .expect("a sized function");
        let name = sym.name().expect("named");
        let code = elf.function(name).expect("found");
        let section = file
            .section_by_index(sym.section_index().expect("in a section"))
            .expect("section");
        let (offset, _) = section.file_range().expect("in the file");
        assert_eq!(code.file_offset, sym.address() - section.address() + offset);
        let start = code.file_offset as usize;
        assert_eq!(code.bytes, data[start..start + code.bytes.len()]);
        assert!(!code.bytes.is_empty());
        assert!(elf.function("no_such_function_in_memtrace").is_none());
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let path = std::env::temp_dir().join(format!("memtrace-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"not an object").expect("written");
        let result = ElfCode::read(&path);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(result, Err(ElfError::Parse { .. })));
    }
}
