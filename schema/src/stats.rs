//! The one percentile definition of turnbench.
//!
//! **Linear interpolation between closest ranks**, identical to numpy's default
//! (`numpy.percentile(a, q, method="linear")`) and therefore to SGLang's
//! `bench_serving.py`: for `n` sorted values and `q` in `[0, 100]`, the rank is
//! `h = (n - 1) * q / 100`, and the result is `x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] - x[floor(h)])`.
//! NaN values are ignored. An empty input has no percentile (`None`).

use serde::{Deserialize, Serialize};

/// Percentile `q` (0..=100) of `values` (any order; NaN ignored). Sorts a copy.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, q)
}

/// Percentile `q` of values already sorted ascending (no NaN). `None` when empty.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let q = q.clamp(0.0, 100.0);
    let h = (n - 1) as f64 * q / 100.0;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = h - lo as f64;
    Some(sorted[lo] + frac * (sorted[hi] - sorted[lo]))
}

/// Mean of the non-NaN values; `None` when there are none.
pub fn mean(values: &[f64]) -> Option<f64> {
    let (sum, n) = values
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The distribution summary stored in summaries: mean, p50, p90, p99, max, and the count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    /// Summarize `values` (NaN ignored).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        Percentiles {
            count: v.len() as u64,
            mean: mean(&v),
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p99: percentile_sorted(&v, 99.0),
            max: v.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 90, 100]) == [1, 1.75, 2.5, 3.7, 4]
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 25.0), Some(1.75));
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 90.0).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&v, 100.0), Some(4.0));
    }

    #[test]
    fn empty_and_nan() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[f64::NAN], 50.0), None);
        assert_eq!(percentile(&[f64::NAN, 7.0], 99.0), Some(7.0));
        let p = Percentiles::of(&[f64::NAN]);
        assert_eq!(p.count, 0);
        assert_eq!(p.mean, None);
    }

    #[test]
    fn single_value() {
        let p = Percentiles::of(&[3.0]);
        assert_eq!(
            (p.p50, p.p99, p.max, p.mean),
            (Some(3.0), Some(3.0), Some(3.0), Some(3.0))
        );
    }
}
