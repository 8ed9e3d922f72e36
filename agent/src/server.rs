//! The running agent: shared state, the persistence loop, start and stop.

use crate::config::AgentConfig;
use crate::metrics::{AgentMetrics, ChainCollector};
use crate::state::ChainState;
use crate::store::{Store, StoreError};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Forecast horizons in minutes.
pub const FORECAST_HORIZONS: [usize; 3] = [1, 5, 10];

/// How often the policy is recomputed.
pub const POLICY_REFRESH_MS: u64 = 5_000;

/// State shared by the HTTP handlers and the background tasks.
pub struct Agent {
    /// The GRU forecaster's model, when configured and loadable.
    pub gru: Option<Arc<crate::forecast::gru::GruModel>>,
    /// Each chain's forecasting state, fed one minute at a time.
    pub selectors: Mutex<std::collections::BTreeMap<String, crate::forecast::Selector>>,
    /// The latest load forecast per chain (refreshed every minute).
    pub forecasts: Arc<Mutex<std::collections::BTreeMap<String, crate::forecast::ChainForecast>>>,
    /// Entry rules of the ChainSLO objects, sent to the filters in the policy.
    pub declared_rules: Mutex<Vec<meshtune_filter_core::rules::ChainRule>>,
    /// Chains declared as ChainSLO objects (merged with the config's).
    pub declared_chains: Mutex<std::collections::BTreeMap<String, crate::config::ChainSpec>>,
    /// DestinationRules the writer would apply (recommend mode), by `namespace/name`.
    pub recommendations: Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The policy last computed and when (Unix ms); recomputed at most every
    /// few seconds, not per report.
    pub policy: Mutex<Option<(meshtune_filter_core::control::Policy, u64)>>,
    pub config: AgentConfig,
    pub state: Arc<Mutex<ChainState>>,
    pub metrics: AgentMetrics,
    pub registry: Registry,
    pub store: Store,
}

impl Agent {
    /// Opens the store, restores history and registers metrics.
    pub fn open(config: AgentConfig, now_secs: u64) -> Result<Arc<Agent>, StoreError> {
        let metrics = AgentMetrics::default();
        let (store, opened) = Store::open(&config.data_dir, now_secs)?;
        if let Some((aside, why)) = &opened.moved_aside {
            metrics.store_recovered.inc();
            tracing::error!(
                store = %store.path().display(),
                moved_to = %aside.display(),
                "the history store could not be read ({why}); it was moved aside and a new one started"
            );
        }
        let mut state = ChainState::new(now_secs);
        let from = (now_secs / 60).saturating_sub(crate::state::MEMORY_MINUTES);
        match store.load(from) {
            Ok(loaded) => {
                if loaded.skipped > 0 {
                    metrics.store_entries_skipped.inc_by(loaded.skipped as u64);
                    tracing::warn!(
                        skipped = loaded.skipped,
                        "stored entries that could not be decoded were skipped"
                    );
                }
                tracing::info!(
                    chains = loaded.lifetime.len(),
                    minutes = loaded.minutes.len(),
                    vms = loaded.vms.len(),
                    "history restored from {}",
                    store.path().display()
                );
                state.restore(loaded.minutes, loaded.lifetime, loaded.vms);
            }
            Err(e) => {
                metrics.store_errors.inc();
                return Err(e);
            }
        }
        let state = Arc::new(Mutex::new(state));
        let forecasts = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(ChainCollector {
            forecasts: forecasts.clone(),
            state: state.clone(),
            slo_ms: config
                .chains
                .iter()
                .map(|(k, v)| (k.clone(), v.slo_ms))
                .collect(),
        }));
        metrics.ready.set(1);
        let gru =
            config.forecast_model.as_ref().and_then(
                |p| match crate::forecast::gru::GruModel::load(p) {
                    Ok(m) => {
                        tracing::info!("GRU forecaster loaded from {}", p.display());
                        Some(Arc::new(m))
                    }
                    Err(e) => {
                        tracing::error!(
                            "GRU model {} could not be loaded, forecasting without it: {e}",
                            p.display()
                        );
                        None
                    }
                },
            );
        Ok(Arc::new(Agent {
            declared_rules: Mutex::default(),
            selectors: Mutex::default(),
            gru,
            forecasts,
            declared_chains: Mutex::default(),
            recommendations: Mutex::default(),
            policy: Mutex::new(None),
            config,
            state,
            metrics,
            registry,
            store,
        }))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Recomputes every chain's forecast from its 1-minute history (the
    /// last two days: memory for the recent minutes, the store before).
    /// Chains advance minute by minute together, so the GRU runs once per
    /// minute for all of them (one batch), not once per chain.
    pub fn refresh_forecasts(&self, now_s: u64) {
        let now_min = now_s / 60;
        let chains: Vec<String> = self.lock().lifetime().keys().cloned().collect();
        let mut selectors = match self.selectors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Per chain: the requests/s of each minute still to feed, from `start`.
        let mut feeds: Vec<(String, u64, std::collections::BTreeMap<u64, u64>)> = Vec::new();
        for chain in chains {
            // Each chain's selector is fed every complete minute once: a new
            // one replays the last two days, later refreshes only what came since.
            let last_fed = selectors.get(&chain).and_then(|s| s.last_minute());
            let from = match last_fed {
                Some(m) => m + 1,
                None => now_min.saturating_sub(2 * crate::forecast::DAY as u64),
            };
            let mut per_min: std::collections::BTreeMap<u64, u64> =
                std::collections::BTreeMap::new();
            if let Ok(rows) = self.store.minutes(&chain, from, now_min) {
                per_min.extend(rows.into_iter().map(|(m, a)| (m, a.end_to_end.requests)));
            }
            // Minutes not yet persisted (and the complete in-memory ones) win.
            per_min.extend(
                self.lock()
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
                            crate::forecast::Selector::with_model(
                                &FORECAST_HORIZONS,
                                30,
                                self.gru.clone(),
                            ),
                        );
                        *first
                    }
                    None => continue,
                },
            };
            feeds.push((chain, start, per_min));
        }
        let first = feeds.iter().map(|f| f.1).min().unwrap_or(now_min);
        for m in first..now_min {
            let due: Vec<&(String, u64, _)> = feeds.iter().filter(|f| f.1 <= m).collect();
            // A minute without reports had no traffic: zero, not a gap.
            for (chain, _, per_min) in &due {
                if let Some(sel) = selectors.get_mut(chain) {
                    sel.observe(m, per_min.get(&m).copied().unwrap_or(0) as f64 / 60.0);
                }
            }
            if let Some(model) = &self.gru {
                let grus: Vec<&crate::forecast::gru::Gru> = due
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
        let out: std::collections::BTreeMap<_, _> = selectors
            .iter()
            .filter_map(|(c, s)| Some((c.clone(), s.chain_forecast()?)))
            .collect();
        match self.forecasts.lock() {
            Ok(mut g) => *g = out,
            Err(p) => *p.into_inner() = out,
        }
    }

    /// The chains with objectives: the configuration's, and those declared
    /// as ChainSLO objects (the configuration wins on a name clash).
    pub fn chains(&self) -> std::collections::BTreeMap<String, crate::config::ChainSpec> {
        let mut all = match self.declared_chains.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        all.extend(self.config.chains.clone());
        all
    }

    /// Each chain's forecast requests/s at the longest horizon.
    pub fn forecast_at_longest_horizon(&self) -> BTreeMap<String, f64> {
        let forecasts = match self.forecasts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        forecasts
            .iter()
            .filter_map(|(c, f)| Some((c.clone(), *f.rps.values().next_back()?)))
            .collect()
    }

    /// The policy for the filters, recomputed from the window when older
    /// than [`POLICY_REFRESH_MS`]; `None` when policies are switched off.
    pub fn current_policy(&self, now_ms: u64) -> Option<meshtune_filter_core::control::Policy> {
        if !self.config.policy.enabled {
            return None;
        }
        let mut cached = match self.policy.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((p, at)) = cached.as_ref() {
            if now_ms < at + POLICY_REFRESH_MS {
                return Some(p.clone());
            }
        }
        let (window, _) = self
            .lock()
            .window(now_ms / 1000, self.config.window.as_secs());
        // Versions follow the clock so they keep growing across restarts.
        let version = cached
            .as_ref()
            .map_or(now_ms, |(p, _)| now_ms.max(p.version + 1));
        let mut p = crate::policy::compute(&self.chains(), &window, &self.config.policy, version);
        p.load_growth = crate::policy::load_growth(
            &window,
            self.config.window.as_secs_f64(),
            &self.forecast_at_longest_horizon(),
        );
        p.rules = match self.declared_rules.lock() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        };
        self.metrics.policy_version.set(version as i64);
        self.metrics.policy_load_growth.clear();
        for (service, g) in &p.load_growth {
            self.metrics
                .policy_load_growth
                .get_or_create(&crate::metrics::ServiceLabel {
                    service: service.clone(),
                })
                .set(*g);
        }
        *cached = Some((p.clone(), now_ms));
        Some(p)
    }

    /// Writes what changed since the last call; on failure the changes stay
    /// pending for the next one.
    pub fn persist(&self, now_secs: u64, prune: bool) {
        let dirty = {
            let mut st = self.lock();
            st.expire(now_secs, self.config.window.as_secs());
            st.take_dirty()
        };
        let retain = prune.then(|| (now_secs.saturating_sub(self.config.retention.as_secs())) / 60);
        match self.store.persist(&dirty, retain) {
            Ok(()) => {
                self.metrics.store_persists.inc();
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!("persisting history failed, will retry: {e}");
                self.lock().mark_dirty_again(dirty);
            }
        }
    }

    /// Serves the API on `listener` until `shutdown` turns true, persisting
    /// every interval and once more on the way out.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let persister = {
            let agent = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(agent.config.persist_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    n += 1;
                    let a = agent.clone();
                    // Prune old minutes about every ten minutes of persists.
                    let prune =
                        n % (600 / agent.config.persist_interval.as_secs().max(1)).max(1) == 1;
                    let _ =
                        tokio::task::spawn_blocking(move || a.persist(crate::now_secs(), prune))
                            .await;
                }
            })
        };
        {
            let agent = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    let a = agent.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || a.refresh_forecasts(crate::now_secs()))
                            .await;
                }
            });
        }
        if self.config.kubernetes.enabled {
            let agent = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                match kube::Client::try_default().await {
                    Ok(client) => crate::k8s::controller::run(agent, client, stop).await,
                    Err(e) => tracing::error!(
                        "kubernetes integration is on but no cluster is reachable: {e}"
                    ),
                }
            });
        }
        let app = crate::api::router(self.clone());
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|v| *v).await;
            })
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), persister).await;
        let agent = self.clone();
        let _ = tokio::task::spawn_blocking(move || agent.persist(crate::now_secs(), false)).await;
        tracing::info!("history flushed; agent stopped");
        result
    }
}
