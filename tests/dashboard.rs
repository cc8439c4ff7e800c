//! The dashboard end to end: a real agent (with a token) tracing real processes, and the
//! dashboard's Playwright script (memtrace/dashboard/e2e.mjs) driving it in headless Chromium.
//!
//! - `dashboard_end_to_end_in_headless_chromium`: page and charting library load, WebSocket, chart
//!   points, process table, resolving an alert, forced analysis, no CSP violation, and a full-page
//!   screenshot kept in the target directory.
//! - `dashboard_shows_the_figures_of_the_api`: the figures the page shows against the API and
//!   against what the workloads did: the growth card on the metric that grows (RSS of a leaker,
//!   the live heap of a process whose heap grows but not its RSS), every table figure in binary
//!   units, a library that asked for 2 GiB of address space shown within RSS + swap, the
//!   allocator's own mappings folded into one heap row, a name made of markup shown as text;
//!   screenshots of the cards and charts, of the consumers and of the whole page.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use memtrace_integration::{
    memtrace_binary, peer_program, wait_for, workload, Agent, AgentSpec, Leaker, Memops, TempDir,
};
use serde_json::{json, Value};

const TOKEN: &str = "dashboard-test-token-7";
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the repository")
        .to_path_buf()
}

/// node, chromium and the dashboard directory with playwright-core installed, or `None` (a loud
/// skip) when node or chromium is missing.
fn e2e_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let node = peer_program(
        "node",
        &["/usr/bin/node"],
        "to run the dashboard's end-to-end script",
    )?;
    let chromium = peer_program(
        "chromium",
        &["/usr/bin/chromium"],
        "for the dashboard's end-to-end test",
    )?;
    let dashboard = repo_root().join("memtrace/dashboard");
    if !dashboard.join("node_modules/playwright-core").is_dir() {
        let npm = peer_program(
            "npm",
            &["/usr/bin/npm"],
            "to install playwright-core for the dashboard test",
        )?;
        let out = Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dashboard)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}",
            dashboard.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some((node, chromium, dashboard))
}

/// The directory screenshots are kept in (target/debug).
fn target_dir() -> PathBuf {
    memtrace_binary()
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// Runs e2e.mjs against `agent` with `env`, checks that it passed every check and ran at least
/// `min_checks`, and returns its output.
fn run_e2e(
    agent: &Agent,
    tools: &(PathBuf, PathBuf, PathBuf),
    screenshot: &Path,
    env: &[(&str, &Path)],
    min_checks: u32,
) -> String {
    let (node, chromium, dashboard) = tools;
    let _ = std::fs::remove_file(screenshot);
    let log = TempDir::new("dashboard-e2e");
    let out_path = log.path().join("e2e.out");
    let mut child = Command::new(node)
        .arg("e2e.mjs")
        .current_dir(dashboard)
        .env("MEMTRACE_URL", &agent.url)
        .env("MEMTRACE_TOKEN", TOKEN)
        .env("SCREENSHOT", screenshot)
        .env("CHROMIUM", chromium)
        .env("MEMTRACE_E2E_TIMEOUT", "30")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "e2e.mjs still running after 300 s:\n{}\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                agent.stderr_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr =
        std::io::read_to_string(child.stderr.take().expect("stderr piped")).unwrap_or_default();
    let output = std::fs::read_to_string(&out_path).expect("e2e output");
    let context = format!(
        "--- e2e.mjs output ---\n{output}--- e2e.mjs stderr ---\n{stderr}\n{}",
        agent.stderr_tail(20)
    );
    assert!(status.success(), "e2e.mjs failed ({status}):\n{context}");
    let summary = output.lines().last().unwrap_or_default();
    let counts: Vec<u32> = summary
        .strip_prefix("e2e: ")
        .and_then(|s| s.strip_suffix(" failed"))
        .map(|s| {
            s.split(" passed, ")
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        counts.len(),
        2,
        "no `e2e: N passed, M failed` line:\n{context}"
    );
    assert_eq!(counts[1], 0, "{context}");
    assert!(
        counts[0] >= min_checks,
        "only {} checks passed:\n{context}",
        counts[0]
    );
    let size = std::fs::metadata(screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        screenshot.display()
    );
    eprintln!("{output}dashboard screenshot: {}", screenshot.display());
    output
}

/// The `ok` line of the check whose name starts with `name`, or a panic showing the output.
fn passed<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.strip_prefix("ok   ").is_some_and(|l| l.starts_with(name)))
        .unwrap_or_else(|| panic!("no passed check `{name}`:\n{output}"))
}

#[test]
fn dashboard_end_to_end_in_headless_chromium() {
    let Some(tools) = e2e_tools() else {
        return;
    };
    // A 1 MiB RSS threshold, without a for: duration, gives the dashboard active alerts to show
    // and resolve. No drill-downs: the processes traced are the test's.
    let config = "[thresholds]\nrssMB = 1\nfor = 0\n\n[alerting]\nchannels = [\"file\"]\n\
                  maxAlertsPerHour = 50\nmaxAlertsPerTypePerHour = 50\n\n[drilldown]\nenabled = false\n";
    let data = TempDir::new("dashboard");
    let Some(agent) = Agent::start(&AgentSpec::new(config, data.path()).token(TOKEN)) else {
        return;
    };
    let mut w = Memops::start();
    let pid = w.pid();
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(w.run("mallocn 0 64 65536"), 64);
    wait_for(
        Duration::from_secs(20),
        "an active alert and two snapshots",
        || agent.stderr_tail(20),
        || {
            let alerts = agent.get_json("/api/memory/alerts")["active"]
                .as_array()
                .map_or(0, Vec::len);
            let history = agent
                .get_json("/api/memory/history?count=2")
                .as_array()
                .map_or(0, Vec::len);
            (alerts > 0 && history >= 2).then_some(())
        },
    );

    let screenshot = target_dir().join("dashboard-e2e.png");
    // Every check of the script ran, the alert resolution included.
    let output = run_e2e(&agent, &tools, &screenshot, &[], 12);

    // The alert resolved in the page is resolved by hand at the agent.
    let resolved = passed(&output, "resolve an active alert")
        .rsplit("— alert ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let alerts = agent.get_json("/api/memory/alerts");
    let alert = alerts["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == resolved.as_str())
        .unwrap_or_else(|| panic!("alert {resolved} not among the recent ones: {alerts:#}"));
    assert_eq!(
        (&alert["resolved"], &alert["resolvedBy"]),
        (&true.into(), &"manual".into()),
        "{alert:#}"
    );
    assert!(!alerts["active"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["id"] == resolved.as_str()));
    assert_eq!(w.exit(), 0);
    agent.stop();
}

/// `bytes` as the dashboard writes sizes: binary units, three significant digits.
fn binary(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let digits = match (i, v) {
        (0, _) => 0,
        (_, v) if v >= 100.0 => 0,
        (_, v) if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{v:.digits$} {}", UNITS[i])
}

/// A memops process started from a copy of the workload under another file name (so under
/// another command name).
struct Renamed {
    memops: Memops,
    _dir: TempDir,
}

impl Renamed {
    fn start(name: &str) -> Self {
        let dir = TempDir::new("renamed");
        let path = dir.path().join(name);
        std::fs::copy(workload("memops"), &path).expect("copying memops");
        Self {
            memops: Memops::start_at(&path),
            _dir: dir,
        }
    }
}

fn trace(agent: &Agent, pid: u32) {
    let reply = agent.request("POST", &format!("/api/memory/trace/{pid}"), Some(TOKEN));
    assert_eq!(reply.status, 200, "tracing {pid}: {}", reply.text());
}

#[test]
fn dashboard_shows_the_figures_of_the_api() {
    let Some(tools) = e2e_tools() else {
        return;
    };
    // No drill-downs: the processes traced are the test's.
    let config = "[alerting]\nchannels = [\"file\"]\n\n[drilldown]\nenabled = false\n";
    let data = TempDir::new("dashboard-figures");
    let Some(agent) = Agent::start(&AgentSpec::new(config, data.path()).token(TOKEN)) else {
        return;
    };

    // A process named with markup. Before it is traced, its allocator grows the break and maps
    // 1 MiB blocks: once traced, those are the allocator's own memory (`allocatorInternal`).
    let name = "<b>&amp;'\"x";
    let mut marked = Renamed::start(name);
    let marked_pid = marked.memops.pid();
    assert_eq!(marked.memops.run("mallocn 0 64 65536"), 64);
    assert_eq!(marked.memops.run("mallocn 200 4 1048576"), 4);
    wait_for(
        Duration::from_secs(20),
        "the break growth of the untraced process in a snapshot",
        || agent.stderr_tail(20),
        || {
            let p = agent.process_json(marked_pid)?;
            (p["snapshot"]["brkBytes"].as_u64()? >= 4 * MIB).then_some(())
        },
    );
    trace(&agent, marked_pid);
    // Traced: 4 MiB of heap, and 2 GiB of address space it never touches (1 GiB of anonymous
    // memory reserved by growing a page with mremap, 1 GiB of its own file mapped past its end).
    assert_eq!(marked.memops.run("mallocn 300 64 65536"), 64);
    assert_eq!(marked.memops.run("mmap 100 4096 anon"), 1);
    assert_eq!(marked.memops.run(&format!("mremap 100 4096 {GIB}")), 1);
    assert_eq!(marked.memops.run(&format!("mmap 101 {GIB} file")), 1);
    let (snapshot, internal) = wait_for(
        Duration::from_secs(30),
        "the marked process's heap, mappings and allocator-internal consumers",
        || agent.stderr_tail(20),
        || {
            let p = agent.process_json(marked_pid)?;
            let s = &p["snapshot"];
            if s["heapLiveBytes"] != 4 * MIB || s["mappedAnonBytes"].as_u64()? < GIB {
                return None;
            }
            let consumers = agent.get_json(&format!("/api/memory/consumers?pid={marked_pid}"));
            let report = consumers["processes"][0].clone();
            let internal: Vec<Value> = report["consumers"]
                .as_array()?
                .iter()
                .filter(|c| c["metadata"]["allocatorInternal"] == true)
                .cloned()
                .collect();
            let own = report["libraries"]
                .as_array()?
                .iter()
                .find(|l| l["library"] == name)?["liveBytes"]
                .as_u64()?;
            (!internal.is_empty() && own >= 2 * GIB).then(|| (s.clone(), internal))
        },
    );
    let rss = snapshot["rssBytes"].as_u64().expect("rss");
    let swap = snapshot["swapBytes"].as_u64().expect("swap");
    // What the library roll-up rule is for: the library asked for far more than the process holds.
    assert!(rss + swap < 2 * GIB, "{snapshot:#}");
    assert!(
        internal.iter().all(|c| c["category"]
            .as_str()
            .is_some_and(|l| l.starts_with("libc"))),
        "{internal:#?}"
    );
    let mapped_anon = snapshot["mappedAnonBytes"].as_u64().expect("mapped anon");

    // A process whose live heap grows by 1 MiB every 100 ms while its RSS does not (the blocks are
    // never touched): its growth is the heap's.
    let mut heap_only = Memops::start();
    let heap_pid = heap_only.pid();
    trace(&agent, heap_pid);
    let stop = Arc::new(AtomicBool::new(false));
    let grower = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for slot in 1000..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                assert_eq!(heap_only.run(&format!("mallocn {slot} 1 {MIB}")), 1);
                std::thread::sleep(Duration::from_millis(100));
            }
            heap_only
        })
    };
    // Two leakers (RSS and heap grow together, 20 MiB/s, for 30 s): one traced, one not.
    let traced_leak = Leaker::start_with(&["leak", "600"]);
    trace(&agent, traced_leak.pid());
    let untraced_leak = Leaker::start_with(&["leak", "600"]);

    let dir = TempDir::new("dashboard-expect");
    let expect_path = dir.path().join("expect.json");
    let expect = json!({
        "growth": [
            { "pid": traced_leak.pid(), "name": "traced-leaker", "metrics": ["rss", "heapLive"], "minSamples": 8 },
            { "pid": untraced_leak.pid(), "name": "untraced-leaker", "metrics": ["rss"], "minSamples": 8 },
            { "pid": heap_pid, "name": "heap-only", "metrics": ["heapLive"], "minSamples": 8 },
        ],
        "cells": [
            { "pid": marked_pid, "col": "rssBytes", "text": binary(rss) },
            { "pid": marked_pid, "col": "heapLiveBytes", "text": "4.00 MiB" },
            { "pid": marked_pid, "col": "mappedAnonBytes", "text": binary(mapped_anon) },
            { "pid": marked_pid, "col": "mappedFileBytes", "text": binary(snapshot["mappedFileBytes"].as_u64().expect("mapped file")) },
        ],
        "cappedLibrary": [{ "pid": marked_pid, "library": name }],
        "folded": [marked_pid],
        "comm": [{ "pid": marked_pid, "text": name }],
        "analysis": true,
        "topLibrary": [{ "pid": traced_leak.pid(), "library": "leaker" }],
        "finalSelect": marked_pid,
    });
    std::fs::write(&expect_path, expect.to_string()).expect("writing the expectations");

    let target = target_dir();
    let screenshot = target.join("dashboard-figures.png");
    let output = run_e2e(
        &agent,
        &tools,
        &screenshot,
        &[
            ("MEMTRACE_EXPECT", expect_path.as_path()),
            ("SHOTS_DIR", target.as_path()),
        ],
        25,
    );
    for check in [
        "growth card: traced-leaker names RSS or Heap live",
        "growth card: untraced-leaker names RSS",
        "growth card: heap-only names Heap live",
        "process table: every figure equals the API snapshot",
        &format!("pid {marked_pid} rssBytes shows {}", binary(rss)),
        &format!("pid {marked_pid} heapLiveBytes shows 4.00 MiB"),
        &format!(
            "pid {marked_pid} mappedAnonBytes shows {}",
            binary(mapped_anon)
        ),
        &format!("pid {marked_pid}: its name is shown as text"),
        &format!("pid {marked_pid}: library"),
        &format!("pid {marked_pid}: the allocator's own mappings are one heap row"),
        &format!("pid {marked_pid} ({name}): library figures within RSS + swap"),
        "axes: distinct labels",
        "traced processes are listed with their reason",
        "agent counters equal the status",
        "analysis: every top library",
        &format!(
            "analysis: pid {}'s top library is leaker",
            traced_leak.pid()
        ),
        "units: binary prefixes only",
    ] {
        passed(&output, check);
    }
    for shot in [
        "dashboard-growth-traced-leaker.png",
        "dashboard-growth-untraced-leaker.png",
        "dashboard-growth-heap-only.png",
        "dashboard-consumers.png",
    ] {
        let path = target.join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "screenshot {} is {size} bytes",
            path.display()
        );
        eprintln!("dashboard screenshot: {}", path.display());
    }

    stop.store(true, Ordering::Relaxed);
    let heap_only = grower.join().expect("the heap grower thread");
    assert_eq!(heap_only.exit(), 0);
    drop((traced_leak, untraced_leak, marked));
    agent.stop();
}
