//! What the suite needs before it measures: the machine's description, the peers (installed with
//! apt-get when missing), the C workloads compiled, sqlite3's script, a private copy of libc for
//! bpftrace.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use super::{
    proc::{capture, which, Proc},
    runs::{FloorProbe, Floors},
};

/// What the machine is, printed first and kept in the JSON.
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub load_start: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            kernel: capture("uname", &["-r"]).unwrap_or_else(|| "unknown".into()),
            cpu,
            cores,
            memory_gib: memory_kib / (1024.0 * 1024.0),
            load_start: load_average(),
        }
    }

    pub fn json(&self, load_end: &str) -> Value {
        json!({
            "kernel": self.kernel,
            "cpu": self.cpu,
            "cores": self.cores,
            "memoryGiB": (self.memory_gib * 10.0).round() / 10.0,
            "loadAverageStart": self.load_start,
            "loadAverageEnd": load_end,
        })
    }
}

pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A peer program: found, installed now, or unavailable (with the reason).
pub struct Peer {
    pub program: &'static str,
    pub package: &'static str,
    pub path: Option<PathBuf>,
    pub version: String,
    /// "installed by the suite with apt-get", or why it is unavailable.
    pub note: Option<String>,
}

impl Peer {
    pub fn available(&self) -> bool {
        self.path.is_some()
    }

    pub fn json(&self) -> Value {
        json!({"program": self.program, "package": self.package, "available": self.available(), "version": self.version, "note": self.note})
    }
}

/// Finds each program, installing its Debian package when missing (apt-get update once first).
pub fn peers(wanted: &[(&'static str, &'static str, &'static [&'static str])]) -> Vec<Peer> {
    let mut updated = false;
    wanted
        .iter()
        .map(|&(program, package, version_args)| {
            let mut note = None;
            let mut path = which(program);
            if path.is_none() {
                eprintln!("bench: {program} is missing: installing the Debian package {package} with apt-get");
                let result = apt_install(package, &mut updated);
                path = which(program);
                note = Some(match (&result, &path) {
                    (Ok(()), Some(_)) => format!("installed by the suite (apt-get install {package})"),
                    (Ok(()), None) => format!("apt-get install {package} succeeded but {program} is still not on PATH"),
                    (Err(err), _) => format!("not available: apt-get install {package} failed: {err:#}"),
                });
            }
            let version = path
                .as_ref()
                .and_then(|p| capture(&p.to_string_lossy(), version_args))
                .map(|v| v.lines().next().unwrap_or_default().to_string())
                .unwrap_or_default();
            Peer { program, package, path, version, note }
        })
        .collect()
}

fn apt_install(package: &str, updated: &mut bool) -> anyhow::Result<()> {
    if which("apt-get").is_none() {
        bail!("no apt-get on this machine");
    }
    let quiet = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("running apt-get")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "apt-get {} exited with {}: {}",
                args.join(" "),
                out.status,
                err.lines().last().unwrap_or_default()
            );
        }
        Ok(())
    };
    if !*updated {
        quiet(&["update", "-qq"])?;
        *updated = true;
    }
    quiet(&["install", "-y", "-qq", package])
}

/// Compiles `bench/NAME.c` into `out/NAME` with `cc -O2`, unless the binary is newer than the
/// sources.
pub fn compile(root: &Path, out: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let src = root.join("bench").join(format!("{name}.c"));
    let header = root.join("bench/common.h");
    let binary = out.join(name);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if let (Some(bin), Some(s), Some(h)) = (mtime(&binary), mtime(&src), mtime(&header)) {
        if bin >= s && bin >= h {
            return Ok(binary);
        }
    }
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(&binary)
        .arg(&src)
        .arg("-lpthread")
        .status()
        .context("running cc (the C compiler is needed for the workloads: apt-get install gcc)")?;
    if !status.success() {
        bail!("cc failed on {}", src.display());
    }
    Ok(binary)
}

/// A deterministic pseudo-random sequence (PCG-style LCG), so every run gets the same data set.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// sqlite3's script: builds a customers/orders data set of `rows` orders in memory (multi-row
/// INSERTs in one transaction), indexes it, then runs aggregate, join, LIKE, UPDATE and DELETE
/// statements. It times itself in SQL and prints `elapsed <seconds>` like the C workloads.
pub fn sqlite_script(rows: usize) -> String {
    const WORDS: [&str; 12] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima",
    ];
    const BATCH: usize = 1000;
    let mut rng = Lcg(12345);
    let customers = (rows / 20).max(1);
    let mut s = String::new();
    s.push_str("CREATE TEMP TABLE bench_clock AS SELECT julianday('now') AS t;\n");
    s.push_str("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);\n");
    s.push_str("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, category INTEGER, amount REAL, note TEXT);\n");
    s.push_str("BEGIN;\n");
    for start in (0..customers).step_by(BATCH) {
        s.push_str("INSERT INTO customers VALUES ");
        for i in start..customers.min(start + BATCH) {
            let (a, b, city) = (rng.next() % 12, rng.next() % 12, rng.next() % 50);
            let _ = write!(
                s,
                "{}({i},'{} {}','c{city}')",
                if i == start { "" } else { "," },
                WORDS[a as usize],
                WORDS[b as usize]
            );
        }
        s.push_str(";\n");
    }
    for start in (0..rows).step_by(BATCH) {
        s.push_str("INSERT INTO orders VALUES ");
        for i in start..rows.min(start + BATCH) {
            let (customer, category, units, cents) = (
                rng.next() % customers as u64,
                rng.next() % 40,
                rng.next() % 1000,
                rng.next() % 100,
            );
            let words = 1 + rng.next() % 6;
            let note: Vec<&str> = (0..words)
                .map(|_| WORDS[(rng.next() % 12) as usize])
                .collect();
            let _ = write!(
                s,
                "{}({i},{customer},{category},{units}.{cents:02},'{}')",
                if i == start { "" } else { "," },
                note.join(" ")
            );
        }
        s.push_str(";\n");
    }
    s.push_str(
        "COMMIT;
CREATE INDEX orders_customer ON orders(customer);
CREATE INDEX orders_category ON orders(category, amount);
SELECT category, count(*), round(sum(amount), 2), round(avg(length(note)), 2) FROM orders GROUP BY category ORDER BY 3 DESC LIMIT 3;
SELECT c.city, count(*), round(sum(o.amount), 2) FROM orders o JOIN customers c ON c.id = o.customer GROUP BY c.city ORDER BY 3 DESC LIMIT 3;
SELECT note, count(*) FROM orders GROUP BY note ORDER BY 2 DESC LIMIT 3;
SELECT count(*) FROM orders WHERE note LIKE '%echo%golf%';
UPDATE orders SET amount = amount * 1.1, note = note || ' updated' WHERE id % 7 = 0;
DELETE FROM orders WHERE id % 11 = 0;
SELECT customer, group_concat(category) FROM orders WHERE customer < 50 GROUP BY customer ORDER BY customer LIMIT 2;
SELECT count(DISTINCT customer), max(amount) FROM orders;
SELECT 'elapsed ' || printf('%.6f', (julianday('now') - t) * 86400.0) FROM bench_clock;
",
    );
    s
}

/// The C library this (dynamically linked) program uses: the same file the workloads load.
pub fn system_libc() -> anyhow::Result<PathBuf> {
    let maps = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| {
                    n.starts_with("libc.so") || (n.starts_with("libc-") && n.ends_with(".so"))
                })
        })
        .map(PathBuf::from)
        .context("no libc in /proc/self/maps")
}

/// Copies libc into `dir` under its soname, for LD_LIBRARY_PATH. bpftrace 0.17's uprobes are not
/// scoped to a process (`-p` only filters in the program, the breakpoint is in every process that
/// maps the file): on a private copy, only the benchmarked process (and its children) map it, so
/// the rest of the host, other developers' builds included, does not pay a trap per malloc.
pub fn private_libc(dir: &Path) -> anyhow::Result<PathBuf> {
    let libc = system_libc()?;
    fs::create_dir_all(dir)?;
    let copy = dir.join("libc.so.6");
    fs::copy(&libc, &copy)
        .with_context(|| format!("copying {} to {}", libc.display(), copy.display()))?;
    Ok(copy)
}

/// The perf floors' probes. memtrace's placements come from `memtrace trace --json` of a one-pair
/// malloc loop (the same libc as every workload); the entry floor puts the same probes at the
/// functions' entries.
pub fn floors(memtrace: &Path, malloc_loop: &str, work: &Path) -> anyhow::Result<Floors> {
    let report_path = work.join("floors.json");
    let argv: Vec<String> = vec![
        memtrace.to_string_lossy().into_owned(),
        "trace".into(),
        "--json".into(),
        "--output".into(),
        report_path.to_string_lossy().into_owned(),
        "--".into(),
        malloc_loop.into(),
        "1".into(),
    ];
    let mut p = Proc::spawn(&argv, &[], work, "floors", true)?;
    p.feed(b"go\n")?;
    let status = p.wait(std::time::Duration::from_secs(120))?;
    if !status.success() {
        bail!("memtrace trace exited with {status}:\n{}", p.tail());
    }
    let report: Value = serde_json::from_str(
        &fs::read_to_string(&report_path).context("memtrace trace wrote no report")?,
    )
    .context("memtrace trace's report is not JSON")?;
    let libc = system_libc()?;
    let libc_name = libc.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut floors = Floors::default();
    for p in report["placements"].as_array().into_iter().flatten() {
        let (Some(symbol), Some(object), Some(offset), Some(file_offset)) = (
            p["symbol"].as_str(),
            p["object"].as_str(),
            p["offset"].as_u64(),
            p["fileOffset"].as_u64(),
        ) else {
            bail!("a placement without symbol, object or offsets: {p}");
        };
        if Some(object.to_string()) != libc_name {
            continue;
        }
        let probe = |file_offset| FloorProbe {
            symbol: symbol.to_string(),
            path: libc.clone(),
            file_offset,
            ret: symbol != "free",
        };
        floors.placed.push(probe(file_offset));
        floors.entry.push(probe(file_offset - offset));
    }
    if floors.placed.is_empty() {
        bail!("memtrace reported no placement in {}", libc.display());
    }
    Ok(floors)
}
