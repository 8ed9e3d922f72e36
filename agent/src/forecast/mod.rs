//! Load forecasting per chain: online forecasters updated one step (one
//! minute) at a time, and a selector that picks, per horizon, the method
//! with the lowest recent error. Time is passed in as the minute index of
//! each observation (minutes since the Unix epoch), never read here.
//!
//! Methods: last value (`naive`), `seasonal_naive` (same minute one day
//! earlier), `seasonal_naive_1h` (one hour earlier, for histories shorter
//! than a day), additive `holt_winters` with a daily season, `harmonic`:
//! daily harmonics fitted on recent history, `fft`: the periodogram's
//! strongest periods carried forward, in the style of Crane's DSP predictor
//! but useful after an hour rather than 48, and `gru` when a model is loaded.

pub mod eval;
pub mod gru;
pub mod gru_plan;
mod methods;
mod periodogram;

pub use methods::{HarmonicDaily, HoltWinters, Naive, SeasonalNaive};
pub use periodogram::Periodogram;

/// Minutes in the daily season.
pub const DAY: usize = 1440;

/// A forecaster fed one observation per minute.
pub trait Forecaster: Send {
    fn name(&self) -> &'static str;
    /// Observations needed before its forecasts mean anything.
    fn min_history(&self) -> usize;
    /// Adds the observation of minute `minute`. Gaps and NaN are the
    /// caller's to fill (see [`clean`]).
    fn update(&mut self, minute: u64, value: f64);
    /// The value expected `h` minutes after the last update (h ≥ 1).
    fn forecast(&self, h: usize) -> f64;
    /// Observations seen so far.
    fn seen(&self) -> usize;
    /// The GRU, whose runs are batched across chains.
    fn as_gru(&self) -> Option<&gru::Gru> {
        None
    }
}

/// Replaces NaN, infinities and negative counts with the previous good
/// value (or 0), so a gap or a bad sample never poisons a model.
pub fn clean(values: &[f64]) -> Vec<f64> {
    let mut last = 0.0;
    values
        .iter()
        .map(|v| {
            if v.is_finite() && *v >= 0.0 {
                last = *v;
            }
            last
        })
        .collect()
}

/// All methods, in the order the selector falls back through them before
/// any has a track record: the most informed one with enough history.
pub fn all_methods(model: Option<std::sync::Arc<gru::GruModel>>) -> Vec<Box<dyn Forecaster>> {
    let mut all: Vec<Box<dyn Forecaster>> = Vec::new();
    if let Some(m) = model {
        all.push(Box::new(gru::Gru::new(m)));
    }
    all.push(Box::new(HoltWinters::new(DAY, 0.3, 0.001, 0.2)));
    all.push(Box::new(HarmonicDaily::new(4, 2 * DAY, 30)));
    all.push(Box::new(Periodogram::new(2 * DAY, 30, 8)));
    all.push(Box::new(SeasonalNaive::new(DAY)));
    all.push(Box::new(SeasonalNaive::new(60)));
    all.push(Box::new(Naive::default()));
    all
}

/// Recent misses of one method at one horizon.
#[derive(Debug, Clone, Default)]
struct Track {
    /// Forecasts waiting for their actual value: (target minute, value).
    pending: std::collections::VecDeque<(u64, f64)>,
    /// Actual − forecast (positive: the forecast fell short).
    misses: std::collections::VecDeque<f64>,
}

/// The share of minutes the upper forecast ([`Selector::upper`]) is
/// meant to cover.
pub const UPPER_SHARE: f64 = 0.9;
/// Scored forecasts a method needs at a horizon before its misses give an
/// upper forecast there.
pub const MIN_UPPER_MISSES: usize = 5;

/// Picks, per horizon, the method with the lowest mean absolute error over
/// its last `window` scored forecasts; before any method has `window`
/// scores it falls back to the first method (in [`all_methods`] order) with
/// enough history, and says so.
pub struct Selector {
    methods: Vec<Box<dyn Forecaster>>,
    horizons: Vec<usize>,
    /// tracks[method][horizon]
    tracks: Vec<Vec<Track>>,
    window: usize,
    last_minute: Option<u64>,
}

/// Why the selector chose a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Lowest recent error.
    Backtest,
    /// Not enough scored forecasts yet: the fallback order decided.
    Fallback,
}

impl Selector {
    pub fn new(horizons: &[usize], window: usize) -> Self {
        Self::with_model(horizons, window, None)
    }

    /// With the GRU among the methods when a model is given.
    pub fn with_model(
        horizons: &[usize],
        window: usize,
        model: Option<std::sync::Arc<gru::GruModel>>,
    ) -> Self {
        let methods = all_methods(model);
        let tracks = methods
            .iter()
            .map(|_| horizons.iter().map(|_| Track::default()).collect())
            .collect();
        Selector {
            methods,
            horizons: horizons.to_vec(),
            tracks,
            window: window.max(1),
            last_minute: None,
        }
    }

    pub fn method_names(&self) -> Vec<&'static str> {
        self.methods.iter().map(|m| m.name()).collect()
    }

    /// Feeds minute `minute`'s value: scores the forecasts that targeted
    /// it, updates every method, and records their new forecasts.
    pub fn update(&mut self, minute: u64, value: f64) {
        self.observe(minute, value);
        self.record(minute);
    }

    /// The GRU among the methods, if any (to batch its runs, see
    /// [`gru::run_pending`] between [`Selector::observe`] and
    /// [`Selector::record`]).
    pub fn gru(&self) -> Option<&gru::Gru> {
        self.methods.iter().find_map(|m| m.as_gru())
    }

    /// The first half of [`Selector::update`]: scores the forecasts that
    /// targeted `minute` and updates every method.
    pub fn observe(&mut self, minute: u64, value: f64) {
        self.last_minute = Some(minute);
        for (m, method) in self.methods.iter_mut().enumerate() {
            for (k, _) in self.horizons.iter().enumerate() {
                let t = &mut self.tracks[m][k];
                while t.pending.front().is_some_and(|(at, _)| *at <= minute) {
                    if let Some((at, f)) = t.pending.pop_front() {
                        if at == minute {
                            t.misses.push_back(value - f);
                            if t.misses.len() > self.window {
                                t.misses.pop_front();
                            }
                        }
                    }
                }
            }
            method.update(minute, value);
        }
    }

    /// The second half of [`Selector::update`]: records every method's new
    /// forecasts, to be scored when their minutes come.
    pub fn record(&mut self, minute: u64) {
        for (m, method) in self.methods.iter().enumerate() {
            if method.seen() >= method.min_history() {
                for (k, h) in self.horizons.iter().enumerate() {
                    let f = method.forecast(*h);
                    self.tracks[m][k].pending.push_back((minute + *h as u64, f));
                }
            }
        }
    }

    /// The method chosen at horizon index `k` (its index) and why.
    fn chosen(&self, k: usize) -> Option<(usize, Choice)> {
        self.horizons.get(k)?;
        let scored = self
            .methods
            .iter()
            .enumerate()
            .filter(|(m, method)| {
                method.seen() >= method.min_history()
                    && self.tracks[*m][k].misses.len() >= self.window
            })
            .map(|(m, _)| {
                let e = &self.tracks[m][k].misses;
                (e.iter().map(|x| x.abs()).sum::<f64>() / e.len() as f64, m)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, m)) = scored {
            return Some((m, Choice::Backtest));
        }
        let m = self
            .methods
            .iter()
            .position(|m| m.seen() >= m.min_history() && m.seen() > 0)?;
        Some((m, Choice::Fallback))
    }

    /// The chosen method's forecast at horizon index `k`, its name and why.
    pub fn forecast(&self, k: usize) -> Option<(f64, &'static str, Choice)> {
        let h = *self.horizons.get(k)?;
        let (m, why) = self.chosen(k)?;
        let method = &self.methods[m];
        Some((method.forecast(h), method.name(), why))
    }

    /// An upper forecast at horizon index `k`: the chosen method's forecast
    /// plus the `share` quantile of its recent misses there (how far the
    /// actual minutes came above its forecasts; split conformal prediction,
    /// no distribution assumed), never below the forecast. `None` before
    /// the method has [`MIN_UPPER_MISSES`] scored forecasts at `k`.
    pub fn upper(&self, k: usize, share: f64) -> Option<f64> {
        let h = *self.horizons.get(k)?;
        let (m, _) = self.chosen(k)?;
        let misses = &self.tracks[m][k].misses;
        if misses.len() < MIN_UPPER_MISSES {
            return None;
        }
        let mut v: Vec<f64> = misses.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        // The ⌈share × (n + 1)⌉-th smallest, the conformal rank (the
        // largest when there are too few for it).
        let rank =
            ((share.clamp(0.0, 1.0) * (v.len() + 1) as f64).ceil() as usize).clamp(1, v.len());
        let forecast = self.methods[m].forecast(h);
        Some(forecast + v[rank - 1].max(0.0))
    }

    pub fn horizons(&self) -> &[usize] {
        &self.horizons
    }

    /// The forecast at every horizon, as the agent serves it.
    pub fn chain_forecast(&self) -> Option<ChainForecast> {
        let mut out = std::collections::BTreeMap::new();
        let mut upper = std::collections::BTreeMap::new();
        let mut chosen = ("naive", Choice::Fallback);
        for (k, h) in self.horizons.iter().enumerate() {
            let (f, name, why) = self.forecast(k)?;
            out.insert(*h, f);
            if let Some(u) = self.upper(k, UPPER_SHARE) {
                upper.insert(*h, u);
            }
            chosen = (name, why);
        }
        Some(ChainForecast {
            method: chosen.0,
            basis: if chosen.1 == Choice::Backtest {
                "backtest"
            } else {
                "fallback"
            },
            history_minutes: self.methods.last().map_or(0, |m| m.seen()),
            rps: out,
            upper_rps: upper,
        })
    }

    /// The minute last fed, if any.
    pub fn last_minute(&self) -> Option<u64> {
        self.last_minute
    }

    /// Every method's own forecast at horizon `h` (`None` before it has
    /// enough history), for evaluation.
    pub fn method_forecasts(&self, h: usize) -> Vec<(&'static str, Option<f64>)> {
        self.methods
            .iter()
            .map(|m| {
                (
                    m.name(),
                    (m.seen() >= m.min_history()).then(|| m.forecast(h)),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_fills_gaps_and_bad_values() {
        assert_eq!(
            clean(&[f64::NAN, 3.0, f64::INFINITY, -1.0, 5.0]),
            vec![0.0, 3.0, 3.0, 3.0, 5.0]
        );
    }

    #[test]
    fn the_selector_falls_back_then_picks_by_backtest() {
        let mut s = Selector::new(&[1, 10], 30);
        assert!(s.forecast(0).is_none(), "no data, no forecast");
        s.update(0, 5.0);
        let (_, name, why) = s.forecast(0).unwrap_or((0.0, "", Choice::Backtest));
        assert_eq!((name, why), ("naive", Choice::Fallback));
        // An hourly square wave: the hourly seasonal naive repeats it
        // exactly, the last value misses every edge and the harmonic and
        // FFT fits round the corners. After enough scored forecasts the
        // backtest picks the hourly season, and its forecast is exact.
        let wave = |m: u64| if m % 60 < 30 { 10.0 } else { 50.0 };
        for m in 1..400u64 {
            s.update(m, wave(m));
        }
        let (f, name, why) = s.forecast(1).unwrap_or((0.0, "", Choice::Fallback));
        assert_eq!((name, why), ("seasonal_naive_1h", Choice::Backtest));
        assert_eq!(f, wave(399 + 10), "ten minutes ahead");
    }

    #[test]
    fn the_upper_forecast_covers_the_misses_of_the_last_minutes() {
        let mut s = Selector::new(&[1], 30);
        // Level 10 with every fifth minute a burst of 40: the last value
        // (the fallback before 30 scores) misses each burst by 30.
        for m in 0..4u64 {
            s.update(m, 10.0);
        }
        assert_eq!(s.upper(0, UPPER_SHARE), None, "too few scored forecasts");
        for m in 4..29u64 {
            s.update(m, if m % 5 == 0 { 40.0 } else { 10.0 });
        }
        let (f, _, _) = s.forecast(0).unwrap_or((f64::NAN, "", Choice::Fallback));
        let u = s.upper(0, UPPER_SHARE).unwrap_or(f64::NAN);
        assert!((f - 10.0).abs() < 1e-9, "{f}");
        // A fifth of the minutes came 30 above: the 90 % upper covers them.
        assert!((u - 40.0).abs() < 1e-9, "{u}");
        // Asking for less than the bursts' share does not.
        assert!(s.upper(0, 0.5).unwrap_or(f64::NAN) <= f + 1e-9);
        let c = s.chain_forecast().unwrap_or_else(|| unreachable!());
        assert_eq!(c.upper_rps.get(&1), Some(&u));
        assert_eq!(c.upper_over_horizons(), Some(u));
    }

    #[test]
    fn zero_traffic_and_level_shifts_stay_finite() {
        let mut s = Selector::new(&[1, 5, 10], 20);
        for m in 0..3000u64 {
            let v = if m < 1000 {
                0.0
            } else if m < 2000 {
                100.0
            } else {
                5.0
            };
            s.update(m, v);
            for k in 0..3 {
                if let Some((f, _, _)) = s.forecast(k) {
                    assert!(f.is_finite() && f >= 0.0, "minute {m}: {f}");
                }
            }
        }
        // A thousand minutes after the shift down, every horizon's chosen
        // forecast is the new level.
        for k in 0..3 {
            let (f, _, _) = s.forecast(k).unwrap_or((f64::NAN, "", Choice::Fallback));
            assert!((f - 5.0).abs() < 0.05, "horizon {k}: {f}");
        }
    }
}

/// The forecast of one chain, as the agent serves and exports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChainForecast {
    /// The method chosen at the longest horizon.
    pub method: &'static str,
    /// `backtest` (lowest recent error) or `fallback` (not enough history yet).
    pub basis: &'static str,
    /// Minutes of history the forecast was made from.
    pub history_minutes: usize,
    /// Expected requests per second, by horizon in minutes.
    pub rps: std::collections::BTreeMap<usize, f64>,
    /// Requests per second the actual minute stays under with
    /// [`UPPER_SHARE`] of the time, by horizon (the forecast plus that
    /// quantile of its recent misses; a horizon appears once its method
    /// has [`MIN_UPPER_MISSES`] scored forecasts there).
    pub upper_rps: std::collections::BTreeMap<usize, f64>,
}

impl ChainForecast {
    /// The most requests per second the next minutes up to the longest
    /// horizon are planned to bring: the highest upper forecast, or
    /// forecast where no upper one exists yet, over the horizons.
    pub fn upper_over_horizons(&self) -> Option<f64> {
        self.rps
            .iter()
            .map(|(h, f)| self.upper_rps.get(h).copied().unwrap_or(*f).max(*f))
            .reduce(f64::max)
    }
}

/// Forecasts a chain from its per-minute request rates (oldest first,
/// `start_minute` the first one's minute index).
pub fn forecast_series(
    start_minute: u64,
    rps: &[f64],
    horizons: &[usize],
    model: Option<std::sync::Arc<gru::GruModel>>,
) -> Option<ChainForecast> {
    let mut sel = Selector::with_model(horizons, 30, model);
    for (i, v) in clean(rps).iter().enumerate() {
        sel.update(start_minute + i as u64, *v);
    }
    sel.chain_forecast()
}
