//! Builds the eBPF object (the `memtrace` binary of `memtrace-ebpf`, for `bpfel-unknown-none`, with the
//! nightly toolchain and bpf-linker) into OUT_DIR, where `probes` embeds it.

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() && !on_path("bpf-linker") {
        return Err(anyhow!(
            "bpf-linker is not on PATH: build through `cargo xtask build` (or `cargo xtask run` / \
             `cargo xtask test`), which installs it into a cache and puts it on PATH"
        ));
    }
    // The dashboard's charting library comes from the npm registry (package-lock.json) and is
    // embedded in the binary.
    let vendor = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboard/dist/vendor/chart.umd.min.js"
    );
    println!("cargo:rerun-if-changed={vendor}");
    if !std::path::Path::new(vendor).is_file() {
        return Err(anyhow!(
            "{vendor} is missing: build through `cargo xtask build` (or run `npm ci && npm run build` in \
             memtrace/dashboard), which installs the dashboard's charting library from its lockfile"
        ));
    }
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../memtrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "memtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF object (memtrace-ebpf)")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
