//! Probe placement on real allocators: the entry probes sit past the instructions the kernel would
//! single-step, and the figures stay exact.
//!
//! glibc 2.36's `free` starts with `test rdi,rdi; je` (single-stepped), so its probe goes on the
//! `push rbp` at +9; `posix_memalign`, `aligned_alloc`, `memalign` and `valloc` start with a
//! RIP-relative `cmp` and their probes (return probes included) go 7 bytes in.

use memtrace::{
    accounting::ProcessState,
    probes::{placement::Placement, AttachReport, ProbeOptions},
    session::Session,
};
use memtrace_integration::{counter, session, Memops};

fn state(session: &mut Session, pid: u32) -> &ProcessState {
    session.poll();
    session.accounting.process(pid).expect("process is tracked")
}

fn placement<'a>(report: &'a AttachReport, symbol: &str) -> &'a Placement {
    report
        .placements
        .iter()
        .find(|p| p.symbol == symbol)
        .unwrap_or_else(|| panic!("no placement for {symbol}: {:?}", report.placements))
}

/// A session whose entry probes stay on the entry (`--entry-probes`), or `None` when this machine
/// cannot load the object (the shared helper says so).
fn entry_session() -> Option<Session> {
    session()?;
    Some(
        Session::start(&ProbeOptions {
            entry_probes: true,
            ..ProbeOptions::default()
        })
        .expect("loads like the default session"),
    )
}

fn no_loss(session: &Session) {
    assert_eq!(counter(session, "ring_buffer_full"), 0, "events were lost");
    assert_eq!(counter(session, "inflight_map_full"), 0);
    assert_eq!(counter(session, "return_without_entry"), 0);
}

/// Every call of the family, through placed probes, gives the exact figures: the moved return
/// probes of the aligned functions still see their calls' results.
fn exact_figures(session: &mut Session, w: &mut Memops) {
    let pid = w.pid();
    assert_eq!(w.run("mallocn 0 100 1000"), 100);
    assert_eq!(w.run("freen 0 40"), 40);
    assert_eq!(w.run("calloc 200 10 24"), 1);
    w.run("realloc 201 100");
    w.run("realloc 201 300000");
    assert_eq!(w.run("posix_memalign 202 64 1000"), 1);
    assert_eq!(w.run("aligned_alloc 203 4096 8192"), 1);
    assert_eq!(w.run("memalign 204 32 100"), 1);
    let s = state(session, pid);
    assert_eq!(
        s.heap.live_bytes,
        60 * 1000 + 240 + 300_000 + 1000 + 8192 + 100
    );
    assert_eq!(s.heap.live_count(), 60 + 5);
    // 100 malloc, calloc, realloc(NULL, n), posix_memalign, aligned_alloc, memalign.
    assert_eq!(s.heap.total_allocs, 100 + 1 + 1 + 3);
    assert_eq!(s.heap.total_frees, 40);
    assert_eq!(s.heap.unknown_frees, 0);
    w.run("freen 40 60");
    w.run("freen 200 5");
    let s = state(session, pid);
    assert_eq!((s.heap.live_bytes, s.heap.live_count()), (0, 0));
    assert_eq!(s.heap.unknown_frees, 0);
    assert_eq!(s.heap.peak_bytes, 100_000 - 40_000 + 240 + 300_000 + 9292);
}

#[test]
fn placed_probes_are_emulated_and_figures_stay_exact() {
    let Some(mut session) = session() else { return };
    let mut w = Memops::start();
    let report = session.trace_pid(w.pid()).expect("attach");
    let free = placement(&report, "free");
    assert!(
        free.offset > 0 && free.emulated,
        "free's probe moves past its NULL check: {free}"
    );
    for p in &report.placements {
        if p.object.starts_with("libc") {
            assert!(p.emulated, "every glibc probe is emulated: {p}");
        }
    }
    let posix_memalign = placement(&report, "posix_memalign");
    assert!(posix_memalign.offset > 0, "{posix_memalign}");
    exact_figures(&mut session, &mut w);
    no_loss(&session);
}

#[test]
fn entry_probes_when_forced_give_the_same_figures() {
    let Some(mut session) = entry_session() else {
        return;
    };
    let mut w = Memops::start();
    let report = session.trace_pid(w.pid()).expect("attach");
    assert!(!report.placements.is_empty());
    for p in &report.placements {
        assert_eq!(p.offset, 0, "forced on the entry: {p}");
        assert_eq!(p.note.as_deref(), Some("entry probes forced"));
    }
    assert!(
        !placement(&report, "free").emulated,
        "test rdi,rdi is stepped"
    );
    exact_figures(&mut session, &mut w);
    no_loss(&session);
}

#[test]
fn free_null_sends_nothing_and_changes_nothing() {
    for forced in [false, true] {
        let mut session = match forced {
            false => session(),
            true => entry_session(),
        };
        let Some(session) = session.as_mut() else {
            return;
        };
        let mut w = Memops::start();
        let pid = w.pid();
        session.trace_pid(pid).expect("attach");
        w.run("mallocn 0 3 64");
        let s = state(session, pid);
        let before = (s.heap.total_frees, s.heap.unknown_frees);
        // Slots 1000.. were never filled: 500 calls of free(NULL).
        assert_eq!(w.run("freen 1000 500"), 500);
        let s = state(session, pid);
        assert_eq!(
            (s.heap.total_frees, s.heap.unknown_frees),
            before,
            "free(NULL) sends no free event (entry probes forced: {forced})"
        );
        assert_eq!((s.heap.live_bytes, s.heap.live_count()), (192, 3));
        no_loss(session);
    }
}

#[test]
fn frees_of_blocks_allocated_before_attach_are_unknown_not_subtracted() {
    let Some(mut session) = session() else { return };
    let mut w = Memops::start();
    let pid = w.pid();
    // Allocated before the probes are attached: the tracer never saw these.
    assert_eq!(w.run("mallocn 0 50 1000"), 50);
    session.trace_pid(pid).expect("attach");
    assert_eq!(w.run("mallocn 100 10 500"), 10);
    assert_eq!(w.run("freen 0 50"), 50);
    let s = state(&mut session, pid);
    assert_eq!(
        s.heap.unknown_frees, 50,
        "each pre-attach block is one unknown free"
    );
    assert_eq!(
        (s.heap.live_bytes, s.heap.live_count()),
        (5000, 10),
        "unknown frees subtract nothing"
    );
    assert_eq!((s.heap.total_allocs, s.heap.total_frees), (10, 50));
    w.run("freen 100 10");
    let s = state(&mut session, pid);
    assert_eq!((s.heap.live_bytes, s.heap.unknown_frees), (0, 50));
    no_loss(&session);
}

#[test]
fn static_binary_probes_are_placed_in_the_executable() {
    let Some(mut session) = session() else { return };
    let mut w = Memops::start_named("memops_static");
    let pid = w.pid();
    let report = session.trace_pid(pid).expect("attach");
    let free = placement(&report, "free");
    assert_eq!(free.object, "exe", "the static binary's own free");
    assert!(free.offset > 0 && free.emulated, "{free}");
    w.run("mallocn 0 30 700");
    w.run("freen 0 10");
    w.run("freen 5000 20");
    assert_eq!(w.run("posix_memalign 100 64 640"), 1);
    let s = state(&mut session, pid);
    assert_eq!(
        (s.heap.live_bytes, s.heap.live_count(), s.heap.total_frees),
        (20 * 700 + 640, 21, 10)
    );
    no_loss(&session);
}
