//! Deterministic synthetic series for the tests: 30 s spacing, values in MB, noise from a small
//! linear congruential generator so every run sees the same numbers.

use super::pattern::{Sample, MB};

/// Start of every synthetic series (ms since the epoch).
pub const T0_MS: u64 = 1_700_000_000_000;
/// Spacing of the samples.
pub const STEP_MS: u64 = 30_000;

/// Knuth's MMIX LCG; `sym()` is uniform in [-1, 1).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        )
    }

    pub fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1_u64 << 53) as f64
    }

    pub fn sym(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }
}

/// `n` samples; `f(index, minutes, rng)` gives the value in MB.
pub fn series(n: usize, seed: u64, f: impl Fn(usize, f64, &mut Lcg) -> f64) -> Vec<Sample> {
    let mut rng = Lcg::new(seed);
    (0..n)
        .map(|i| {
            let minutes = i as f64 * STEP_MS as f64 / 60_000.0;
            let mb = f(i, minutes, &mut rng).max(0.0);
            (T0_MS + i as u64 * STEP_MS, (mb * MB).round() as u64)
        })
        .collect()
}

pub fn flat(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, _, _| 200.0)
}

/// 200 MB with uniform noise of +-2 %.
pub fn noisy_flat(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, _, r| 200.0 * (1.0 + 0.02 * r.sym()))
}

/// 200 MB + 4 MB/min with load fluctuation of +-10 MB (5x the growth of one step).
pub fn linear(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, t, r| 200.0 + 4.0 * t + 10.0 * r.sym())
}

/// 100 MB doubling every 3 minutes, +-1 % noise.
pub fn exponential(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, t, r| {
        100.0 * (t * std::f64::consts::LN_2 / 3.0).exp() * (1.0 + 0.01 * r.sym())
    })
}

/// 200 MB +-1 % with one sample at +200 MB, at `at`.
pub fn spike(seed: u64, at: usize) -> Vec<Sample> {
    series(20, seed, move |i, _, r| {
        200.0 * (1.0 + 0.01 * r.sym()) + if i == at { 200.0 } else { 0.0 }
    })
}

/// 300 MB + 1.5 MB/min with +-0.2 MB noise.
pub fn leak(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, t, r| 300.0 + 1.5 * t + 0.2 * r.sym())
}

/// Garbage-collection sawtooth: +10 MB per sample for 4 samples, then back down, over a baseline
/// of 150 MB rising at `baseline_mb_per_min`, +-1.5 MB noise.
pub fn sawtooth(seed: u64, baseline_mb_per_min: f64) -> Vec<Sample> {
    series(20, seed, move |i, t, r| {
        150.0 + baseline_mb_per_min * t + 10.0 * (i % 5) as f64 + 1.5 * r.sym()
    })
}

/// A cache warming up: 200 MB rising to 300 MB with a 1.2 min time constant, then flat, +-1 MB.
pub fn plateau(seed: u64) -> Vec<Sample> {
    series(20, seed, |_, t, r| {
        200.0 + 100.0 * (1.0 - (-t / 1.2).exp()) + r.sym()
    })
}

/// A level shift: `from_mb` +-1 %, then from sample `at` on `to_mb` +-1 % (a sudden rise that
/// stays).
pub fn step(seed: u64, at: usize, from_mb: f64, to_mb: f64) -> Vec<Sample> {
    series(20, seed, move |i, _, r| {
        let level = if i >= at { to_mb } else { from_mb };
        level * (1.0 + 0.01 * r.sym())
    })
}

/// 200 MB +-1 MB, a step of +100 MB at sample 6, then steady growth of 4 MB/min from there.
pub fn step_then_growth(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, t, r| {
        let after = if i >= 6 { 100.0 + 4.0 * (t - 3.0) } else { 0.0 };
        200.0 + after + r.sym()
    })
}

/// A slow ramp: 200 MB for 6 samples, +12 MB per sample for 8 samples, then flat at 296 MB,
/// +-1 MB: the rise is spread over minutes, not sudden.
pub fn ramp(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, _, r| {
        let up = (i.saturating_sub(5)).min(8) as f64 * 12.0;
        200.0 + up + r.sym()
    })
}

/// 100 MB growing exponentially with `doublings` doublings over the 20-sample window (9.5 min),
/// +-1 % noise.
pub fn exponential_doublings(seed: u64, doublings: f64) -> Vec<Sample> {
    let rate = doublings * std::f64::consts::LN_2 / 9.5;
    series(20, seed, move |_, t, r| {
        100.0 * (t * rate).exp() * (1.0 + 0.01 * r.sym())
    })
}

/// The case: 20 samples one second apart of RSS growing 4 % a second (doubling every
/// 17.7 s), from 50 MB, +-1 % noise.
pub fn exponential_per_second(seed: u64) -> Vec<Sample> {
    let mut rng = Lcg::new(seed);
    (0..20_u64)
        .map(|i| {
            let mb = 50.0 * 1.04_f64.powf(i as f64) * (1.0 + 0.01 * rng.sym());
            (T0_MS + i * 1000, (mb * MB).round() as u64)
        })
        .collect()
}

/// A cache warming up in the middle of the window: 200 MB for 8 samples, then rising to 300 MB
/// with a 1.2 min time constant, +-1 MB: a fast curve, not a jump.
pub fn warm_up(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, t, r| {
        let since = t - 3.5;
        let up = if i >= 8 {
            100.0 * (1.0 - (-since / 1.2).exp())
        } else {
            0.0
        };
        200.0 + up + r.sym()
    })
}

/// A square wave: 150 MB for 4 samples, 210 MB for 4, and so on, +-1.5 MB (memory taken and given
/// back in blocks): up-jumps that do not stay.
pub fn square_wave(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, _, r| {
        150.0 + if (i / 4) % 2 == 1 { 60.0 } else { 0.0 } + 1.5 * r.sym()
    })
}

/// Start-up growth: from 2 MB, +12 MB a sample for 5 samples, then flat at 62 MB, +-0.5 MB.
pub fn startup_burst(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, _, r| {
        2.0 + 12.0 * i.min(5) as f64 + 0.5 * r.sym()
    })
}

/// Steady growth from almost nothing: 4 MB + 20 MB a sample, +-1 MB (a fast native leak seen from
/// its start): linear, not exponential, although it doubles many times.
pub fn linear_from_small(seed: u64) -> Vec<Sample> {
    series(20, seed, |i, _, r| 4.0 + 20.0 * i as f64 + r.sym())
}
