//! The running agent: shared state, the persistence and forecasting loops,
//! start and stop. Cluster loops (`k8s`) and the tuning loop are started
//! beside it by whoever runs it (`main.rs`, the lab); [`crate::app::serve`]
//! serves it.

use crate::app::forecasting::Forecasting;
use crate::app::learning::Learning;
use crate::app::locked;
use crate::app::metrics::{AgentMetrics, ChainCollector};
use crate::config::{AgentConfig, ChainSpec, DeclaredChains};
use crate::data::aggregate::ChainAgg;
use crate::data::decisions::{Change, Decision, DecisionLog, DecisionMode, DecisionQuery};
use crate::data::state::ChainState;
use crate::data::store::{Store, StoreError};
use crate::plan::assurance::{Assurance, Breach, Verdict};
use meshtune_filter_core::control::Policy;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::app::forecasting::FORECAST_HORIZONS;

/// How often the policy is recomputed.
pub const POLICY_REFRESH_MS: u64 = 5_000;

/// State shared by the HTTP handlers and the background tasks.
pub struct Agent {
    pub config: AgentConfig,
    pub metrics: AgentMetrics,
    registry: Registry,
    store: Store,
    state: Arc<Mutex<ChainState>>,
    forecasting: Forecasting,
    /// Chains declared as ChainSLO objects (merged with the config's),
    /// shared with the metrics collector.
    declared: Arc<Mutex<DeclaredChains>>,
    /// The policy last computed and when (Unix ms); recomputed at most every
    /// few seconds, not per report.
    policy: Mutex<Option<(Policy, u64)>>,
    /// What the tuning loop last decided (served on `/v1/recommendations`).
    tuning: Mutex<serde_json::Value>,
    /// The configuration model and what the agent learns on the job.
    pub learning: Learning,
    /// Every change made or recommended, with its measured effect.
    decisions: Mutex<DecisionLog>,
    /// Counts each chain's breached windows in a row.
    assurance: Mutex<Assurance>,
    /// Wakes the tuning loop for a round now (the assurance loop).
    pub replan: tokio::sync::Notify,
    /// The policy's fields as last logged in the decision log.
    policy_logged: Mutex<BTreeMap<(String, String), serde_json::Value>>,
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
        let from = (now_secs / 60).saturating_sub(crate::data::state::MEMORY_MINUTES);
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
        let learning = Learning::open(config.config_model.clone(), &store, &metrics, now_secs);
        let decisions = match store.decisions() {
            Ok(stored) => DecisionLog::restore(stored.iter().filter_map(|b| {
                let d = serde_json::from_slice::<Decision>(b).ok();
                if d.is_none() {
                    metrics.store_entries_skipped.inc();
                }
                d
            })),
            Err(e) => {
                tracing::error!("reading the decision log: {e}");
                DecisionLog::default()
            }
        };
        let state = Arc::new(Mutex::new(state));
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
        let forecasting = Forecasting::new(gru);
        let declared = Arc::new(Mutex::new(DeclaredChains::default()));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry.register_collector(Box::new(ChainCollector {
            forecasts: forecasting.shared(),
            state: state.clone(),
            configured: config.chains.clone(),
            declared: declared.clone(),
            window_secs: config.window.as_secs(),
        }));
        metrics.ready.set(1);
        let assurance = Assurance::new(
            config.kubernetes.replan_after_breached_windows,
            config.window.as_secs(),
        );
        Ok(Arc::new(Agent {
            config,
            metrics,
            registry,
            store,
            state,
            forecasting,
            declared,
            policy: Mutex::new(None),
            tuning: Mutex::new(serde_json::Value::Null),
            learning,
            decisions: Mutex::new(decisions),
            assurance: Mutex::new(assurance),
            replan: tokio::sync::Notify::new(),
            policy_logged: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ChainState> {
        locked(&self.state)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The chains' aggregates over the configured window, and the seconds
    /// it covers.
    pub fn window(&self, now_s: u64) -> (BTreeMap<String, ChainAgg>, f64) {
        self.lock().window(now_s, self.config.window.as_secs())
    }

    /// The assurance loop's turn (once a minute of the agent's clock):
    /// judges the chains' last window; each chain breached for
    /// `kubernetes.replan_after_breached_windows` windows in a row gets a
    /// `replanned` decision-log entry, and the tuning loop runs a round now.
    pub fn assure(&self, now_s: u64) -> Vec<Breach> {
        let specs = self.chains();
        let views = self
            .lock()
            .views(&specs, now_s, self.config.window.as_secs());
        let verdicts: BTreeMap<String, Verdict> = views
            .iter()
            .filter_map(|v| {
                let verdict = Verdict {
                    attainment: v.stats.slo_attainment?,
                    percentile: v.slo_percentile?,
                };
                Some((v.chain.clone(), verdict))
            })
            .collect();
        let breaches = locked(&self.assurance).judge(now_s, &verdicts);
        // Decisions about a chain (policy, re-plans) are measured here,
        // once a window has passed since each, on the views just read.
        let attainment: BTreeMap<String, f64> = views
            .iter()
            .filter_map(|v| Some((format!("chain {}", v.chain), v.stats.slo_attainment?)))
            .collect();
        if breaches.is_empty() {
            self.log_decisions(Vec::new(), DecisionMode::Applied, now_s, &attainment);
            return breaches;
        }
        let changes = breaches
            .iter()
            .map(|b| {
                let seen: Vec<String> = b
                    .attainment
                    .iter()
                    .map(|a| format!("{:.2} %", a * 100.0))
                    .collect();
                Change {
                    object: format!("chain {}", b.chain),
                    host: format!("chain {}", b.chain),
                    field: "objective".into(),
                    old: serde_json::json!({"attainment": b.attainment}),
                    new: serde_json::json!({"replanned_at_s": now_s}),
                    reason: format!(
                        "{} windows in a row below the p{p} objective ({p} % of requests good needed; seen {}): the tuning round runs now instead of at its interval",
                        b.windows,
                        seen.join(", "),
                        p = b.percentile,
                    ),
                    predicted: "the configuration re-planned on the breached windows brings the chain back within its objective".into(),
                }
            })
            .collect();
        for b in &breaches {
            tracing::warn!(chain = %b.chain, windows = b.windows, "objective breached; re-planning now");
        }
        self.log_decisions(changes, DecisionMode::Replanned, now_s, &attainment);
        self.metrics.replans.inc_by(breaches.len() as u64);
        self.replan.notify_one();
        breaches
    }

    /// Logs `changes` (those not logged already), measures the decisions an
    /// evaluation period (the window) old, and stores both.
    pub fn log_decisions(
        &self,
        changes: Vec<Change>,
        mode: DecisionMode,
        now_s: u64,
        attainment: &BTreeMap<String, f64>,
    ) -> Vec<Decision> {
        let (new, measured, keep_from) = {
            let mut log = locked(&self.decisions);
            let new = log.record(changes, mode, now_s, attainment);
            let measured = log.measure(now_s, self.config.window.as_secs(), attainment);
            (new, measured, log.oldest_id())
        };
        for d in &new {
            self.metrics
                .decisions
                .get_or_create(&crate::app::metrics::ModeLabel {
                    mode: d.mode.as_str().to_owned(),
                })
                .inc();
        }
        for d in &measured {
            if let Some(m) = &d.measured {
                self.metrics
                    .decisions_measured
                    .get_or_create(&crate::app::metrics::OutcomeLabel {
                        outcome: m.effect.clone(),
                    })
                    .inc();
            }
        }
        let items: Vec<(u64, Vec<u8>)> = new
            .iter()
            .chain(&measured)
            .filter_map(|d| Some((d.id, serde_json::to_vec(d).ok()?)))
            .collect();
        if !items.is_empty() {
            if let Err(e) = self.store.put_decisions(&items, keep_from) {
                self.metrics.store_errors.inc();
                tracing::error!("storing the decision log: {e}");
            }
        }
        new
    }

    /// The decisions `q` asks for: how many match, and the page.
    pub fn decisions(&self, q: &DecisionQuery) -> Result<(usize, Vec<Decision>), String> {
        locked(&self.decisions).query(q)
    }

    /// Each service's replicas over the configured window.
    pub fn replicas(
        &self,
        now_s: u64,
    ) -> BTreeMap<String, BTreeMap<String, crate::data::state::ReplicaCounts>> {
        self.lock().replicas(now_s, self.config.window.as_secs())
    }

    /// How many replicas each service has had lately, silent ones included.
    pub fn replicas_known(&self, now_s: u64) -> BTreeMap<String, usize> {
        self.lock().replicas_known(now_s)
    }

    pub fn refresh_forecasts(&self, now_s: u64) {
        self.forecasting.refresh(&self.state, &self.store, now_s);
    }

    pub fn forecasts(&self) -> BTreeMap<String, crate::forecast::ChainForecast> {
        self.forecasting.latest()
    }

    /// Sets one chain's forecast (as a refresh would; for tests and replays).
    pub fn insert_forecast(&self, chain: &str, f: crate::forecast::ChainForecast) {
        self.forecasting.insert(chain, f);
    }

    /// Each chain's forecast requests/s at the longest horizon.
    pub fn forecast_at_longest_horizon(&self) -> BTreeMap<String, f64> {
        self.forecasting.at_longest_horizon()
    }

    /// Each chain's upper forecast up to the longest horizon, requests/s
    /// (what resources are sized for).
    pub fn forecast_upper(&self) -> BTreeMap<String, f64> {
        self.forecasting.upper_over_horizons()
    }

    /// Replaces the chains declared as ChainSLO objects.
    pub fn set_declared(&self, d: DeclaredChains) {
        *locked(&self.declared) = d;
    }

    /// The chains with objectives: the configuration's, and those declared
    /// as ChainSLO objects (the configuration wins on a name clash).
    pub fn chains(&self) -> BTreeMap<String, ChainSpec> {
        crate::config::chains_of(&self.config.chains, &locked(&self.declared))
    }

    /// What the tuning loop last decided.
    pub fn tuning_report(&self) -> serde_json::Value {
        locked(&self.tuning).clone()
    }

    pub fn set_tuning_report(&self, report: serde_json::Value) {
        *locked(&self.tuning) = report;
    }

    /// The policy for the filters, recomputed from the window when older
    /// than [`POLICY_REFRESH_MS`]; `None` when policies are switched off.
    pub fn current_policy(&self, now_ms: u64) -> Option<Policy> {
        if !self.config.policy.enabled {
            return None;
        }
        let mut cached = locked(&self.policy);
        if let Some((p, at)) = cached.as_ref() {
            if now_ms < at + POLICY_REFRESH_MS {
                return Some(p.clone());
            }
        }
        let (window, _) = self.window(now_ms / 1000);
        // Versions follow the clock so they keep growing across restarts.
        let version = cached
            .as_ref()
            .map_or(now_ms, |(p, _)| now_ms.max(p.version + 1));
        let mut p =
            crate::plan::policy::compute(&self.chains(), &window, &self.config.policy, version);
        p.load_growth = crate::plan::policy::load_growth(
            &window,
            // Per wall second, as the forecast is (`crate::clock`).
            crate::clock::wall_seconds(self.config.window.as_secs_f64()),
            &self.forecast_at_longest_horizon(),
        );
        p.rules = locked(&self.declared).rules.clone();
        self.metrics.policy_version.set(version as i64);
        self.metrics.policy_load_growth.clear();
        for (service, g) in &p.load_growth {
            self.metrics
                .policy_load_growth
                .get_or_create(&crate::app::metrics::ServiceLabel {
                    service: service.clone(),
                })
                .set(*g);
        }
        *cached = Some((p.clone(), now_ms));
        drop(cached);
        // What moved since last logged goes into the decision log, judged
        // later by the chain's attainment.
        let changes = {
            let mut logged = locked(&self.policy_logged);
            let changes = crate::plan::policy::policy_changes(&logged, &p);
            for c in &changes {
                let key = (c.object.clone(), c.field.clone());
                if c.new.is_null() {
                    logged.remove(&key);
                } else {
                    logged.insert(key, c.new.clone());
                }
            }
            changes
        };
        if !changes.is_empty() {
            let attainment = self.chain_attainment(&window);
            self.log_decisions(changes, DecisionMode::Applied, now_ms / 1000, &attainment);
        }
        Some(p)
    }

    /// Each chain's attainment over `window`, keyed `chain NAME` (how
    /// decisions about a chain name what judges them).
    fn chain_attainment(&self, window: &BTreeMap<String, ChainAgg>) -> BTreeMap<String, f64> {
        self.chains()
            .iter()
            .filter_map(|(name, spec)| {
                let a = window.get(name)?.end_to_end.attainment(spec.slo_ms)?;
                Some((format!("chain {name}"), a))
            })
            .collect()
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
}
