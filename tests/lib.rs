//! Helpers for the integration tests: start the real probes (or say loudly why not), and drive the
//! C workloads in `workloads/` step by step.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use memtrace::{
    probes::{COUNTER_NAMES, ProbeOptions},
    session::Session,
};

/// Path of a compiled workload.
pub fn workload(name: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(name)
}

/// Starts a session with the real eBPF object. Without the privileges to load it, the test says
/// so and is skipped, except under `CI=true`, where it fails.
pub fn session() -> Option<Session> {
    match Session::start(&ProbeOptions::default()) {
        Ok(session) => Some(session),
        Err(err) => {
            let mut chain = format!("{err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                chain.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot load the eBPF object under CI=true: {chain}");
            }
            eprintln!("\n!!! SKIPPED: cannot load the eBPF object ({chain}). Run as root to trace. !!!\n");
            None
        }
    }
}

/// Kernel counter by name (see `memtrace::probes::COUNTER_NAMES`).
pub fn counter(session: &Session, name: &str) -> u64 {
    let index = COUNTER_NAMES.iter().position(|n| *n == name).expect("known counter");
    session.probes.counters().expect("counters readable")[index]
}

/// A `memops` process: it executes one command per line and answers `ok <value>`.
pub struct Memops {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Memops {
    pub fn start() -> Self {
        Self::start_named("memops")
    }

    /// A build of the workload by name (`memops`, `memops_static`).
    pub fn start_named(name: &str) -> Self {
        let mut child = Command::new(workload(name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("memops starts");
        let stdin = child.stdin.take().expect("stdin piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("memops says ready");
        assert_eq!(line.trim(), "ready");
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one command and returns its value. When this returns, every event of the command has
    /// been submitted to the ring buffer (the probes run synchronously in the process).
    pub fn run(&mut self, command: &str) -> u64 {
        writeln!(self.stdin, "{command}").expect("command sent");
        self.stdin.flush().expect("flushed");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reply read");
        let value = line.trim().strip_prefix("ok ").unwrap_or_else(|| panic!("{command}: unexpected reply {line:?}"));
        value.parse().expect("numeric reply")
    }

    pub fn exit(mut self) -> i32 {
        let _ = writeln!(self.stdin, "exit 0");
        let _ = self.stdin.flush();
        self.child.wait().expect("memops exits").code().unwrap_or(-1)
    }
}

impl Drop for Memops {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page size of this machine.
pub fn page() -> u64 {
    memtrace::procfs::page_size()
}

/// The memtrace binary built next to this test (`cargo xtask test` builds it first).
pub fn memtrace_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/memtrace
    let binary = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("memtrace")).expect("target dir");
    assert!(binary.exists(), "{} is missing: run the tests with `cargo xtask test`, which builds it", binary.display());
    binary
}
