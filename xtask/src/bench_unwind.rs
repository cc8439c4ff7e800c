//! The unwinding benchmark: kernel ns per traced malloc with CFI-table stacks at depth ~33 against
//! frame-pointer stacks and no stacks, and the table memory of a python3 + sqlite3 + node host.
//! It lives in the integration crate (it drives a `Session` and reads the kernel's BPF
//! statistics); this runs it and lets it print its figures.

use std::process::Command;

use anyhow::{bail, Context as _};

/// Runs the benchmark with `cargo`: a cargo command in the workspace with bpf-linker on its PATH
/// (the test build compiles the eBPF object).
pub fn run(mut cargo: Command) -> anyhow::Result<()> {
    eprintln!("bench: unwinding cost and table memory (tests/bench_unwind.rs)");
    let status = cargo
        .args([
            "test",
            "--release",
            "-p",
            "memtrace-integration",
            "--test",
            "bench_unwind",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .status()
        .context("running the unwinding benchmark")?;
    if !status.success() {
        bail!("the unwinding benchmark failed ({status})");
    }
    Ok(())
}
