//! The `memtrace` binary itself, as a user runs it.

use std::{
    io::{BufRead, BufReader},
    process::Command,
};

use memtrace_integration::{memtrace_binary, peer_program, session, workload, Memops, TempDir};

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

/// Guards issue 11 item 11: `memtrace trace -- /no/such/program` used to exit 0 after loading the
/// probes (3.7 s) with "exec failed". It must fail at once (before any probe is loaded) with the
/// OS error.
#[test]
fn trace_of_a_missing_program_fails_at_once() {
    let out = Command::new(memtrace_binary())
        .args(["trace", "--", "/no/such/program"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("memtrace runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot run /no/such/program"), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    // Nothing was loaded or attached, and no report was printed.
    assert!(!stderr.contains("tracing pid"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Guards issue 11 item 11, the other half: when the program looks runnable but `execvp` fails in
/// the child (a script whose interpreter is missing), the child's errno comes back through the
/// close-on-exec pipe: non-zero exit, the OS error, no report.
#[test]
fn trace_exec_failure_in_the_child_is_an_error() {
    if !can_trace() {
        return;
    }
    let dir = TempDir::new("exec-failure");
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/no/such/interpreter\n").expect("writing the script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new(memtrace_binary())
        .args(["trace", "--json", "--"])
        .arg(&script)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("memtrace runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot run {}", script.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Guards issue 11 item 3: `--duration` values that used to panic in `Duration::from_secs_f64`
/// are usage errors (exit 2) that say what is accepted.
#[test]
fn trace_duration_out_of_range_is_a_usage_error() {
    for value in ["-1", "nan", "inf", "1e300", "-0.5"] {
        let out = Command::new(memtrace_binary())
            .args(["trace", "--duration", value, "--", "/bin/true"])
            .output()
            .expect("memtrace runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains("the duration must be a number of seconds from 0"),
            "{value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
    }
}

/// Guards issue 11 item 6: memtrace used to unmount, on exit, a tracefs it had mounted, even when
/// another tracer was using it by then. Now a tracefs it mounts stays mounted (and it says so).
/// Run in a private mount namespace (`unshare`) whose tracefs is unmounted first, so the host's
/// mount is never touched.
#[test]
fn tracefs_mounted_by_memtrace_stays_mounted() {
    if !can_trace() {
        return;
    }
    let Some(unshare) = peer_program("unshare", &["/usr/bin/unshare"], "to test tracefs mounting")
    else {
        return;
    };
    let script = format!(
        "set -e; umount /sys/kernel/tracing; \
         if grep -q ' /sys/kernel/tracing ' /proc/self/mountinfo; then echo still-mounted; exit 3; fi; \
         '{}' trace --duration 0 -- /bin/true >/dev/null; \
         grep -c ' /sys/kernel/tracing .* - tracefs ' /proc/self/mountinfo",
        memtrace_binary().display()
    );
    let out = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("mounted it at /sys/kernel/tracing; it stays mounted"),
        "{stderr}"
    );
    assert_eq!(
        stdout.trim(),
        "1",
        "tracefs mounts in the namespace after memtrace exited\n{stderr}"
    );
}

/// Guards issue 14 item 7: `--log-format json` writes one JSON object per log line.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = memtrace_integration::TempDir::new("json-logs");
    let input = dir.path().join("snapshots.jsonl");
    std::fs::write(&input, "{\"timestamp\": 1, \"processes\": []}\nnot json\n").expect("write");
    let out = std::process::Command::new(memtrace_integration::memtrace_binary())
        .args(["--log-format", "json", "analyze", "--input"])
        .arg(&input)
        .env_remove("RUST_LOG")
        .output()
        .expect("memtrace runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warning in {stderr}"));
    assert!(warning["msg"]
        .as_str()
        .is_some_and(|m| m.contains("corrupted")));
    assert!(warning["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(warning["target"].as_str().is_some());
}

/// Runs `memtrace trace --json OPTIONS -- PROGRAM ARGS` with `input` on the command's standard
/// input (then its end); asserts it succeeds. The JSON report and memtrace's standard error.
fn trace_json(
    options: &[&str],
    program: &std::path::Path,
    args: &[&str],
    input: &[u8],
) -> (serde_json::Value, String) {
    let mut child = Command::new(memtrace_binary())
        .args(["trace", "--json"])
        .args(options)
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("memtrace runs");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(input).expect("the workload goes");
    }
    let out = child.wait_with_output().expect("memtrace finishes");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report =
        serde_json::from_str(&stdout[stdout.find('{').expect("a JSON report")..]).expect("JSON");
    (report, stderr)
}

/// Guards the placement of C++ `operator new` under `trace -- CMD`: the host's `libstdc++.so.6`
/// is a link, which the placement (opening libraries without following links) refused, so every
/// `operator new` probe of a C++ program run that way sat on its single-stepped entry.
#[test]
fn trace_of_a_cxx_command_places_operator_new() {
    if !can_trace() {
        return;
    }
    let program = std::path::PathBuf::from(env!("OUT_DIR"))
        .join("attrib-fp")
        .join("attrib_main");
    let (report, stderr) = trace_json(&[], &program, &["exit"], b"g");
    assert!(!stderr.contains("entry probes on libstdc++"), "{stderr}");
    let placements = report["placements"].as_array().expect("placements");
    let new = placements
        .iter()
        .find(|p| p["symbol"] == "_Znwm")
        .unwrap_or_else(|| panic!("operator new placed: {placements:#?}"));
    assert!(new["object"]
        .as_str()
        .is_some_and(|o| o.starts_with("libstdc++")));
    assert_eq!(new["emulated"], true, "{new:#}");
    assert!(new["offset"].as_u64().is_some_and(|o| o > 0), "{new:#}");
}

/// `trace -- CMD` stops the command at its exec and at each library it maps until their unwind
/// tables are loaded: allocations made at once, through code without frame pointers, have whole
/// stacks, and no event of the command finds it without tables.
#[test]
fn trace_of_a_command_unwinds_its_first_allocations() {
    if !can_trace() {
        return;
    }
    let program = std::path::PathBuf::from(env!("OUT_DIR"))
        .join("unwind-cfi")
        .join("unwind_main");
    // Read by the workload as soon as it starts; then end of input, and it exits.
    let (report, stderr) = trace_json(&["--wrapper", "uw_xalloc"], &program, &[], b"ab");
    assert_eq!(report["exitCode"], 0, "{stderr}");
    assert_eq!(
        report["kernel"]["unwind_process_without_tables"], 0,
        "{:#}",
        report["kernel"]
    );
    let consumers = report["attribution"]["consumers"]
        .as_array()
        .expect("consumers");
    for (name, bytes) in [("lib_a_fn", 40 * 5000), ("lib_a_other", 30 * 3000)] {
        let consumer = consumers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} among {consumers:#?}"));
        assert_eq!(consumer["allocatedMemory"], bytes, "{consumer:#}");
        let stack: Vec<&str> = consumer["stackTrace"]
            .as_array()
            .expect("stack")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            stack[0].starts_with(&format!("{name} (libuwa.so+0x")),
            "{stack:?}"
        );
        assert!(stack[1].starts_with("main (unwind_main+0x"), "{stack:?}");
        assert!(
            stack.last().is_some_and(|f| f.starts_with("_start ")),
            "{stack:?}"
        );
    }
}
