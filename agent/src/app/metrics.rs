//! The agent's own Prometheus metrics. Counters about the agent are plain
//! prometheus-client metrics; per-chain series are encoded at scrape time
//! from the chain state, so a histogram of millions of requests costs one
//! pass over its sketch rather than one observation per request.

use crate::config::{ChainSpec, DeclaredChains};
use crate::data::state::ChainState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Counters and gauges about the agent itself.
#[derive(Debug, Default, Clone)]
pub struct AgentMetrics {
    pub reports_accepted: Counter,
    pub reports_duplicate: Counter,
    pub reports_rejected: Family<ReasonLabel, Counter>,
    pub records_dropped: Counter,
    pub store_persists: Counter,
    pub store_errors: Counter,
    pub store_recovered: Counter,
    pub store_entries_skipped: Counter,
    pub ready: Gauge,
    pub policy_version: Gauge,
    pub policy_load_growth: Family<ServiceLabel, FloatGauge>,
    pub leader: Gauge,
    pub dr_applies: Counter,
    pub dr_conflicts: Counter,
    pub dr_rollbacks: Counter,
    pub replans: Counter,
    pub dr_deferred: Counter,
    pub chainslo_invalid: Gauge,
    pub chainslo_watch_errors: Counter,
    pub user_owned_hosts: Gauge,
    pub opted_out_hosts: Gauge,
    pub objects_withdrawn: Counter,
    pub unknown_services: Gauge,
    pub config_model_in_use: Gauge,
    pub config_model_load_errors: Counter,
    pub config_model_decisions: Counter,
    pub config_model_own_rows: Gauge,
    pub config_model_refits: Family<OutcomeLabel, Counter>,
    pub decisions: Family<ModeLabel, Counter>,
    pub decisions_measured: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

impl AgentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "meshtune_reports_accepted",
            "Filter reports counted",
            self.reports_accepted.clone(),
        );
        registry.register(
            "meshtune_reports_duplicate",
            "Filter reports already counted (replayed or duplicated sequence numbers)",
            self.reports_duplicate.clone(),
        );
        registry.register(
            "meshtune_reports_rejected",
            "Filter reports rejected, by reason",
            self.reports_rejected.clone(),
        );
        registry.register(
            "meshtune_records_dropped",
            "Report records dropped because the agent's chain cap was reached",
            self.records_dropped.clone(),
        );
        registry.register(
            "meshtune_store_persists",
            "Successful writes of the history store",
            self.store_persists.clone(),
        );
        registry.register(
            "meshtune_store_errors",
            "Failed writes or reads of the history store",
            self.store_errors.clone(),
        );
        registry.register(
            "meshtune_store_recovered",
            "Unreadable stores moved aside at start-up",
            self.store_recovered.clone(),
        );
        registry.register(
            "meshtune_store_entries_skipped",
            "Stored entries that could not be decoded at start-up",
            self.store_entries_skipped.clone(),
        );
        registry.register(
            "meshtune_ready",
            "1 once the store is loaded and the agent serves",
            self.ready.clone(),
        );
        registry.register(
            "meshtune_policy_version",
            "Version of the policy last computed for the filters",
            self.policy_version.clone(),
        );
        registry.register(
            "meshtune_policy_load_growth",
            "Growth of each service's load the last policy expects from the forecast (forecast over the window's rate; services without are expected not to grow)",
            self.policy_load_growth.clone(),
        );
        registry.register(
            "meshtune_leader",
            "1 while this agent holds the leader Lease and may write",
            self.leader.clone(),
        );
        registry.register(
            "meshtune_destinationrule_applies",
            "Objects applied through the sink (DestinationRules and VirtualServices; server-side apply on a cluster)",
            self.dr_applies.clone(),
        );
        registry.register(
            "meshtune_destinationrule_conflicts",
            "Applies refused because another field manager owns a field",
            self.dr_conflicts.clone(),
        );
        registry.register(
            "meshtune_destinationrule_rollbacks",
            "Changes undone because SLO attainment fell after them",
            self.dr_rollbacks.clone(),
        );
        registry.register(
            "meshtune_replans",
            "Tuning rounds run at once because a chain's objective was breached for several windows in a row",
            self.replans.clone(),
        );
        registry.register(
            "meshtune_destinationrule_deferred",
            "Changes held back by the per-object change budget",
            self.dr_deferred.clone(),
        );
        registry.register(
            "meshtune_chainslo_invalid",
            "ChainSLO objects with a Valid=False condition",
            self.chainslo_invalid.clone(),
        );
        registry.register(
            "meshtune_chainslo_watch_errors",
            "Errors of the ChainSLO watch (it retries with backoff)",
            self.chainslo_watch_errors.clone(),
        );
        registry.register(
            "meshtune_user_owned_hosts",
            "Hosts meshtune would configure that a user's own DestinationRule or VirtualService covers: it writes nothing for them (see /v1/recommendations)",
            self.user_owned_hosts.clone(),
        );
        registry.register(
            "meshtune_opted_out_hosts",
            "Hosts whose Service, namespace or services entry says meshtune.io/manage: \"false\"",
            self.opted_out_hosts.clone(),
        );
        registry.register(
            "meshtune_objects_withdrawn",
            "meshtune's own objects removed because a user's object for the same host appeared",
            self.objects_withdrawn.clone(),
        );
        registry.register(
            "meshtune_unknown_services",
            "Services on a chain that the agent's services configuration does not list (nothing is written for them)",
            self.unknown_services.clone(),
        );
        registry.register(
            "meshtune_config_model_in_use",
            "1 when services' knobs are chosen with the configuration model; 0 when by rules (no model configured, or it could not be loaded: see the log)",
            self.config_model_in_use.clone(),
        );
        registry.register(
            "meshtune_config_model_load_errors",
            "Configuration model files refused (missing, corrupt or another format version); decisions fall back to rules",
            self.config_model_load_errors.clone(),
        );
        registry.register(
            "meshtune_config_model_decisions",
            "Services whose knobs the configuration model chose differently from what was in force",
            self.config_model_decisions.clone(),
        );
        registry.register(
            "meshtune_config_model_own_rows",
            "Windows the agent has recorded to refit the configuration model on",
            self.config_model_own_rows.clone(),
        );
        registry.register(
            "meshtune_config_model_refits",
            "Refits of the configuration model, by outcome (replaced, kept, failed)",
            self.config_model_refits.clone(),
        );
        registry.register(
            "meshtune_decisions",
            "Field changes meshtune logged (GET /v1/decisions), by mode: applied, recommended, rolled_back",
            self.decisions.clone(),
        );
        registry.register(
            "meshtune_decisions_measured",
            "Logged decisions measured one window later, by effect on the attainment of the chains through the object: improved, unchanged, worse",
            self.decisions_measured.clone(),
        );
    }

    pub fn reject(&self, reason: &str) {
        self.reports_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Histogram bucket bounds of `meshtune_chain_request_duration_seconds`.
pub const BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Encodes per-chain series from the chain state at scrape time.
#[derive(Debug)]
pub struct ChainCollector {
    pub forecasts: Arc<Mutex<BTreeMap<String, crate::forecast::ChainForecast>>>,
    pub state: Arc<Mutex<ChainState>>,
    /// The configuration's chains, and those declared as ChainSLO objects
    /// (read at each scrape, so a new ChainSLO gets its objective series).
    pub configured: BTreeMap<String, ChainSpec>,
    pub declared: Arc<Mutex<DeclaredChains>>,
    /// The agent's window (attainment is over it, as `/v1/chains` shows).
    pub window_secs: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChainLabel {
    chain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabel {
    chain: String,
    service: String,
}

impl Collector for ChainCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lifetime = match self.state.lock() {
            Ok(st) => st.lifetime().clone(),
            Err(poisoned) => poisoned.into_inner().lifetime().clone(),
        };
        {
            let mut family = encoder.encode_descriptor(
                "meshtune_chain_request_duration_seconds",
                "End-to-end latency of each chain, measured at its entry hop",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for (chain, agg) in &lifetime {
                let sk = &agg.end_to_end.latency;
                let mut prev = 0;
                let mut buckets: Vec<(f64, u64)> = BUCKETS_SECONDS
                    .iter()
                    .map(|b| {
                        let le = sk.count_le((b * 1e9) as u64);
                        let n = le.saturating_sub(prev);
                        prev = le;
                        (*b, n)
                    })
                    .collect();
                buckets.push((f64::INFINITY, sk.count().saturating_sub(prev)));
                let label = ChainLabel {
                    chain: chain.clone(),
                };
                family
                    .encode_family(&label)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sk.sum_ns as f64 / 1e9,
                        sk.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        for (name, help, pick) in [
            (
                "meshtune_chain_requests",
                "Requests of each chain, counted at its entry hop",
                0u8,
            ),
            (
                "meshtune_chain_errors",
                "Failed requests (5xx or local replies) of each chain at its entry hop",
                1,
            ),
            (
                "meshtune_chain_shed",
                "Requests of each chain shed by a concurrency limit, at any hop",
                2,
            ),
            (
                "meshtune_chain_deadline_exceeded",
                "Requests of each chain stopped because its budget was spent, at any hop",
                3,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (chain, agg) in &lifetime {
                let all_hops = |f: fn(&crate::data::aggregate::Agg) -> u64| -> u64 {
                    agg.hops
                        .values()
                        .map(|h| f(&h.inbound) + f(&h.outbound))
                        .sum()
                };
                let v = match pick {
                    0 => agg.end_to_end.requests,
                    1 => agg.end_to_end.errors,
                    2 => all_hops(|a| a.shed),
                    _ => all_hops(|a| a.deadline_exceeded),
                };
                let c: Counter = Counter::default();
                c.inc_by(v);
                c.encode(family.encode_family(&ChainLabel {
                    chain: chain.clone(),
                })?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "meshtune_hop_requests",
                "Requests per chain and service, as measured by the service's own sidecar where it has one",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (chain, agg) in &lifetime {
                for (service, hop) in &agg.hops {
                    let c: Counter = Counter::default();
                    c.inc_by(hop.preferred().0.requests);
                    c.encode(family.encode_family(&HopLabel {
                        chain: chain.clone(),
                        service: service.clone(),
                    })?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "meshtune_chain_slo_seconds",
                "Latency objective of each chain (configured or declared as a ChainSLO)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let chains =
                crate::config::chains_of(&self.configured, &crate::app::locked(&self.declared));
            for (chain, spec) in &chains {
                let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
                g.set(spec.slo_ms / 1000.0);
                g.encode(family.encode_family(&ChainLabel {
                    chain: chain.clone(),
                })?)?;
            }
            let (window, _) =
                crate::app::locked(&self.state).window(crate::now_secs(), self.window_secs);
            let mut family = encoder.encode_descriptor(
                "meshtune_chain_slo_attainment",
                "Share of each chain's requests over the agent's window answered successfully within its objective (the same rule as /v1/chains and the writer's rollback)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (chain, spec) in &chains {
                let Some(a) = window
                    .get(chain)
                    .and_then(|agg| agg.end_to_end.attainment(spec.slo_ms))
                else {
                    continue;
                };
                let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
                g.set(a);
                g.encode(family.encode_family(&ChainLabel {
                    chain: chain.clone(),
                })?)?;
            }
        }
        {
            let forecasts = match self.forecasts.lock() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let mut family = encoder.encode_descriptor(
                "meshtune_forecast_requests_per_second",
                "Forecast request rate of each chain, by horizon in minutes",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (chain, f) in &forecasts {
                for (h, v) in &f.rps {
                    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
                    g.set(*v);
                    g.encode(family.encode_family(&ForecastLabel {
                        chain: chain.clone(),
                        horizon: h.to_string(),
                    })?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "meshtune_forecast_method",
                "1 for the forecasting method in use per chain; basis is backtest, or fallback before there is enough history",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (chain, f) in &forecasts {
                let g: Gauge = Gauge::default();
                g.set(1);
                g.encode(family.encode_family(&MethodLabel {
                    chain: chain.clone(),
                    method: f.method.to_string(),
                    basis: f.basis.to_string(),
                })?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForecastLabel {
    chain: String,
    horizon: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    chain: String,
    method: String,
    basis: String,
}
