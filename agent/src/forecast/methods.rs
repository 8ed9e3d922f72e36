//! The forecasting methods, each updated online in O(1) (the harmonic fit
//! is refreshed every few steps).

use super::{Forecaster, DAY};
use std::collections::VecDeque;

/// Tomorrow looks like today: the last value.
#[derive(Debug, Default)]
pub struct Naive {
    last: f64,
    seen: usize,
}

impl Forecaster for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }
    fn min_history(&self) -> usize {
        1
    }
    fn update(&mut self, _minute: u64, value: f64) {
        self.last = value;
        self.seen += 1;
    }
    fn forecast(&self, _h: usize) -> f64 {
        self.last
    }
    fn seen(&self) -> usize {
        self.seen
    }
}

/// The same minute one season earlier.
#[derive(Debug)]
pub struct SeasonalNaive {
    season: usize,
    ring: VecDeque<f64>,
    seen: usize,
}

impl SeasonalNaive {
    pub fn new(season: usize) -> Self {
        SeasonalNaive {
            season: season.max(1),
            ring: VecDeque::new(),
            seen: 0,
        }
    }
}

impl Forecaster for SeasonalNaive {
    fn name(&self) -> &'static str {
        // A day is the season; an hour is the one a short history allows.
        match self.season {
            DAY => "seasonal_naive",
            60 => "seasonal_naive_1h",
            _ => "seasonal_naive_other",
        }
    }
    fn min_history(&self) -> usize {
        self.season
    }
    fn update(&mut self, _minute: u64, value: f64) {
        self.ring.push_back(value);
        if self.ring.len() > self.season {
            self.ring.pop_front();
        }
        self.seen += 1;
    }
    fn forecast(&self, h: usize) -> f64 {
        // ring[0] is one season before the next minute.
        let i = (h.max(1) - 1) % self.season;
        self.ring
            .get(i)
            .or(self.ring.back())
            .copied()
            .unwrap_or(0.0)
    }
    fn seen(&self) -> usize {
        self.seen
    }
}

/// Additive Holt-Winters with a daily season, indexed by minute of day so
/// gaps in the input keep the season aligned.
#[derive(Debug)]
pub struct HoltWinters {
    season: usize,
    alpha: f64,
    beta: f64,
    gamma: f64,
    level: f64,
    trend: f64,
    seasonal: Vec<f64>,
    last_minute: u64,
    seen: usize,
}

impl HoltWinters {
    pub fn new(season: usize, alpha: f64, beta: f64, gamma: f64) -> Self {
        HoltWinters {
            season: season.max(1),
            alpha,
            beta,
            gamma,
            level: 0.0,
            trend: 0.0,
            seasonal: vec![0.0; season.max(1)],
            last_minute: 0,
            seen: 0,
        }
    }
}

impl Forecaster for HoltWinters {
    fn name(&self) -> &'static str {
        "holt_winters"
    }
    fn min_history(&self) -> usize {
        // One day to learn the season's shape.
        self.season
    }
    fn update(&mut self, minute: u64, value: f64) {
        let i = (minute % self.season as u64) as usize;
        if self.seen == 0 {
            self.level = value;
        }
        let s = self.seasonal[i];
        let prev_level = self.level;
        self.level = self.alpha * (value - s) + (1.0 - self.alpha) * (self.level + self.trend);
        self.trend = self.beta * (self.level - prev_level) + (1.0 - self.beta) * self.trend;
        // During the first day the season is learnt from scratch.
        let g = if self.seen < self.season {
            1.0
        } else {
            self.gamma
        };
        self.seasonal[i] = g * (value - self.level) + (1.0 - g) * s;
        self.last_minute = minute;
        self.seen += 1;
    }
    fn forecast(&self, h: usize) -> f64 {
        let i = ((self.last_minute + h as u64) % self.season as u64) as usize;
        (self.level + h as f64 * self.trend + self.seasonal[i]).max(0.0)
    }
    fn seen(&self) -> usize {
        self.seen
    }
}

/// Mean plus the first `harmonics` daily harmonics, least-squares fitted on
/// the last `window` minutes and refitted every `refit` minutes; the level
/// follows the last hour so a shift is not averaged away.
#[derive(Debug)]
pub struct HarmonicDaily {
    harmonics: usize,
    window: usize,
    refit: usize,
    history: VecDeque<(u64, f64)>,
    /// (a_k, b_k) per harmonic and the fitted mean.
    coef: Vec<(f64, f64)>,
    mean: f64,
    /// Recent residual level correction.
    bias: f64,
    seen: usize,
    last_minute: u64,
}

impl HarmonicDaily {
    pub fn new(harmonics: usize, window: usize, refit: usize) -> Self {
        HarmonicDaily {
            harmonics,
            window,
            refit: refit.max(1),
            history: VecDeque::new(),
            coef: Vec::new(),
            mean: 0.0,
            bias: 0.0,
            seen: 0,
            last_minute: 0,
        }
    }

    fn shape(&self, minute: u64) -> f64 {
        let x = 2.0 * std::f64::consts::PI * (minute % DAY as u64) as f64 / DAY as f64;
        self.coef
            .iter()
            .enumerate()
            .map(|(k, (a, b))| {
                let w = (k + 1) as f64 * x;
                a * w.cos() + b * w.sin()
            })
            .sum()
    }

    fn fit(&mut self) {
        let n = self.history.len() as f64;
        if n == 0.0 {
            return;
        }
        self.mean = self.history.iter().map(|(_, v)| v).sum::<f64>() / n;
        // Daily harmonics are orthogonal over whole days; over a partial
        // window this projection is an approximation, which is enough here.
        self.coef = (1..=self.harmonics)
            .map(|k| {
                let (mut a, mut b) = (0.0, 0.0);
                for (m, v) in &self.history {
                    let w = 2.0 * std::f64::consts::PI * k as f64 * (m % DAY as u64) as f64
                        / DAY as f64;
                    a += (v - self.mean) * w.cos();
                    b += (v - self.mean) * w.sin();
                }
                (2.0 * a / n, 2.0 * b / n)
            })
            .collect();
    }
}

impl Forecaster for HarmonicDaily {
    fn name(&self) -> &'static str {
        "harmonic"
    }
    fn min_history(&self) -> usize {
        // Useful after an hour: the fit improves as history grows.
        60
    }
    fn update(&mut self, minute: u64, value: f64) {
        self.history.push_back((minute, value));
        if self.history.len() > self.window {
            self.history.pop_front();
        }
        self.seen += 1;
        self.last_minute = minute;
        if self.seen.is_multiple_of(self.refit) || self.seen == self.min_history() {
            self.fit();
        }
        // Follow the level: an exponentially weighted residual.
        let residual = value - (self.mean + self.shape(minute));
        self.bias = 0.9 * self.bias + 0.1 * residual;
    }
    fn forecast(&self, h: usize) -> f64 {
        let m = self.last_minute + h as u64;
        (self.mean + self.shape(m) + self.bias).max(0.0)
    }
    fn seen(&self) -> usize {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daily(m: u64) -> f64 {
        100.0 + 50.0 * (2.0 * std::f64::consts::PI * (m % 1440) as f64 / 1440.0).sin()
    }

    #[test]
    fn seasonal_methods_learn_a_daily_pattern() {
        let mut hw = HoltWinters::new(DAY, 0.3, 0.001, 0.2);
        let mut sn = SeasonalNaive::new(DAY);
        let mut hd = HarmonicDaily::new(4, 2 * DAY, 30);
        for m in 0..3 * 1440u64 {
            hw.update(m, daily(m));
            sn.update(m, daily(m));
            hd.update(m, daily(m));
        }
        let next = 3 * 1440u64 + 9;
        for f in [&hw as &dyn Forecaster, &sn, &hd] {
            let got = f.forecast(10);
            assert!(
                (got - daily(next)).abs() < 3.0,
                "{}: {got} vs {}",
                f.name(),
                daily(next)
            );
        }
    }

    #[test]
    fn seasonal_naive_repeats_yesterday() {
        let mut sn = SeasonalNaive::new(4);
        for (m, v) in [1.0, 2.0, 3.0, 4.0, 5.0].iter().enumerate() {
            sn.update(m as u64, *v);
        }
        // Next minute (5) is one season after minute 1.
        assert_eq!(sn.forecast(1), 2.0);
        assert_eq!(sn.forecast(4), 5.0);
        assert_eq!(sn.forecast(5), 2.0);
    }
}
