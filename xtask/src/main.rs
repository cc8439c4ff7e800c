//! `cargo xtask`: bootstrap the eBPF toolchain, build, run, test and benchmark memtrace.
//!
//! Every command bootstraps what it needs, idempotently: the nightly's `rust-src` (for
//! `-Z build-std=core`) and bpf-linker, built from crates.io against the nightly's own libLLVM into
//! a cache that later runs reuse while its version matches.

mod bench;
mod bench_unwind;
mod fuzz;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand};

/// The bpf-linker release that builds against the nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF object needs (rust-src, bpf-linker); idempotent.
    Bootstrap,
    /// Build the agent (and the eBPF object it embeds).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the agent with its defaults (arguments after -- go to `memtrace`, default `agent`).
    Run {
        #[arg(long)]
        debug: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the integration tests that load the real eBPF object.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the benchmark suite and print ratios (see docs/benchmarks.md).
    Bench {
        /// Write the JSON results here as well.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Shorter runs (for a quick look, not for the record).
        #[arg(long)]
        quick: bool,
    },
    /// clippy on the agent and, separately, on the eBPF crate; rustfmt check.
    Lint,
    /// Run each cargo-fuzz target (fuzz/) for a bounded time; a crash fails the task.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Task::Bootstrap => {
            let path = bootstrap()?;
            println!("bpf-linker ready in {}", path.display());
            Ok(())
        }
        Task::Build { release } => build(&root, release).map(|_| ()),
        Task::Run { debug, args } => {
            let binary = build(&root, !debug)?;
            let args = if args.is_empty() {
                vec!["agent".to_string()]
            } else {
                args
            };
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("memtrace exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => test(&root, &args),
        Task::Bench { json, quick } => {
            let binary = build(&root, true)?;
            bench::run(&root, &binary, json.as_deref(), quick)?;
            bench_unwind::run(cargo(&root, &bootstrap()?)?)
        }
        Task::Lint => lint(&root),
        Task::Fuzz { seconds, targets } => {
            fuzz::run_targets(&root, &bootstrap()?, seconds, &targets)
        }
    }
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask has no parent directory"))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("memtrace")
}

/// Makes sure the nightly has rust-src and a bpf-linker matching it is cached. Returns the
/// directory holding `bpf-linker`.
fn bootstrap() -> anyhow::Result<PathBuf> {
    let version = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"]))
        .context("the nightly toolchain is needed to build the eBPF crate (`rustup toolchain list` should show it)")?;
    let sysroot = PathBuf::from(output(
        Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?);
    let rust_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        eprintln!("xtask: adding rust-src to the {NIGHTLY} toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }

    // The nightly ships its LLVM as a shared library; bpf-linker links against that very library.
    let lib_dir = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libLLVM-") && name.ends_with(".so"))
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM-*.so in {}: this nightly does not ship LLVM as a library",
                lib_dir.display()
            )
        })?;
    let dylib = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = dylib
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .unwrap_or_default()
        .to_string();
    if major.parse::<u32>().is_err() {
        bail!("cannot tell the LLVM version from {llvm}");
    }

    // One cache entry per bpf-linker version and nightly, so a new nightly gets a new build.
    let tag: String = version
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join("-")
        .replace(['(', ')'], "");
    let dir = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{tag}"));
    let binary = dir.join("bin/bpf-linker");
    if binary.exists() {
        let found = output(Command::new(&binary).arg("--version")).unwrap_or_default();
        if found.contains(BPF_LINKER_VERSION) {
            return Ok(dir.join("bin"));
        }
        eprintln!(
            "xtask: cached bpf-linker reports {found:?}, expected {BPF_LINKER_VERSION}: rebuilding"
        );
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm} into {} (about a minute)",
        dir.display()
    );
    let rustflags = format!(
        "-L {lib} -l dylib={dylib} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib_dir.display()
    );
    run(Command::new("cargo")
        .args([
            &format!("+{NIGHTLY}"),
            "install",
            "bpf-linker",
            "--version",
            &format!("={BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major},no-llvm-linking"),
            "--root",
        ])
        .arg(&dir)
        .env("RUSTFLAGS", rustflags))?;
    Ok(dir.join("bin"))
}

/// Installs the dashboard's charting library from its lockfile (npm ci), once.
fn bootstrap_dashboard(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("memtrace/dashboard");
    let vendor = dir.join("dist/vendor/chart.umd.min.js");
    let lock = dir.join("package-lock.json");
    let fresh = |a: &Path, b: &Path| -> bool {
        match (
            a.metadata().and_then(|m| m.modified()),
            b.metadata().and_then(|m| m.modified()),
        ) {
            (Ok(a), Ok(b)) => a >= b,
            _ => false,
        }
    };
    if vendor.is_file() && fresh(&vendor, &lock) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the dashboard's charting library (npm ci in {})",
        dir.display()
    );
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
    .context("npm (Node.js) is needed once to fetch the dashboard's charting library")?;
    run(Command::new("npm").args(["run", "build"]).current_dir(&dir))
}

/// PATH with bpf-linker's directory first.
fn path_with(dir: &Path) -> anyhow::Result<OsString> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    env::join_paths(paths).context("building PATH")
}

fn cargo(root: &Path, linker_dir: &Path) -> anyhow::Result<Command> {
    bootstrap_dashboard(root)?;
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root).env("PATH", path_with(linker_dir)?);
    Ok(cmd)
}

/// Builds the agent; returns the binary's path.
fn build(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let linker = bootstrap()?;
    let mut cmd = cargo(root, &linker)?;
    cmd.args(["build", "--package", "memtrace", "--bin", "memtrace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(target_dir(root)
        .join(if release { "release" } else { "debug" })
        .join("memtrace"))
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let linker = bootstrap()?;
    // Tests that cannot run here record themselves in this file (tests/lib.rs `skip`): they are
    // reported as skipped, not passed, and under CI=true any of them fails the run.
    let skip_log = target_dir(root).join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    // Unit tests: pure logic on synthetic data, no privileges needed.
    let mut unit = cargo(root, &linker)?;
    unit.env("MEMTRACE_SKIP_LOG", &skip_log)
        .args([
            "test",
            "--workspace",
            "--exclude",
            "memtrace-integration",
            "--exclude",
            "memtrace-ebpf",
            "--",
        ])
        .args(args);
    let mut totals = Totals::default();
    run_counting(&mut unit, &mut totals)?;
    // The CLI tests run the binary itself.
    run(cargo(root, &linker)?.args(["build", "--package", "memtrace", "--bin", "memtrace"]))?;
    // Programs the agent's integration tests drive (Prometheus, promtool, headless Chromium).
    install_test_packages();
    // Integration tests share kernel state (probes, tracefs), so one at a time.
    let mut integration = cargo(root, &linker)?;
    integration
        .env("MEMTRACE_SKIP_LOG", &skip_log)
        .args([
            "test",
            "--package",
            "memtrace-integration",
            "--tests",
            "--",
            "--test-threads=1",
        ])
        .args(args);
    let result = run_counting(&mut integration, &mut totals);
    let skipped = skipped_tests(&skip_log);
    // A skipped test returned normally: the harness counted it as passed.
    totals.passed = totals.passed.saturating_sub(skipped.len() as u64);
    for (test, reason) in &skipped {
        println!("skipped: {test}: {reason}");
    }
    println!(
        "memtrace tests: {} passed, {} failed, {} skipped",
        totals.passed,
        totals.failed,
        skipped.len()
    );
    result?;
    if !skipped.is_empty() && env::var("CI").is_ok_and(|v| v == "true") {
        bail!(
            "{} tests were skipped under CI=true, where every test must run",
            skipped.len()
        );
    }
    Ok(())
}

/// The tests recorded in the skip log, by name (a test that skipped twice counts once).
fn skipped_tests(log: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (test, reason) = line.split_once(": ")?;
            Some((test.to_string(), reason.to_string()))
        })
        .collect()
}

/// Tests counted from cargo's `test result:` lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs a `cargo test` command, echoing its output, and adds up its `test result:` lines.
fn run_counting(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                totals.passed += count(" passed");
                totals.failed += count(" failed");
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Debian packages the integration tests need, each with the programs it provides.
const TEST_PACKAGES: &[(&str, &[&str])] = &[
    ("prometheus", &["prometheus", "promtool"]),
    (
        "prometheus-alertmanager",
        &["prometheus-alertmanager", "amtool"],
    ),
    ("chromium", &["chromium"]),
    ("golang-go", &["go"]),
    // glibc's separate debug file, found by build id (symbols of libc's own frames).
    ("libc6-dbg", &["/var/lib/dpkg/info/libc6-dbg:amd64.list"]),
];

/// Whether `program` is in /usr/bin or on PATH (as the tests look for it); an absolute path:
/// whether that file exists.
fn installed(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).is_file();
    }
    Path::new("/usr/bin").join(program).is_file()
        || env::var_os("PATH")
            .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Installs the missing test packages with apt-get; nothing runs when all are there. A failure
/// is only a warning: the tests that need the package then fail under CI=true with a message
/// naming it, and are skipped elsewhere.
fn install_test_packages() {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(_, programs)| !programs.iter().all(|p| installed(p)))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!(
        "xtask: installing Debian packages for the integration tests: {}",
        missing.join(" ")
    );
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null()))
    };
    let result = apt(&["update"]).and_then(|()| {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)
    });
    if let Err(err) = result {
        eprintln!(
            "xtask: warning: could not install {} ({err:#}); the tests that need them are skipped, or fail under CI=true",
            missing.join(" ")
        );
    }
}

fn lint(root: &Path) -> anyhow::Result<()> {
    let linker = bootstrap()?;
    run(cargo(root, &linker)?.args([
        "clippy",
        "--workspace",
        "--exclude",
        "memtrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate and rustfmt's options need the nightly toolchain (through rustup: the cargo
    // that runs xtask is the stable one, which takes no `+toolchain`).
    let nightly_cargo = || -> anyhow::Result<Command> {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", NIGHTLY, "cargo"])
            .current_dir(root)
            .env("PATH", path_with(&linker)?)
            .env_remove("CARGO")
            .env_remove("RUSTC");
        Ok(cmd)
    };
    run(nightly_cargo()?
        .args([
            "clippy",
            "--package",
            "memtrace-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", target_dir(root).join("ebpf-lint")))?;
    run(nightly_cargo()?.args(["fmt", "--all", "--check"]))?;
    Ok(())
}
