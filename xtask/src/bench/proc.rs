//! Child processes for the benchmark: output to files (so nothing blocks on a full pipe), standard
//! input as a pipe (the start gate, or sqlite3's script), waits with deadlines.

use std::{
    fs::{self, File},
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};

/// A running child whose standard output and error go to files.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
    pub ended: Option<Instant>,
}

impl Proc {
    /// Starts `argv` with `env` added. `stdin`: a pipe (true) or /dev/null.
    pub fn spawn(
        argv: &[String],
        env: &[(String, String)],
        dir: &Path,
        tag: &str,
        stdin: bool,
    ) -> anyhow::Result<Self> {
        let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(
                File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?,
            )
            .stderr(
                File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?,
            );
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name: Path::new(program)
                .file_name()
                .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned()),
            pid: child.id(),
            child,
            stdin,
            stdout,
            stderr,
            started,
            status: None,
            ended: None,
        })
    }

    /// Writes `data` to standard input and closes it. A child that is already gone (broken pipe)
    /// is not an error here: its exit status tells.
    pub fn feed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            match stdin.write_all(data) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::BrokenPipe => {}
                Err(err) => {
                    return Err(err).context(format!("writing to {}'s standard input", self.name))
                }
            }
        }
        Ok(())
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn errors(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last lines of standard error (and output), for error messages.
    pub fn tail(&self) -> String {
        let mut text = self.errors();
        if text.trim().is_empty() {
            text = self.output();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Has it exited? Reaps it if so.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
            {
                self.status = Some(status);
                self.ended = Some(Instant::now());
            }
        }
        Ok(self.status)
    }

    /// Waits for it to exit; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.stdin.take();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} (pid {}) did not finish within {:?}: killed\n{}",
                    self.name,
                    self.pid,
                    timeout,
                    self.tail()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `ready()` holds; fails if the process exits first or after `timeout`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}): no {what} within {:?}:\n{}",
                    self.name,
                    self.pid,
                    timeout,
                    self.tail()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGINT (through kill(1): the suite uses std::process only).
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Stops it with SIGINT, waiting up to `timeout`, then SIGKILL. Returns whether it stopped on
    /// the interrupt.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        if self.exited()?.is_some() {
            return Ok(true);
        }
        self.interrupt();
        match self.wait(timeout) {
            Ok(_) => Ok(true),
            Err(_) => Ok(false),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.status = Some(status);
            self.ended = Some(Instant::now());
        }
    }

    /// Seconds from start to exit (the whole process, start-up included).
    pub fn wall(&self) -> f64 {
        self.ended
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
            .as_secs_f64()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
        }
    }
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command name start at field 3; utime is 14, stime 15.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Runs a command to completion and returns its standard output (trimmed), or None.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&text).trim().to_string())
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A TCP port on loopback that nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}
