//! The statistics the lab reports: Welch's t-test (as dudect uses it), chi-square and normal
//! p-values through `statrs`, serial correlation and percentiles.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// Running mean and variance (Welford), so long sample series need no second pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    /// Adds one sample.
    pub fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.n as u64
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The unbiased sample variance.
    pub fn variance(&self) -> f64 {
        if self.n < 2.0 {
            0.0
        } else {
            self.m2 / (self.n - 1.0)
        }
    }
}

/// Welch's t statistic for two independent samples with unequal variances. 0 when either
/// side has fewer than two samples or both have no spread.
pub fn welch_t(a: &Moments, b: &Moments) -> f64 {
    if a.n < 2.0 || b.n < 2.0 {
        return 0.0;
    }
    let se = (a.variance() / a.n + b.variance() / b.n).sqrt();
    if se == 0.0 {
        0.0
    } else {
        (a.mean - b.mean) / se
    }
}

/// The dudect threshold: |t| above it means the two classes are told apart.
pub const T_THRESHOLD: f64 = 4.5;

/// dudect's test over two classes of timings: Welch's t on all samples, and on the samples
/// below each of several percentiles of the pooled distribution (cropping removes the long
/// tail that interrupts and scheduling add, which hides small differences). The largest |t|
/// is the verdict, as in dudect.
#[derive(Debug, Clone)]
pub struct Dudect {
    /// (crop label, t) pairs; `"all"` first.
    pub crops: Vec<(String, f64)>,
    /// Samples per class.
    pub counts: (u64, u64),
    /// Medians per class (same unit as the samples).
    pub medians: (f64, f64),
}

impl Dudect {
    /// Runs the test on two classes of samples.
    pub fn run(a: &[f64], b: &[f64]) -> Dudect {
        let mut pooled: Vec<f64> = a.iter().chain(b).copied().collect();
        pooled.sort_by(f64::total_cmp);
        let mut crops = vec![("all".to_owned(), t_below(a, b, f64::INFINITY))];
        for p in [50.0, 75.0, 90.0, 95.0, 99.0] {
            let cut = percentile_sorted(&pooled, p);
            crops.push((format!("p{p:.0}"), t_below(a, b, cut)));
        }
        Dudect {
            crops,
            counts: (a.len() as u64, b.len() as u64),
            medians: (median(a), median(b)),
        }
    }

    /// The largest |t| over the crops.
    pub fn max_abs_t(&self) -> f64 {
        self.crops.iter().map(|(_, t)| t.abs()).fold(0.0, f64::max)
    }

    /// |t| on all samples.
    pub fn t_all(&self) -> f64 {
        self.crops[0].1.abs()
    }
}

fn t_below(a: &[f64], b: &[f64], cut: f64) -> f64 {
    let moments = |xs: &[f64]| {
        let mut m = Moments::default();
        xs.iter().filter(|&&x| x <= cut).for_each(|&x| m.push(x));
        m
    };
    welch_t(&moments(a), &moments(b))
}

/// The `p`-th percentile (0..=100) of sorted data, nearest rank.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of unsorted data.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, 50.0)
}

/// Pearson's chi-square goodness of fit of `observed` counts against a uniform
/// distribution: (statistic, degrees of freedom, p-value).
pub fn chi_square_uniform(observed: &[u64]) -> (f64, f64, f64) {
    let total: u64 = observed.iter().sum();
    let k = observed.len() as f64;
    let expected = total as f64 / k;
    let stat: f64 = observed
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum();
    let df = k - 1.0;
    let p = ChiSquared::new(df).map_or(f64::NAN, |d| d.sf(stat));
    (stat, df, p)
}

/// Lag-1 serial correlation of a sequence, and its two-sided p-value under independence
/// (for large n, r·√n is standard normal).
pub fn serial_correlation(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n < 3 {
        return (0.0, 1.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
    let cov: f64 = xs.windows(2).map(|w| (w[0] - mean) * (w[1] - mean)).sum();
    let r = if var == 0.0 { 0.0 } else { cov / var };
    (r, two_sided_normal_p(r * (n as f64).sqrt()))
}

/// Two-sided p-value of a standard normal statistic.
pub fn two_sided_normal_p(z: f64) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("the standard normal exists");
    2.0 * normal.sf(z.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_t_matches_a_hand_computation() {
        let mut a = Moments::default();
        let mut b = Moments::default();
        [1.0, 2.0, 3.0, 4.0].iter().for_each(|&x| a.push(x));
        [2.0, 4.0, 6.0, 8.0].iter().for_each(|&x| b.push(x));
        // means 2.5 and 5, variances 5/3 and 20/3: t = -2.5 / sqrt(25/12).
        let want = -2.5 / (25.0f64 / 12.0).sqrt();
        assert!((welch_t(&a, &b) - want).abs() < 1e-12);
        assert_eq!(welch_t(&a, &Moments::default()), 0.0);
    }

    #[test]
    fn dudect_tells_shifted_classes_apart_and_not_equal_ones() {
        let a: Vec<f64> = (0..2000).map(|i| (i % 97) as f64).collect();
        let same: Vec<f64> = (0..2000).map(|i| ((i + 31) % 97) as f64).collect();
        let shifted: Vec<f64> = a.iter().map(|x| x + 5.0).collect();
        assert!(Dudect::run(&a, &same).max_abs_t() < T_THRESHOLD);
        assert!(Dudect::run(&a, &shifted).max_abs_t() > T_THRESHOLD);
    }

    #[test]
    fn chi_square_of_a_uniform_and_a_skewed_count() {
        let (_, df, p) = chi_square_uniform(&[100, 100, 100, 100]);
        assert_eq!(df, 3.0);
        assert!((p - 1.0).abs() < 1e-9);
        let (_, _, p) = chi_square_uniform(&[200, 100, 100, 0]);
        assert!(p < 1e-10);
    }

    #[test]
    fn serial_correlation_sees_a_trend() {
        let alternating: Vec<f64> = (0..1000).map(|i| (i % 2) as f64).collect();
        let (r, p) = serial_correlation(&alternating);
        assert!(r < -0.99 && p < 1e-10);
        assert!((two_sided_normal_p(1.959964) - 0.05).abs() < 1e-4);
    }
}
