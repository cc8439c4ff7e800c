//! Builds the eBPF object (the `memtrace` binary of `memtrace-ebpf`, for `bpfel-unknown-none`, with the
//! nightly toolchain and bpf-linker) into OUT_DIR, where `probes` embeds it.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && !on_path("bpf-linker") {
        return Err(anyhow!(
            "bpf-linker is not on PATH: build through `cargo xtask build` (or `cargo xtask run` / \
             `cargo xtask test`), which installs it into a cache and puts it on PATH"
        ));
    }
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../memtrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "memtrace-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF object (memtrace-ebpf)")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
