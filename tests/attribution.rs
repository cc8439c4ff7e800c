//! Attribution on a real program built from two shared libraries, a C++ library and a main binary,
//! with and without frame pointers: live bytes go to the library that holds them.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
};

use memtrace::{
    attribution::{Consumer, ConsumerReport},
    config::TrackingConfig,
    session::Session,
};
use memtrace_integration::{attribute, session};

const PAGE: u64 = 4096;

struct Workload {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Workload {
    fn start(variant: &str, exit: bool) -> Self {
        let path = std::path::PathBuf::from(env!("OUT_DIR"))
            .join(format!("attrib-{variant}"))
            .join("attrib_main");
        let mut cmd = Command::new(path);
        if exit {
            cmd.arg("exit");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("workload starts");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        Self { child, out }
    }

    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"g").expect("go");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("done");
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(session: &mut Session, pid: u32) -> ConsumerReport {
    let config = TrackingConfig {
        leak_age: 0,
        ..TrackingConfig::default()
    };
    attribute(session, pid, config)
}

fn consumer<'a>(report: &'a ConsumerReport, library: &str, kind: &str) -> Vec<&'a Consumer> {
    report
        .consumers
        .iter()
        .filter(|c| {
            c.category == library
                && serde_json::to_value(c.kind).expect("kind").as_str() == Some(kind)
        })
        .collect()
}

fn library_live(report: &ConsumerReport, library: &str) -> u64 {
    report
        .libraries
        .iter()
        .find(|l| l.library == library)
        .map_or(0, |l| l.live_bytes)
}

fn check(report: &ConsumerReport, frame_pointers: bool, exited: bool) {
    let dump = || serde_json::to_string_pretty(report).expect("json");
    // The leaking library holds exactly what it leaked, in its function that called malloc.
    let leaks = consumer(report, "libleak.so", "malloc");
    assert_eq!(leaks.len(), 1, "{}", dump());
    assert_eq!(leaks[0].name, "leak_one");
    assert_eq!(leaks[0].allocated_memory, 50 * 4096);
    assert_eq!(leaks[0].active_allocations, 50);
    assert_eq!(leaks[0].total_calls, 50);
    assert!(
        leaks[0].stack_trace[0].starts_with("leak_one (libleak.so+0x"),
        "{:?}",
        leaks[0].stack_trace
    );
    if frame_pointers {
        let stack = leaks[0].stack_trace.join("\n");
        assert!(stack.contains("leak_chunks"), "{stack}");
        assert!(stack.contains("main (attrib_main"), "{stack}");
    }
    // The clean library allocated as much and holds nothing.
    let clean = consumer(report, "libclean.so", "malloc");
    assert_eq!(clean.len(), 1, "{}", dump());
    assert_eq!(clean[0].name, "clean_one");
    assert_eq!(clean[0].total_calls, 50);
    assert_eq!(clean[0].allocated_memory, 0);
    assert_eq!(library_live(report, "libclean.so"), 0);
    // operator new goes to its caller in libcxx.so: 10 arrays of 1000 plus the vector's
    // reserve(4096) of pointers (which the vector's static destructor frees at exit).
    let vector = if exited { 0 } else { 4096 * 8 };
    assert_eq!(
        library_live(report, "libcxx.so"),
        10 * 1000 + vector,
        "{}",
        dump()
    );
    assert!(
        consumer(report, "libcxx.so", "malloc")
            .iter()
            .any(|c| c.name.contains("cxx_keep") && c.allocated_memory >= 10_000),
        "{}",
        dump()
    );
    assert!(
        report
            .libraries
            .iter()
            .all(|l| !l.library.starts_with("libstdc++") || l.live_bytes == 0),
        "{}",
        dump()
    );
    // The direct mapping made by libleak.
    let maps = consumer(report, "libleak.so", "mmap");
    assert_eq!(maps.len(), 1, "{}", dump());
    assert_eq!(maps[0].name, "leak_map");
    assert_eq!(maps[0].allocated_memory, 16 * PAGE);
    // The leak view groups the still-live allocations by consumer.
    let leak = report
        .leaks
        .iter()
        .find(|l| l.name == "leak_one")
        .expect("leak group");
    assert_eq!((leak.bytes, leak.count), (50 * 4096, 50));
}

#[test]
fn libraries_hold_what_they_keep_with_frame_pointers() {
    let Some(mut session) = session() else { return };
    let mut w = Workload::start("fp", false);
    let pid = w.child.id();
    session.trace_pid(pid).expect("attach");
    w.go();
    check(&report(&mut session, pid), true, false);
}

#[test]
fn libraries_hold_what_they_keep_without_frame_pointers() {
    let Some(mut session) = session() else { return };
    let mut w = Workload::start("nofp", false);
    let pid = w.child.id();
    session.trace_pid(pid).expect("attach");
    w.go();
    check(&report(&mut session, pid), false, false);
}

#[test]
fn exited_process_still_gets_named_frames() {
    let Some(mut session) = session() else { return };
    let mut w = Workload::start("fp", true);
    let pid = w.child.id();
    session.trace_pid(pid).expect("attach");
    w.go();
    let status = w.child.wait().expect("exits");
    assert!(status.success());
    // Symbolized only now, after the process is gone.
    let report = report(&mut session, pid);
    assert!(
        session.accounting.process(pid).is_none(),
        "the process is gone"
    );
    check(&report, true, true);
}
