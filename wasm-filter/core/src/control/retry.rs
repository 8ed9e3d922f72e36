//! Retry budgets in the style of Linkerd's: retries are allowed only while
//! `retries ≤ ratio × requests + min_per_second × window` over a sliding
//! window, per upstream. Envoy makes the retries; the filter grants them
//! per request through `x-envoy-max-retries` and accounts for them from the
//! response's `x-envoy-attempt-count` (or, without it, assumes a failed
//! request used every retry it was granted).
//!
//! The agent's load forecast reaches the budget as the upstream's expected
//! load growth (policy `load_growth`): the ratio is divided by it, so while
//! the upstream's load is forecast to rise, retries may not grow with the
//! requests — they are load nobody asked for, the first to hold back when
//! more is on its way. The per-second minimum stays, so a quiet upstream
//! can still retry.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_ratio")]
    pub ratio: f64,
    #[serde(default = "default_min_per_second")]
    pub min_per_second: f64,
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Retries granted to one request while the budget allows.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Envoy's `x-envoy-retry-on` for granted requests.
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
}

fn default_ratio() -> f64 {
    0.2
}
fn default_min_per_second() -> f64 {
    10.0
}
fn default_window_s() -> u64 {
    10
}
fn default_max_retries() -> u32 {
    2
}
fn default_retry_on() -> String {
    "5xx,reset,connect-failure".into()
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_ratio(),
            min_per_second: default_min_per_second(),
            window_s: default_window_s(),
            max_retries: default_max_retries(),
            retry_on: default_retry_on(),
        }
    }
}

impl RetryBudgetConfig {
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(("ratio", "must be between 0 and 10"));
        }
        if !(0.0..=100_000.0).contains(&self.min_per_second) {
            return Err(("min_per_second", "must be between 0 and 100000"));
        }
        if !(1..=300).contains(&self.window_s) {
            return Err(("window_s", "must be between 1 and 300"));
        }
        if self.max_retries > 10 {
            return Err(("max_retries", "must be at most 10"));
        }
        if self.retry_on.is_empty()
            || !self
                .retry_on
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b"-,_0-9x".contains(&b) || b.is_ascii_digit())
        {
            return Err(("retry_on", "must be a list of Envoy retry conditions"));
        }
        Ok(())
    }
}

/// One upstream's budget over a sliding window of 1-second buckets.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    cfg: RetryBudgetConfig,
    /// (second, requests, retries)
    buckets: VecDeque<(u64, u64, u64)>,
    /// Expected growth of the upstream's load (≥ 1) from the agent's forecast.
    growth: f64,
}

impl RetryBudget {
    pub fn new(cfg: RetryBudgetConfig) -> Self {
        RetryBudget {
            cfg,
            buckets: VecDeque::new(),
            growth: 1.0,
        }
    }

    /// Sets the load growth the forecast expects for this upstream (1 =
    /// none), bounded as [`bounded_growth`](crate::control::concurrency::bounded_growth) says.
    pub fn set_expected_growth(&mut self, growth: f64) {
        self.growth = crate::control::concurrency::bounded_growth(growth);
    }

    fn bucket(&mut self, now_s: u64) -> &mut (u64, u64, u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(s, _, _)| s + self.cfg.window_s <= now_s)
        {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|(s, _, _)| *s != now_s) {
            self.buckets.push_back((now_s, 0, 0));
        }
        // Just pushed or already there.
        let last = self.buckets.len() - 1;
        &mut self.buckets[last]
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(r, t), (_, a, b)| (r + a, t + b))
    }

    /// Counts a request and returns how many retries it may use.
    pub fn on_request(&mut self, now_s: u64) -> u32 {
        self.bucket(now_s).1 += 1;
        let (requests, retries) = self.totals();
        let allowance = self.cfg.ratio / self.growth * requests as f64
            + self.cfg.min_per_second * self.cfg.window_s as f64;
        let room = (allowance - retries as f64).floor();
        if room <= 0.0 {
            0
        } else {
            (room as u32).min(self.cfg.max_retries)
        }
    }

    /// Accounts for retries a finished request made.
    pub fn on_retries(&mut self, retries: u64, now_s: u64) {
        if retries > 0 {
            self.bucket(now_s).2 += retries;
        }
    }

    /// Retries the request used: from `x-envoy-attempt-count` when present,
    /// else every granted retry if it failed, none if it succeeded.
    pub fn retries_used(granted: u32, attempt_count: Option<u64>, failed: bool) -> u64 {
        match attempt_count {
            Some(a) => a.saturating_sub(1).min(u64::from(granted)),
            None if failed => u64::from(granted),
            None => 0,
        }
    }

    /// Changes the budget's terms, keeping what the window has counted.
    pub fn set_config(&mut self, cfg: &RetryBudgetConfig) {
        if self.cfg != *cfg {
            self.cfg = cfg.clone();
        }
    }

    pub fn config(&self) -> &RetryBudgetConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min: f64) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            ratio,
            min_per_second: min,
            window_s: 10,
            max_retries: 2,
            ..Default::default()
        })
    }

    #[test]
    fn retries_stay_within_ratio_plus_minimum() {
        let mut b = budget(0.2, 1.0); // 10 retries of slack over the window
        let mut retried = 0;
        for i in 0..1000u64 {
            let now = i / 100; // 100 requests per second
            let granted = b.on_request(now);
            // Every request fails and uses what it was granted.
            let used = RetryBudget::retries_used(granted, None, true);
            b.on_retries(used, now);
            retried += used;
        }
        // 1000 requests over 10 s: at most 0.2 × 1000 + 10 retries.
        assert!(retried <= 210, "{retried}");
        assert!(retried >= 150, "the budget is used, not starved: {retried}");
    }

    /// Every request fails and uses what it was granted: the retries made
    /// over 1,000 requests at 100 a second.
    fn retries_made(b: &mut RetryBudget) -> u64 {
        let mut retried = 0;
        for i in 0..1000u64 {
            let now = i / 100;
            let used = RetryBudget::retries_used(b.on_request(now), None, true);
            b.on_retries(used, now);
            retried += used;
        }
        retried
    }

    #[test]
    fn a_forecast_rise_divides_the_ratio_not_the_minimum() {
        let plain = retries_made(&mut budget(0.2, 1.0));
        let mut held = budget(0.2, 1.0);
        held.set_expected_growth(2.0);
        let held = retries_made(&mut held);
        // 0.2 / 2 × 1000 + 10 at most; well above the minimum alone.
        assert!(held <= 110, "{held}");
        assert!(held >= 75, "{held}");
        assert!(plain >= held + 50, "{plain} vs {held}");
        // No growth, or none that makes sense, changes nothing.
        for g in [1.0, 0.5, f64::NAN, f64::INFINITY] {
            let mut b = budget(0.2, 1.0);
            b.set_expected_growth(g);
            assert_eq!(retries_made(&mut b), plain, "growth {g}");
        }
        // Only the ratio is divided: the minimum remains.
        let mut quiet = budget(0.0, 1.0);
        quiet.set_expected_growth(4.0);
        assert_eq!(quiet.on_request(0), 2);
    }

    #[test]
    fn the_window_slides() {
        let mut b = budget(0.0, 0.2); // 2 retries per 10 s window
        assert_eq!(b.on_request(0), 2);
        b.on_retries(2, 0);
        assert_eq!(b.on_request(5), 0, "budget spent");
        assert_eq!(b.on_request(10), 2, "the spent retries left the window");
    }

    #[test]
    fn attempt_count_wins_over_the_guess() {
        assert_eq!(RetryBudget::retries_used(2, Some(2), true), 1);
        assert_eq!(RetryBudget::retries_used(2, Some(9), true), 2);
        assert_eq!(RetryBudget::retries_used(2, None, false), 0);
        assert_eq!(RetryBudget::retries_used(2, None, true), 2);
    }
}
