//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs each cargo-fuzz target of `fuzz/` for a bounded
//! time (libFuzzer's `-max_total_time`), one after the other.
//!
//! cargo-fuzz is installed once from crates.io into the cache, like bpf-linker, and reused while its
//! version matches. The targets build with the nightly toolchain (sanitizers), into their own target
//! directory. Each target starts from the seeds committed in `fuzz/seeds/<target>/` plus what earlier
//! runs found (`<target dir>/fuzz/corpus/<target>/`, never written into the repository); a crash
//! leaves its input in `<target dir>/fuzz/artifacts/<target>/` and fails the task. Fixed crashes keep
//! their inputs as unit tests next to the code they broke.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use super::{cache_dir, output, path_with, run, target_dir, NIGHTLY};

/// The cargo-fuzz release installed.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &["event_decode", "store_lines", "config_toml", "http_query"];

/// Installs cargo-fuzz into the cache if needed; returns the binary.
fn bootstrap_cargo_fuzz() -> anyhow::Result<PathBuf> {
    let dir = cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let binary = dir.join("bin/cargo-fuzz");
    if binary.exists() {
        let found = output(Command::new(&binary).arg("--version")).unwrap_or_default();
        if found.contains(CARGO_FUZZ_VERSION) {
            return Ok(binary);
        }
        eprintln!("xtask: cached cargo-fuzz reports {found:?}, expected {CARGO_FUZZ_VERSION}: reinstalling");
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a few minutes, once)",
        dir.display()
    );
    run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                &format!("={CARGO_FUZZ_VERSION}"),
                "--locked",
                "--force",
                "--root",
            ])
            .arg(&dir),
    )?;
    Ok(binary)
}

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run_targets(
    root: &Path,
    linker_dir: &Path,
    seconds: u64,
    targets: &[String],
) -> anyhow::Result<()> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target {target:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let selected: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let cargo_fuzz = bootstrap_cargo_fuzz()?;
    super::bootstrap_dashboard(root)?;
    let work = target_dir(root).join("fuzz");
    let mut failed = Vec::new();
    for target in selected {
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        let seeds = root.join("fuzz/seeds").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let mut cmd = Command::new("rustup");
        cmd.args(["run", NIGHTLY])
            .arg(&cargo_fuzz)
            .args(["run", target, "--fuzz-dir"])
            .arg(root.join("fuzz"))
            .arg("--target-dir")
            .arg(work.join("build"))
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(root)
            .env("PATH", path_with(linker_dir)?)
            .env_remove("CARGO")
            .env_remove("RUSTC");
        let result = run(&mut cmd);
        remove_scratch_dirs();
        if let Err(err) = result {
            eprintln!("xtask: fuzz target {target} failed: {err:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in {})",
            failed.join(", "),
            work.join("artifacts").display()
        );
    }
    println!("fuzz: every target ran {seconds} s without a crash");
    Ok(())
}

/// Removes the data directories `store_lines` leaves (`memtrace-fuzz-store-<pid>` in /dev/shm or the
/// temporary directory): libFuzzer ends the process without running destructors.
fn remove_scratch_dirs() {
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("memtrace-fuzz-store-")
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
