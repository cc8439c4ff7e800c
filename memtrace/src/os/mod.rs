//! What memtrace reads from, and does to, the operating system outside eBPF: `/proc` (`procfs`),
//! cgroups (`cgroup`), the clocks (`clock`), files other processes control (`files`) and starting a
//! command under the tracer (`launch`).
//! Parsers take text so they are tested on samples; readers add the file I/O.

pub mod cgroup;
pub mod clock;
pub mod files;
pub mod launch;
pub mod procfs;

/// Sets the nice value of the calling thread (Linux threads each have their own): the agent runs
/// its event intake above, and its HTTP side below, the analysis. Failing (no CAP_SYS_NICE to go
/// below 0) is only logged: the thread then keeps its priority.
pub fn set_thread_nice(nice: i32) {
    // SAFETY: PRIO_PROCESS with who = 0 names the calling thread; no pointers are involved.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if ret != 0 {
        log::debug!(
            "setting this thread's nice value to {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}
