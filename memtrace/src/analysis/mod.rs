//! Growth pattern detection: classifies a memory series as `stable`, `linear`, `exponential`,
//! `spike` or `leak`, with a confidence, a growth rate, a severity, a recommendation and a forecast
//! of when a limit is reached. Pure logic over `(timestamp_ms, bytes)` samples; the same method is
//! written up for readers in `docs/analysis.md`.
//!
//! # Method
//!
//! Only the last `window_size` samples (default 20, i.e. 10 minutes at 30 s) are used; fewer than
//! `min_data_points` (default 5, never fewer than 4) give no pattern (`None`), as do samples that
//! span no time. Time is in minutes from the first sample, values in MB (1024 * 1024 bytes).
//!
//! 0. **Level shifts.** The largest sample-to-sample rise (with a neighbouring interval when the
//!    jump straddled a sample) is a step when the two sides' lines leave a gap at least 10 % of the
//!    level and 6 standard errors high, the rise is sudden (60 % of the gap within the step
//!    interval, and twice what the sides' slopes add there), each side is a line (no curvature that
//!    matters, no sample far off), and it stays (every later sample above half the gap, no earlier
//!    one). The samples after it are lowered by its height and the rest runs on that series.
//! 1. **Spikes.** Residuals from a Theil–Sen line (robust to outliers) get a modified z-score,
//!    `0.6745 (r - median) / MAD` (with a zero MAD, `r / (1.253314 * mean absolute deviation)`). A
//!    point is a spike when z > 3.5 and it stands at least 10 % of the median above the line. Only
//!    isolated points count (none adjacent, at most one in ten); they are left out of every fit
//!    below, so a spike neither fakes nor hides growth.
//! 2. **Fits.** Least-squares line (slope, R², t of the slope) over the window and over each half;
//!    a least-squares line of `ln(y)` and of each half of it; the t of the quadratic coefficient of
//!    a quadratic fit; and the *lower envelope*: the local minima of the series (what is left after
//!    each drop; all points when the series has fewer than three), with its own line and Kendall
//!    tau.
//! 3. **Growth** of a line needs three things: a significant slope (t at or above Student's
//!    one-sided critical value for p < 0.005: 2.95 for 20 points, 9.9 for 4 troughs), a practical
//!    size (slope * duration >= `min_relative_growth`, default 2 %, of the median), and
//!    *persistence*: the recent half (recent envelope points for the envelope) still grows at
//!    least 30 % as fast as the whole window. A cache that filled up and then levelled off fails
//!    persistence and is stable.
//! 4. **Exponential**: the trend grows, the curvature is significant (t >= 3), `ln(y)` fits a line
//!    at least as well as `y` and with R² >= 0.9 and rises about as fast in both halves (a constant
//!    relative rate), and the recent half grows >= 1.5 times faster than the first, or >= 1.2 times
//!    with 0.8 doublings or more in the window. The rate is the instantaneous one at the last
//!    sample; the doubling time is `ln 2 / k`. Weak acceleration gives way to steady growth seen
//!    with more confidence.
//! 5. **Leak**: the envelope grows (3.) with Kendall tau >= 0.6, and the memory is *kept*: the
//!    series gives back at most 25 % of what it gains (sum of drops over sum of rises), unless the
//!    drops are those of a collection sawtooth (drops at most half as frequent as rises and at
//!    least twice their median size), whose troughs are what the envelope follows. A sawtooth over
//!    a flat baseline has a flat envelope and is not a leak; over a rising baseline it is.
//! 6. **Linear**: the trend or the envelope grows, but memory is also given back (fluctuations
//!    around a rising trend). Rate and R² come from the better-fitting of the two lines.
//! 7. **Spike** when there is no growth (after a step, only confident growth counts that the
//!    samples after the step show by themselves, or that those before it show and those after it
//!    go on with) and step 0 found a level shift (`step`) or step 1 a spike (`transient`);
//!    otherwise **stable** (flat, noisy, shrinking, or levelled off).
//!
//! **Confidence** (0-100) is `100 * (1 - 1/n) * c`, where `(1 - 1/n)` discounts short windows and
//! `c` is: exponential, R² of `ln(y)` times an acceleration factor (ratio of half-slopes, 1.2 -> 0,
//! 2 -> 1; with a doubling in the window also the doublings and the curvature's t); leak, R² times
//! Kendall tau of the envelope times a persistence factor (30 % -> 0, 60 % -> 1; for the trend line
//! also 1 when the recent half's own t >= 3); linear, R² times the persistence factor; spike,
//! `1 - 1.75 / z` (a step: `1 - 3 / z`); stable, the highest of: not rising over the window, not
//! rising in the recent half (each `1 - (t/3)^2` statistically or `1 - rise / min_growth`
//! practically, whichever is higher), and levelled off (`1 - (recent / window rate) / 0.3`).
//!
//! **Severity** follows the risk ([`growth_severity`], [`spike_severity`]): for growth, how close
//! the memory is to its limit and how soon it gets there; for spikes, the height against the level
//! and the limit. Stable is low.
//!
//! **Forecast**: minutes until the highest of the last quarter of samples reaches the limit, at the
//! fitted rate (by doubling time for exponential growth); only for growth patterns.

mod limits;
mod pattern;
mod series;
pub(crate) mod stats;
#[cfg(test)]
mod synth;

use std::path::PathBuf;

pub use limits::{mem_total, process_limit};
pub use pattern::{
    detect_pattern, forecast_minutes_to_limit, growth_severity, spike_severity, Pattern,
    PatternConfig, PatternType, Sample, Severity, SpikeKind, MB, MIN_POINTS,
};
pub use series::{
    analyze_process, analyze_snapshots, extract_series, read_snapshots_jsonl, render_text,
    LibraryPattern, Metric, ProcessPattern, ProcessSeries,
};

/// Errors of the analysis (reading snapshot files).
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("cannot open snapshot file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read snapshot file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
