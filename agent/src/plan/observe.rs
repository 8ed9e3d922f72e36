//! What the window says about each service, server side: the rate to plan
//! for (forecast growth included), its latency at the percentile its chains
//! declare, its error share, and the worst attainment among the chains
//! through it (the baseline a change is judged against).

use crate::config::{ChainSpec, ServiceSpec};
use crate::data::aggregate::{Agg, ChainAgg};
use crate::data::state::ReplicaCounts;
use crate::plan::policy::chain_growth;
use std::collections::BTreeMap;

/// What the agent measured for one service over its window.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObservation {
    pub namespace: String,
    pub service: String,
    /// Requests/s to plan for (the window's rate × its chains' forecast growth).
    pub rps: f64,
    /// The percentile planned for: the highest any chain through it declares.
    pub percentile: f64,
    /// Latency at `percentile`, server side, in milliseconds.
    pub latency_ms: f64,
    pub error_rate: f64,
    /// Worst SLO attainment among the chains through the service.
    pub attainment: Option<f64>,
    /// Each replica's own latency at `percentile` (its sidecar's inbound
    /// view), ms, fastest first; only replicas that answered at least
    /// [`MIN_REPLICA_REQUESTS`] in the window ([`add_replica_latencies`]).
    pub replica_latency_ms: Vec<f64>,
    /// Replicas that answered lately, including ones silent in the window
    /// (an ejected replica gets no requests but still exists).
    pub replicas_known: usize,
    /// Each declared chain through the service: its end-to-end latency at
    /// its own percentile in the window and its objective (what a try on
    /// this service may take before the chain misses; see
    /// [`crate::plan::traffic::per_try_timeout_ms`]).
    pub chain_objectives: Vec<ChainObjective>,
}

/// A chain's end-to-end latency at its declared percentile and its
/// objective, both in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainObjective {
    pub latency_ms: f64,
    pub slo_ms: f64,
}

/// Requests a replica must have answered in the window for its latency at
/// the planned percentile to count: a p99 of fewer is nearly its maximum.
pub const MIN_REPLICA_REQUESTS: u64 = 100;

/// Fills each observation's `replica_latency_ms` from the replicas' own
/// counts over the window, and `replicas_known` from `known` (service →
/// replicas that answered lately).
pub fn add_replica_latencies(
    obs: &mut [ServiceObservation],
    replicas: &BTreeMap<String, BTreeMap<String, ReplicaCounts>>,
    known: &BTreeMap<String, usize>,
) {
    for o in obs {
        let mut v: Vec<f64> = replicas
            .get(&o.service)
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|c| c.requests >= MIN_REPLICA_REQUESTS)
            .filter_map(|c| c.latency.quantile(o.percentile / 100.0))
            .map(|ns| ns / 1e6)
            .collect();
        v.sort_by(f64::total_cmp);
        o.replicas_known = known.get(&o.service).copied().unwrap_or(0).max(v.len());
        o.replica_latency_ms = v;
    }
}

/// A service seen on a chain that the services configuration does not
/// list: nothing is written for it (its namespace is unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnknownService {
    pub service: String,
    pub chains: Vec<String>,
}

impl std::fmt::Display for UnknownService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "service `{}` (on chain {}) is not in the agent's `services` configuration: \
             add `services.{}.namespace` so meshtune knows where it runs; nothing is written for it",
            self.service,
            self.chains.join(", "),
            self.service
        )
    }
}

/// Each service's request rate to plan for: the rate each chain sends it in
/// the window, scaled up by the growth that chain's load forecast expects
/// (`forecast_rps`: each chain's expected requests/s at the longest horizon),
/// so connection pools are sized before a rise, not after it. A forecast
/// of less traffic does not shrink them (that waits for the traffic to fall).
pub fn expected_service_rps(
    window: &BTreeMap<String, ChainAgg>,
    secs: f64,
    forecast_rps: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if secs <= 0.0 {
        return out;
    }
    for (chain, agg) in window {
        let growth = chain_growth(agg, secs, forecast_rps.get(chain).copied());
        for (svc, hop) in &agg.hops {
            *out.entry(svc.clone()).or_insert(0.0) +=
                hop.preferred().0.requests as f64 / secs * growth;
        }
    }
    out
}

/// The observations of every service with traffic in the window that the
/// configuration lists, and the services it does not.
pub fn observe(
    window: &BTreeMap<String, ChainAgg>,
    secs: f64,
    chains: &BTreeMap<String, ChainSpec>,
    services: &BTreeMap<String, ServiceSpec>,
    forecast_rps: &BTreeMap<String, f64>,
) -> (Vec<ServiceObservation>, Vec<UnknownService>) {
    /// One service over every chain through it.
    #[derive(Default)]
    struct Seen {
        agg: Agg,
        percentile: f64,
        attainment: Option<f64>,
        chains: Vec<String>,
        objectives: Vec<ChainObjective>,
    }
    let expected = expected_service_rps(window, secs, forecast_rps);
    let mut per_service: BTreeMap<&str, Seen> = BTreeMap::new();
    for (chain, agg) in window {
        let spec = chains.get(chain);
        let chain_att = spec.and_then(|s| agg.end_to_end.attainment(s.slo_ms));
        let objective = spec.and_then(|s| {
            let ns = agg.end_to_end.latency.quantile(s.percentile / 100.0)?;
            Some(ChainObjective {
                latency_ms: ns / 1e6,
                slo_ms: s.slo_ms,
            })
        });
        for (svc, hop) in &agg.hops {
            let e = per_service.entry(svc.as_str()).or_default();
            e.agg.merge(hop.preferred().0);
            e.percentile = e.percentile.max(spec.map_or(99.0, |s| s.percentile));
            if let Some(a) = chain_att {
                e.attainment = Some(e.attainment.map_or(a, |b: f64| b.min(a)));
            }
            e.chains.push(chain.clone());
            e.objectives.extend(objective);
        }
    }
    let mut obs = Vec::new();
    let mut unknown = Vec::new();
    for (svc, seen) in per_service {
        let Seen {
            agg: a,
            percentile,
            attainment: att,
            chains: on_chains,
            objectives,
        } = seen;
        if a.requests == 0 || secs <= 0.0 {
            continue;
        }
        let Some(spec) = services.get(svc) else {
            unknown.push(UnknownService {
                service: svc.to_owned(),
                chains: on_chains,
            });
            continue;
        };
        obs.push(ServiceObservation {
            namespace: spec.namespace.clone(),
            service: svc.to_owned(),
            rps: expected
                .get(svc)
                .copied()
                .unwrap_or(a.requests as f64 / secs),
            percentile,
            latency_ms: a.latency.quantile(percentile / 100.0).unwrap_or(0.0) / 1e6,
            error_rate: a.errors as f64 / a.requests as f64,
            attainment: att,
            replica_latency_ms: Vec::new(),
            replicas_known: 0,
            chain_objectives: objectives,
        });
    }
    (obs, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::policy::MAX_GROWTH;
    use meshtune_filter_core::builders;

    fn chain(name: &str, services: &[(&str, usize)]) -> ChainAgg {
        let mut agg = ChainAgg::default();
        for (i, (svc, n)) in services.iter().enumerate() {
            let r = builders::uniform(name, svc, 5, *n);
            agg.add_record(&if i == 0 { r.at_entry() } else { r });
        }
        agg
    }

    #[test]
    fn forecast_growth_scales_each_chains_share_of_a_service() {
        let mut window = BTreeMap::new();
        // 60 s window: "shop" sends 10/s through front and 10/s to db;
        // "admin" sends 5/s to db.
        window.insert(
            "shop".to_string(),
            chain("shop", &[("front", 600), ("db", 600)]),
        );
        window.insert("admin".to_string(), chain("admin", &[("db", 300)]));
        let none = expected_service_rps(&window, 60.0, &BTreeMap::new());
        assert_eq!((none["front"], none["db"]), (10.0, 15.0));
        // shop is forecast to double, admin to fall by half (ignored).
        let f = BTreeMap::from([("shop".to_string(), 20.0), ("admin".to_string(), 2.5)]);
        let e = expected_service_rps(&window, 60.0, &f);
        assert_eq!((e["front"], e["db"]), (20.0, 25.0));
        // A wild forecast is capped.
        let f = BTreeMap::from([("shop".to_string(), 1e9)]);
        let e = expected_service_rps(&window, 60.0, &f);
        assert_eq!(e["front"], 10.0 * MAX_GROWTH);
    }

    #[test]
    fn a_service_missing_from_the_configuration_is_named_not_defaulted() {
        let window = BTreeMap::from([(
            "shop".to_string(),
            chain("shop", &[("front", 600), ("db", 600)]),
        )]);
        let services = BTreeMap::from([(
            "front".to_string(),
            ServiceSpec {
                namespace: "web".into(),
                manage: true,
                ..Default::default()
            },
        )]);
        let (obs, unknown) = observe(&window, 60.0, &BTreeMap::new(), &services, &BTreeMap::new());
        assert_eq!(obs.len(), 1);
        assert_eq!(
            (obs[0].service.as_str(), obs[0].namespace.as_str()),
            ("front", "web")
        );
        assert_eq!(
            unknown,
            vec![UnknownService {
                service: "db".into(),
                chains: vec!["shop".into()]
            }]
        );
        assert!(unknown[0].to_string().contains("services.db.namespace"));
    }

    #[test]
    fn the_declared_percentile_is_the_one_planned_for() {
        // 90 requests at 5 ms, 10 at 100 ms: p90 is fast, p99 is slow.
        let mut agg = ChainAgg::default();
        let mut latencies = vec![5; 90];
        latencies.extend([100; 10]);
        agg.add_record(&builders::record("c", "s", &latencies).at_entry());
        let window = BTreeMap::from([("c".to_string(), agg)]);
        let services = BTreeMap::from([("s".to_string(), ServiceSpec::default())]);
        let mut spec = ChainSpec::with_objective(50.0);
        spec.percentile = 90.0;
        let chains = BTreeMap::from([("c".to_string(), spec.clone())]);
        let (obs, _) = observe(&window, 60.0, &chains, &services, &BTreeMap::new());
        assert_eq!(obs[0].percentile, 90.0);
        assert!(obs[0].latency_ms < 10.0, "{}", obs[0].latency_ms);
        spec.percentile = 99.0;
        let chains = BTreeMap::from([("c".to_string(), spec)]);
        let (obs, _) = observe(&window, 60.0, &chains, &services, &BTreeMap::new());
        assert!(obs[0].latency_ms > 50.0, "{}", obs[0].latency_ms);
        assert_eq!(obs[0].attainment, Some(0.9));
        // The chain's own latency at its percentile, beside its objective.
        let [c] = obs[0].chain_objectives[..] else {
            panic!("one chain: {:?}", obs[0].chain_objectives)
        };
        assert_eq!(c.slo_ms, 50.0);
        assert!(c.latency_ms > 50.0, "{}", c.latency_ms);
    }

    #[test]
    fn each_replica_is_judged_by_its_own_sidecars_latency_with_enough_requests() {
        // Three reviews pods: two fast, one slow, and one with too few
        // requests to have a p99 of its own.
        let mut state = crate::data::state::ChainState::new(0);
        let pods = [
            ("r-1", 5, 200),
            ("r-2", 60, 150),
            ("r-3", 6, 300),
            ("r-4", 90, 20),
        ];
        for (seq, (pod, ms, n)) in pods.into_iter().enumerate() {
            let mut r = builders::report(
                pod,
                seq as u64 + 1,
                vec![builders::uniform("c", "reviews", ms, n)],
            );
            r.source.pod = pod.into();
            state.ingest(&r, 10);
        }
        let replicas = state.replicas(20, 60);
        assert_eq!(replicas["reviews"]["r-2"].requests, 150);
        let mut obs = vec![crate::plan::traffic::tests::obs("reviews", 10.0, 60.0, 0.0)];
        add_replica_latencies(&mut obs, &replicas, &state.replicas_known(20));
        let ms: Vec<u64> = obs[0]
            .replica_latency_ms
            .iter()
            .map(|v| v.round() as u64)
            .collect();
        assert_eq!(
            ms.len(),
            3,
            "r-4 answered fewer than {MIN_REPLICA_REQUESTS}"
        );
        assert!(ms[0] <= ms[1] && ms[1] < ms[2], "{ms:?}");
        assert!((55..=65).contains(&ms[2]), "{ms:?}");
        assert_eq!(obs[0].replicas_known, 4);

        // r-2 ejected: silent past the window, it still counts as a replica
        // until it has been silent for REPLICA_MEMORY_SECS.
        let later = 200;
        let mut r = builders::report("r-1", 10, vec![builders::uniform("c", "reviews", 5, 200)]);
        r.source.pod = "r-1".into();
        state.ingest(&r, later);
        state.expire(later, 60);
        let mut obs = vec![crate::plan::traffic::tests::obs("reviews", 10.0, 60.0, 0.0)];
        add_replica_latencies(
            &mut obs,
            &state.replicas(later, 60),
            &state.replicas_known(later),
        );
        assert_eq!(obs[0].replica_latency_ms.len(), 1);
        assert_eq!(obs[0].replicas_known, 4);
        let gone = 10 + crate::data::state::REPLICA_MEMORY_SECS;
        state.expire(gone, 60);
        assert_eq!(
            state.replicas_known(gone)["reviews"],
            1,
            "only r-1 answered since"
        );
    }
}
