// scratch: run a command under a session with BPF stats and print per-program ns/run
use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use memtrace::{probes::ProbeOptions, session::Session};
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let entry = std::env::var("ENTRY").is_ok();
    let stacks = std::env::var("NOSTACKS").is_err();
    let mut s = Session::start(&ProbeOptions {
        entry_probes: entry,
        capture_stacks: stacks,
        ..Default::default()
    })
    .unwrap();
    s.probes.enable_stats().unwrap();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));
    let r = s.trace_pid(pid).unwrap();
    for p in &r.placements {
        eprintln!("{p}");
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    loop {
        s.poll();
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    s.poll();
    let out = child.wait_with_output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    for (name, t, n) in s.probes.program_stats() {
        if n > 0 {
            println!("{name:24} {n:>9} runs {:>8.0} ns/run", t as f64 / n as f64);
        }
    }
}
