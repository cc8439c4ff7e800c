//! Helpers for the integration tests: start the real probes (or say loudly why not), and drive the
//! C workloads in `workloads/` step by step.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use memtrace::{
    probes::{ProbeOptions, COUNTER_NAMES},
    session::Session,
};

/// Path of a compiled workload.
pub fn workload(name: &str) -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join(name)
}

/// Starts a session with the real eBPF object. Without the privileges to load it, the test is
/// skipped (see [`skip`]), except under `CI=true`, where it fails.
pub fn session() -> Option<Session> {
    match Session::start(&ProbeOptions::default()) {
        Ok(session) => Some(session),
        Err(err) => {
            skip(&format!(
                "cannot load the eBPF object ({}); run as root to trace",
                memtrace::error_chain(&err)
            ));
            None
        }
    }
}

/// Environment variable naming the file where skipped tests are recorded (`cargo xtask test`
/// sets it and counts them in its closing line).
pub const SKIP_LOG: &str = "MEMTRACE_SKIP_LOG";

/// Records that the running test cannot run here and returns: loudly on standard error, and as a
/// line `test name: reason` in the file named by [`SKIP_LOG`], so that `cargo xtask test` reports
/// it as skipped, not passed. Under `CI=true` nothing may be skipped: this panics.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if under_ci() {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    eprintln!("\n!!! SKIPPED {test}: {reason} !!!\n");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        let line = format!("{test}: {}\n", reason.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = written {
            eprintln!(
                "cannot record the skip in {}: {err}",
                path.to_string_lossy()
            );
        }
    }
}

/// Attribution of a traced (or exited) process now: its consumers, library roll-ups and leak view,
/// with `config` (a leak age of 0 lists every live allocation in the leak view).
pub fn attribute(
    session: &mut Session,
    pid: u32,
    config: memtrace::config::TrackingConfig,
) -> memtrace::attribution::ConsumerReport {
    session.poll();
    let state = session
        .accounting
        .process(pid)
        .or_else(|| session.accounting.exited_state(pid))
        .expect("the process's state");
    let now_s = memtrace::os::clock::monotonic_seconds();
    let input =
        memtrace::attribution::AttributionInput::of(state, now_s.saturating_sub(config.leak_age));
    let mut stacks = session.probes.stacks().expect("stack map");
    memtrace::attribution::Attributor::new(config).report(&input, &mut stacks, now_s)
}

/// Kernel counter by name (see `memtrace::probes::COUNTER_NAMES`).
pub fn counter(session: &Session, name: &str) -> u64 {
    let index = COUNTER_NAMES
        .iter()
        .position(|n| *n == name)
        .expect("known counter");
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
        Self::start_at(&workload(name))
    }

    /// memops run from `path` (a copy or a link under another name: the kernel names a process
    /// after the file it executes). Killed with the test process if that dies first.
    pub fn start_at(path: &Path) -> Self {
        let mut command = Command::new(path);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = ready(command.stdin(Stdio::piped()), "memops");
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        Self {
            child,
            stdin,
            stdout,
        }
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
        let value = line
            .trim()
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{command}: unexpected reply {line:?}"));
        value.parse().expect("numeric reply")
    }

    pub fn exit(mut self) -> i32 {
        let _ = writeln!(self.stdin, "exit 0");
        let _ = self.stdin.flush();
        self.child
            .wait()
            .expect("memops exits")
            .code()
            .unwrap_or(-1)
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
    memtrace::os::procfs::page_size()
}

/// The memtrace binary built next to this test (`cargo xtask test` builds it first).
pub fn memtrace_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/memtrace
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("memtrace"))
        .expect("target dir");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        binary.display()
    );
    binary
}

/// Whether this machine lets us load the eBPF object (checked once per test binary). When it
/// cannot, every test that asks is skipped (see [`skip`]), except under `CI=true`, where it fails.
pub fn can_trace() -> bool {
    static CAN: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = CAN.get_or_init(|| {
        Session::start(&ProbeOptions::default())
            .map(drop)
            .map_err(|err| memtrace::error_chain(&err))
    });
    match result {
        Ok(()) => true,
        Err(reason) => {
            skip(&format!(
                "cannot load the eBPF object ({reason}); run as root to trace"
            ));
            false
        }
    }
}

/// Whether we run under CI (`CI=true`), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A program the test needs besides memtrace (promtool, prometheus, chromium, node). When it is
/// missing: under `CI=true` the test fails with a clear message (`cargo xtask test` installs
/// these); otherwise it is skipped loudly (`None`).
pub fn peer_program(name: &str, candidates: &[&str], what_for: &str) -> Option<PathBuf> {
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        skip(&format!(
            "{name} is needed {what_for} but is not installed (looked in {candidates:?} and PATH); \
             `cargo xtask test` installs it with apt-get"
        ));
    }
    found
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "memtrace-it-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` and `context()` once
/// `timeout` has passed.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP answer.
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "not JSON ({err}): {}",
                self.text().chars().take(500).collect::<String>()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP client: no proxy, 30 s per request, 4xx and 5xx answers are answers, not errors.
pub fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .proxy(None)
        .build()
        .into()
}

/// Sends `method url` with an optional bearer token. `Err` only when no answer came.
pub fn http(
    client: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" => {
            let mut request = client.get(url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        }
        "DELETE" => {
            let mut request = client.delete(url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        }
        "POST" => {
            let mut request = client.post(url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.send_empty()
        }
        other => panic!("unsupported method {other}"),
    };
    let mut response = result?;
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()?;
    Ok(Reply {
        status,
        content_type,
        headers,
        body,
    })
}

/// How to start a `memtrace agent` for a test.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The configuration file's contents (TOML).
    pub config: String,
    /// `--token`, or none.
    pub token: Option<String>,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen` host (IP), 127.0.0.1 when `None`; the port is a free one. The fixture talks to
    /// the agent through 127.0.0.1 in any case.
    pub listen_ip: Option<String>,
    /// More arguments.
    pub args: Vec<String>,
    /// Environment variables of the agent (`MEMTRACE_TOKEN` is removed unless set here).
    pub env: Vec<(String, String)>,
}

impl AgentSpec {
    pub fn new(config: &str, data_dir: &Path) -> Self {
        Self {
            config: config.to_string(),
            token: None,
            data_dir: data_dir.to_path_buf(),
            listen_ip: None,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
}

/// A running `memtrace agent` process: started with a configuration file, its own data
/// directory, a listener on a free loopback port and 1 s snapshots; its standard error is kept
/// (printed in failure messages). `stop` stops it with SIGINT and checks it exits with 0; dropping
/// it kills it.
pub struct Agent {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub token: Option<String>,
    pub client: ureq::Agent,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    _config_dir: TempDir,
}

impl Agent {
    /// Starts the agent and waits (at most 60 s) until it logs `memtrace agent running` and
    /// answers `GET /health`. `None` (a loud skip) when this machine cannot load the eBPF object.
    pub fn start(spec: &AgentSpec) -> Option<Self> {
        if !can_trace() {
            return None;
        }
        // The port is free when picked, but another program may take it before the agent binds
        // it: then the agent says so at once, and another port is tried.
        for _attempt in 0..3 {
            let mut agent = Self::spawn(spec);
            match agent.wait_ready() {
                Ok(()) => return Some(agent),
                Err(message) if message.contains("Address already in use") => continue,
                Err(message) => panic!("{message}"),
            }
        }
        panic!("memtrace agent: three ports in a row were taken");
    }

    fn spawn(spec: &AgentSpec) -> Self {
        let config_dir = TempDir::new("config");
        let config_path = config_dir.path().join("memtrace.toml");
        std::fs::write(&config_path, &spec.config).expect("writing the configuration");
        std::fs::create_dir_all(&spec.data_dir).expect("creating the data directory");
        let port = free_port();
        let listen = format!(
            "{}:{port}",
            spec.listen_ip.as_deref().unwrap_or("127.0.0.1")
        );
        let mut command = Command::new(memtrace_binary());
        command
            .arg("agent")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &listen, "--snapshot-interval", "1"])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(&spec.args)
            .env_remove("MEMTRACE_TOKEN")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The agent dies with the test (even one killed outright), never outliving it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(token) = &spec.token {
            command.args(["--token", token]);
        }
        let mut child = command.spawn().expect("memtrace agent starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let lines = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            token: spec.token.clone(),
            client: http_client(),
            stderr,
            stderr_reader: Some(stderr_reader),
            _config_dir: config_dir,
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running = self.stderr_contains("memtrace agent running");
            if running
                && self
                    .http("GET", "/health", self.token.as_deref())
                    .is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Err(format!(
                    "memtrace agent exited ({status}) before it was ready\n{}",
                    self.stderr_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "memtrace agent not ready within 60 s (running logged: {running})\n{}",
                    self.stderr_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether a line of the agent's standard error so far contains `text`.
    pub fn stderr_contains(&self, text: &str) -> bool {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(text))
    }

    /// The last `n` lines of the agent's standard error, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let skip = lines.len().saturating_sub(n);
        let mut text = format!(
            "--- last {} of {} lines of the agent's stderr ---\n",
            lines.len() - skip,
            lines.len()
        );
        for line in lines.iter().skip(skip) {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// `method path` on the agent (path starting with `/`), with the bearer `token` if given.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<Reply, ureq::Error> {
        http(&self.client, method, &format!("{}{path}", self.url), token)
    }

    /// `method path` that must be answered; the agent's stderr tail is shown otherwise.
    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        self.http(method, path, token).unwrap_or_else(|err| {
            panic!(
                "{method} {path}: no answer: {err}\n{}",
                self.stderr_tail(30)
            )
        })
    }

    /// `GET path` answered 200 with JSON (with the agent's token, if it has one: a listener
    /// beyond loopback needs it for reading too).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let reply = self.request("GET", path, self.token.as_deref());
        assert_eq!(
            reply.status,
            200,
            "GET {path}: {}\n{}",
            reply.text(),
            self.stderr_tail(30)
        );
        reply.json()
    }

    /// `GET /api/memory/processes/{pid}`, or `None` while the agent does not know the process yet
    /// (its figures are those of the latest snapshot: a process started since is not in it).
    pub fn process_json(&self, pid: u32) -> Option<serde_json::Value> {
        let path = format!("/api/memory/processes/{pid}");
        let reply = self.request("GET", &path, self.token.as_deref());
        if reply.status == 404 {
            return None;
        }
        assert_eq!(
            reply.status,
            200,
            "GET {path}: {}\n{}",
            reply.text(),
            self.stderr_tail(30)
        );
        Some(reply.json())
    }

    /// Stops the agent with SIGINT and checks that it exits with 0 within 30 s.
    ///
    /// The agent loses a SIGINT that arrives while its main loop is busy with a snapshot or an
    /// analysis (it re-creates its `ctrl_c()` listener on every turn of the loop, and a listener
    /// only sees signals that arrive after it was created). So when the agent has not even begun
    /// to shut down 5 s after the signal, it is sent again, and the test says so loudly.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("agent running");
        let pid = child.id() as libc::pid_t;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let mut sent_at = Instant::now();
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the agent") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "memtrace agent did not exit within 30 s of SIGINT\n{}",
                    self.stderr_tail(40)
                );
            }
            if sent_at.elapsed() >= Duration::from_secs(5) && !self.stderr_contains("shutting down")
            {
                eprintln!(
                    "\n!!! memtrace agent (pid {pid}) ignored SIGINT for 5 s (a known agent bug: a SIGINT that \
                     arrives while the main loop handles a snapshot is lost); sending it again !!!\n"
                );
                sent_at = Instant::now();
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends with the pipe: it has every line once joined.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        assert_eq!(
            status.code(),
            Some(0),
            "memtrace agent exited with {status} after SIGINT\n{}",
            self.stderr_tail(40)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("{}", self.stderr_tail(60));
            }
        }
    }
}

/// Spawns `command` with its stdout piped and waits for the workload's `ready` line; the stdout
/// is put back into the child for the caller (the workloads write nothing more until asked).
fn ready(command: &mut Command, what: &str) -> Child {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{what} starts: {err}"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .unwrap_or_else(|err| panic!("{what} says ready: {err}"));
    assert_eq!(line.trim(), "ready", "{what}");
    child.stdout = Some(stdout.into_inner());
    child
}

/// A `grower` workload (see `workloads/grower.c`; `args`: none, `busy` or `steady`), started and
/// ready. Killed on drop; [`Grower::stop`] ends it as it expects (a line on its stdin).
pub struct Grower {
    pub child: Child,
}

impl Grower {
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(workload("grower"));
        let mut child = ready(command.args(args).stdin(Stdio::piped()), "grower");
        // Its stdout is not read again.
        drop(child.stdout.take());
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends it with a line on its stdin and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.stdin.as_mut().map(|s| s.write_all(b"\n"));
        let _ = self.child.wait();
    }
}

impl Drop for Grower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `leaker` workload (see `workloads/leaker.c`): `leak` grows by 2 MiB every 100 ms, `cycle`
/// allocates and frees 2 MiB every 100 ms. Killed on drop.
pub struct Leaker {
    pub child: Child,
}

impl Leaker {
    pub fn start(mode: &str) -> Self {
        Self::start_with(&[mode])
    }

    /// `leaker ARGS...` (e.g. `leak 600`: stop growing at 600 MiB).
    pub fn start_with(args: &[&str]) -> Self {
        let mut command = Command::new(workload("leaker"));
        let mut child = ready(command.args(args).stdin(Stdio::null()), "leaker");
        drop(child.stdout.take());
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
