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

/// CPU cost to the traced process of one traced allocator call, with placed probes, user stacks
/// captured and exact accounting, in ns: half the 4,012 ns of CPU per malloc+free pair that
/// `cargo xtask bench` measured for `memtrace trace` on the malloc loop (full run of
/// docs/benchmarks.md, commit 6869e34, this project's 2-core VM, kernel 6.18, glibc 2.36; median of 5
/// pairs of (traced − bare) work-loop CPU). Elapsed time was 5,197 ns a pair on that busy machine;
/// `--no-stacks` 3,113 ns of CPU; `--entry-probes` (glibc's `free` single-stepped) 13,486 ns.
pub const DEFAULT_PER_CALL_NS: f64 = 2_006.0;

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

/// What each kind of trap costs, to estimate a per-call cost from where the probes sit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrapCosts {
    /// An entry probe on an instruction the kernel emulates (one trap), with its BPF program.
    pub emulated_entry_ns: f64,
    /// An entry probe on an instruction the kernel single-steps (two traps).
    pub single_stepped_entry_ns: f64,
    /// A return probe (the return trampoline), with its BPF program.
    pub return_ns: f64,
}

/// Average cost of one call in a malloc/free mix (as many frees as allocations): an allocation
/// costs its entry probe and its return probe, a free its entry probe.
pub fn per_call_ns(malloc_emulated: bool, free_emulated: bool, costs: TrapCosts) -> f64 {
    let entry = |emulated: bool| {
        if emulated {
            costs.emulated_entry_ns
        } else {
            costs.single_stepped_entry_ns
        }
    };
    (entry(malloc_emulated) + costs.return_ns + entry(free_emulated)) / 2.0
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

    #[test]
    fn per_call_cost_follows_where_the_probes_sit() {
        let costs = TrapCosts {
            emulated_entry_ns: 1_500.0,
            single_stepped_entry_ns: 16_000.0,
            return_ns: 700.0,
        };
        // Placed: (1.5 + 0.7 + 1.5) / 2 µs per call.
        assert!((per_call_ns(true, true, costs) - 1_850.0).abs() < 1e-9);
        // free single-stepped (glibc's free at +0): (1.5 + 0.7 + 16) / 2.
        assert!((per_call_ns(true, false, costs) - 9_100.0).abs() < 1e-9);
        // Which a budget sees: 20k calls/s fit 5% placed (3.7%), not at +0 (18%).
        let placed = load(20_000.0, per_call_ns(true, true, costs));
        let entry = load(20_000.0, per_call_ns(true, false, costs));
        assert!(matches!(
            decide(placed, Budget::drilldown()),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            decide(entry, Budget::drilldown()),
            Decision::Sample { .. }
        ));
    }
}
