//! Starting a command so that it is traced from its first instruction: the child is forked, waits
//! on a pipe until the probes are attached to its PID, then calls `execvp`.
//!
//! A program that cannot be run is reported at once, twice over: before anything is loaded, the
//! program is looked up the way `execvp` does (so a missing or non-executable program is said before
//! the probes load), and after the gate is released, the child reports `execvp`'s `errno` through a
//! close-on-exec pipe (end of file on it means the exec succeeded).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::PathBuf,
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no command given")]
    Empty,
    #[error("command argument contains a NUL byte")]
    Nul(#[source] std::ffi::NulError),
    #[error("creating the start gate")]
    Pipe(#[source] io::Error),
    #[error("fork failed")]
    Fork(#[source] io::Error),
    #[error("cannot run {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// A child that has been forked and waits for `release` before it execs.
pub struct GatedChild {
    pub pid: u32,
    program: String,
    gate: Option<libc::c_int>,
    /// Read end of the pipe through which the child reports a failed `execvp`.
    exec_report: Option<OwnedFd>,
}

/// The search path `execvp` uses when `PATH` is unset (glibc's `confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Whether `execvp` can find and run `program`: `Err` with the error `execvp` would give (`ENOENT`
/// when no candidate exists, `EACCES` when one exists but cannot be executed).
pub fn check_program(program: &str) -> io::Result<()> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut denied = false;
    for candidate in candidates {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        let Ok(c_path) = CString::new(candidate.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path.
        let executable = unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } == 0;
        // execve refuses directories and other non-regular files with EACCES.
        if executable && meta.is_file() && meta.mode() & 0o111 != 0 {
            return Ok(());
        }
        denied = true;
    }
    Err(io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

impl GatedChild {
    pub fn spawn(argv: &[String]) -> Result<Self, LaunchError> {
        let Some(program) = argv.first() else {
            return Err(LaunchError::Empty);
        };
        check_program(program).map_err(|source| LaunchError::Exec {
            program: program.clone(),
            source,
        })?;
        // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()
            .map_err(LaunchError::Nul)?;
        let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let [read_end, write_end] = pipe()?;
        let [report_read, report_write] = match pipe() {
            Ok(fds) => fds,
            Err(err) => {
                // SAFETY: closing descriptors this function owns.
                unsafe {
                    libc::close(read_end);
                    libc::close(write_end);
                }
                return Err(err);
            }
        };
        // SAFETY: fork has no preconditions; the child branch below only makes async-signal-safe
        // calls (close, read, execvp, write, _exit) on data prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let err = io::Error::last_os_error();
            // SAFETY: closing descriptors this function owns.
            unsafe {
                for fd in [read_end, write_end, report_read, report_write] {
                    libc::close(fd);
                }
            }
            return Err(LaunchError::Fork(err));
        }
        if pid == 0 {
            // SAFETY: see above; `ptrs` is a NULL-terminated array of valid C strings. The report
            // pipe's write end is close-on-exec: a successful execvp closes it (end of file for the
            // parent); a failed one writes errno to it.
            unsafe {
                libc::close(write_end);
                libc::close(report_read);
                let mut byte = 0u8;
                let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                if n != 1 {
                    // The tracer went away without releasing us: do not run untraced.
                    libc::_exit(125);
                }
                libc::execvp(ptrs[0], ptrs.as_ptr());
                let errno = (*libc::__errno_location()).to_ne_bytes();
                libc::write(report_write, errno.as_ptr().cast(), errno.len());
                libc::_exit(127);
            }
        }
        // SAFETY: the parent uses neither the gate's read end nor the report's write end; the
        // report's read end is owned from here on.
        let exec_report = unsafe {
            libc::close(read_end);
            libc::close(report_write);
            OwnedFd::from_raw_fd(report_read)
        };
        Ok(Self {
            pid: pid as u32,
            program: program.clone(),
            gate: Some(write_end),
            exec_report: Some(exec_report),
        })
    }

    /// Lets the child exec, and waits until it has: `Err` with the OS error when `execvp` failed
    /// (the child has then exited and is reaped).
    pub fn release(&mut self) -> Result<(), LaunchError> {
        if let Some(fd) = self.gate.take() {
            let byte = 1u8;
            // SAFETY: `fd` is the pipe's write end, owned here and closed once.
            unsafe {
                libc::write(fd, (&byte as *const u8).cast(), 1);
                libc::close(fd);
            }
        }
        let Some(report) = self.exec_report.take() else {
            return Ok(());
        };
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < errno.len() {
            // SAFETY: a valid descriptor and buffer of the given length.
            let n = unsafe {
                libc::read(
                    report.as_raw_fd(),
                    errno[got..].as_mut_ptr().cast(),
                    errno.len() - got,
                )
            };
            match n {
                0 => break,
                n if n > 0 => got += n as usize,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        if got < errno.len() {
            // End of file: the exec succeeded (or the child died before it, seen when it is reaped).
            return Ok(());
        }
        self.wait();
        Err(LaunchError::Exec {
            program: self.program.clone(),
            source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
        })
    }

    /// Reaps the child if it has exited: `Some(exit code)` (128 + signal when killed).
    pub fn try_wait(&mut self) -> Option<i32> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for the child to exit (it is known to be exiting).
    pub fn wait(&mut self) -> Option<i32> {
        self.reap(0)
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<i32> {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; the pid is our child.
        let ret = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, flags) };
        if ret != self.pid as libc::pid_t {
            return None;
        }
        if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Some(128 + libc::WTERMSIG(status))
        } else {
            None
        }
    }
}

/// A close-on-exec pipe: `[read end, write end]`.
fn pipe() -> Result<[libc::c_int; 2], LaunchError> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LaunchError::Pipe(io::Error::last_os_error()));
    }
    Ok(fds)
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        // Closing an unreleased gate makes the child exit without running.
        if let Some(fd) = self.gate.take() {
            // SAFETY: owned descriptor, closed once.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_error(argv: &[&str]) -> LaunchError {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match GatedChild::spawn(&argv) {
            Err(err) => err,
            Ok(mut child) => child.release().expect_err("the exec should fail"),
        }
    }

    /// Guards issue 11 item 11: a program that does not exist or cannot be executed is an error
    /// with the OS error, before anything is forked.
    #[test]
    fn missing_or_non_executable_programs_are_errors() {
        let err = exec_error(&["/no/such/program"]);
        assert!(
            matches!(&err, LaunchError::Exec { program, source }
                if program == "/no/such/program" && source.raw_os_error() == Some(libc::ENOENT)),
            "{err:?}"
        );
        let err = exec_error(&["no-such-program-on-the-path-memtrace"]);
        assert!(matches!(&err, LaunchError::Exec { source, .. }
            if source.raw_os_error() == Some(libc::ENOENT)));
        // A directory and a file without execute permission: EACCES, like execvp.
        let dir = std::env::temp_dir().join(format!("memtrace-noexec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, "true\n").unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        for program in [dir.to_str().unwrap(), plain.to_str().unwrap()] {
            let err = exec_error(&[program]);
            assert!(
                matches!(&err, LaunchError::Exec { source, .. }
                    if source.raw_os_error() == Some(libc::EACCES)),
                "{program}: {err:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(GatedChild::spawn(&[]), Err(LaunchError::Empty)));
    }

    /// Guards issue 11 item 11: when execvp fails in the child although the program looked
    /// runnable beforehand (here: an executable file that is not a program the kernel can load),
    /// `release` returns execvp's errno and reaps the child.
    #[test]
    fn exec_failure_in_the_child_is_reported_through_the_pipe() {
        let dir = std::env::temp_dir().join(format!("memtrace-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A file with the execute bit whose first bytes are neither ELF nor `#!`: execvp runs it
        // with /bin/sh (ENOEXEC fallback), so use a `#!` line naming an interpreter that is missing.
        let script = dir.join("script");
        std::fs::write(&script, "#!/no/such/interpreter\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let argv = vec![script.to_string_lossy().into_owned()];
        let mut child = GatedChild::spawn(&argv).expect("looks runnable");
        let pid = child.pid;
        let err = child.release().expect_err("the interpreter is missing");
        assert!(
            matches!(&err, LaunchError::Exec { source, .. }
                if source.raw_os_error() == Some(libc::ENOENT)),
            "{err:?}"
        );
        // Reaped: the PID is no longer our child.
        // SAFETY: a plain waitpid on a PID, no out-pointer.
        let ret = unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(ret, -1);
        std::fs::remove_dir_all(&dir).unwrap();

        // A program that runs: release returns once it has exec'd.
        let mut child = GatedChild::spawn(&["true".to_string()]).unwrap();
        child.release().unwrap();
        assert_eq!(child.wait(), Some(0));
    }
}
