//! Starting a command so that it is traced from its first instruction: the child is forked, waits
//! on a pipe until the probes are attached to its PID, then calls `execvp`.

use std::{ffi::CString, io};

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
}

/// A child that has been forked and waits for `release` before it execs.
pub struct GatedChild {
    pub pid: u32,
    gate: Option<libc::c_int>,
}

impl GatedChild {
    pub fn spawn(argv: &[String]) -> Result<Self, LaunchError> {
        if argv.is_empty() {
            return Err(LaunchError::Empty);
        }
        // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()
            .map_err(LaunchError::Nul)?;
        let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let failed = b"memtrace: exec failed\n";
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(LaunchError::Pipe(io::Error::last_os_error()));
        }
        let [read_end, write_end] = fds;
        // SAFETY: fork has no preconditions; the child branch below only makes async-signal-safe
        // calls (close, read, execvp, write, _exit) on data prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let err = io::Error::last_os_error();
            // SAFETY: closing descriptors this function owns.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            return Err(LaunchError::Fork(err));
        }
        if pid == 0 {
            // SAFETY: see above; `ptrs` is a NULL-terminated array of valid C strings.
            unsafe {
                libc::close(write_end);
                let mut byte = 0u8;
                let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                if n != 1 {
                    // The tracer went away without releasing us: do not run untraced.
                    libc::_exit(125);
                }
                libc::execvp(ptrs[0], ptrs.as_ptr());
                libc::write(2, failed.as_ptr().cast(), failed.len());
                libc::_exit(127);
            }
        }
        // SAFETY: the parent does not use the read end.
        unsafe { libc::close(read_end) };
        Ok(Self {
            pid: pid as u32,
            gate: Some(write_end),
        })
    }

    /// Lets the child exec.
    pub fn release(&mut self) {
        if let Some(fd) = self.gate.take() {
            let byte = 1u8;
            // SAFETY: `fd` is the pipe's write end, owned here and closed once.
            unsafe {
                libc::write(fd, (&byte as *const u8).cast(), 1);
                libc::close(fd);
            }
        }
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

impl Drop for GatedChild {
    fn drop(&mut self) {
        // Closing an unreleased gate makes the child exit without running.
        if let Some(fd) = self.gate.take() {
            // SAFETY: owned descriptor, closed once.
            unsafe { libc::close(fd) };
        }
    }
}
