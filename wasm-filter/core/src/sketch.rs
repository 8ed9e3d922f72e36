//! A mergeable latency histogram with bounded relative error.
//!
//! Log-linear buckets in the style of HdrHistogram: each power-of-two range
//! of nanoseconds is split into 32 equal sub-buckets, so a bucket is at most
//! 1/32 of its lower bound wide and its midpoint is within 1/64 (1.5625 %) of
//! every value in it. Values below 64 ns are kept exactly. The bucket index is
//! computed with integer operations only, which keeps the per-request cost in
//! the wasm VM to a few instructions.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 5;
const SUB_COUNT: u64 = 1 << SUB_BITS;
/// Values below this are their own bucket.
const EXACT_LIMIT: u64 = SUB_COUNT * 2;
/// Largest relative error of [`Sketch::quantile`] for values ≥ 64 ns.
pub const RELATIVE_ERROR: f64 = 1.0 / (2.0 * SUB_COUNT as f64);

/// Index of the bucket holding `v` nanoseconds.
pub fn bucket_index(v: u64) -> u16 {
    if v < EXACT_LIMIT {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) & (SUB_COUNT - 1);
    (EXACT_LIMIT + u64::from(exp - SUB_BITS - 1) * SUB_COUNT + sub) as u16
}

/// Inclusive lower bound and width of bucket `i`.
fn bucket_bounds(i: u16) -> (u64, u64) {
    let i = u64::from(i);
    if i < EXACT_LIMIT {
        return (i, 1);
    }
    let rel = i - EXACT_LIMIT;
    let exp = rel / SUB_COUNT + u64::from(SUB_BITS) + 1;
    let sub = rel % SUB_COUNT;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    ((SUB_COUNT + sub) * width, width)
}

/// The value reported for bucket `i`: its midpoint (exact buckets: the value).
pub fn bucket_value(i: u16) -> f64 {
    let (lo, width) = bucket_bounds(i);
    if width == 1 {
        lo as f64
    } else {
        lo as f64 + (width as f64 - 1.0) / 2.0
    }
}

/// Upper bound (inclusive) of bucket `i`, in nanoseconds.
pub fn bucket_upper(i: u16) -> u64 {
    let (lo, width) = bucket_bounds(i);
    lo + (width - 1)
}

/// Latency sketch over nanosecond values. Dense counts from `offset` on: real
/// latencies span a few powers of two, so the vector stays short.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sketch {
    /// Bucket index of `counts[0]`.
    #[serde(default)]
    pub offset: u16,
    #[serde(default)]
    pub counts: Vec<u64>,
    /// Exact sum of recorded values (saturating), for Prometheus `_sum`.
    #[serde(default)]
    pub sum_ns: u64,
    #[serde(default)]
    pub min_ns: u64,
    #[serde(default)]
    pub max_ns: u64,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    pub fn record(&mut self, v: u64) {
        // `counts` is only ever empty before the first value (reset clears it).
        let first = self.counts.is_empty();
        self.add_n(bucket_index(v), 1);
        self.sum_ns = self.sum_ns.saturating_add(v);
        if first {
            (self.min_ns, self.max_ns) = (v, v);
        } else {
            self.min_ns = self.min_ns.min(v);
            self.max_ns = self.max_ns.max(v);
        }
    }

    fn add_n(&mut self, idx: u16, n: u64) {
        if self.counts.is_empty() {
            self.offset = idx;
            self.counts.push(n);
            return;
        }
        if idx < self.offset {
            let grow = usize::from(self.offset - idx);
            let mut counts = vec![0; grow];
            counts.extend_from_slice(&self.counts);
            self.counts = counts;
            self.offset = idx;
        }
        let pos = usize::from(idx - self.offset);
        if pos >= self.counts.len() {
            self.counts.resize(pos + 1, 0);
        }
        self.counts[pos] = self.counts[pos].saturating_add(n);
    }

    /// Adds every value of `other` to `self`. Merging is exact: the result is
    /// the sketch of the union of both inputs.
    pub fn merge(&mut self, other: &Sketch) {
        if other.is_empty() {
            return;
        }
        let was_empty = self.is_empty();
        for (i, c) in other.counts.iter().enumerate() {
            if *c > 0 {
                self.add_n(other.offset.saturating_add(i as u16), *c);
            }
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        if was_empty {
            self.min_ns = other.min_ns;
            self.max_ns = other.max_ns;
        } else {
            self.min_ns = self.min_ns.min(other.min_ns);
            self.max_ns = self.max_ns.max(other.max_ns);
        }
    }

    /// Value at quantile `q` (0..=1) by the nearest-rank definition: the
    /// `ceil(q·n)`-th smallest value (at least the first). Within
    /// [`RELATIVE_ERROR`] of the exact order statistic, and never outside the
    /// recorded minimum and maximum.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 || !q.is_finite() {
            return None;
        }
        let rank = nearest_rank(q, n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let v = bucket_value(self.offset.saturating_add(i as u16));
                return Some(v.clamp(self.min_ns as f64, self.max_ns as f64));
            }
        }
        Some(self.max_ns as f64)
    }

    /// Count of values ≤ `bound_ns`, to within one bucket: buckets whose
    /// upper bound is ≤ the bound are counted. Used for Prometheus buckets.
    pub fn count_le(&self, bound_ns: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper(self.offset.saturating_add(*i as u16)) <= bound_ns)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Clears all counts, keeping the allocation.
    pub fn reset(&mut self) {
        self.counts.clear();
        self.offset = 0;
        self.sum_ns = 0;
        self.min_ns = 0;
        self.max_ns = 0;
    }

    /// Checks what a decoded sketch promises: indexes in range, min ≤ max.
    pub fn validate(&self) -> Result<(), String> {
        let last = usize::from(self.offset) + self.counts.len();
        if last > usize::from(bucket_index(u64::MAX)) + 1 {
            return Err("bucket index out of range".into());
        }
        if !self.is_empty() && self.min_ns > self.max_ns {
            return Err("min_ns is greater than max_ns".into());
        }
        Ok(())
    }
}

/// 1-based nearest rank of quantile `q` among `n` values.
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    let q = q.clamp(0.0, 1.0);
    ((q * n as f64).ceil() as u64).clamp(1, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_quantile(values: &mut [u64], q: f64) -> f64 {
        values.sort_unstable();
        values[(nearest_rank(q, values.len() as u64) - 1) as usize] as f64
    }

    /// A small deterministic generator so the tests need no crate.
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut prev_upper = None;
        for i in 0..=bucket_index(u64::MAX) {
            let (lo, width) = bucket_bounds(i);
            if let Some(p) = prev_upper {
                assert_eq!(lo, p + 1, "gap before bucket {i}");
            }
            assert!(width as f64 <= (lo as f64 / SUB_COUNT as f64).max(1.0));
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(lo + (width - 1)), i);
            prev_upper = Some(lo + (width - 1));
        }
    }

    #[test]
    fn every_value_is_within_the_error_bound_of_its_bucket() {
        let mut seed = 7;
        for _ in 0..100_000 {
            let v = lcg(&mut seed) << (lcg(&mut seed) % 32);
            let rep = bucket_value(bucket_index(v));
            let err = (rep - v as f64).abs() / (v as f64).max(1.0);
            assert!(err <= RELATIVE_ERROR, "v={v} rep={rep} err={err}");
        }
    }

    #[test]
    fn quantiles_match_exact_order_statistics_within_two_percent() {
        let mut seed = 42;
        // Log-normal-ish spread from 50 µs to 2 s.
        let mut values: Vec<u64> = (0..20_000)
            .map(|_| 50_000 + (lcg(&mut seed) % 1000).pow(3) * 2)
            .collect();
        let mut sk = Sketch::new();
        for v in &values {
            sk.record(*v);
        }
        assert_eq!(sk.count(), 20_000);
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = exact_quantile(&mut values, q);
            let got = sk.quantile(q).unwrap_or(f64::NAN);
            let err = (got - exact).abs() / exact;
            assert!(err <= 0.02, "q={q} exact={exact} got={got}");
            assert!(err <= RELATIVE_ERROR + 1e-12, "q={q} err={err}");
        }
    }

    #[test]
    fn merge_equals_recording_everything_in_one_sketch() {
        let mut seed = 3;
        let (mut a, mut b, mut all) = (Sketch::new(), Sketch::new(), Sketch::new());
        for i in 0..5000 {
            let v = lcg(&mut seed) % 10_000_000 + 1;
            if i % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged.count(), all.count());
        assert_eq!(merged.sum_ns, all.sum_ns);
        assert_eq!((merged.min_ns, merged.max_ns), (all.min_ns, all.max_ns));
        for q in [0.5, 0.99] {
            assert_eq!(merged.quantile(q), all.quantile(q));
        }
        // Merging into an empty sketch keeps min and max.
        let mut empty = Sketch::new();
        empty.merge(&a);
        assert_eq!((empty.min_ns, empty.max_ns), (a.min_ns, a.max_ns));
    }

    #[test]
    fn min_max_and_growth_downwards() {
        let mut sk = Sketch::new();
        sk.record(1_000_000);
        sk.record(10);
        sk.record(5_000_000);
        assert_eq!((sk.min_ns, sk.max_ns), (10, 5_000_000));
        assert_eq!(sk.quantile(0.0), Some(10.0));
        assert_eq!(sk.quantile(1.0), Some(5_000_000.0));
        assert_eq!(sk.count_le(u64::MAX), 3);
        assert_eq!(sk.count_le(9), 0);
        sk.reset();
        assert!(sk.is_empty());
        assert_eq!(sk.quantile(0.5), None);
    }

    #[test]
    fn validate_rejects_out_of_range_buckets() {
        let sk = Sketch {
            offset: u16::MAX,
            counts: vec![1, 1],
            ..Sketch::default()
        };
        assert!(sk.validate().is_err());
    }
}
