//! Whether tracing a process's heap fits a CPU budget, and how to make it fit when it does not.
//!
//! Every traced allocator call costs the traced process a few traps (the entry breakpoint, the
//! return trampoline) and a BPF program run. At `rate` calls per second and `per_call_ns` each,
//! tracing adds `rate × per_call_ns` of CPU per second: that many cores. For a rate measured while
//! the process is traced this is exactly the CPU the probes take; for a rate measured before, it
//! is an upper bound (a CPU-bound process slows down and makes fewer calls per second).
//!
//! The decision is pure: the agent measures the rate, picks the budget (small for an automatic
//! drill-down, larger for an explicit request) and acts on the decision: attach, attach in windows
//! (trace for `on`, detach for `off`: the figures are then partial and must say so), or refuse.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::placement::Placement;

/// CPU cost to the traced process of one traced allocator call, with placed probes, user stacks
/// unwound from CFI tables and exact accounting, in ns: half the 2,861 ns of CPU per malloc+free
/// pair that `cargo xtask bench` measured for `memtrace trace` on the malloc loop (full run of
/// docs/benchmarks.md, commit 8b101ae, this project's 2-core VM, kernel 6.18, glibc 2.36; median of
/// 5 pairs of (traced − bare) work-loop CPU). Elapsed time was 2,862 ns a pair; `--no-stacks`
/// 2,340 ns of CPU; `--entry-probes` (glibc's `free` single-stepped) 13,857 ns. Deeper stacks cost
/// more (~0.03 µs a frame, docs/benchmarks.md).
pub const DEFAULT_PER_CALL_NS: f64 = 1_431.0;

/// The budget of an automatic drill-down: 5% of one core.
pub const DRILLDOWN_BUDGET_CORES: f64 = 0.05;

/// The budget of an explicit request (API, `--pid`): half a core.
pub const EXPLICIT_BUDGET_CORES: f64 = 0.5;

/// How much tracing may cost a process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// Added CPU allowed on average, in cores (0.05 = 5% of one core).
    pub cores: f64,
    /// Length of one tracing window when sampling.
    pub window: Duration,
    /// Below this fraction of the time traced, sampling is refused: the figures would say too
    /// little to be worth the attach and detach churn.
    pub min_duty: f64,
}

impl Budget {
    /// The budget of an automatic drill-down.
    pub fn drilldown() -> Self {
        Self {
            cores: DRILLDOWN_BUDGET_CORES,
            window: Duration::from_secs(2),
            min_duty: 0.02,
        }
    }

    /// The budget of an explicit request.
    pub fn explicit() -> Self {
        Self {
            cores: EXPLICIT_BUDGET_CORES,
            window: Duration::from_secs(5),
            min_duty: 0.01,
        }
    }
}

/// What is known about the process to trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    /// Allocator calls per second (all its threads).
    pub calls_per_second: f64,
    /// Cost of one traced call, in ns (`DEFAULT_PER_CALL_NS`, or `per_call_ns` from placements).
    pub per_call_ns: f64,
}

impl Load {
    /// Added CPU while traced, in cores.
    pub fn added_cores(&self) -> f64 {
        self.calls_per_second * self.per_call_ns * 1e-9
    }
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Trace all the time: the added CPU fits the budget.
    Allow { added_cores: f64, reason: String },
    /// Trace in windows: `on` traced, `off` detached, `duty` = on / (on + off). The figures cover
    /// only the traced windows.
    Sample {
        on: Duration,
        off: Duration,
        duty: f64,
        /// Average added CPU, in cores (within the budget).
        added_cores: f64,
        reason: String,
    },
    /// Do not trace.
    Refuse { reason: String },
}

impl Decision {
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow { reason, .. }
            | Decision::Sample { reason, .. }
            | Decision::Refuse { reason } => reason,
        }
    }

    /// Figures gathered under this decision cover only part of the process's calls.
    pub fn partial(&self) -> bool {
        matches!(self, Decision::Sample { .. })
    }
}

/// Decides whether `load` fits `budget`.
pub fn decide(load: Load, budget: Budget) -> Decision {
    let Load {
        calls_per_second: rate,
        per_call_ns: cost,
    } = load;
    if !(rate.is_finite() && rate >= 0.0) {
        return Decision::Refuse {
            reason: format!("no usable estimate of the allocator call rate ({rate})"),
        };
    }
    if !(cost.is_finite() && cost > 0.0) {
        return Decision::Refuse {
            reason: format!("no usable per-call cost ({cost} ns)"),
        };
    }
    if !(budget.cores.is_finite() && budget.cores > 0.0) {
        return Decision::Refuse {
            reason: format!("the CPU budget is {} cores: tracing is off", budget.cores),
        };
    }
    let added = load.added_cores();
    let costs = format!(
        "{} allocator calls/s × {} per call = {} of a core",
        round(rate),
        duration_text(cost),
        percent(added)
    );
    if added <= budget.cores {
        return Decision::Allow {
            added_cores: added,
            reason: format!("{costs}, within the budget of {}", percent(budget.cores)),
        };
    }
    let duty = budget.cores / added;
    if duty < budget.min_duty || budget.window.is_zero() {
        return Decision::Refuse {
            reason: format!(
                "{costs}, {:.0}× the budget of {}: even sampling would trace {} of the time \
                 (less than the {} minimum)",
                added / budget.cores,
                percent(budget.cores),
                percent(duty),
                percent(budget.min_duty)
            ),
        };
    }
    let on = budget.window;
    // off = on × (1 − duty) / duty, rounded up to the millisecond so the average stays within.
    let off_ms = (on.as_secs_f64() * 1000.0 * (1.0 - duty) / duty).ceil();
    let off = Duration::from_millis(off_ms as u64);
    let duty = on.as_secs_f64() / (on + off).as_secs_f64();
    Decision::Sample {
        on,
        off,
        duty,
        added_cores: added * duty,
        reason: format!(
            "{costs}, over the budget of {}: tracing {:.1} s in every {:.1} s ({} of calls), \
             figures are partial",
            percent(budget.cores),
            on.as_secs_f64(),
            (on + off).as_secs_f64(),
            percent(duty)
        ),
    }
}

/// CPU cost of one traced call when the hot allocator functions' entry probes are single-stepped
/// (`probes.entryProbes`, or no safe place past the entry): half the 13,857 ns per malloc+free
/// pair measured for `memtrace trace --entry-probes` in the same run as [`DEFAULT_PER_CALL_NS`].
pub const SINGLE_STEPPED_PER_CALL_NS: f64 = 6_929.0;

/// How long a newly traced process is measured before its budget decides: its probes are
/// attached, its allocator calls counted.
pub const PROBATION: Duration = Duration::from_millis(500);

/// How often the call rate of a process traced all the time is measured again.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The per-call cost to budget with, from where the probes of the hot functions (`malloc`,
/// `free`, `calloc`, `realloc`, with or without an allocator's prefix) sit: one of them
/// single-stepped prices every call so (an upper bound).
pub fn per_call_ns(placements: &[Placement]) -> f64 {
    let hot = |symbol: &str| {
        ["malloc", "free", "calloc", "realloc"]
            .iter()
            .any(|f| symbol == *f || symbol.ends_with(&format!("_{f}")))
    };
    if placements.iter().any(|p| hot(&p.symbol) && !p.emulated) {
        SINGLE_STEPPED_PER_CALL_NS
    } else {
        DEFAULT_PER_CALL_NS
    }
}

/// Where a metered process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Traced for [`PROBATION`], its call rate measured; no decision yet.
    Measuring,
    /// Traced all the time, measured again every [`RECHECK`].
    Tracing,
    /// Sampling, in a traced window.
    SampleOn,
    /// Sampling, detached until the next window.
    SampleOff,
}

/// What the owner of the probes must do after [`Meter::step`].
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Keep,
    /// Detach the probes (a sampling pause begins).
    Detach,
    /// Attach the probes again (a sampling window begins; the heap's figures start afresh).
    Attach,
    /// Stop tracing the process, for this reason.
    Stop(String),
}

/// Keeps one traced process within its budget: measures its allocator call rate while its probes
/// are attached (first for [`PROBATION`], then every [`RECHECK`] or at the end of each sampling
/// window) and decides ([`decide`]) whether it stays traced, is sampled, or is let go. A sampling
/// pause after a traced stretch is long enough that the stretch's cost, averaged over both, fits
/// the budget: no process pays more than its budget beyond one probation.
#[derive(Clone, Debug, PartialEq)]
pub struct Meter {
    budget: Budget,
    per_call_ns: f64,
    phase: Phase,
    /// Monotonic ms when the phase began and when it ends.
    started_ms: u64,
    until_ms: u64,
    /// Calls counted when the phase began.
    calls_at_start: u64,
    decision: Option<Decision>,
    rate: Option<f64>,
    /// Sampling windows traced.
    windows: u64,
}

impl Meter {
    /// A process whose probes were just attached at `now_ms`, with `calls` allocator calls
    /// counted so far.
    pub fn new(budget: Budget, per_call_ns: f64, now_ms: u64, calls: u64) -> Self {
        Self {
            budget,
            per_call_ns,
            phase: Phase::Measuring,
            started_ms: now_ms,
            until_ms: now_ms.saturating_add(PROBATION.as_millis() as u64),
            calls_at_start: calls,
            decision: None,
            rate: None,
            windows: 0,
        }
    }

    /// `calls`: the allocator calls counted for the process since its probes were last
    /// attached (the count starts again at each sampling window).
    pub fn step(&mut self, now_ms: u64, calls: u64) -> Action {
        if now_ms < self.until_ms {
            return Action::Keep;
        }
        if self.phase == Phase::SampleOff {
            self.phase = Phase::SampleOn;
            self.started_ms = now_ms;
            self.until_ms = now_ms.saturating_add(self.budget.window.as_millis() as u64);
            self.calls_at_start = 0;
            self.windows += 1;
            return Action::Attach;
        }
        let traced_ms = now_ms.saturating_sub(self.started_ms).max(1);
        let rate = calls.saturating_sub(self.calls_at_start) as f64 * 1000.0 / traced_ms as f64;
        let decision = decide(
            Load {
                calls_per_second: rate,
                per_call_ns: self.per_call_ns,
            },
            self.budget,
        );
        let action = match &decision {
            Decision::Allow { .. } => {
                self.phase = Phase::Tracing;
                self.until_ms = now_ms.saturating_add(RECHECK.as_millis() as u64);
                Action::Keep
            }
            Decision::Sample { off, duty, .. } => {
                // The stretch just traced, paid back at the budget's duty.
                let payback = (traced_ms as f64 * (1.0 - duty) / duty).ceil() as u64;
                let off_ms = (off.as_millis() as u64).max(payback);
                self.phase = Phase::SampleOff;
                self.until_ms = now_ms.saturating_add(off_ms);
                Action::Detach
            }
            Decision::Refuse { reason } => Action::Stop(reason.clone()),
        };
        self.started_ms = now_ms;
        self.calls_at_start = calls;
        self.rate = Some(rate);
        self.decision = Some(decision);
        action
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The probes are attached in this phase.
    pub fn attached(&self) -> bool {
        self.phase != Phase::SampleOff
    }

    /// The latest decision (none while measuring).
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// Calls per second measured last.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    pub fn per_call_ns(&self) -> f64 {
        self.per_call_ns
    }

    /// Sampling windows traced so far.
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// The process was sampled at some point: its heap figures cover only traced windows.
    pub fn partial(&self) -> bool {
        matches!(self.phase, Phase::SampleOn | Phase::SampleOff)
    }
}

fn round(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.0}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

fn duration_text(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn percent(cores: f64) -> String {
    let p = cores * 100.0;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: f64, cost: f64) -> Load {
        Load {
            calls_per_second: rate,
            per_call_ns: cost,
        }
    }

    #[test]
    fn a_quiet_process_is_traced_all_the_time() {
        // 10k calls/s × 2 µs = 2% of a core, within 5%.
        let d = decide(load(10_000.0, 2_000.0), Budget::drilldown());
        match &d {
            Decision::Allow { added_cores, .. } => assert!((added_cores - 0.02).abs() < 1e-12),
            other => panic!("expected Allow, got {other:?}"),
        }
        assert!(!d.partial());
        assert_eq!(
            d.reason(),
            "10k allocator calls/s × 2.00 µs per call = 2.0% of a core, within the budget of 5.0%"
        );
        // Exactly at the budget is still within it.
        assert!(matches!(
            decide(load(25_000.0, 2_000.0), Budget::drilldown()),
            Decision::Allow { .. }
        ));
        // No calls at all cost nothing.
        assert!(matches!(
            decide(load(0.0, 2_000.0), Budget::drilldown()),
            Decision::Allow { added_cores, .. } if added_cores == 0.0
        ));
    }

    #[test]
    fn a_busy_process_is_sampled_within_the_budget() {
        // 100k calls/s × 2 µs = 20% of a core, 4× the 5% budget: trace a quarter of the time.
        let budget = Budget::drilldown();
        let d = decide(load(100_000.0, 2_000.0), budget);
        let Decision::Sample {
            on,
            off,
            duty,
            added_cores,
            reason,
        } = &d
        else {
            panic!("expected Sample, got {d:?}");
        };
        assert_eq!(*on, Duration::from_secs(2));
        assert_eq!(*off, Duration::from_secs(6));
        assert!((duty - 0.25).abs() < 1e-12);
        assert!(*added_cores <= budget.cores + 1e-12);
        assert!(d.partial());
        assert_eq!(
            reason,
            "100k allocator calls/s × 2.00 µs per call = 20% of a core, over the budget of 5.0%: \
             tracing 2.0 s in every 8.0 s (25% of calls), figures are partial"
        );
    }

    #[test]
    fn sampling_rounds_the_pause_up_so_the_average_stays_within() {
        // 0.05 / 0.21 = 0.238...: the pause is rounded up to the millisecond.
        let budget = Budget::drilldown();
        let d = decide(load(105_000.0, 2_000.0), budget);
        let Decision::Sample {
            off, added_cores, ..
        } = d
        else {
            panic!("expected Sample");
        };
        assert_eq!(off, Duration::from_millis(6400));
        assert!(added_cores <= budget.cores);
    }

    #[test]
    fn a_process_far_over_the_budget_is_refused() {
        // 2 M calls/s × 2 µs = 4 cores: 80× the budget, a duty of 1.25% < 2%.
        let d = decide(load(2_000_000.0, 2_000.0), Budget::drilldown());
        assert_eq!(
            d,
            Decision::Refuse {
                reason: "2000k allocator calls/s × 2.00 µs per call = 400% of a core, 80× the \
                         budget of 5.0%: even sampling would trace 1.2% of the time (less than \
                         the 2.0% minimum)"
                    .into()
            }
        );
        // The larger budget of an explicit request samples it instead: 0.5 / 4 = 12.5%.
        let d = decide(load(2_000_000.0, 2_000.0), Budget::explicit());
        assert!(matches!(d, Decision::Sample { duty, .. } if (duty - 0.125).abs() < 1e-3));
    }

    #[test]
    fn unusable_inputs_are_refused_with_a_reason() {
        for (rate, cost, budget, says) in [
            (f64::NAN, 2_000.0, 0.05, "call rate"),
            (-1.0, 2_000.0, 0.05, "call rate"),
            (f64::INFINITY, 2_000.0, 0.05, "call rate"),
            (1_000.0, 0.0, 0.05, "per-call cost"),
            (1_000.0, f64::NAN, 0.05, "per-call cost"),
            (1_000.0, 2_000.0, 0.0, "tracing is off"),
        ] {
            let budget = Budget {
                cores: budget,
                ..Budget::drilldown()
            };
            let d = decide(load(rate, cost), budget);
            assert!(
                matches!(&d, Decision::Refuse { reason } if reason.contains(says)),
                "{rate} {cost}: {d:?}"
            );
        }
        // A zero window cannot sample.
        let budget = Budget {
            window: Duration::ZERO,
            ..Budget::drilldown()
        };
        assert!(matches!(
            decide(load(100_000.0, 2_000.0), budget),
            Decision::Refuse { .. }
        ));
    }

    fn placed(symbol: &str, emulated: bool) -> Placement {
        Placement {
            symbol: symbol.into(),
            object: "libc.so.6".into(),
            offset: if emulated { 9 } else { 0 },
            file_offset: 0,
            instruction: String::new(),
            emulated,
            note: None,
        }
    }

    #[test]
    fn per_call_cost_follows_where_the_hot_probes_sit() {
        let placed_all = [placed("malloc", true), placed("free", true)];
        assert_eq!(per_call_ns(&placed_all), DEFAULT_PER_CALL_NS);
        // A rare function single-stepped does not change the price of the hot pair.
        let rare = [
            placed("malloc", true),
            placed("free", true),
            placed("posix_memalign", false),
        ];
        assert_eq!(per_call_ns(&rare), DEFAULT_PER_CALL_NS);
        // free single-stepped (glibc's free at +0, or je_free).
        let entry = [placed("malloc", true), placed("free", false)];
        assert_eq!(per_call_ns(&entry), SINGLE_STEPPED_PER_CALL_NS);
        assert_eq!(
            per_call_ns(&[placed("je_free", false)]),
            SINGLE_STEPPED_PER_CALL_NS
        );
        // Which a budget sees: 20k calls/s fit 5% placed (4.0%), not single-stepped (13%).
        assert!(matches!(
            decide(
                load(20_000.0, per_call_ns(&placed_all)),
                Budget::drilldown()
            ),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            decide(load(20_000.0, per_call_ns(&entry)), Budget::drilldown()),
            Decision::Sample { .. }
        ));
    }

    #[test]
    fn a_quiet_process_is_measured_then_traced_and_measured_again() {
        let mut m = Meter::new(Budget::drilldown(), 2_000.0, 1_000, 0);
        assert_eq!(m.phase(), Phase::Measuring);
        assert_eq!(m.step(1_400, 100), Action::Keep, "probation not over");
        // 500 calls in 500 ms: 1k/s × 2 µs = 0.2% of a core.
        assert_eq!(m.step(1_500, 500), Action::Keep);
        assert_eq!(m.phase(), Phase::Tracing);
        assert!((m.rate().unwrap() - 1_000.0).abs() < 1e-9);
        assert!(!m.partial());
        // Five seconds later it allocates 100k/s: sampled from then on.
        assert_eq!(m.step(6_499, 600), Action::Keep);
        assert_eq!(m.step(6_500, 500 + 500_000), Action::Detach);
        assert_eq!(m.phase(), Phase::SampleOff);
        assert!(m.partial());
    }

    #[test]
    fn a_busy_process_is_sampled_in_windows_that_average_within_the_budget() {
        let budget = Budget::drilldown();
        let mut m = Meter::new(budget, 2_000.0, 0, 0);
        // 50k calls/s × 2 µs = 10%, twice the budget: traced half the time at most.
        assert_eq!(m.step(500, 25_000), Action::Detach);
        let Some(Decision::Sample { duty, .. }) = m.decision().cloned() else {
            panic!("{:?}", m.decision());
        };
        assert!((duty - 0.5).abs() < 0.01, "{duty}");
        // The pause: the decision's (2 s window, duty 0.5 → 2 s), not less.
        assert_eq!(m.step(2_499, 0), Action::Keep);
        assert_eq!(m.step(2_500, 0), Action::Attach);
        assert_eq!((m.phase(), m.windows()), (Phase::SampleOn, 1));
        assert!(m.attached());
        // A window of 2 s at the same rate: detached again.
        assert_eq!(m.step(4_499, 99_000), Action::Keep);
        assert_eq!(m.step(4_500, 100_000), Action::Detach);
        // Traced 0.5 + 2 s of 4.5 s so far, and then paused until 6.5 s: within 50%.
        assert_eq!(m.step(6_500, 0), Action::Attach);
        // The process calmed down: traced all the time again, not partial any more.
        assert_eq!(m.step(8_500, 100), Action::Keep);
        assert_eq!(m.phase(), Phase::Tracing);
        assert!(!m.partial());
    }

    #[test]
    fn a_long_probation_over_the_budget_is_paid_back_in_full() {
        // Measured over 5 s (a recheck) at twice the budget: paused 5 s, not the window's 2 s.
        let mut m = Meter::new(Budget::drilldown(), 2_000.0, 0, 0);
        assert_eq!(m.step(500, 10), Action::Keep);
        assert_eq!(m.step(5_500, 10 + 250_000), Action::Detach);
        assert_eq!(m.step(10_499, 0), Action::Keep);
        assert_eq!(m.step(10_500, 0), Action::Attach);
    }

    #[test]
    fn a_process_far_over_the_budget_is_let_go_with_the_reason() {
        let mut m = Meter::new(Budget::drilldown(), 2_000.0, 0, 0);
        // 2M calls/s × 2 µs = 4 cores, 80× a 5% budget: sampling would trace 1.25% of the time,
        // less than the 2% minimum.
        match m.step(500, 1_000_000) {
            Action::Stop(reason) => assert!(reason.contains("2000k allocator calls/s"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
