//! The table manager on a thread of its own. Building a table reads an object file and parses its
//! CFI: a fraction of a second for libc, seconds for a large program with debug information. Done
//! on the thread that drains the ring buffer, that would lose events; here registration is a
//! message, and whoever needs the tables in place (the `trace` command, tests) waits for its
//! ticket. Until a process's tables are in, its stacks are walked by frame pointers (counted by
//! the kernel as `unwind_process_without_tables`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{TableManager, UnwindMaps, UnwindStats};
use crate::accounting::modules::Modules;

enum Job {
    Register {
        ticket: u64,
        pid: u32,
        modules: Arc<Modules>,
    },
    Unregister {
        ticket: u64,
        pid: u32,
    },
}

#[derive(Default)]
struct Progress {
    /// Every ticket up to this one is done.
    done: u64,
    stats: UnwindStats,
}

struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The unwind table manager, working on its own thread.
pub struct UnwindWorker {
    jobs: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    next: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl UnwindWorker {
    /// Starts the thread that owns `manager` and writes through `maps`.
    pub fn start(
        mut manager: TableManager,
        mut maps: Box<dyn UnwindMaps + Send>,
    ) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                done: 0,
                stats: manager.stats(),
            }),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("memtrace-unwind".into())
            .spawn(move || {
                for job in inbox {
                    let ticket = match job {
                        Job::Register {
                            ticket,
                            pid,
                            modules,
                        } => {
                            match manager.register(maps.as_mut(), pid, &modules) {
                                Ok(done) => log::debug!("unwind tables of pid {pid}: {done:?}"),
                                Err(err) => log::warn!("unwind tables of pid {pid}: {err}"),
                            }
                            ticket
                        }
                        Job::Unregister { ticket, pid } => {
                            manager.unregister(maps.as_mut(), pid);
                            ticket
                        }
                    };
                    let mut progress = worker.lock();
                    progress.done = progress.done.max(ticket);
                    progress.stats = manager.stats();
                    drop(progress);
                    worker.changed.notify_all();
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            shared,
            next: AtomicU64::new(1),
            thread: Some(thread),
        })
    }

    fn send(&self, make: impl FnOnce(u64) -> Job) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(make(ticket)).is_ok());
        if !sent {
            log::warn!("the unwind table worker is gone: stacks fall back to frame pointers");
        }
        ticket
    }

    /// Asks for the tables of the code `pid` maps (building those not loaded yet) and its mapping
    /// table. Returns at once; [`UnwindWorker::wait`] on the ticket waits for it.
    pub fn register(&self, pid: u32, modules: Arc<Modules>) -> u64 {
        self.send(|ticket| Job::Register {
            ticket,
            pid,
            modules,
        })
    }

    /// Drops the mapping table of `pid` (its tables stay for other processes until evicted).
    pub fn unregister(&self, pid: u32) -> u64 {
        self.send(|ticket| Job::Unregister { ticket, pid })
    }

    /// Waits until the job of `ticket` (and every earlier one) is done, at most `timeout`.
    /// Returns whether it was.
    pub fn wait(&self, ticket: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut progress = self.shared.lock();
        while progress.done < ticket {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            progress = self
                .shared
                .changed
                .wait_timeout(progress, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Figures of the tables, as of the last job done.
    pub fn stats(&self) -> UnwindStats {
        self.shared.lock().stats
    }
}

impl Drop for UnwindWorker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the jobs queued are done.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
