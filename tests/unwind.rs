//! Full call stacks through code built without frame pointers: the kernel unwinds with the CFI
//! tables the agent loads, falls back to frame pointers where there is no CFI, and attribution
//! skips the configured wrapper. Real processes, exact live bytes, frames asserted by name.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use memtrace::{
    attribution::{ConsumerReport, SiteLive},
    config::TrackingConfig,
    probes::ProbeOptions,
    session::Session,
};
use memtrace_integration::{attribute, counter, session, skip, wait_for};

/// A child driven by lines (or single letters) on stdin, answering on stdout.
struct Driven {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Driven {
    fn start(mut command: Command, ready: &str) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("workload starts");
        let stdin = child.stdin.take().expect("piped");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let mut driven = Self { child, stdin, out };
        driven.expect(ready);
        driven
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, text: &str) {
        self.stdin.write_all(text.as_bytes()).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn expect(&mut self, line: &str) {
        let mut got = String::new();
        self.out.read_line(&mut got).expect("read");
        assert_eq!(got.trim(), line);
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unwind_workload(variant: &str) -> Driven {
    let dir = PathBuf::from(env!("OUT_DIR")).join(format!("unwind-{variant}"));
    let mut command = Command::new(dir.join("unwind_main"));
    command
        .arg(dir.join("libplug1.so"))
        .arg(dir.join("libplug2.so"));
    Driven::start(command, "ready")
}

fn report(session: &mut Session, pid: u32, wrappers: &[&str]) -> ConsumerReport {
    let config = TrackingConfig {
        leak_age: 0,
        stack_trace_depth: 64,
        wrappers: wrappers.iter().map(|w| w.to_string()).collect(),
        ..TrackingConfig::default()
    };
    attribute(session, pid, config)
}

/// Function names of a site's frames, innermost first.
fn names(site: &SiteLive) -> Vec<String> {
    site.frames.iter().map(|f| f.name()).collect()
}

/// The live malloc site whose innermost frames are `inner` (in this order).
fn site<'a>(report: &'a ConsumerReport, inner: &[&str]) -> &'a SiteLive {
    report
        .sites
        .iter()
        .find(|s| {
            let names = names(s);
            names.len() >= inner.len() && names.iter().zip(inner).all(|(n, i)| n == i)
        })
        .unwrap_or_else(|| {
            let all: Vec<Vec<String>> = report.sites.iter().map(names).collect();
            panic!("no site starting with {inner:?} among {all:#?}")
        })
}

fn dump(report: &ConsumerReport) -> String {
    serde_json::to_string_pretty(&report.consumers).expect("json")
}

/// Stacks main -> lib_a_fn -> uw_xalloc -> malloc, through objects without frame pointers (CFI)
/// or without CFI (frame pointers): exact live bytes per site, the wrapper skipped.
fn main_lib_wrapper(variant: &str) {
    let Some(mut session) = session() else { return };
    let mut w = unwind_workload(variant);
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    let fp_before =
        counter(&session, "unwind_frame_pointer_frames") + counter(&session, "unwind_no_cfi_row");
    w.send("a");
    w.expect("ok");
    w.send("b");
    w.expect("ok");
    let report = report(&mut session, pid, &["uw_xalloc"]);

    let a = site(&report, &["uw_xalloc", "lib_a_fn", "main"]);
    assert_eq!((a.live_bytes, a.live_count), (40 * 5000, 40));
    let b = site(&report, &["uw_xalloc", "lib_a_other", "main"]);
    assert_eq!((b.live_bytes, b.live_count), (30 * 3000, 30));
    // Above main: libc's start code, reached through libc's own CFI, up to the outermost frame.
    assert_eq!(
        names(a).last().map(String::as_str),
        Some("_start"),
        "{:?}",
        names(a)
    );
    // The wrapper is skipped: the consumer is the library function, its stack starts there.
    let consumer = report
        .consumers
        .iter()
        .find(|c| c.name == "lib_a_fn")
        .unwrap_or_else(|| panic!("{}", dump(&report)));
    assert_eq!(consumer.category, "libuwa.so");
    assert_eq!(consumer.allocated_memory, 40 * 5000);
    assert_eq!(consumer.metadata.skipped_frames, 1);
    assert!(consumer.stack_trace[1].starts_with("main (unwind_main+0x"));
    let other = report
        .consumers
        .iter()
        .find(|c| c.name == "lib_a_other")
        .unwrap_or_else(|| panic!("{}", dump(&report)));
    assert_eq!(other.allocated_memory, 30 * 3000);

    let fallback = counter(&session, "unwind_frame_pointer_frames")
        + counter(&session, "unwind_no_cfi_row")
        - fp_before;
    if variant == "nocfi" {
        // uw_xalloc, lib_a_fn and main have no CFI: their frames came from frame pointers.
        assert!(fallback >= 70 * 2, "{fallback} frames by frame pointer");
    }
}

#[test]
fn stacks_through_code_without_frame_pointers() {
    main_lib_wrapper("cfi");
}

#[test]
fn objects_without_cfi_fall_back_to_frame_pointers() {
    main_lib_wrapper("nocfi");
}

/// A plugin loaded at run time is unwound once the agent saw it mapped; after it is unloaded, a
/// second plugin mapped (likely at the same address) gets its own table.
#[test]
fn code_unmapped_and_mapped_again() {
    let Some(mut session) = session() else { return };
    let mut w = unwind_workload("cfi");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    let loaded = |session: &mut Session, name: &str| {
        wait_for(
            Duration::from_secs(10),
            &format!("{name} seen mapped"),
            String::new,
            || {
                session.poll();
                session
                    .accounting
                    .process(pid)
                    .and_then(|state| state.modules.iter().any(|m| m.name() == name).then_some(()))
            },
        );
    };
    w.send("1");
    w.expect("loaded");
    loaded(&mut session, "libplug1.so");
    w.send("g");
    w.expect("ok");
    let first = report(&mut session, pid, &[]);
    let one = site(&first, &["plug_one", "call_plugin", "main"]);
    assert_eq!((one.live_bytes, one.live_count), (20 * 7000, 20));

    w.send("c");
    w.expect("ok");
    w.send("2");
    w.expect("loaded");
    loaded(&mut session, "libplug2.so");
    w.send("g");
    w.expect("ok");
    let second = report(&mut session, pid, &[]);
    let two = site(&second, &["plug_two", "call_plugin", "main"]);
    assert_eq!((two.live_bytes, two.live_count), (10 * 9000, 10));
}

/// Debian's python3 (stripped, no frame pointers): the bytearrays' stack names
/// PyByteArray_Resize, as heaptrack does.
#[test]
fn python_bytearrays() {
    let python = PathBuf::from("/usr/bin/python3.11");
    if !python.exists() {
        skip(&format!(
            "{} is needed (apt-get install python3.11)",
            python.display()
        ));
        return;
    }
    let Some(mut session) = session() else { return };
    let mut command = Command::new(&python);
    command.args([
        "-c",
        "import sys\nprint('ready', flush=True)\nsys.stdin.read(1)\n\
         x=[bytearray(10000) for _ in range(2000)]\nprint('done', flush=True)\nsys.stdin.read(1)",
    ]);
    let mut w = Driven::start(command, "ready");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send("g");
    w.expect("done");
    let report = report(&mut session, pid, &[]);
    let live: u64 = report
        .sites
        .iter()
        .filter(|s| names(s).iter().any(|n| n == "PyByteArray_Resize"))
        .map(|s| s.live_bytes)
        .sum();
    assert!(
        live >= 2000 * 10000,
        "{live} live bytes under PyByteArray_Resize: {}",
        dump(&report)
    );
    let top = &report.consumers[0];
    assert!(
        top.stack_trace
            .iter()
            .any(|f| f.starts_with("PyByteArray_Resize")),
        "{:?}",
        top.stack_trace
    );
    // The stack reaches python's main.
    assert!(
        top.stack_trace
            .iter()
            .any(|f| f.starts_with("Py_BytesMain")),
        "{:?}",
        top.stack_trace
    );
}

/// Debian's sqlite3 inserting 20k rows in memory: sqlite3BtreeInsert and sqlite3_step.
#[test]
fn sqlite_inserts() {
    let sqlite = PathBuf::from("/usr/bin/sqlite3");
    if !sqlite.exists() {
        skip("sqlite3 is needed (apt-get install sqlite3)");
        return;
    }
    let Some(mut session) = session() else { return };
    let mut command = Command::new(&sqlite);
    command.arg(":memory:");
    let mut w = Driven::start(
        {
            let mut c = command;
            c.arg("-cmd").arg(".print ready");
            c
        },
        "ready",
    );
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send(
        "CREATE TABLE t(a INTEGER, b BLOB);\n\
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) \
         INSERT INTO t SELECT x, randomblob(100) FROM c;\n.print done\n",
    );
    w.expect("done");
    let report = report(&mut session, pid, &[]);
    let top = report
        .consumers
        .iter()
        .find(|c| c.id.starts_with("malloc:"))
        .expect("a malloc consumer");
    let stack = top.stack_trace.join("\n");
    assert!(stack.contains("sqlite3BtreeInsert"), "{stack}");
    assert!(stack.contains("sqlite3_step"), "{stack}");
}

/// Tables evicted under a small cap: every process still gets stacks (frame pointers where its
/// table was evicted), the evictions are counted and the cap holds.
#[test]
fn tables_are_evicted_under_the_cap() {
    let options = ProbeOptions {
        unwind_table_mb: 1,
        ..ProbeOptions::default()
    };
    let Ok(mut session) = Session::start(&options) else {
        let _ = session();
        return;
    };
    let mut first = unwind_workload("cfi");
    let python = PathBuf::from("/usr/bin/python3.11");
    session.trace_pid(first.pid()).expect("attach");
    let before = session.probes.unwind_stats();
    assert!(before.tables_loaded >= 3, "{before:?}");
    assert!(before.table_bytes <= before.capacity_bytes);
    // sqlite's library and python do not fit beside what is loaded: older tables go.
    let mut others = Vec::new();
    for program in ["/usr/bin/sqlite3", python.to_str().unwrap_or_default()] {
        if !std::path::Path::new(program).exists() {
            continue;
        }
        let mut command = Command::new(program);
        if program.ends_with("sqlite3") {
            command.args([":memory:", "-cmd", ".print ready"]);
        } else {
            command.args([
                "-c",
                "print('ready', flush=True)\nimport sys\nsys.stdin.read(1)",
            ]);
        }
        let driven = Driven::start(command, "ready");
        session.trace_pid(driven.pid()).expect("attach");
        others.push(driven);
    }
    let after = session.probes.unwind_stats();
    assert!(after.evictions > 0, "{after:?}");
    assert!(after.table_bytes <= after.capacity_bytes, "{after:?}");
    // The first process's library tables may be gone: its stacks still reach main with frame
    // pointers where they were built with them, or stop early, counted; exact bytes stay exact.
    first.send("a");
    first.expect("ok");
    let report = report(&mut session, first.pid(), &["uw_xalloc"]);
    let total: u64 = report
        .sites
        .iter()
        .filter(|s| s.frames.first().is_some_and(|f| f.name() == "uw_xalloc"))
        .map(|s| s.live_bytes)
        .sum();
    assert_eq!(total, 40 * 5000);
    drop(others);
}

/// `node --perf-basic-prof`: the JavaScript function that grows Buffers is named in the
/// consumer's stack, from the perf map node writes for its JIT code.
#[test]
fn node_jit_frames_are_named() {
    let node = PathBuf::from("/usr/bin/node");
    if !node.exists() {
        skip("node is needed (apt-get install nodejs)");
        return;
    }
    let Some(mut session) = session() else { return };
    let script = "const kept = [];\n\
        function growBuffersNamed(n) { for (let i = 0; i < n; i++) kept.push(Buffer.alloc(65536)); }\n\
        process.stdout.write('ready\\n');\n\
        process.stdin.once('data', () => {\n\
          for (let r = 0; r < 20; r++) growBuffersNamed(10);\n\
          process.stdout.write('done\\n');\n\
          process.stdin.once('data', () => process.exit(0));\n\
        });\n";
    let mut command = Command::new(&node);
    // node may write its logs in the working directory.
    command.current_dir(std::env::temp_dir());
    command.args([
        "--perf-basic-prof",
        "--interpreted-frames-native-stack",
        "-e",
        script,
    ]);
    let mut w = Driven::start(command, "ready");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send("g\n");
    w.expect("done");
    let report = report(&mut session, pid, &[]);
    let named: u64 = report
        .sites
        .iter()
        .filter(|s| names(s).iter().any(|n| n.contains("growBuffersNamed")))
        .map(|s| s.live_bytes)
        .sum();
    assert!(
        named >= 200 * 65536,
        "{named} live bytes under growBuffersNamed: {:#?}",
        report.sites.iter().take(5).map(names).collect::<Vec<_>>()
    );
    let top = report
        .consumers
        .iter()
        .find(|c| c.stack_trace.iter().any(|f| f.contains("growBuffersNamed")))
        .unwrap_or_else(|| panic!("{}", dump(&report)));
    assert!(top.allocated_memory >= 65536);
}

/// Line `LINE:<marker>` of the symbols workload's library source.
fn marked_line(marker: &str) -> u32 {
    let source = include_str!("workloads/symbols/libsym.c");
    let tag = format!("LINE:{marker} ");
    source
        .lines()
        .position(|line| line.contains(&tag))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no {tag} in libsym.c"))
}

/// Traces `symbols_main` in `dir` keeping 25 blocks of 6,000 bytes and checks the site's frames
/// by name, file and line: names that only the separate debug file has (a static function, and
/// the helper inlined into it, as its own frame).
fn symbols_from_debug_file(dir: &std::path::Path, debug_dirs: Vec<PathBuf>) {
    let Some(mut session) = session() else { return };
    let mut w = Driven::start(Command::new(dir.join("symbols_main")), "ready");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send("k");
    w.expect("ok");
    named_from_debug_file(&symbols_report(&mut session, pid, debug_dirs));
}

fn symbols_report(session: &mut Session, pid: u32, debug_dirs: Vec<PathBuf>) -> ConsumerReport {
    let config = TrackingConfig {
        leak_age: 0,
        debug_dirs,
        ..TrackingConfig::default()
    };
    attribute(session, pid, config)
}

fn named_from_debug_file(report: &ConsumerReport) {
    let kept = site(
        report,
        &["sym_inline_alloc", "sym_static_keep", "sym_keep", "main"],
    );
    assert_eq!((kept.live_bytes, kept.live_count), (25 * 6000, 25));
    let place = |i: usize| {
        let f = &kept.frames[i];
        (f.file.as_deref(), f.line, f.inlined)
    };
    assert_eq!(
        place(0),
        (Some("libsym.c"), Some(marked_line("malloc")), true)
    );
    assert_eq!(
        place(1),
        (Some("libsym.c"), Some(marked_line("inline")), false)
    );
    assert_eq!(
        place(2),
        (Some("libsym.c"), Some(marked_line("static")), false)
    );
    // Both frames are the one return address in the library.
    assert_eq!(kept.frames[0].addr, kept.frames[1].addr);
    let consumer = report
        .consumers
        .iter()
        .find(|c| c.name == "sym_inline_alloc")
        .unwrap_or_else(|| panic!("{}", dump(report)));
    assert_eq!(consumer.category, "libsym.so");
    assert_eq!(consumer.allocated_memory, 25 * 6000);
    assert!(
        consumer.stack_trace[0].ends_with(&format!("libsym.c:{} [inlined]", marked_line("malloc"))),
        "{:?}",
        consumer.stack_trace
    );
}

fn symbols_dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(format!("symbols-{variant}"))
}

/// The library is stripped; its `.gnu_debuglink` names the debug file next to it.
#[test]
fn names_from_a_debug_file_next_to_the_object() {
    symbols_from_debug_file(&symbols_dir("link"), Vec::new());
}

/// The debug file is in a debug directory, by build id (`.build-id/xx/yyyy.debug`), as Debian's
/// `-dbgsym` packages install them.
#[test]
fn names_from_a_debug_file_found_by_build_id() {
    let dir = symbols_dir("buildid");
    symbols_from_debug_file(&dir, vec![dir.join("debug")]);
}

/// The library lies in a directory anyone can write, where its traced process could put a FIFO
/// under the debug link's name: that name is not opened there (a FIFO would stall the symbolizer).
/// Without a debug directory holding its debug file the library's names come from its .dynsym;
/// with one, the debug file is found by build id as before.
#[test]
fn a_fifo_under_the_debug_link_name_is_not_opened() {
    use std::os::unix::fs::PermissionsExt;
    let Some(mut session) = session() else { return };
    let built = symbols_dir("buildid");
    let temp = memtrace_integration::TempDir::new("symbols");
    let dir = temp.path().join("open");
    std::fs::create_dir(&dir).expect("dir");
    for name in ["symbols_main", "libsym.so"] {
        std::fs::copy(built.join(name), dir.join(name)).expect("copied");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let fifo = dir.join("libsym.so.debug");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0, "mkfifo");
    // A reader blocked on the FIFO is released by a writer; the writer's non-blocking open only
    // succeeds while a reader has it open. The watchdog records that and lets the reader go.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = std::sync::Arc::clone(&done);
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::OpenOptionsExt;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&fifo)
                    .is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let mut w = Driven::start(Command::new(dir.join("symbols_main")), "ready");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send("k");
    w.expect("ok");

    let plain = symbols_report(&mut session, pid, Vec::new());
    let kept = plain
        .sites
        .iter()
        .find(|s| names(s).get(1).map(String::as_str) == Some("sym_keep"))
        .unwrap_or_else(|| panic!("{:#?}", plain.sites.iter().map(names).collect::<Vec<_>>()));
    assert_eq!((kept.live_bytes, kept.live_count), (25 * 6000, 25));
    // The static function is not in .dynsym: it keeps its address.
    assert!(
        names(kept)[0].starts_with("libsym.so+0x"),
        "{:?}",
        names(kept)
    );

    named_from_debug_file(&symbols_report(
        &mut session,
        pid,
        vec![built.join("debug")],
    ));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !watchdog.join().expect("watchdog"),
        "the symbolizer opened the FIFO"
    );
}

/// glibc's own frames (`__libc_start_call_main`, a static function) are named, with file:line,
/// from its separate debug file (Debian's libc6-dbg, by build id; its DWARF is zlib-compressed).
#[test]
fn libc_frames_named_from_its_debug_package() {
    if !std::path::Path::new("/var/lib/dpkg/info/libc6-dbg:amd64.list").exists() {
        skip("libc6-dbg is needed (apt-get install libc6-dbg)");
        return;
    }
    let Some(mut session) = session() else { return };
    let mut w = unwind_workload("cfi");
    let pid = w.pid();
    session.trace_pid(pid).expect("attach");
    w.send("a");
    w.expect("ok");
    let report = report(&mut session, pid, &[]);
    let a = site(&report, &["uw_xalloc", "lib_a_fn", "main"]);
    assert_eq!((a.live_bytes, a.live_count), (40 * 5000, 40));
    let start = a
        .frames
        .iter()
        .find(|f| f.function.as_deref() == Some("__libc_start_call_main"))
        .unwrap_or_else(|| panic!("{:?}", names(a)));
    assert_eq!(start.module, "libc.so.6");
    assert_eq!(start.file.as_deref(), Some("libc_start_call_main.h"));
    assert!(start.line.is_some(), "{start:?}");
}
