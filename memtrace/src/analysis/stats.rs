//! Small, dependency-free statistics used by the pattern detector. Every function takes plain
//! slices and returns `None` (or a neutral value) instead of panicking on degenerate input: too few
//! points, zero variance, NaN.

/// Median of `values` (NaN-free input expected; NaN sorts last). `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted.get(mid).copied()
    } else {
        Some((sorted.get(mid - 1)? + sorted.get(mid)?) / 2.0)
    }
}

/// Median absolute deviation from the median (unscaled). `None` when empty.
pub fn mad(values: &[f64]) -> Option<f64> {
    let med = median(values)?;
    let deviations: Vec<f64> = values.iter().map(|v| (v - med).abs()).collect();
    median(&deviations)
}

/// Mean absolute deviation from the median: the fallback scale of the modified z-score when the
/// MAD is zero (Iglewicz and Hoaglin).
pub fn mean_abs_deviation(values: &[f64]) -> Option<f64> {
    let med = median(values)?;
    let n = values.len() as f64;
    Some(values.iter().map(|v| (v - med).abs()).sum::<f64>() / n)
}

/// An ordinary least-squares line `y = intercept + slope * x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination. 1 when the line leaves no residual (a constant series
    /// included), 0 when it explains nothing.
    pub r2: f64,
    /// Slope over its standard error (Student t with n - 2 degrees of freedom). Infinite when the
    /// fit is exact and the slope is not zero; 0 with fewer than 3 points.
    pub t_slope: f64,
    /// Number of points.
    pub n: usize,
}

impl LineFit {
    /// The fitted value at `x`.
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }

    /// The slope is positive at one-sided p < 0.005.
    pub fn rises_significantly(&self) -> bool {
        self.slope > 0.0 && self.t_slope >= t_critical_005(self.n.saturating_sub(2))
    }
}

/// Least-squares line through `(x, y)`. `None` with fewer than 2 points, mismatched lengths or no
/// spread in `x`.
pub fn ols(x: &[f64], y: &[f64]) -> Option<LineFit> {
    let n = x.len();
    if n < 2 || n != y.len() {
        return None;
    }
    let nf = n as f64;
    let mean_x = x.iter().sum::<f64>() / nf;
    let mean_y = y.iter().sum::<f64>() / nf;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (xi, yi) in x.iter().zip(y) {
        let dx = xi - mean_x;
        let dy = yi - mean_y;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ssr: f64 = x
        .iter()
        .zip(y)
        .map(|(xi, yi)| {
            let e = yi - (intercept + slope * xi);
            e * e
        })
        .sum();
    // Residuals below this share of the total are rounding noise: treat the fit as exact.
    let exact = ssr <= syy * 1e-12 || syy == 0.0;
    let r2 = if exact {
        1.0
    } else {
        (1.0 - ssr / syy).clamp(0.0, 1.0)
    };
    let t_slope = if n < 3 {
        0.0
    } else if exact {
        if slope == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(slope)
        }
    } else {
        let se = (ssr / (nf - 2.0) / sxx).sqrt();
        slope / se
    };
    Some(LineFit {
        slope,
        intercept,
        r2,
        t_slope,
        n,
    })
}

/// One-sided critical value of Student's t at p = 0.005 for `df` degrees of freedom (rounded up to
/// the nearest tabulated `df` below, so never lenient). 0 degrees of freedom: infinite.
pub fn t_critical_005(df: usize) -> f64 {
    const TABLE: [(usize, f64); 17] = [
        (1, 63.657),
        (2, 9.925),
        (3, 5.841),
        (4, 4.604),
        (5, 4.032),
        (6, 3.707),
        (7, 3.499),
        (8, 3.355),
        (9, 3.250),
        (10, 3.169),
        (12, 3.055),
        (15, 2.947),
        (20, 2.845),
        (25, 2.787),
        (30, 2.750),
        (60, 2.660),
        (120, 2.617),
    ];
    TABLE
        .iter()
        .rev()
        .find(|(d, _)| *d <= df)
        .map_or(f64::INFINITY, |(_, t)| *t)
}

/// Theil–Sen line: the median of the pairwise slopes, and the median of `y - slope * x` as
/// intercept. Robust to up to ~29 % of outliers. `None` with fewer than 2 distinct `x`.
pub fn theil_sen(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    if x.len() != y.len() {
        return None;
    }
    let mut slopes = Vec::with_capacity(x.len() * x.len().saturating_sub(1) / 2);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let dx = x[j] - x[i];
            if dx != 0.0 {
                slopes.push((y[j] - y[i]) / dx);
            }
        }
    }
    let slope = median(&slopes)?;
    let offsets: Vec<f64> = x.iter().zip(y).map(|(xi, yi)| yi - slope * xi).collect();
    Some((slope, median(&offsets)?))
}

/// t statistic of the quadratic coefficient `c` of the least-squares fit
/// `y = a + b (x - mean x) + c (x - mean x)^2`: positive and large when the series curves upward
/// (accelerates). `None` with fewer than 4 points or a singular design.
pub fn quadratic_curvature_t(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 4 || n != y.len() {
        return None;
    }
    let nf = n as f64;
    let mean_x = x.iter().sum::<f64>() / nf;
    // Normal equations (X'X) beta = X'y with columns 1, u, u^2, u = x - mean_x.
    let mut m = [[0.0_f64; 3]; 3];
    let mut v = [0.0_f64; 3];
    for (xi, yi) in x.iter().zip(y) {
        let u = xi - mean_x;
        let row = [1.0, u, u * u];
        for r in 0..3 {
            for c in 0..3 {
                m[r][c] += row[r] * row[c];
            }
            v[r] += row[r] * yi;
        }
    }
    let inv = invert3(&m)?;
    let beta: Vec<f64> = (0..3)
        .map(|r| (0..3).map(|c| inv[r][c] * v[c]).sum())
        .collect();
    let ssr: f64 = x
        .iter()
        .zip(y)
        .map(|(xi, yi)| {
            let u = xi - mean_x;
            let e = yi - (beta[0] + beta[1] * u + beta[2] * u * u);
            e * e
        })
        .sum();
    let sigma2 = ssr / (nf - 3.0);
    let var_c = sigma2 * inv[2][2];
    if var_c <= 0.0 || !var_c.is_finite() {
        // Exact fit: the sign of the curvature is all there is to say.
        return Some(if beta[2] == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(beta[2])
        });
    }
    Some(beta[2] / var_c.sqrt())
}

/// Inverse of a 3x3 matrix by cofactors; `None` when (nearly) singular.
fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let cof =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let c00 = cof(1, 2, 1, 2);
    let c01 = -cof(1, 2, 0, 2);
    let c02 = cof(1, 2, 0, 1);
    let det = m[0][0] * c00 + m[0][1] * c01 + m[0][2] * c02;
    let scale = m.iter().flatten().fold(0.0_f64, |a, b| a.max(b.abs()));
    if det == 0.0 || !det.is_finite() || det.abs() <= scale.powi(3) * 1e-14 {
        return None;
    }
    let adj = [
        [c00, -cof(0, 2, 1, 2), cof(0, 1, 1, 2)],
        [c01, cof(0, 2, 0, 2), -cof(0, 1, 0, 2)],
        [c02, -cof(0, 2, 0, 1), cof(0, 1, 0, 1)],
    ];
    let mut inv = [[0.0; 3]; 3];
    for r in 0..3 {
        for c in 0..3 {
            inv[r][c] = adj[r][c] / det;
        }
    }
    Some(inv)
}

/// Kendall's tau-b between sample order and value: +1 when every later value is above every earlier
/// one, -1 for the reverse, about 0 without a monotone trend. Ties are corrected for; 0 when all
/// values are equal or fewer than 2.
pub fn kendall_tau_b(values: &[f64]) -> f64 {
    let n = values.len();
    let mut score = 0_i64;
    let mut ties = 0_u64;
    for i in 0..n {
        for j in i + 1..n {
            match values[j].partial_cmp(&values[i]) {
                Some(std::cmp::Ordering::Greater) => score += 1,
                Some(std::cmp::Ordering::Less) => score -= 1,
                _ => ties += 1,
            }
        }
    }
    let pairs = (n * n.saturating_sub(1) / 2) as f64;
    // Time has no ties, so the denominator is sqrt(pairs * (pairs - value ties)).
    let denom = (pairs * (pairs - ties as f64)).sqrt();
    if denom > 0.0 {
        score as f64 / denom
    } else {
        0.0
    }
}

/// Indices of the local minima: points not above either neighbour (the first and last point compare
/// with their one neighbour). For a sawtooth these are the troughs left after each drop.
pub fn local_minima(values: &[f64]) -> Vec<usize> {
    let n = values.len();
    (0..n)
        .filter(|&i| {
            let left_ok = i == 0 || values[i] <= values[i - 1];
            let right_ok = i + 1 == n || values[i] <= values[i + 1];
            left_ok && right_ok && n > 1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn median_and_mad() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), Some(1.0));
        assert_eq!(mean_abs_deviation(&[1.0, 1.0, 1.0, 5.0]), Some(1.0));
    }

    #[test]
    fn ols_line() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let fit = ols(&x, &[1.0, 3.0, 5.0, 7.0]).unwrap();
        assert!(close(fit.slope, 2.0) && close(fit.intercept, 1.0) && close(fit.r2, 1.0));
        assert!(fit.t_slope.is_infinite());
        let flat = ols(&x, &[5.0; 4]).unwrap();
        assert!(close(flat.slope, 0.0) && flat.t_slope == 0.0);
        assert!(ols(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        assert!(ols(&[1.0], &[1.0]).is_none());
    }

    #[test]
    fn theil_sen_ignores_outlier() {
        let x = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let (slope, intercept) = theil_sen(&x, &[0.0, 1.0, 2.0, 30.0, 4.0, 5.0]).unwrap();
        assert!(close(slope, 1.0) && close(intercept, 0.0));
    }

    #[test]
    fn curvature_sign() {
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        let convex: Vec<f64> = x.iter().map(|v| v * v + 0.01 * (v * 7.0).sin()).collect();
        let concave: Vec<f64> = x.iter().map(|v| -v * v + 0.01 * (v * 7.0).sin()).collect();
        let line: Vec<f64> = x.iter().map(|v| 2.0 * v + 0.3 * (v * 7.0).sin()).collect();
        assert!(quadratic_curvature_t(&x, &convex).unwrap() > 10.0);
        assert!(quadratic_curvature_t(&x, &concave).unwrap() < -10.0);
        assert!(quadratic_curvature_t(&x, &line).unwrap().abs() < 3.0);
    }

    #[test]
    fn t_critical_table() {
        assert!(t_critical_005(0).is_infinite());
        assert_eq!(t_critical_005(2), 9.925);
        assert_eq!(t_critical_005(18), 2.947);
        assert_eq!(t_critical_005(1000), 2.617);
    }

    #[test]
    fn kendall_and_minima() {
        assert!(close(kendall_tau_b(&[1.0, 2.0, 3.0, 4.0]), 1.0));
        assert!(close(kendall_tau_b(&[4.0, 3.0, 2.0, 1.0]), -1.0));
        assert!(close(kendall_tau_b(&[2.0, 2.0, 2.0]), 0.0));
        assert_eq!(local_minima(&[3.0, 1.0, 2.0, 5.0, 2.0, 3.0]), vec![1, 4]);
        assert_eq!(local_minima(&[1.0, 2.0, 3.0]), vec![0]);
    }
}
