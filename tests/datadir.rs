//! The agent's data directory under attack and in odd states (issue 11, items 4 and 7), with the
//! real agent: files that are symbolic links to files elsewhere, a directory writable by every user
//! or owned by another user, directories named like data files, thousands of corrupted lines, an
//! enormous line, and restored alerts about processes that are gone.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use memtrace::{os::clock::now_ms, store::UtcDate};
use memtrace_integration::{
    can_trace, free_port, memtrace_binary, wait_for, Agent, AgentSpec, Leaker, TempDir,
};
use serde_json::{json, Value};

/// Thresholds no process reaches: the only alerts are the ones the tests put in `alerts.jsonl`.
const QUIET: &str = r#"
[monitor]
snapshotInterval = 1

[thresholds]
externalMB = 1000000
rssMB = 1000000
growthRateMB = 1000000
externalRatio = 1000000

[alerting]
channels = ["file"]
"#;

const DAY_MS: u64 = 86_400_000;
/// 2020-01-02T00:00:00Z.
const OLD_SNAPSHOT_MS: u64 = 1_577_923_200_000;

fn day(ms: u64) -> String {
    UtcDate::from_unix_ms(ms).to_string()
}

/// Peak resident memory of a process, KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status readable")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn snapshot_line(timestamp: u64) -> String {
    json!({
        "timestamp": timestamp,
        "memTotalBytes": 1u64 << 34,
        "memAvailableBytes": 1u64 << 33,
        "processes": [{"pid": 1, "comm": "init", "rssBytes": 4096}],
    })
    .to_string()
}

fn alert_line(id: &str, timestamp: u64, pid: u32, comm: &str, trigger: &str) -> Value {
    json!({
        "id": id,
        "timestamp": timestamp,
        "type": "threshold",
        "severity": "warning",
        "message": format!("pid {pid} ({comm}): test alert"),
        "metrics": {"pid": pid, "comm": comm},
        "context": {"trigger": trigger, "pid": pid, "comm": comm, "recommendations": []},
        "resolved": false,
    })
}

fn find<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|a| a["id"] == id)
}

/// Guards issue 11 item 7 (and the "skip what is not a regular file" part of item 4): a directory
/// named like a data file used to stop history restore and retention; 20,000 corrupted lines in
/// today's snapshots delayed `/health` by 13 s (quadratic), one 50 MB line took 13 s and 123 MB;
/// restored active alerts about processes that are gone stayed active forever. Now all of the
/// valid history is restored around the junk, which is counted and summarized; retention still
/// removes old files; the enormous line is never held in memory (the agent's peak RSS compared
/// with a run on an empty data directory); and alerts about a process that exited, or whose PID
/// another process now has, are resolved at start while an alert about a live process stays.
#[test]
fn restore_and_retention_survive_an_odd_data_directory() {
    // The agent's peak RSS with nothing to restore, measured on this machine in this run.
    let empty = TempDir::new("datadir-empty");
    let Some(agent) = Agent::start(&AgentSpec::new(QUIET, empty.path())) else {
        return;
    };
    let baseline_kib = peak_rss_kib(agent.pid());
    agent.stop();

    let data = TempDir::new("datadir-odd");
    let dir = data.path();
    let now = now_ms();
    std::fs::create_dir(dir.join("snapshots_2020-01-01.jsonl")).expect("mkdir");
    std::fs::create_dir_all(dir.join("memory-consumers/consumers_2020-01-01.json")).expect("mkdir");
    std::fs::write(
        dir.join("snapshots_2020-01-02.jsonl"),
        snapshot_line(OLD_SNAPSHOT_MS) + "\n",
    )
    .expect("old snapshots");
    // Today: 3 snapshots, 20,000 corrupted lines, one line of 50 MB, 2 snapshots.
    let valid: Vec<u64> = [50, 40, 30, 5, 4].iter().map(|s| now - s * 1000).collect();
    let mut today = String::new();
    for &t in &valid[..3] {
        writeln!(today, "{}", snapshot_line(t)).expect("write to string");
    }
    for i in 0..20_000 {
        writeln!(today, "{{\"timestamp\": {i}, corrupted").expect("write to string");
    }
    let long_start = today.len();
    today.push_str("{\"timestamp\": 1, \"padding\": \"");
    today.extend(std::iter::repeat_n('x', 50_000_000));
    today.push_str("\"}");
    let long_len = today.len() - long_start;
    today.push('\n');
    for &t in &valid[3..] {
        writeln!(today, "{}", snapshot_line(t)).expect("write to string");
    }
    std::fs::write(dir.join(format!("snapshots_{}.jsonl", day(now))), today).expect("today");

    // Alerts: one about a process that has exited, one about a PID that another process (the
    // leaker, started after the alert) now has, one about the live leaker.
    let mut exited = Command::new("true").spawn().expect("true runs");
    let gone_pid = exited.id();
    exited.wait().expect("true exits");
    let leaker = Leaker::start("cycle");
    let live = now_ms();
    let alerts = [
        alert_line(
            "alert_gone_1",
            now - 60_000,
            gone_pid,
            "true",
            "rss_threshold",
        ),
        alert_line(
            "alert_reused_1",
            now - 3_600_000,
            leaker.pid(),
            "leaker",
            "rss_threshold",
        ),
        alert_line(
            "alert_live_1",
            live,
            leaker.pid(),
            "leaker",
            "growth_rate_threshold",
        ),
    ];
    let text: String = alerts.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(dir.join("alerts.jsonl"), text).expect("alerts");

    let started = Instant::now();
    let agent = Agent::start(&AgentSpec::new(QUIET, dir)).expect("could trace a moment ago");
    let ready_after = started.elapsed();
    let peak_kib = peak_rss_kib(agent.pid());
    eprintln!(
        "agent ready {:.2} s after start; peak RSS {peak_kib} KiB (on an empty data directory: {baseline_kib} KiB)",
        ready_after.as_secs_f64()
    );
    // With the 50 MB line read whole, the peak was some 95 MB above the baseline.
    assert!(
        peak_kib < baseline_kib + 25 * 1024,
        "peak RSS {peak_kib} KiB vs {baseline_kib} KiB on an empty data directory\n{}",
        agent.stderr_tail(30)
    );

    // The valid history (the old file's snapshot, then today's) is restored, oldest first, before
    // the agent's own snapshots.
    let history = agent.get_json("/api/memory/history?count=10000");
    let times: Vec<u64> = history
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|s| s["timestamp"].as_u64())
        .collect();
    let mut expected = vec![OLD_SNAPSHOT_MS];
    expected.extend(&valid);
    assert!(
        times.len() > expected.len() && times[..expected.len()] == expected[..],
        "history: {times:?}\nexpected first: {expected:?}"
    );
    assert!(
        agent.stderr_contains(
            "20001 lines skipped in all (20000 corrupted, 0 partial, 1 longer than 16777216 bytes)"
        ),
        "{}",
        agent.stderr_tail(30)
    );
    assert!(
        agent.stderr_contains(&format!(
            "line 20004: line of {long_len} bytes, over the line limit, skipped"
        )),
        "{}",
        agent.stderr_tail(30)
    );

    // Retention ran (on the first snapshot): the old file is gone, the directories stay.
    wait_for(
        Duration::from_secs(30),
        "retention to remove snapshots_2020-01-02.jsonl",
        || agent.stderr_tail(30),
        || (!dir.join("snapshots_2020-01-02.jsonl").exists()).then_some(()),
    );
    assert!(dir.join("snapshots_2020-01-01.jsonl").is_dir());
    assert!(dir
        .join("memory-consumers/consumers_2020-01-01.json")
        .is_dir());
    assert!(
        agent.stderr_contains("snapshots_2020-01-01.jsonl: not a regular file, ignored"),
        "{}",
        agent.stderr_tail(30)
    );

    // The alerts about gone processes were resolved at start; the live one is active.
    let listed = agent.get_json("/api/memory/alerts");
    for id in ["alert_gone_1", "alert_reused_1"] {
        let alert =
            find(&listed["recent"], id).unwrap_or_else(|| panic!("{id} not listed: {listed:#}"));
        assert_eq!(alert["resolved"], true, "{alert:#}");
        assert_eq!(alert["resolvedBy"], "auto", "{alert:#}");
        assert!(find(&listed["active"], id).is_none(), "{listed:#}");
    }
    assert!(
        find(&listed["active"], "alert_live_1").is_some(),
        "{listed:#}\n{}",
        agent.stderr_tail(30)
    );
    assert!(agent.stderr_contains("resolved 2 restored alerts: their process is gone"));
    // The resolutions are in alerts.jsonl, so the next start does not restore them as active.
    let stored = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("alerts.jsonl");
    let resolved: Vec<Value> = stored
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|a| a["resolved"] == true)
        .collect();
    assert_eq!(resolved.len(), 2, "{stored}");
    agent.stop();
}

/// A file that links in the data directory point to (a copy of `/etc/passwd`), and its contents.
struct Victim {
    path: PathBuf,
    contents: Vec<u8>,
}

impl Victim {
    fn new(dir: &Path, name: &str) -> Self {
        let contents = std::fs::read("/etc/passwd")
            .unwrap_or_else(|_| b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
        let path = dir.join(name);
        std::fs::write(&path, &contents).expect("writing the victim file");
        Self { path, contents }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::symlink_metadata(&self.path).expect("victim still there");
        assert!(meta.file_type().is_file(), "{}", self.path.display());
        assert_eq!(
            std::fs::read(&self.path).expect("readable"),
            self.contents,
            "{} was written through a link",
            self.path.display()
        );
    }
}

/// Guards issue 11 item 4: with `alerts.jsonl.tmp`, today's snapshots file, today's operations
/// file, `consumers_<today>.json` and its `.tmp` being symbolic links to copies of `/etc/passwd`,
/// the agent used to append to or replace those copies. Now appends through a link are refused
/// (said in the log), replacements replace the link itself (or remove a stale `.tmp` link), and
/// every copy is unchanged.
#[test]
fn links_in_the_data_directory_are_never_written_through() {
    if !can_trace() {
        return;
    }
    let victims_dir = TempDir::new("datadir-victims");
    let data = TempDir::new("datadir-links");
    let dir = data.path();
    let consumers = dir.join("memory-consumers");
    std::fs::create_dir_all(&consumers).expect("mkdir");
    let now = now_ms();
    let mut victims = Vec::new();
    let mut link = |path: PathBuf| {
        let victim = Victim::new(victims_dir.path(), &format!("passwd-{}", victims.len()));
        std::os::unix::fs::symlink(&victim.path, &path).expect("symlink");
        victims.push(victim);
    };
    // Today and tomorrow (should the test run over midnight UTC).
    for t in [now, now + DAY_MS] {
        link(dir.join(format!("snapshots_{}.jsonl", day(t))));
        link(consumers.join(format!("operations_{}.jsonl", day(t))));
        link(consumers.join(format!("consumers_{}.json", day(t))));
        link(consumers.join(format!("consumers_{}.json.tmp", day(t))));
    }
    link(dir.join("alerts.jsonl.tmp"));
    // An alert resolved 40 days ago: retention rewrites alerts.jsonl on the first snapshot.
    let mut old = alert_line("alert_old_1", now - 41 * DAY_MS, 1, "init", "rss_threshold");
    old["resolved"] = json!(true);
    old["resolvedAt"] = json!(now - 40 * DAY_MS);
    old["resolvedBy"] = json!("manual");
    std::fs::write(dir.join("alerts.jsonl"), format!("{old}\n")).expect("alerts");

    // The leaker's heap traced: consumers documents and operations are written for it.
    let leaker = Leaker::start("leak");
    let mut spec = AgentSpec::new(QUIET, dir);
    spec.args = vec!["--pid".into(), leaker.pid().to_string()];
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    let today = day(now_ms());
    let consumers_today = consumers.join(format!("consumers_{today}.json"));
    wait_for(
        Duration::from_secs(60),
        "the consumers document to replace its link, and refusals for the snapshots and operations links",
        || agent.stderr_tail(40),
        || {
            let replaced = std::fs::symlink_metadata(&consumers_today)
                .is_ok_and(|m| m.file_type().is_file());
            let refused = agent.stderr_contains(&format!(
                "snapshots_{today}.jsonl is a symbolic link: refused"
            )) && agent.stderr_contains(&format!(
                "operations_{today}.jsonl is a symbolic link: refused"
            ));
            let pruned = !std::fs::read_to_string(dir.join("alerts.jsonl"))
                .unwrap_or_default()
                .contains("alert_old_1");
            (replaced && refused && pruned).then_some(())
        },
    );
    let document: Value =
        serde_json::from_slice(&std::fs::read(&consumers_today).expect("consumers document"))
            .expect("consumers document is JSON");
    assert!(document["processes"].is_array(), "{document:#}");
    assert!(!dir.join("alerts.jsonl.tmp").exists());
    assert!(!consumers
        .join(format!("consumers_{today}.json.tmp"))
        .exists());
    for victim in &victims {
        victim.assert_untouched();
    }
    agent.stop();
    for victim in &victims {
        victim.assert_untouched();
    }
}

/// Runs `memtrace agent` on `data_dir`, which it must refuse: returns its exit code and stderr.
fn refused_agent(data_dir: &Path) -> (Option<i32>, String) {
    let config = TempDir::new("datadir-config");
    let config_path = config.path().join("memtrace.toml");
    std::fs::write(&config_path, QUIET).expect("config");
    let mut child = Command::new(memtrace_binary())
        .arg("agent")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_BACKTRACE", "0")
        .env_remove("MEMTRACE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memtrace agent starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the agent did not refuse {} within 60 s:\n{}",
                data_dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Guards issue 11 item 4: a data directory writable by every user (mode 1777, owned by nobody)
/// used to be used without a word. Now the agent refuses to start on it and says why; it creates
/// a missing data directory with mode 0700.
#[test]
fn unsafe_data_directories_are_refused() {
    if !can_trace() {
        return;
    }
    let data = TempDir::new("datadir-unsafe");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let (code, stderr) = refused_agent(data.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is writable by every user (mode 1777): refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(data.path(), Some(65534), Some(65534)).expect("chown to nobody");
    let (code, stderr) = refused_agent(data.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is owned by uid 65534, not by the agent's uid 0: refused"),
        "{stderr}"
    );
    std::os::unix::fs::chown(data.path(), Some(0), Some(0)).expect("chown back");

    // What the agent creates in it is 0700 (the fixture creates the data directory itself).
    let fresh = data.path().join("new/data");
    let agent = Agent::start(&AgentSpec::new(QUIET, &fresh)).expect("could trace a moment ago");
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o7777;
    assert_eq!(mode(&fresh.join("memory-consumers")), 0o700);
    agent.stop();
}
