//! The RSS history the alert engine keeps of each process, to judge its growth rate over a span
//! long enough to mean something (`thresholds.growthRateWindow`) rather than between two
//! snapshots.

use std::collections::VecDeque;

use crate::analysis::{stats::theil_sen, MB};

/// Fewest samples a growth rate is judged on.
pub const MIN_SAMPLES: usize = 5;
/// The samples must span at least this share of the window.
const MIN_SPAN: f64 = 0.9;
/// Pairs of samples the slope is computed from at most (the history is thinned evenly beyond
/// `MAX_POINTS` samples: Theil-Sen costs the square of the points).
const MAX_POINTS: usize = 32;

#[derive(Clone, Debug, Default)]
pub struct RssHistory {
    /// (ms since the epoch, RSS bytes), oldest first.
    samples: VecDeque<(u64, u64)>,
}

impl RssHistory {
    /// Adds a reading and forgets those older than `window_ms` before it (keeping one older
    /// sample, so that the span can reach the whole window).
    pub fn push(&mut self, now_ms: u64, rss_bytes: u64, window_ms: u64) {
        if self.samples.back().is_some_and(|&(t, _)| t >= now_ms) {
            // The clock stepped back or two readings share a time: keep the latest only.
            while self.samples.back().is_some_and(|&(t, _)| t >= now_ms) {
                self.samples.pop_back();
            }
        }
        self.samples.push_back((now_ms, rss_bytes));
        let horizon = now_ms.saturating_sub(window_ms);
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|&(t, _)| t <= horizon) {
            self.samples.pop_front();
        }
    }

    /// Growth in MiB per minute over the last `window_ms`: the Theil-Sen slope (median of the
    /// pairwise slopes), which a start-up jump or a spike inside the window does not move. `None`
    /// while the history spans less than 90 % of the window or has fewer than [`MIN_SAMPLES`].
    pub fn rate_mb_per_min(&self, window_ms: u64) -> Option<f64> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        let span = last.0.saturating_sub(first.0);
        if self.samples.len() < MIN_SAMPLES || (span as f64) < MIN_SPAN * window_ms as f64 {
            return None;
        }
        let n = self.samples.len();
        let step = n.div_ceil(MAX_POINTS).max(1);
        let picked: Vec<(u64, u64)> = self
            .samples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == n - 1)
            .map(|(_, s)| *s)
            .collect();
        let x: Vec<f64> = picked
            .iter()
            .map(|s| s.0.saturating_sub(first.0) as f64 / 60_000.0)
            .collect();
        let y: Vec<f64> = picked.iter().map(|s| s.1 as f64 / MB).collect();
        theil_sen(&x, &y).map(|(slope, _)| slope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const T0: u64 = 1_700_000_000_000;

    fn history(values: impl Fn(u64) -> u64, seconds: u64, window_ms: u64) -> RssHistory {
        let mut h = RssHistory::default();
        for s in 0..=seconds {
            h.push(T0 + s * 1000, values(s), window_ms);
        }
        h
    }

    /// Issue 10: a 21 MB process was alerted on for 75 MB/min 12 s after the agent started. Two
    /// snapshots of a starting process do not make a rate: nothing until the window is covered.
    #[test]
    fn no_rate_before_the_window_is_covered() {
        let h = history(|s| (21 + s * 2) * MIB, 12, 120_000);
        assert_eq!(h.rate_mb_per_min(120_000), None);
        let h = history(|s| (21 + s * 2) * MIB, 120, 120_000);
        let rate = h.rate_mb_per_min(120_000).expect("covered");
        assert!((rate - 120.0).abs() < 1e-6, "{rate}");
    }

    /// Growth of 60 MB in the first 5 s, then flat: over a two-minute window the robust slope is
    /// zero, not 30 MB/min.
    #[test]
    fn start_up_jump_is_not_a_rate() {
        let h = history(|s| (2 + 12 * s.min(5)) * MIB, 120, 120_000);
        assert_eq!(h.rate_mb_per_min(120_000), Some(0.0));
    }

    #[test]
    fn old_samples_are_forgotten_and_many_are_thinned() {
        let h = history(
            |s| {
                if s < 200 {
                    500 * MIB
                } else {
                    (500 + s - 200) * MIB
                }
            },
            400,
            120_000,
        );
        assert!(h.samples.len() <= 122, "{}", h.samples.len());
        let rate = h.rate_mb_per_min(120_000).expect("covered");
        assert!((rate - 60.0).abs() < 1e-6, "{rate}");
    }
}
