//! `memtrace agent`: the long-lived daemon. Host-wide accounting from the syscall and process
//! tracepoints and the kernel's RSS counters; malloc-family tracing for chosen processes.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, watch};

use crate::{
    accounting::{Accounting, Procfs},
    events::{self, PipelineStats},
    probes::{AllocatorTarget, ProbeError, ProbeOptions, Probes, allocator_of, host_libc},
    snapshot::HostSnapshot,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("starting the ring buffer reader")]
    Reader(#[source] std::io::Error),
    #[error("the probe loader task failed")]
    Join(#[source] tokio::task::JoinError),
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub pids: Vec<u32>,
    pub malloc_all: bool,
    pub snapshot_interval: Duration,
    pub top: usize,
    pub probes: ProbeOptions,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Shared state of the running agent.
pub struct Shared {
    pub accounting: Mutex<Accounting>,
    pub probes: Mutex<Probes>,
    pub stats: Arc<PipelineStats>,
}

pub async fn run(options: AgentOptions) -> Result<(), AgentError> {
    let probe_options = options.probes.clone();
    let mut probes = tokio::task::spawn_blocking(move || Probes::load(&probe_options)).await.map_err(AgentError::Join)??;
    let mut accounting = Accounting::new(Box::new(Procfs));
    if options.malloc_all {
        log::warn!(
            "--malloc-all: every malloc and free of every process now costs a uprobe hit (about 0.5 µs); \
             allocation-heavy programs will run many times slower"
        );
        let target = host_libc()?;
        probes.attach_allocator(&target)?;
        accounting.set_trace_all(true);
    }
    for &pid in &options.pids {
        let target: AllocatorTarget = allocator_of(pid)?;
        accounting.state(pid);
        let report = probes.attach_allocator(&target)?;
        accounting.set_traced(pid, true);
        log::info!("tracing the malloc family of pid {pid} in {} ({} functions)", target.path.display(), report.attached.len());
    }
    let ring = probes.take_ring_buffer()?;
    let stats = Arc::new(PipelineStats::default());
    let shared = Arc::new(Shared { accounting: Mutex::new(accounting), probes: Mutex::new(probes), stats: stats.clone() });

    let (tx, mut rx) = mpsc::channel::<events::Batch>(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(events::reader(ring, tx, stats, stop_rx));
    let apply_shared = shared.clone();
    let applier = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            if let Ok(mut accounting) = apply_shared.accounting.lock() {
                accounting.apply_batch(&batch);
            }
        }
    });

    log::info!("memtrace agent running (pid {}); snapshots every {:?}", std::process::id(), options.snapshot_interval);
    let mut ticker = tokio::time::interval(options.snapshot_interval);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(AgentError::Reader)?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let snapshot = {
                    let Ok(mut accounting) = shared.accounting.lock() else { break };
                    accounting.host_snapshot(now_ms())
                };
                log_summary(&snapshot, options.top, &shared);
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    log::info!("shutting down: draining events and detaching probes");
    let _ = stop_tx.send(true);
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => log::warn!("ring buffer reader: {err}"),
        Err(err) => log::warn!("ring buffer reader task: {err}"),
    }
    let _ = applier.await;
    Ok(())
}

fn log_summary(snapshot: &HostSnapshot, top: usize, shared: &Shared) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let lost = shared.probes.lock().ok().and_then(|p| p.counters().ok()).map(|c| c[0]).unwrap_or(0);
    log::info!(
        "host: {:.0} MiB available of {:.0} MiB; {} processes; events {} received, {} lost",
        mib(snapshot.mem_available_bytes),
        mib(snapshot.mem_total_bytes),
        snapshot.processes.len(),
        shared.stats.received.load(std::sync::atomic::Ordering::Relaxed),
        lost,
    );
    for p in snapshot.processes.iter().take(top) {
        let heap = if p.heap_traced { format!(" heap {:.1} MiB ({} live)", mib(p.heap_live_bytes), p.heap_live_count) } else { String::new() };
        log::info!(
            "  {:>7} {:<16} rss {:>8.1} MiB (anon {:.1}, file {:.1}) mmap anon {:.1} file {:.1} brk {:.1}{heap}",
            p.pid,
            p.comm,
            mib(p.rss_bytes),
            mib(p.rss_anon_bytes),
            mib(p.rss_file_bytes),
            mib(p.mapped_anon_bytes),
            mib(p.mapped_file_bytes),
            mib(p.brk_bytes),
        );
    }
}
