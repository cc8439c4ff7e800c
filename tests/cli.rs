//! The `memtrace` binary itself, as a user runs it.

use std::{
    io::{BufRead, BufReader},
    process::Command,
};

use memtrace_integration::{memtrace_binary, session, workload, Memops};

fn can_trace() -> bool {
    // Loading once in-process tells whether this machine lets us (and fails under CI=true if not).
    session().is_some()
}

#[test]
fn trace_command_reports_exact_heap() {
    if !can_trace() {
        return;
    }
    let out = Command::new(memtrace_binary())
        .args(["trace", "--json", "--"])
        .arg(workload("fixed_plan"))
        .output()
        .expect("memtrace runs");
    assert!(
        out.status.success(),
        "memtrace trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The workload prints "done" before memtrace prints its report.
    let json_start = stdout.find('{').expect("a JSON report");
    let report: serde_json::Value =
        serde_json::from_str(&stdout[json_start..]).expect("valid JSON");
    let p = &report["process"];
    assert_eq!(report["exited"], true);
    assert_eq!(report["exitCode"], 0);
    // 150 blocks of 4000, calloc(100, 30), realloc'd 9000, aligned_alloc 640.
    assert_eq!(p["heapLiveBytes"], 150 * 4000 + 3000 + 9000 + 640);
    assert_eq!(p["heapLiveCount"], 153);
    assert_eq!(p["heapTotalAllocs"], 203);
    assert_eq!(p["heapTotalFrees"], 50);
    assert_eq!(p["heapUnknownFrees"], 0);
    // The peak is right after the 200 mallocs.
    assert_eq!(p["heapPeakBytes"], 800_000);
    // At least the 7 pages left of the workload's own mapping (the loader maps more).
    assert!(p["mappedAnonBytes"].as_u64().expect("number") >= 7 * 4096);
    assert_eq!(report["kernel"]["ring_buffer_full"], 0);
}

#[test]
fn trace_pid_with_duration() {
    if !can_trace() {
        return;
    }
    let mut w = Memops::start();
    let pid = w.pid();
    let child = Command::new(memtrace_binary())
        .args([
            "trace",
            "--json",
            "--duration",
            "3",
            "--pid",
            &pid.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("memtrace runs");
    // Wait for memtrace to say it is attached (it logs once the probes are in place).
    let mut child = child;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("memtrace attached in time");
    w.run("mallocn 0 64 2048");
    w.run("freen 0 16");
    let out = child.wait_with_output().expect("memtrace finishes");
    assert!(out.status.success(), "memtrace trace failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(report["exited"], false);
    assert_eq!(report["process"]["heapLiveBytes"], 48 * 2048);
    assert_eq!(report["process"]["heapLiveCount"], 48);
    assert!(report["process"]["rssBytes"].as_u64().expect("number") > 0);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = Command::new(memtrace_binary())
        .args(["trace"])
        .output()
        .expect("memtrace runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pid or a command"));
    let out = Command::new(memtrace_binary())
        .args(["trace", "--pid", "x"])
        .output()
        .expect("memtrace runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
    let out = Command::new(memtrace_binary())
        .args(["trace", "--pid", "999999999"])
        .output()
        .expect("memtrace runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("process 999999999 does not exist"));
    let out = Command::new(memtrace_binary())
        .args(["agent", "--ring-buffer-mb", "3"])
        .output()
        .expect("memtrace runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}
