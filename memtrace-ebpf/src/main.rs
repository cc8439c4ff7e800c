//! memtrace's kernel side. One file per hook family:
//! - `syscalls`: mmap, munmap, mremap and brk, host-wide, results read at exit;
//! - `process`: process exit and exec;
//! - `malloc`: uprobes and uretprobes on the malloc family, attached per process by the agent.
// no_std and no_main only for the BPF target, so that `cargo check --workspace` on the host works.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod malloc;
mod maps;
mod process;
mod syscalls;
mod unwind;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_user and the stack helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
