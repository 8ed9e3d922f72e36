//! The configuration model in the running agent: loaded at start (a file
//! that cannot be loaded is logged, counted, and the agent decides by its
//! rules), the agent's own rows recorded in the store, and refits on a
//! schedule that keep the better model (`learn::online`).

use crate::app::locked;
use crate::app::metrics::{AgentMetrics, OutcomeLabel};
use crate::config::ConfigModelSpec;
use crate::data::store::Store;
use crate::learn::config_model::{ConfigModel, Dataset};
use crate::learn::online::{refit, OwnRow, RefitParams, RefitReport};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub struct Learning {
    pub spec: ConfigModelSpec,
    model: Mutex<Option<Arc<ConfigModel>>>,
    /// Why there is no model (shown on `/v1/recommendations`).
    load_error: Option<String>,
    rows: Mutex<VecDeque<OwnRow>>,
    /// Agent clock (s) of the last refit and of the last row recorded.
    last_refit_s: Mutex<u64>,
    last_row_s: Mutex<u64>,
    last_refit: Mutex<Option<RefitReport>>,
}

impl Learning {
    /// Loads the model named by `spec.path` and the rows the store holds.
    pub fn open(spec: ConfigModelSpec, store: &Store, metrics: &AgentMetrics, now_s: u64) -> Self {
        let mut load_error = None;
        let model = match &spec.path {
            None => {
                tracing::info!("no configuration model configured: knobs are chosen by rules");
                None
            }
            Some(p) => match ConfigModel::load(p) {
                Ok(m) => {
                    tracing::info!(
                        rows = m.rows,
                        "configuration model loaded from {}: knobs are chosen by looking ahead",
                        p.display()
                    );
                    Some(Arc::new(m))
                }
                Err(e) => {
                    metrics.config_model_load_errors.inc();
                    tracing::error!(
                        "configuration model {} could not be loaded ({e}); knobs are chosen by rules",
                        p.display()
                    );
                    load_error = Some(format!("{}: {e}", p.display()));
                    None
                }
            },
        };
        metrics.config_model_in_use.set(i64::from(model.is_some()));
        let mut rows = VecDeque::new();
        match store.model_rows() {
            Ok(stored) => {
                for b in stored {
                    match serde_json::from_slice::<OwnRow>(&b) {
                        Ok(r) if r.is_valid() => rows.push_back(r),
                        _ => {
                            metrics.store_entries_skipped.inc();
                        }
                    }
                }
            }
            Err(e) => tracing::error!("reading the configuration model's rows: {e}"),
        }
        while rows.len() > spec.max_rows {
            rows.pop_front();
        }
        metrics.config_model_own_rows.set(rows.len() as i64);
        Learning {
            spec,
            model: Mutex::new(model),
            load_error,
            rows: Mutex::new(rows),
            last_refit_s: Mutex::new(now_s),
            last_row_s: Mutex::new(0),
            last_refit: Mutex::new(None),
        }
    }

    pub fn model(&self) -> Option<Arc<ConfigModel>> {
        locked(&self.model).clone()
    }

    /// Whether a window ending at `now_s` is new enough to record
    /// (windows of `window_s` do not overlap).
    pub fn due_row(&self, now_s: u64, window_s: u64) -> bool {
        let last = *locked(&self.last_row_s);
        last == 0 || now_s >= last + window_s
    }

    /// Records one window's rows, in memory and in the store.
    pub fn record(&self, rows: Vec<OwnRow>, now_s: u64, store: &Store, metrics: &AgentMetrics) {
        *locked(&self.last_row_s) = now_s;
        let rows: Vec<OwnRow> = rows.into_iter().filter(OwnRow::is_valid).collect();
        if rows.is_empty() {
            return;
        }
        let bytes: Vec<Vec<u8>> = rows
            .iter()
            .filter_map(|r| serde_json::to_vec(r).ok())
            .collect();
        if let Err(e) = store.append_model_rows(&bytes, self.spec.max_rows) {
            tracing::error!("storing the configuration model's rows: {e}");
        }
        let mut held = locked(&self.rows);
        held.extend(rows);
        while held.len() > self.spec.max_rows {
            held.pop_front();
        }
        metrics.config_model_own_rows.set(held.len() as i64);
    }

    pub fn own_rows(&self) -> Vec<OwnRow> {
        locked(&self.rows).iter().cloned().collect()
    }

    /// Refits when `refit_minutes` have passed since the last one, there is
    /// a model, a prior and enough rows; keeps the better model. Blocking
    /// (trains forests): run it off the async threads.
    pub fn maybe_refit(&self, now_s: u64, metrics: &AgentMetrics) -> Option<RefitReport> {
        let every = self.spec.refit_minutes * 60;
        if every == 0 || now_s < *locked(&self.last_refit_s) + every {
            return None;
        }
        *locked(&self.last_refit_s) = now_s;
        let in_use = self.model()?;
        let prior_path = self.spec.prior.as_ref()?;
        let own = self.own_rows();
        if own.len() <= self.spec.holdout {
            tracing::info!(
                rows = own.len(),
                "configuration model: too few own rows to refit yet (more than {} needed)",
                self.spec.holdout
            );
            return None;
        }
        let label = |o: &str| OutcomeLabel {
            outcome: o.to_owned(),
        };
        let prior = match Dataset::load(prior_path) {
            Ok(d) => d,
            Err(e) => {
                metrics
                    .config_model_refits
                    .get_or_create(&label("failed"))
                    .inc();
                tracing::error!(
                    "configuration model refit: the prior {}: {e}",
                    prior_path.display()
                );
                return None;
            }
        };
        let params = RefitParams {
            max_rows: self.spec.max_rows,
            holdout: self.spec.holdout,
            train: in_use.params,
        };
        match refit(&prior, &own, &in_use, &params) {
            Ok((new, report)) => {
                if let Some(m) = new {
                    *locked(&self.model) = Some(Arc::new(m));
                    metrics
                        .config_model_refits
                        .get_or_create(&label("replaced"))
                        .inc();
                } else {
                    metrics
                        .config_model_refits
                        .get_or_create(&label("kept"))
                        .inc();
                }
                tracing::info!(
                    replaced = report.replaced,
                    error_in_use = report.error_in_use,
                    error_refit = report.error_refit,
                    seconds = report.seconds,
                    "configuration model refit on {} prior and {} own rows",
                    report.prior_rows,
                    report.own_rows
                );
                *locked(&self.last_refit) = Some(report.clone());
                Some(report)
            }
            Err(e) => {
                metrics
                    .config_model_refits
                    .get_or_create(&label("failed"))
                    .inc();
                tracing::error!("configuration model refit: {e}");
                None
            }
        }
    }

    /// What `/v1/recommendations` says about the model itself.
    pub fn describe(&self) -> Value {
        json!({
            "in_use": self.model().is_some(),
            "path": self.spec.path,
            "error": self.load_error,
            "own_rows": locked(&self.rows).len(),
            "last_refit": *locked(&self.last_refit),
        })
    }
}
