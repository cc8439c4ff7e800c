//! pprof profiles of real traced processes, read back by the protocol's own decoder (the
//! messages generated from pprof's `profile.proto`) and by Go's pprof (`go tool pprof`, which
//! `cargo xtask test` installs with Debian's golang-go): the top function and its bytes are the
//! top consumer of `memtrace trace`, and the profile served for a scrape reads the same through
//! Go's own HTTP fetcher (what Parca and Pyroscope's scrapers use).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use memtrace::{
    attribution::symbols::build_id,
    config::TrackingConfig,
    reports::{self, proto, HeapProfile},
};
use memtrace_integration::{
    attribute, can_trace, memtrace_binary, peer_program, session, workload, TempDir,
};

const MIB: u64 = 1 << 20;

/// `go`, when installed (under `CI=true` it must be).
fn go() -> Option<PathBuf> {
    peer_program(
        "go",
        &["/usr/bin/go", "/usr/lib/go/bin/go"],
        "to read memtrace's pprof profiles with Go's pprof (Debian package golang-go)",
    )
}

/// `go tool pprof ARGS SOURCE`'s standard output; panics with its error output on failure.
fn go_pprof(go: &Path, args: &[&str], source: &str, tmp: &Path) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(source)
        .env("PPROF_TMPDIR", tmp)
        .env("HOME", tmp)
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .stdin(Stdio::null())
        .output()
        .expect("go tool pprof runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {source} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Rows of `-top -unit=B` output: (flat bytes, function name).
fn top_rows(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat  flat%"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 {
                return None;
            }
            let flat = bytes(fields[0])?;
            Some((flat, fields[5..].join(" ")))
        })
        .collect()
}

/// `123B` (or `0`) as a number of bytes.
fn bytes(field: &str) -> Option<u64> {
    field.strip_suffix('B').unwrap_or(field).parse().ok()
}

/// A sample as `-traces` prints it.
#[derive(Debug, Default)]
struct Trace {
    labels: Vec<String>,
    bytes: u64,
    /// Function names, leaf first.
    stack: Vec<String>,
}

fn traces(text: &str) -> Vec<Trace> {
    let separator = "-----------+";
    let mut out = Vec::new();
    for block in text.split(separator).skip(1) {
        let mut trace = Trace::default();
        for line in block.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            if fields[0].ends_with(':') {
                trace.labels.push(fields.join(" "));
            } else if trace.stack.is_empty() {
                trace.bytes = bytes(fields[0]).unwrap_or_else(|| panic!("bytes in {line:?}"));
                trace.stack.push(fields[1..].join(" "));
            } else {
                trace.stack.push(fields.join(" "));
            }
        }
        if !trace.stack.is_empty() {
            out.push(trace);
        }
    }
    out
}

fn decode(gz: &[u8]) -> proto::Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("the profile is gzipped");
    proto::Profile::decode(&raw[..]).expect("the profile decodes as profile.proto")
}

fn string(p: &proto::Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// The sample with the most live bytes, with its function names (leaf first).
fn top_sample(p: &proto::Profile) -> (&proto::Sample, Vec<&proto::Function>) {
    let sample = p.sample.iter().max_by_key(|s| s.value[3]).expect("samples");
    let functions = sample
        .location_id
        .iter()
        .map(|&id| {
            let location = p.location.iter().find(|l| l.id == id).expect("location");
            let line = &location.line[0];
            p.function
                .iter()
                .find(|f| f.id == line.function_id)
                .expect("function")
        })
        .collect();
    (sample, functions)
}

/// Checks what any profile must say: Go's heap layout and mappings whose locations fall inside
/// them, each with a path and, where the object has one, its build id.
fn check_layout(p: &proto::Profile) {
    assert_eq!(string(p, 0), "");
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (string(p, t.r#type), string(p, t.unit)))
        .collect();
    assert_eq!(types, reports::HEAP_SAMPLE_TYPES);
    assert_eq!(string(p, p.default_sample_type), "inuse_space");
    for location in &p.location {
        if location.mapping_id == 0 {
            continue;
        }
        let m = p
            .mapping
            .iter()
            .find(|m| m.id == location.mapping_id)
            .expect("the location's mapping");
        assert!(
            m.memory_start <= location.address && location.address < m.memory_limit,
            "location {location:?} outside its mapping {m:?}"
        );
    }
    for m in &p.mapping {
        let path = string(p, m.filename);
        assert!(path.starts_with('/'), "{m:?}");
        assert!(m.memory_start < m.memory_limit, "{m:?}");
        if let Some(id) = build_id(Path::new(path)) {
            assert_eq!(string(p, m.build_id), id, "build id of {path}");
        }
    }
}

/// The report of `memtrace trace --json` (the workload may print lines before it).
fn report_json(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let start = text.find("\n{").map_or(0, |i| i + 1);
    serde_json::from_str(&text[start..]).expect("a JSON report")
}

#[test]
fn trace_pprof_top_is_the_trace_reports_top_consumer() {
    if !can_trace() {
        return;
    }
    let tmp = TempDir::new("pprof-trace");
    let file = tmp.path().join("leaker.pb.gz");
    let leaker = workload("leaker");
    // leaker holds 16 MiB in 2 MiB blocks after 0.8 s and then waits; it dies with memtrace.
    let out = Command::new(memtrace_binary())
        .args(["trace", "--json", "--duration", "3", "--pprof"])
        .arg(&file)
        .arg("--")
        .arg(&leaker)
        .args(["leak", "16"])
        .stdin(Stdio::null())
        .output()
        .expect("memtrace runs");
    assert!(
        out.status.success(),
        "memtrace trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report_json(&out.stdout);
    let top = &report["attribution"]["consumers"][0];
    assert_eq!(top["type"], "malloc", "{top}");
    assert_eq!(top["name"], "main", "{top}");
    assert_eq!(top["category"], "leaker", "{top}");
    assert_eq!(top["allocatedMemory"], 16 * MIB);
    assert_eq!(top["activeAllocations"], 8);

    let gz = std::fs::read(&file).expect("the profile was written");
    let p = decode(&gz);
    check_layout(&p);
    let (sample, functions) = top_sample(&p);
    assert_eq!(string(&p, functions[0].name), "main");
    // Every sample whose leaf is leaker's `main` together hold the consumer's bytes (the first
    // allocations after exec may have a shorter stack: the process's unwind tables are loaded a
    // moment after it starts, and until then its stacks are walked by frame pointers).
    let in_main: Vec<i64> = p
        .sample
        .iter()
        .filter(|s| {
            let leaf = p.location.iter().find(|l| l.id == s.location_id[0]);
            leaf.and_then(|l| p.function.iter().find(|f| f.id == l.line[0].function_id))
                .is_some_and(|f| string(&p, f.name) == "main")
        })
        .fold(vec![0; 4], |mut sum, s| {
            for (total, value) in sum.iter_mut().zip(&s.value) {
                *total += value;
            }
            sum
        });
    assert_eq!(in_main, vec![8, 16 * MIB as i64, 8, 16 * MIB as i64]);
    assert!(
        string(&p, functions[0].filename).ends_with("workloads/leaker.c"),
        "{}",
        string(&p, functions[0].filename)
    );
    let leaf = p
        .location
        .iter()
        .find(|l| l.id == sample.location_id[0])
        .expect("leaf");
    assert!(leaf.line[0].line > 0, "a line number");
    // The main binary is the first mapping, with its path and build id.
    let main = &p.mapping[0];
    assert_eq!(leaf.mapping_id, main.id);
    let leaker_path = std::fs::canonicalize(&leaker).expect("workload path");
    assert_eq!(Path::new(string(&p, main.filename)), leaker_path);
    let id = build_id(&leaker_path).expect("the workload has a build id");
    assert_eq!(string(&p, main.build_id), id);
    assert!(main.has_functions && main.has_filenames && main.has_line_numbers);

    let Some(go) = go() else { return };
    let file = file.to_string_lossy();
    let top = go_pprof(&go, &["-top", "-unit=B"], &file, tmp.path());
    assert!(top.contains("Type: inuse_space"), "{top}");
    assert!(top.contains(&format!("Build ID: {id}")), "{top}");
    let rows = top_rows(&top);
    assert_eq!(rows.first(), Some(&(16 * MIB, "main".to_string())), "{top}");
    let traces = traces(&go_pprof(&go, &["-traces", "-unit=B"], &file, tmp.path()));
    let first = traces.first().expect("traces");
    assert_eq!(first.stack[0], "main", "{first:?}");
    assert_eq!(first.labels, ["kind: malloc"], "{first:?}");
    // As above: the traces ending in `main` hold its bytes between them.
    let in_main: u64 = traces
        .iter()
        .filter(|t| t.stack[0] == "main")
        .map(|t| t.bytes)
        .sum();
    assert_eq!(in_main, 16 * MIB, "{traces:?}");
}

/// The attribution workload (two shared libraries, a C++ one), started and waiting for "g".
struct Attrib {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Attrib {
    fn start() -> Self {
        let path = PathBuf::from(env!("OUT_DIR"))
            .join("attrib-fp")
            .join("attrib_main");
        let mut child = Command::new(path)
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

    /// Lets it allocate; returns once it has.
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"g").expect("go");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("done");
        assert_eq!(line.trim(), "done");
    }
}

impl Drop for Attrib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stacks_across_libraries_read_the_same_in_go_pprof() {
    if !can_trace() {
        return;
    }
    let tmp = TempDir::new("pprof-attrib");
    let file = tmp.path().join("attrib.pb.gz");
    let mut w = Attrib::start();
    let mut memtrace = Command::new(memtrace_binary())
        .args(["trace", "--json", "--duration", "3", "--pprof"])
        .arg(&file)
        .args(["--pid", &w.child.id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("memtrace runs");
    let stderr = memtrace.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("memtrace attached in time");
    w.go();
    let out = memtrace.wait_with_output().expect("memtrace finishes");
    assert!(out.status.success(), "memtrace trace failed");
    let report = report_json(&out.stdout);
    let top = &report["attribution"]["consumers"][0];
    assert_eq!(top["name"], "leak_one", "{top}");
    assert_eq!(top["category"], "libleak.so", "{top}");
    assert_eq!(top["allocatedMemory"], 50 * 4096);

    let p = decode(&std::fs::read(&file).expect("the profile was written"));
    check_layout(&p);
    let (sample, functions) = top_sample(&p);
    let names: Vec<&str> = functions.iter().map(|f| string(&p, f.name)).collect();
    assert_eq!(&names[..3], ["leak_one", "leak_chunks", "main"]);
    assert_eq!(sample.value[2..], [50, 50 * 4096]);
    assert!(string(&p, functions[0].filename).ends_with("attrib/libleak.c"));
    // The library's mapping: its path, its build id.
    let location = p
        .location
        .iter()
        .find(|l| l.id == sample.location_id[0])
        .expect("leaf");
    let mapping = p
        .mapping
        .iter()
        .find(|m| m.id == location.mapping_id)
        .expect("mapping");
    let path = string(&p, mapping.filename);
    assert!(path.ends_with("attrib-fp/libleak.so"), "{path}");
    assert_eq!(
        Some(string(&p, mapping.build_id).to_string()),
        build_id(Path::new(path))
    );
    // No sample starts inside the allocator: operator new and libc are left out of stacks.
    for sample in &p.sample {
        let leaf = p
            .location
            .iter()
            .find(|l| l.id == sample.location_id[0])
            .expect("leaf");
        let function = p
            .function
            .iter()
            .find(|f| f.id == leaf.line[0].function_id)
            .expect("function");
        let name = string(&p, function.name);
        assert!(
            !name.starts_with("operator new") && !name.starts_with("_Zn") && name != "malloc",
            "{name}"
        );
    }

    let Some(go) = go() else { return };
    let file = file.to_string_lossy();
    let top = go_pprof(&go, &["-top", "-unit=B"], &file, tmp.path());
    assert_eq!(
        top_rows(&top).first(),
        Some(&(50 * 4096, "leak_one".to_string())),
        "{top}"
    );
    let traces = traces(&go_pprof(&go, &["-traces", "-unit=B"], &file, tmp.path()));
    let first = traces.first().expect("traces");
    assert_eq!(first.bytes, 50 * 4096, "{first:?}");
    assert_eq!(&first.stack[..3], ["leak_one", "leak_chunks", "main"]);
    // The direct mapping, kept apart by its kind label.
    let mmap = go_pprof(
        &go,
        &["-top", "-unit=B", "-tagfocus=kind=mmap"],
        &file,
        tmp.path(),
    );
    assert_eq!(
        top_rows(&mmap).first(),
        Some(&(16 * 4096, "leak_map".to_string())),
        "{mmap}"
    );
}

/// Serves `routes` (path -> body) over HTTP on 127.0.0.1 as Go's `net/http/pprof` does, for up
/// to `requests` requests.
fn serve(routes: Vec<(&'static str, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_or(true, |n| n == 0) || line == "\r\n" {
                    break;
                }
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("");
            let reply = match routes.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        reports::PPROF_CONTENT_TYPE,
                        body.len()
                    )
                    .into_bytes();
                    head.extend_from_slice(body);
                    head
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&reply);
        }
    });
    base
}

#[test]
fn scrape_profiles_read_through_gos_fetcher() {
    // Started before the session, so that the loader's mappings are not seen (as with
    // `memtrace trace --pid`): the top consumer is then the leak.
    let mut w = Attrib::start();
    let Some(mut session) = session() else { return };
    let pid = w.child.id();
    session.trace_pid(pid).expect("attach");
    w.go();
    let report = attribute(&mut session, pid, TrackingConfig::default());
    let now = 1_700_000_000_000_000_000;
    let heap = reports::pprof_for_scrape(&report, HeapProfile::Heap, now).expect("heap");
    let allocs = reports::pprof_for_scrape(&report, HeapProfile::Allocs, now).expect("allocs");

    // The protocol's own decoder: the same samples, a different default type.
    let (h, a) = (decode(&heap), decode(&allocs));
    check_layout(&h);
    assert_eq!(string(&a, a.default_sample_type), "alloc_space");
    assert_eq!(h.sample, a.sample);
    let alloc_space = |name: &str| -> i64 {
        a.sample
            .iter()
            .filter(|s| {
                let leaf = a.location.iter().find(|l| l.id == s.location_id[0]);
                leaf.and_then(|l| a.function.iter().find(|f| f.id == l.line[0].function_id))
                    .is_some_and(|f| string(&a, f.name) == name)
            })
            .map(|s| s.value[1])
            .sum()
    };
    assert_eq!(alloc_space("leak_one"), 50 * 4096);
    assert_eq!(alloc_space("clean_one"), 50 * 4096, "freed, but allocated");

    let Some(go) = go() else { return };
    let tmp = TempDir::new("pprof-scrape");
    let base = serve(
        vec![("/debug/pprof/heap", heap), ("/debug/pprof/allocs", allocs)],
        2,
    );
    let top = go_pprof(
        &go,
        &["-top", "-unit=B"],
        &format!("{base}/debug/pprof/heap"),
        tmp.path(),
    );
    assert!(top.contains("Type: inuse_space"), "{top}");
    assert_eq!(
        top_rows(&top).first(),
        Some(&(50 * 4096, "leak_one".to_string())),
        "{top}"
    );
    let top = go_pprof(
        &go,
        &["-top", "-unit=B"],
        &format!("{base}/debug/pprof/allocs"),
        tmp.path(),
    );
    assert!(top.contains("Type: alloc_space"), "{top}");
    let rows = top_rows(&top);
    for name in ["leak_one", "clean_one"] {
        assert!(
            rows.contains(&(50 * 4096, name.to_string())),
            "{name} in {top}"
        );
    }
}
