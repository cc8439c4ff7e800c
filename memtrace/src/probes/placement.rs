//! Where a function's entry uprobe goes.
//!
//! A uprobe hit on x86-64 is one trap when the kernel *emulates* the instruction under the
//! breakpoint, and two traps (the breakpoint, then a single step of a copy of the instruction out of
//! line) when it does not. In a VM the single step costs ~10x the breakpoint: on this project's VM
//! an emulated hit costs ~1.5 µs and a single-stepped one ~16 µs (perf uprobes, no BPF program).
//! glibc's `free` starts with `test rdi,rdi` (single-stepped); its `push rbp` six bytes later is
//! emulated.
//!
//! So each probed function's first instructions are decoded (iced-x86) and the probe goes on the
//! first instruction the kernel emulates, when every instruction before it provably leaves what the
//! probe programs read as it was (the function's argument registers, `rsp` whose word is the return
//! address, `rbp` that the stack walk starts from) and never writes memory or leaves the straight
//! line, except a branch whose taken path needs no event (`free(NULL)`). Otherwise the probe stays
//! on the entry. A return probe shares its function's entry probe (one breakpoint, both handlers):
//! the kernel hijacks the return address at `rsp` when the breakpoint is hit, which is still the
//! function's return address there, so it moves with it.
//!
//! What the kernel emulates (arch/x86/kernel/uprobes.c, `branch_setup_xol_ops` and
//! `push_setup_xol_ops`, unchanged from 6.9 to 6.18): `nop` (0x90, any prefixes), `jmp rel8/rel32`,
//! `call rel32`, `jcc rel8/rel32` (all without an operand-size prefix), and `push reg` (one byte, or
//! `0x41` + one byte for r8–r15). Multi-byte `nopl` (0f 1f) and `endbr64` are single-stepped.

use std::fmt;

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Formatter as _, Instruction,
    InstructionInfoFactory, IntelFormatter, Mnemonic, OpAccess, OpKind, Register,
};
use serde::Serialize;

/// Instructions looked at past the entry before giving up.
const MAX_INSTRUCTIONS: usize = 16;
/// Instructions looked at on a branch's taken path (down to its `ret`).
const MAX_RETURN_PATH: usize = 4;

/// The argument registers of the System V x86-64 calling convention, in order.
const ARGUMENT_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// What the probe of a function reads, which the instructions before a moved probe must leave as
/// they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Integer arguments the function takes (its C prototype): rdi, rsi, ... in that order.
    pub arguments: usize,
    /// A NULL first argument makes the call a no-op that needs no event (`free(NULL)`): a
    /// `test rdi,rdi; je` before the probe may skip it.
    pub null_is_noop: bool,
    /// The function has a return probe. Only a function without one may skip a path that returns
    /// without writing anything (what such a path returns is never looked at).
    pub has_return: bool,
}

/// Where the entry probe of one function sits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub symbol: String,
    /// File name of the object the function is in.
    pub object: String,
    /// Bytes past the function's entry.
    pub offset: u64,
    /// File offset of the probed instruction in the object (where the uprobe is attached).
    pub file_offset: u64,
    /// The instruction under the breakpoint (Intel syntax), empty when it was not decoded.
    pub instruction: String,
    /// The kernel emulates that instruction (one trap per hit); otherwise it single-steps it.
    pub emulated: bool,
    /// Why the probe stays on the entry of a function whose first instruction is single-stepped.
    pub note: Option<String>,
}

impl Placement {
    /// The same function when the kernel refused the moved probe and it went on the entry.
    pub fn refused(self, at_entry: bool) -> Self {
        if !at_entry || self.offset == 0 {
            return self;
        }
        Self {
            note: Some(format!(
                "the kernel refused +{} {}: on the entry",
                self.offset, self.instruction
            )),
            file_offset: self.file_offset - self.offset,
            offset: 0,
            instruction: String::new(),
            emulated: false,
            ..self
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: +{}", self.symbol, self.offset)?;
        if !self.instruction.is_empty() {
            write!(f, " {}", self.instruction)?;
        }
        write!(
            f,
            " ({})",
            if self.emulated {
                "emulated"
            } else {
                "single-stepped"
            }
        )?;
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}

/// The result of looking at a function's first instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub offset: u64,
    pub instruction: String,
    pub emulated: bool,
    pub note: Option<String>,
    /// The probed instruction is a `jmp` with these arguments: where it goes, from the entry (a
    /// tail call, whose target may be probed already).
    pub tail_call: Option<i64>,
}

/// What the kernel does with the instruction under a breakpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulation {
    Nop,
    Push,
    Jump,
    Call,
    ConditionalJump,
}

/// Whether the x86-64 kernel emulates `insn` (the exact bytes of one instruction) instead of
/// single-stepping it, following arch/x86/kernel/uprobes.c.
pub fn kernel_emulates(insn: &[u8]) -> Option<Emulation> {
    let mut i = 0;
    let mut operand_size = false;
    while let Some(&byte) = insn.get(i) {
        match byte {
            // es, cs, ss, ds and lock: the kernel refuses to probe the instruction at all.
            0x26 | 0x2e | 0x36 | 0x3e | 0xf0 => return None,
            0x66 => operand_size = true,
            0x64 | 0x65 | 0x67 | 0xf2 | 0xf3 => {}
            _ => break,
        }
        i += 1;
    }
    let rex = insn.get(i).copied().filter(|b| (0x40..=0x4f).contains(b));
    if rex.is_some() {
        i += 1;
    }
    let opcode = *insn.get(i)?;
    let emulation = match opcode {
        // `prefix* + nop`. With REX.B, 0x90 is `xchg r8, rax`: not a nop, never placed on.
        0x90 if rex.is_none() => Emulation::Nop,
        0xeb | 0xe9 if !operand_size => Emulation::Jump,
        0xe8 if !operand_size => Emulation::Call,
        0x70..=0x7f if !operand_size => Emulation::ConditionalJump,
        0x0f if !operand_size && matches!(insn.get(i + 1), Some(0x80..=0x8f)) => {
            Emulation::ConditionalJump
        }
        // One byte, or exactly REX.B (0x41) and one byte.
        0x50..=0x57 if insn.len() == 1 || (insn.len() == 2 && rex == Some(0x41) && i == 1) => {
            Emulation::Push
        }
        _ => return None,
    };
    Some(emulation)
}

/// Chooses the offset of the entry probe of a function whose first bytes are `code`.
pub fn decide(code: &[u8], signature: Signature) -> Decision {
    let protected = protected_registers(signature);
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    // The first emulated instruction walked past (a branch that only skips a no-op): the probe
    // goes there when nothing emulated follows.
    let mut fallback: Option<(u64, String)> = None;
    // The flags hold `test rdi,rdi` (ZF set exactly when the first argument is NULL).
    let mut zero_flag_is_null = false;
    let mut first = String::new();
    let mut stop = None;
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            stop = Some("the function's code ends".to_string());
            break;
        }
        decoder.decode_out(&mut instruction);
        let offset = instruction.ip();
        let text = format(&instruction);
        if offset == 0 {
            first = text.clone();
        }
        if instruction.is_invalid() {
            stop = Some(format!("undecodable bytes at +{offset}"));
            break;
        }
        let bytes = &code[offset as usize..instruction.next_ip() as usize];
        if let Some(emulation) = kernel_emulates(bytes) {
            let skippable = emulation == Emulation::ConditionalJump
                && skips_only_a_noop(code, &instruction, signature, zero_flag_is_null);
            if !skippable {
                return Decision {
                    offset,
                    instruction: text,
                    emulated: true,
                    note: None,
                    tail_call: (emulation == Emulation::Jump)
                        .then(|| instruction.near_branch_target() as i64),
                };
            }
            fallback.get_or_insert((offset, text));
            continue;
        }
        if let Err(why) = harmless(&instruction, &mut info, &protected) {
            stop = Some(format!("{text} at +{offset} {why}"));
            break;
        }
        if instruction.rflags_modified() != 0 {
            zero_flag_is_null = is_null_test(&instruction);
        }
    }
    if let Some((offset, instruction)) = fallback {
        return Decision {
            offset,
            instruction,
            emulated: true,
            note: None,
            tail_call: None,
        };
    }
    Decision {
        offset: 0,
        instruction: first,
        emulated: false,
        note: Some(
            stop.unwrap_or_else(|| {
                format!("no emulated instruction in the first {MAX_INSTRUCTIONS}")
            }),
        ),
        tail_call: None,
    }
}

/// The entry probe, as when placement is off (forced, or not x86-64): what its first instruction is
/// and whether the kernel emulates it, with the reason the probe was not moved.
pub fn at_entry(code: &[u8], note: &str) -> Decision {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let (text, emulated) = if decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            (String::new(), false)
        } else {
            let bytes = &code[..instruction.len()];
            (format(&instruction), kernel_emulates(bytes).is_some())
        }
    } else {
        (String::new(), false)
    };
    Decision {
        offset: 0,
        instruction: text,
        emulated,
        note: Some(note.to_string()),
        tail_call: None,
    }
}

impl Decision {
    /// The placement of `symbol`, whose entry is at `entry_file_offset` in `object`.
    pub fn placement(self, symbol: &str, object: &str, entry_file_offset: u64) -> Placement {
        Placement {
            symbol: symbol.to_string(),
            object: object.to_string(),
            offset: self.offset,
            file_offset: entry_file_offset + self.offset,
            instruction: self.instruction,
            emulated: self.emulated,
            note: self.note,
        }
    }
}

/// Registers the instructions before a moved probe must not write.
fn protected_registers(signature: Signature) -> Vec<Register> {
    let mut protected: Vec<Register> = ARGUMENT_REGISTERS
        .iter()
        .copied()
        .take(signature.arguments)
        .collect();
    protected.extend([Register::RSP, Register::RBP]);
    protected
}

/// Instructions that compute into registers and flags and nothing else (their operands are still
/// checked: no memory write, no protected register written).
fn computes_only(mnemonic: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        mnemonic,
        Endbr64
            | Endbr32
            | Nop
            | Pause
            | Test
            | Cmp
            | Mov
            | Movzx
            | Movsx
            | Movsxd
            | Lea
            | Add
            | Sub
            | Adc
            | Sbb
            | And
            | Or
            | Xor
            | Shl
            | Shr
            | Sar
            | Rol
            | Ror
            | Neg
            | Not
            | Inc
            | Dec
            | Bt
            | Imul
            | Mul
            | Bswap
            | Cmovo
            | Cmovno
            | Cmovb
            | Cmovae
            | Cmove
            | Cmovne
            | Cmovbe
            | Cmova
            | Cmovs
            | Cmovns
            | Cmovp
            | Cmovnp
            | Cmovl
            | Cmovge
            | Cmovle
            | Cmovg
            | Seto
            | Setno
            | Setb
            | Setae
            | Sete
            | Setne
            | Setbe
            | Seta
            | Sets
            | Setns
            | Setp
            | Setnp
            | Setl
            | Setge
            | Setle
            | Setg
    )
}

/// Ok when executing `instruction` before the probe changes nothing the probe reads and skips
/// nothing: it falls through, writes no memory, and writes only unprotected general registers.
fn harmless(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    protected: &[Register],
) -> Result<(), String> {
    if instruction.flow_control() != FlowControl::Next || !computes_only(instruction.mnemonic()) {
        return Err("may not fall through to the next instruction, or has side effects".into());
    }
    if instruction.has_lock_prefix() {
        return Err("is locked".into());
    }
    let info = info.info(instruction);
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return Err("writes memory".into());
    }
    for used in info.used_registers() {
        if !writes(used.access()) {
            continue;
        }
        let register = used.register().full_register();
        if !register.is_gpr64() {
            return Err(format!("writes {register:?}"));
        }
        if protected.contains(&register) {
            return Err(format!("writes {}", register_name(register)));
        }
    }
    Ok(())
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// `test rdi,rdi` or `cmp rdi,0`: afterwards ZF is set exactly when the first argument is NULL.
fn is_null_test(instruction: &Instruction) -> bool {
    match instruction.code() {
        Code::Test_rm64_r64 => {
            instruction.op0_kind() == OpKind::Register
                && instruction.op0_register() == Register::RDI
                && instruction.op1_register() == Register::RDI
        }
        Code::Cmp_rm64_imm8 | Code::Cmp_rm64_imm32 => {
            instruction.op0_kind() == OpKind::Register
                && instruction.op0_register() == Register::RDI
                && instruction.immediate(1) == 0
        }
        _ => false,
    }
}

/// Whether the conditional branch `jcc` is taken only in calls that need no event, so that a
/// probe after it may let those calls through untraced:
/// - `je` right after `test rdi,rdi` in a function whose NULL first argument is a no-op (`free`);
/// - a branch to a path that returns without writing memory or calling anything, in a function
///   without a return probe (such a call changes nothing).
fn skips_only_a_noop(
    code: &[u8],
    jcc: &Instruction,
    signature: Signature,
    zero_flag_is_null: bool,
) -> bool {
    if signature.null_is_noop
        && zero_flag_is_null
        && signature.arguments >= 1
        && jcc.condition_code() == ConditionCode::e
    {
        return true;
    }
    !signature.has_return && returns_without_effect(code, jcc.near_branch_target())
}

/// Whether the code at `target` returns after at most `MAX_RETURN_PATH` instructions that only
/// compute into registers (no memory write, no branch, no call).
fn returns_without_effect(code: &[u8], target: u64) -> bool {
    let Some(tail) = usize::try_from(target).ok().and_then(|t| code.get(t..)) else {
        return false;
    };
    let mut decoder = Decoder::with_ip(64, tail, target, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instruction = Instruction::default();
    for _ in 0..=MAX_RETURN_PATH {
        if !decoder.can_decode() {
            return false;
        }
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            return false;
        }
        if instruction.mnemonic() == Mnemonic::Ret && instruction.op_count() == 0 {
            return true;
        }
        // Any general register may change on the way out; memory and control flow may not.
        if harmless(&instruction, &mut info, &[]).is_err() {
            return false;
        }
    }
    false
}

/// Intel syntax; a relative branch shows its target as an offset from the function's entry.
fn format(instruction: &Instruction) -> String {
    if instruction.op_count() == 1 && instruction.op0_kind() == OpKind::NearBranch64 {
        let target = instruction.near_branch_target() as i64;
        let sign = if target < 0 { "-" } else { "+" };
        let mnemonic = format!("{:?}", instruction.mnemonic()).to_lowercase();
        return format!("{mnemonic} {sign}{:#x}", target.unsigned_abs());
    }
    let mut formatter = IntelFormatter::new();
    let options = formatter.options_mut();
    options.set_space_after_operand_separator(true);
    options.set_uppercase_hex(false);
    options.set_hex_prefix("0x");
    options.set_hex_suffix("");
    options.set_rip_relative_addresses(true);
    options.set_branch_leading_zeros(false);
    options.set_show_branch_size(false);
    let mut out = String::new();
    formatter.format(instruction, &mut out);
    out
}

fn register_name(register: Register) -> String {
    format!("{register:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MALLOC: Signature = Signature {
        arguments: 1,
        null_is_noop: false,
        has_return: true,
    };
    const CALLOC: Signature = Signature {
        arguments: 2,
        null_is_noop: false,
        has_return: true,
    };
    const POSIX_MEMALIGN: Signature = Signature {
        arguments: 3,
        null_is_noop: false,
        has_return: true,
    };
    const FREE: Signature = Signature {
        arguments: 1,
        null_is_noop: true,
        has_return: false,
    };

    fn placed(code: &[u8], signature: Signature) -> (u64, String, bool) {
        let d = decide(code, signature);
        (d.offset, d.instruction, d.emulated)
    }

    #[test]
    fn kernel_emulation_follows_arch_x86_uprobes() {
        assert_eq!(kernel_emulates(&[0x55]), Some(Emulation::Push)); // push rbp
        assert_eq!(kernel_emulates(&[0x41, 0x54]), Some(Emulation::Push)); // push r12
        assert_eq!(kernel_emulates(&[0x48, 0x55]), None); // rex.w push: not 0x41
        assert_eq!(kernel_emulates(&[0x66, 0x55]), None); // push bp: two bytes, no REX
        assert_eq!(kernel_emulates(&[0x90]), Some(Emulation::Nop));
        assert_eq!(kernel_emulates(&[0x66, 0x90]), Some(Emulation::Nop));
        assert_eq!(kernel_emulates(&[0xf3, 0x90]), Some(Emulation::Nop)); // pause
        assert_eq!(kernel_emulates(&[0x41, 0x90]), None); // xchg r8d, eax
        assert_eq!(
            kernel_emulates(&[0x0f, 0x1f, 0x40, 0x00]), // nopl: single-stepped
            None
        );
        assert_eq!(kernel_emulates(&[0xf3, 0x0f, 0x1e, 0xfa]), None); // endbr64
        assert_eq!(kernel_emulates(&[0xeb, 0x10]), Some(Emulation::Jump));
        assert_eq!(kernel_emulates(&[0xe9, 0, 0, 0, 0]), Some(Emulation::Jump));
        assert_eq!(kernel_emulates(&[0xe8, 0, 0, 0, 0]), Some(Emulation::Call));
        assert_eq!(kernel_emulates(&[0x66, 0xe8, 0, 0]), None);
        assert_eq!(
            kernel_emulates(&[0x74, 0x05]),
            Some(Emulation::ConditionalJump)
        );
        assert_eq!(
            kernel_emulates(&[0x0f, 0x84, 0xbf, 0, 0, 0]),
            Some(Emulation::ConditionalJump)
        );
        assert_eq!(kernel_emulates(&[0x48, 0x85, 0xff]), None); // test rdi, rdi
        assert_eq!(kernel_emulates(&[0x3e, 0x74, 0x05]), None); // ds prefix: refused
        assert_eq!(kernel_emulates(&[]), None);
    }

    // glibc 2.36 (Debian 12, libc6 2.36-9+deb12u14), /lib/x86_64-linux-gnu/libc.so.6. The same
    // prologues are in the statically linked memops_static of tests/workloads (glibc 2.36's
    // libc.a), with other RIP-relative displacements.

    #[test]
    fn glibc_free_moves_past_its_null_check() {
        // test rdi,rdi; je ret; push rbp; lea rsi,[rdi-0x10]; push rbx
        let free = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d, 0x77, 0xf0,
            0x53, 0x48, 0x83, 0xec, 0x18,
        ];
        assert_eq!(placed(&free, FREE), (9, "push rbp".into(), true));
    }

    #[test]
    fn glibc_free_null_branch_to_ret_is_skippable_through_its_target_too() {
        // The same prologue with the `ret` that `je` jumps to (free+0xc8), and a check that is not
        // a NULL test: the taken path still returns without effect.
        let mut free = vec![
            0x48, 0x85, 0xf6, // test rsi, rsi
            0x0f, 0x84, 0x0a, 0x00, 0x00, 0x00, // je +0x13
            0x55, // push rbp
        ];
        free.resize(0x13, 0x90);
        free.push(0xc3); // ret
        assert_eq!(placed(&free, FREE).0, 9);
    }

    #[test]
    fn glibc_malloc_calloc_realloc_start_with_an_emulated_push() {
        let malloc = [0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb];
        assert_eq!(placed(&malloc, MALLOC), (0, "push r12".into(), true));
        let calloc = [0x41, 0x55, 0x48, 0x89, 0xf8, 0x41, 0x54];
        assert_eq!(placed(&calloc, CALLOC), (0, "push r13".into(), true));
        let realloc = [0x41, 0x57, 0x41, 0x56];
        assert_eq!(placed(&realloc, CALLOC), (0, "push r15".into(), true));
    }

    #[test]
    fn glibc_aligned_functions_move_past_their_rip_relative_check() {
        // posix_memalign: cmp byte ptr [rip+0x140201], 0; push r12; mov r12, rdx
        let posix_memalign = [
            0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54, 0x49, 0x89, 0xd4,
        ];
        assert_eq!(
            placed(&posix_memalign, POSIX_MEMALIGN),
            (7, "push r12".into(), true)
        );
        // aligned_alloc / memalign: cmp byte ptr [rip+...], 0; je +0x10; jmp _mid_memalign
        let aligned_alloc = [
            0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07, 0xe9, 0x32, 0xf6, 0xff, 0xff,
            0x66, 0x90, 0x48, 0x83, 0xec, 0x18,
        ];
        assert_eq!(placed(&aligned_alloc, CALLOC), (7, "je +0x10".into(), true));
        // valloc: cmp byte ptr [rip+...], 0; push rbx
        let valloc = [
            0x80, 0x3d, 0x31, 0x0e, 0x14, 0x00, 0x00, 0x53, 0x48, 0x89, 0xfb,
        ];
        assert_eq!(placed(&valloc, MALLOC), (7, "push rbx".into(), true));
    }

    #[test]
    fn glibc_static_malloc_starts_with_push() {
        // memops_static (glibc 2.36 libc.a): push rbp; mov rbp, rdi; push rbx
        let malloc = [0x55, 0x48, 0x89, 0xfd, 0x53];
        assert_eq!(placed(&malloc, MALLOC), (0, "push rbp".into(), true));
    }

    // jemalloc 5.3.0 (Debian 12 libjemalloc2 5.3.0-1), libjemalloc.so.2.

    #[test]
    fn jemalloc_malloc_probe_goes_on_its_size_class_branch() {
        // cmp rdi, 0x1000; ja +0xa0; lea rdx, [rip+...]
        let malloc = [
            0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x87, 0x93, 0x00, 0x00, 0x00, 0x48,
            0x8d, 0x15, 0x5c, 0x7f, 0x2c, 0x00,
        ];
        assert_eq!(placed(&malloc, MALLOC), (7, "ja +0xa0".into(), true));
    }

    #[test]
    fn jemalloc_free_walks_its_lookup_to_the_first_branch() {
        // mov rax, rdi; mov rdx, [rip+...]; mov rcx, rdi; shr rax, 0x1a;
        // and rcx, 0xffffffffc0000000; and eax, 0xf0; add rax, fs:[0]; add rax, rdx;
        // cmp rcx, [rax+0x1b0]; jne +0xc0. rdx, rcx and rax are not free's argument.
        let free = [
            0x48, 0x89, 0xf8, 0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, 0x48, 0x89, 0xf9, 0x48,
            0xc1, 0xe8, 0x1a, 0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, 0x25, 0xf0, 0x00, 0x00,
            0x00, 0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, 0x48, 0x01, 0xd0, 0x48,
            0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, 0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00,
        ];
        assert_eq!(placed(&free, FREE), (0x30, "jne +0xc0".into(), true));
        // With three arguments to keep (as if it were posix_memalign), `mov rdx, ...` stops it.
        let d = decide(&free, POSIX_MEMALIGN);
        assert_eq!((d.offset, d.emulated), (0, false));
        assert_eq!(d.instruction, "mov rax, rdi");
        assert!(
            d.note.as_deref().is_some_and(|n| n.contains("writes rdx")),
            "{:?}",
            d.note
        );
    }

    #[test]
    fn jemalloc_calloc_starts_with_push() {
        let calloc = [0x41, 0x57, 0x41, 0x56, 0x41, 0x55];
        assert_eq!(placed(&calloc, CALLOC), (0, "push r15".into(), true));
    }

    // tcmalloc (gperftools 2.10, Debian 12 libtcmalloc-minimal4 2.10-1), libtcmalloc_minimal.so.4.

    #[test]
    fn tcmalloc_malloc_and_free_probes_go_on_their_first_branch() {
        // malloc: mov rax, [rip+...]; test rax, rax; jne +0x81
        let malloc = [
            0x48, 0x8b, 0x05, 0x59, 0xab, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x75, 0x75,
        ];
        assert_eq!(placed(&malloc, MALLOC), (10, "jne +0x81".into(), true));
        // free: mov rax, [rip+...]; test rax, rax; jne +0xa0
        let free = [
            0x48, 0x8b, 0x05, 0x59, 0xb1, 0x1b, 0x00, 0x48, 0x85, 0xc0, 0x0f, 0x85, 0x90, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(placed(&free, FREE), (10, "jne +0xa0".into(), true));
    }

    #[test]
    fn tcmalloc_memalign_copies_its_argument_to_a_free_register() {
        // mov r8, rdi; cmp rdi, 0x2000; ja +0xf8 (r8 is not one of memalign's two arguments)
        let memalign = [
            0x49, 0x89, 0xf8, 0x48, 0x81, 0xff, 0x00, 0x20, 0x00, 0x00, 0x0f, 0x87, 0xe8, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(placed(&memalign, CALLOC), (10, "ja +0xf8".into(), true));
        // posix_memalign: lea rax, [rsi-1]; or rax, 7; test rax, rsi; jne +0x38
        let posix_memalign = [
            0x48, 0x8d, 0x46, 0xff, 0x48, 0x83, 0xc8, 0x07, 0x48, 0x85, 0xf0, 0x75, 0x2b,
        ];
        assert_eq!(
            placed(&posix_memalign, POSIX_MEMALIGN),
            (11, "jne +0x38".into(), true)
        );
    }

    // mimalloc 2.0.9 (Debian 12 libmimalloc2.0 2.0.9+ds-3), libmimalloc.so.2.

    #[test]
    fn mimalloc_malloc_overwrites_rdi_and_stays_on_the_entry() {
        // mov rax, [rip+...]; mov rsi, rdi; mov rdi, fs:[rax]; cmp rsi, 0x400; ja +0x40
        let malloc = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38,
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x29,
        ];
        let d = decide(&malloc, MALLOC);
        assert_eq!((d.offset, d.emulated), (0, false));
        assert!(
            d.note.as_deref().is_some_and(|n| n.contains("writes rdi")),
            "{:?}",
            d.note
        );
    }

    #[test]
    fn mimalloc_free_null_check_then_rdi_written_falls_back_to_the_branch() {
        // mov rcx, rdi; test rdi, rdi; je +0x65; lea rdi, [rdi-1]
        let free = [
            0x48, 0x89, 0xf9, 0x48, 0x85, 0xff, 0x74, 0x5d, 0x48, 0x8d, 0x7f, 0xff,
        ];
        assert_eq!(placed(&free, FREE), (6, "je +0x65".into(), true));
    }

    #[test]
    fn mimalloc_aligned_functions_are_a_jump() {
        // posix_memalign: jmp mi_posix_memalign@plt
        let posix_memalign = [0xe9, 0x6b, 0x5c, 0xff, 0xff, 0x66, 0x66, 0x2e];
        assert_eq!(
            placed(&posix_memalign, POSIX_MEMALIGN),
            (0, "jmp -0xa390".into(), true)
        );
    }

    // libstdc++ 12.2.0 (Debian 12 libstdc++6 12.2.0-14), libstdc++.so.6.0.30.

    #[test]
    fn operator_new_moves_past_endbr64_to_its_push() {
        // _Znwm: endbr64; test rdi, rdi; mov eax, 1; push rbx
        let new = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x53, 0x48,
            0x0f, 0x45, 0xc7,
        ];
        assert_eq!(placed(&new, MALLOC), (12, "push rbx".into(), true));
        // _Znam: endbr64; jmp _Znwm@plt
        let new_array = [0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0xf7, 0x02, 0xff, 0xff];
        assert_eq!(placed(&new_array, MALLOC), (4, "jmp -0xfd00".into(), true));
        assert_eq!(decide(&new_array, MALLOC).tail_call, Some(-0xfd00));
        assert_eq!(decide(&new, MALLOC).tail_call, None);
    }

    #[test]
    fn operator_new_nothrow_moves_the_stack_pointer_and_stays_on_the_entry() {
        // _ZnwmRKSt9nothrow_t: endbr64; sub rsp, 8; call _Znwm@plt
        let nothrow = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x13, 0x03, 0xff, 0xff,
        ];
        let d = decide(&nothrow, CALLOC);
        assert_eq!(
            (d.offset, d.instruction.as_str(), d.emulated),
            (0, "endbr64", false)
        );
        assert!(d.note.as_deref().is_some_and(|n| n.contains("writes rsp")));
    }

    // Made-up prologues.

    #[test]
    fn a_write_to_the_first_argument_keeps_the_entry() {
        // mov rdi, [rip+0x10]; push rbx
        let code = [0x48, 0x8b, 0x3d, 0x10, 0x00, 0x00, 0x00, 0x53];
        let d = decide(&code, MALLOC);
        assert_eq!((d.offset, d.emulated), (0, false));
        // xor edi, edi (a 32-bit write zeroes all of rdi)
        let code = [0x31, 0xff, 0x53];
        assert_eq!(decide(&code, MALLOC).offset, 0);
        // add rsi, 8 in a two-argument function
        let code = [0x48, 0x83, 0xc6, 0x08, 0x53];
        assert_eq!(decide(&code, CALLOC).offset, 0);
        // ... is fine in a one-argument function
        assert_eq!(decide(&code, MALLOC).offset, 4);
    }

    #[test]
    fn a_write_to_rbp_or_memory_keeps_the_entry() {
        // mov rbp, rsp; push rbx
        assert_eq!(decide(&[0x48, 0x89, 0xe5, 0x53], MALLOC).offset, 0);
        // mov [rsp-8], rax; push rbx
        assert_eq!(
            decide(&[0x48, 0x89, 0x44, 0x24, 0xf8, 0x53], MALLOC).offset,
            0
        );
        // lock or dword ptr [rsp], 0; push rbx
        assert_eq!(
            decide(&[0xf0, 0x83, 0x0c, 0x24, 0x00, 0x53], MALLOC).offset,
            0
        );
    }

    #[test]
    fn a_branch_into_the_body_before_the_first_emulated_instruction_keeps_it() {
        // test rdi, rdi; jne +0x20 (taken for every real pointer); push rbp
        let code = [0x48, 0x85, 0xff, 0x75, 0x1b, 0x55];
        // The jne is itself emulated: the probe goes on it, never past it.
        assert_eq!(placed(&code, FREE), (3, "jne +0x20".into(), true));
        // cmp rdi, 0x1000; ja (large sizes to the body); push rbp in malloc: on the ja
        let code = [0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x77, 0x10, 0x55];
        assert_eq!(placed(&code, MALLOC).0, 7);
    }

    #[test]
    fn a_null_skip_only_counts_for_a_function_whose_null_is_a_noop() {
        // test rdi, rdi; je +0x40; push rbp: in malloc, malloc(0) must still be traced
        let code = [0x48, 0x85, 0xff, 0x74, 0x3b, 0x55];
        assert_eq!(placed(&code, MALLOC).0, 3);
        assert_eq!(placed(&code, FREE).0, 5);
        // A 32-bit test is not a NULL test: test edi, edi; je; push rbp
        let code = [0x85, 0xff, 0x74, 0x3b, 0x55];
        assert_eq!(placed(&code, FREE).0, 2);
        // A flag write between the test and the branch breaks it: test rdi,rdi; cmp rax,1; je
        let code = [0x48, 0x85, 0xff, 0x48, 0x83, 0xf8, 0x01, 0x74, 0x3b, 0x55];
        assert_eq!(placed(&code, FREE).0, 7);
    }

    #[test]
    fn a_skip_to_a_path_with_effects_is_not_skipped() {
        // test rsi, rsi; je +0x10; push rbp; ... at +0x10: mov [rip+0], eax; ret
        let mut code = vec![0x48, 0x85, 0xf6, 0x74, 0x0b, 0x55];
        code.resize(0x10, 0x90);
        code.extend([0x89, 0x05, 0x00, 0x00, 0x00, 0x00, 0xc3]);
        assert_eq!(placed(&code, FREE).0, 3);
        // The same path with no effect is skippable for free, never for malloc (return probe).
        let mut code = vec![0x48, 0x85, 0xf6, 0x74, 0x0b, 0x55];
        code.resize(0x10, 0x90);
        code.extend([0x31, 0xc0, 0xc3]); // xor eax, eax; ret
        assert_eq!(placed(&code, FREE).0, 5);
        assert_eq!(placed(&code, MALLOC).0, 3);
    }

    #[test]
    fn calls_and_returns_before_any_emulated_instruction_keep_the_entry() {
        // syscall; push rbx
        assert_eq!(decide(&[0x0f, 0x05, 0x53], MALLOC).offset, 0);
        // ret
        let d = decide(&[0xc3], MALLOC);
        assert_eq!((d.offset, d.instruction.as_str()), (0, "ret"));
        // call [rip+0] (indirect, single-stepped)
        assert_eq!(decide(&[0xff, 0x15, 0, 0, 0, 0, 0x53], MALLOC).offset, 0);
    }

    #[test]
    fn undecodable_or_short_code_keeps_the_entry() {
        let d = decide(&[0x48], MALLOC);
        assert_eq!((d.offset, d.emulated), (0, false));
        let d = decide(&[], MALLOC);
        assert_eq!((d.offset, d.emulated), (0, false));
        // Sixteen harmless instructions and nothing emulated: the walk gives up.
        let code = [0x48, 0x85, 0xc0].repeat(20);
        let d = decide(&code, MALLOC);
        assert_eq!(d.offset, 0);
        assert!(d.note.as_deref().is_some_and(|n| n.contains("first 16")));
    }

    #[test]
    fn placement_text_says_where_and_how() {
        let free = decide(
            &[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55],
            FREE,
        )
        .placement("free", "libc.so.6", 0x98ef0);
        assert_eq!(free.to_string(), "free: +9 push rbp (emulated)");
        assert_eq!(free.file_offset, 0x98ef9);
        let entry = at_entry(&[0x41, 0x54, 0x55], "entry probes forced").placement(
            "malloc",
            "libc.so.6",
            0x98930,
        );
        assert_eq!(
            entry.to_string(),
            "malloc: +0 push r12 (emulated): entry probes forced"
        );
        let entry = at_entry(&[], "no code").placement("malloc", "libc.so.6", 0x98930);
        assert_eq!(entry.to_string(), "malloc: +0 (single-stepped): no code");
    }
}
