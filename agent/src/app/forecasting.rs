//! Each chain's load forecast, refreshed every minute from its 1-minute
//! history: one selector per chain (methods chosen by backtest) and the
//! GRU run once per minute for every chain together (one batch).

use crate::app::locked;
use crate::data::state::ChainState;
use crate::data::store::Store;
use crate::forecast::gru::{Gru, GruModel};
use crate::forecast::{ChainForecast, Selector, DAY};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Forecast horizons in minutes.
pub const FORECAST_HORIZONS: [usize; 3] = [1, 5, 10];

pub struct Forecasting {
    gru: Option<Arc<GruModel>>,
    /// Each chain's forecasting state, fed one minute at a time.
    selectors: Mutex<BTreeMap<String, Selector>>,
    /// The latest forecast per chain (shared with the metrics collector).
    latest: Arc<Mutex<BTreeMap<String, ChainForecast>>>,
}

impl Forecasting {
    pub fn new(gru: Option<Arc<GruModel>>) -> Self {
        Forecasting {
            gru,
            selectors: Mutex::default(),
            latest: Arc::default(),
        }
    }

    /// The latest forecasts, shared (the metrics collector reads them).
    pub fn shared(&self) -> Arc<Mutex<BTreeMap<String, ChainForecast>>> {
        self.latest.clone()
    }

    pub fn latest(&self) -> BTreeMap<String, ChainForecast> {
        locked(&self.latest).clone()
    }

    /// Sets one chain's forecast (as a refresh would; for tests and replays).
    pub fn insert(&self, chain: &str, f: ChainForecast) {
        locked(&self.latest).insert(chain.to_owned(), f);
    }

    /// Each chain's forecast requests/s at the longest horizon.
    pub fn at_longest_horizon(&self) -> BTreeMap<String, f64> {
        locked(&self.latest)
            .iter()
            .filter_map(|(c, f)| Some((c.clone(), *f.rps.values().next_back()?)))
            .collect()
    }

    /// Each chain's upper forecast over the horizons (the most the next
    /// minutes up to the longest horizon are planned to bring).
    pub fn upper_over_horizons(&self) -> BTreeMap<String, f64> {
        locked(&self.latest)
            .iter()
            .filter_map(|(c, f)| Some((c.clone(), f.upper_over_horizons()?)))
            .collect()
    }

    /// Recomputes every chain's forecast from its 1-minute history (the
    /// last two days: memory for the recent minutes, the store before).
    /// Chains advance minute by minute together, so the GRU runs once per
    /// minute for all of them (one batch), not once per chain.
    pub fn refresh(&self, state: &Mutex<ChainState>, store: &Store, now_s: u64) {
        let now_min = now_s / 60;
        let chains: Vec<String> = locked(state).lifetime().keys().cloned().collect();
        let mut selectors = locked(&self.selectors);
        // Per chain: the requests of each minute still to feed, from `start`.
        let mut feeds: Vec<(String, u64, BTreeMap<u64, u64>)> = Vec::new();
        for chain in chains {
            // Each chain's selector is fed every complete minute once: a new
            // one replays the last two days, later refreshes only what came since.
            let last_fed = selectors.get(&chain).and_then(|s| s.last_minute());
            let from = match last_fed {
                Some(m) => m + 1,
                None => now_min.saturating_sub(2 * DAY as u64),
            };
            let mut per_min: BTreeMap<u64, u64> = BTreeMap::new();
            if let Ok(rows) = store.minutes(&chain, from, now_min) {
                per_min.extend(rows.into_iter().map(|(m, a)| (m, a.end_to_end.requests)));
            }
            // Minutes not yet persisted (and the complete in-memory ones) win.
            per_min.extend(
                locked(state)
                    .minutes(&chain, from, now_min)
                    .into_iter()
                    .map(|(m, a)| (m, a.end_to_end.requests)),
            );
            let start = match last_fed {
                Some(_) => from,
                // A new selector starts where the chain's history starts.
                None => match per_min.keys().next() {
                    Some(first) => {
                        selectors.insert(
                            chain.clone(),
                            Selector::with_model(&FORECAST_HORIZONS, 30, self.gru.clone()),
                        );
                        *first
                    }
                    None => continue,
                },
            };
            feeds.push((chain, start, per_min));
        }
        // Requests per wall second: a minute of the agent's clock may pass
        // faster than a wall minute (trace time, `crate::clock`).
        let minute_s = crate::clock::wall_seconds(60.0);
        let first = feeds.iter().map(|f| f.1).min().unwrap_or(now_min);
        for m in first..now_min {
            let due: Vec<&(String, u64, _)> = feeds.iter().filter(|f| f.1 <= m).collect();
            // A minute without reports had no traffic: zero, not a gap.
            for (chain, _, per_min) in &due {
                if let Some(sel) = selectors.get_mut(chain) {
                    sel.observe(m, per_min.get(&m).copied().unwrap_or(0) as f64 / minute_s);
                }
            }
            if let Some(model) = &self.gru {
                let grus: Vec<&Gru> = due
                    .iter()
                    .filter_map(|(c, _, _)| selectors.get(c).and_then(|s| s.gru()))
                    .collect();
                crate::forecast::gru::run_pending(model, &grus);
            }
            for (chain, _, _) in &due {
                if let Some(sel) = selectors.get_mut(chain) {
                    sel.record(m);
                }
            }
        }
        let out: BTreeMap<_, _> = selectors
            .iter()
            .filter_map(|(c, s)| Some((c.clone(), s.chain_forecast()?)))
            .collect();
        *locked(&self.latest) = out;
    }
}
