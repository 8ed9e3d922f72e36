//! The FFT periodogram forecaster, in the style of Crane's DSP predictor:
//! the recent history, its mean removed, is transformed with an FFT; the frequencies that carry the most power (the periodogram's
//! peaks) are kept and their sinusoids are carried into the future. Unlike
//! a fixed daily fit, it finds whatever periods the chain has (hourly
//! batch jobs, a 20-minute cycle, the day), and it is usable after an hour.

use super::{Forecaster, DAY};
use rustfft::num_complex::Complex;
use std::collections::VecDeque;

/// One sinusoid: frequency in cycles per minute, amplitude, phase at the
/// fit window's first minute.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Component {
    freq: f64,
    amplitude: f64,
    phase: f64,
}

#[derive(Debug)]
pub struct Periodogram {
    /// Most minutes kept and fitted.
    window: usize,
    /// Minutes between refits.
    refit: usize,
    /// At most this many sinusoids are kept...
    top: usize,
    /// ...each with at least this share of the detrended signal's power.
    min_power_share: f64,
    /// Share of the power the kept sinusoids must explain together.
    min_explained: f64,
    /// Periods shorter than this (minutes) are noise to a forecaster.
    min_period: f64,
    history: VecDeque<f64>,
    /// Minute of the fit window's first sample.
    fit_start: u64,
    /// Mean of the fit window.
    level: f64,
    components: Vec<Component>,
    /// Recent residual, so a level shift is followed before the next refit.
    bias: f64,
    seen: usize,
    last_minute: u64,
}

impl Periodogram {
    pub fn new(window: usize, refit: usize, top: usize) -> Self {
        Periodogram {
            window: window.max(2),
            refit: refit.max(1),
            top,
            min_power_share: 0.05,
            min_period: 10.0,
            min_explained: 0.3,
            history: VecDeque::new(),
            fit_start: 0,
            level: 0.0,
            components: Vec::new(),
            bias: 0.0,
            seen: 0,
            last_minute: 0,
        }
    }

    /// The periodic part at `minute`.
    fn periodic(&self, minute: u64) -> f64 {
        let t = minute.saturating_sub(self.fit_start) as f64;
        self.components
            .iter()
            .map(|c| c.amplitude * (2.0 * std::f64::consts::PI * c.freq * t + c.phase).cos())
            .sum()
    }

    fn fit(&mut self) {
        // Whole days when there are any, so a daily cycle falls exactly on
        // a frequency bin instead of leaking into its neighbours.
        let len = self.history.len();
        let n = if len >= DAY { len / DAY * DAY } else { len };
        if n < 4 {
            return;
        }
        let x: Vec<f64> = self.history.iter().skip(len - n).copied().collect();
        self.fit_start = self.last_minute + 1 - n as u64;
        // The mean only: a fitted line would take part of a whole-period
        // cycle for trend and bend the extrapolation; level shifts are
        // followed by the residual bias instead.
        let nf = n as f64;
        self.level = x.iter().sum::<f64>() / nf;
        let mut buf: Vec<Complex<f64>> = x
            .iter()
            .map(|v| Complex::new(v - self.level, 0.0))
            .collect();
        rustfft::FftPlanner::new()
            .plan_fft_forward(n)
            .process(&mut buf);
        // The periodogram over the positive frequencies, strongest first.
        // A period is believed only after two whole cycles (k ≥ 2): the
        // window's own length as a "period" would wrap its start onto its end.
        let mut bins: Vec<(usize, f64)> = (2..n.div_ceil(2))
            .filter(|k| nf / *k as f64 >= self.min_period)
            .map(|k| (k, buf[k].norm_sqr()))
            .collect();
        let total: f64 = bins.iter().map(|(_, p)| p).sum();
        bins.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.components = bins
            .into_iter()
            .take(self.top)
            .filter(|(_, p)| total > 0.0 && *p >= self.min_power_share * total)
            .map(|(k, _)| Component {
                freq: k as f64 / nf,
                amplitude: 2.0 * buf[k].norm() / nf,
                phase: buf[k].arg(),
            })
            .collect();
        // Periods that explain little of the signal are noise that happened
        // to line up: without a clear cycle, forecast the level alone.
        let explained: f64 = self
            .components
            .iter()
            .map(|c| (c.amplitude * nf / 2.0).powi(2))
            .sum();
        if total <= 0.0 || explained < self.min_explained * total {
            self.components.clear();
        }
        // Anchor on the recent level: the mean residual of the last
        // half hour (a trend or a shift inside the window is not periodic).
        let recent = n.min(30);
        self.bias = (n - recent..n)
            .map(|t| x[t] - (self.level + self.periodic(self.fit_start + t as u64)))
            .sum::<f64>()
            / recent as f64;
    }
}

impl Forecaster for Periodogram {
    fn name(&self) -> &'static str {
        "fft"
    }
    fn min_history(&self) -> usize {
        60
    }
    fn update(&mut self, minute: u64, value: f64) {
        self.history.push_back(value);
        if self.history.len() > self.window {
            self.history.pop_front();
        }
        self.seen += 1;
        self.last_minute = minute;
        if self.seen.is_multiple_of(self.refit) || self.seen == self.min_history() {
            self.fit();
        }
        let residual = value - (self.level + self.periodic(minute));
        self.bias = 0.8 * self.bias + 0.2 * residual;
    }
    fn forecast(&self, h: usize) -> f64 {
        let m = self.last_minute + h as u64;
        let f = self.level + self.periodic(m) + self.bias;
        if f.is_finite() {
            f.max(0.0)
        } else {
            0.0
        }
    }
    fn seen(&self) -> usize {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_period_that_is_not_daily_and_carries_it_forward() {
        // A 37-minute cycle on a level of 200, with some noise: after two
        // hours the forecaster knows the cycle.
        let f = |m: u64| 200.0 + 60.0 * (2.0 * std::f64::consts::PI * m as f64 / 37.0).sin();
        let mut p = Periodogram::new(2 * DAY, 30, 6);
        let mut noise = 1u64;
        for m in 0..(37 * 4) as u64 {
            noise = noise.wrapping_mul(6364136223846793005).wrapping_add(1);
            p.update(
                m,
                f(m) + ((noise >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 4.0,
            );
        }
        // Refit on exactly four cycles (148 minutes are seen: 150 is the next refit).
        p.fit();
        let last = 37 * 4 - 1;
        for h in [1usize, 5, 10, 20] {
            let want = f(last + h as u64);
            let got = p.forecast(h);
            assert!((got - want).abs() < 8.0, "h={h}: {got} vs {want}");
        }
        // The last value would be far off ten minutes on, at the crest.
        assert!((f(last + 10) - f(last)).abs() > 40.0);
    }

    #[test]
    fn a_daily_pattern_over_whole_days_is_exact() {
        let f =
            |m: u64| 100.0 + 50.0 * (2.0 * std::f64::consts::PI * (m % 1440) as f64 / 1440.0).sin();
        let mut p = Periodogram::new(2 * DAY, 30, 6);
        for m in 0..3 * DAY as u64 {
            p.update(m, f(m));
        }
        let last = 3 * DAY as u64 - 1;
        for h in [1usize, 10, 60] {
            assert!((p.forecast(h) - f(last + h as u64)).abs() < 1.0, "h={h}");
        }
    }

    #[test]
    fn flat_zero_and_bad_shapes_stay_finite() {
        let mut p = Periodogram::new(300, 30, 6);
        for m in 0..200u64 {
            p.update(m, 0.0);
            assert_eq!(p.forecast(10), 0.0);
        }
        for m in 200..400u64 {
            p.update(m, if m % 2 == 0 { 1e9 } else { 0.0 });
            let f = p.forecast(3);
            assert!(f.is_finite() && f >= 0.0, "{f}");
        }
    }
}
