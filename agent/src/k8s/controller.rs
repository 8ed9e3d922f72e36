//! The agent's Kubernetes loop: start the ChainSLO watch, hold or follow
//! the leader Lease, compute the desired
//! DestinationRules from this agent's window and hand them to the writer.
//!
//! Which data the leader writes from: every agent keeps its node's window;
//! the leader pulls the other agents' windows (`GET /v1/window`, found by
//! listing the agent pods) and merges them with its own, so its rules rest
//! on the whole cluster's traffic. Non-leaders send nothing.

use crate::k8s::destinationrule::{desired, ServiceObservation, Tuning};
use crate::k8s::lease::LeaderElector;
use crate::k8s::writer::{Mode, Outcome, Writer, WriterConfig};
use crate::server::Agent;
use kube::Client;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn identity(cfg: &crate::config::KubernetesSpec) -> String {
    cfg.identity
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "meshtune-agent".into())
}

pub use crate::policy::MAX_GROWTH;

/// Each service's request rate to plan for: the rate each chain sends it in
/// the window, scaled up by the growth that chain's load forecast expects
/// (`forecast_rps`: each chain's expected requests/s at the longest horizon),
/// so connection pools are sized before a rise, not after it. A forecast
/// of less traffic does not shrink them (that waits for the traffic to fall).
pub fn expected_service_rps(
    window: &BTreeMap<String, crate::aggregate::ChainAgg>,
    secs: f64,
    forecast_rps: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if secs <= 0.0 {
        return out;
    }
    for (chain, agg) in window {
        let growth = crate::policy::chain_growth(agg, secs, forecast_rps.get(chain).copied());
        for (svc, hop) in &agg.hops {
            *out.entry(svc.clone()).or_insert(0.0) +=
                hop.preferred().0.requests as f64 / secs * growth;
        }
    }
    out
}

/// What the window says about each service, server side, with each
/// service's rate as [`expected_service_rps`] plans it.
pub fn observations(
    agent: &Agent,
    window: &BTreeMap<String, crate::aggregate::ChainAgg>,
    secs: f64,
) -> (Vec<ServiceObservation>, BTreeMap<String, f64>) {
    let specs = agent.chains();
    let expected = expected_service_rps(window, secs, &agent.forecast_at_longest_horizon());
    let mut per_service: BTreeMap<String, crate::aggregate::Agg> = BTreeMap::new();
    // Worst SLO attainment among the chains through each service.
    let mut attainment: BTreeMap<String, f64> = BTreeMap::new();
    for (chain, agg) in window {
        let chain_att = specs.get(chain).and_then(|s| {
            let n = agg.end_to_end.requests;
            (n > 0)
                .then(|| agg.end_to_end.latency.count_le((s.slo_ms * 1e6) as u64) as f64 / n as f64)
        });
        for (svc, hop) in &agg.hops {
            per_service
                .entry(svc.clone())
                .or_default()
                .merge(hop.preferred().0);
            if let Some(a) = chain_att {
                let e = attainment.entry(svc.clone()).or_insert(1.0);
                *e = e.min(a);
            }
        }
    }
    let obs = per_service
        .into_iter()
        .filter(|(_, a)| a.requests > 0)
        .map(|(svc, a)| ServiceObservation {
            namespace: agent
                .config
                .services
                .get(&svc)
                .map_or_else(|| "default".into(), |s| s.namespace.clone()),
            rps: expected
                .get(&svc)
                .copied()
                .unwrap_or(a.requests as f64 / secs),
            p99_ms: a.latency.quantile(0.99).unwrap_or(0.0) / 1e6,
            error_rate: a.errors as f64 / a.requests as f64,
            service: svc,
        })
        .collect();
    (obs, attainment)
}

pub async fn run(agent: Arc<Agent>, client: Client, mut stop: watch::Receiver<bool>) {
    let cfg = agent.config.kubernetes.clone();
    let me = identity(&cfg);
    let mut elector = LeaderElector::new(
        client.clone(),
        &cfg.namespace,
        &me,
        cfg.lease_seconds as i32,
    );
    let mode = if cfg.mode == "apply" {
        Mode::Apply
    } else {
        Mode::Recommend
    };
    let mut writer = Writer::new(
        client.clone(),
        WriterConfig {
            mode,
            max_changes: cfg.max_changes_per_hour,
            force: cfg.force_conflicts,
            ..WriterConfig::default()
        },
    );
    tracing::info!(identity = %me, mode = %cfg.mode, "kubernetes integration started");
    if cfg.watch_chainslos {
        tokio::spawn(crate::k8s::chainslo_watch::run(
            agent.clone(),
            client.clone(),
            stop.clone(),
        ));
    }
    // Renew well within the lease so a live leader never looks expired.
    let tick = Duration::from_secs((cfg.lease_seconds / 3).clamp(1, cfg.interval_seconds.max(1)));
    let mut since_reconcile = Duration::MAX;
    loop {
        let now_s = crate::now_secs();
        let now = k8s_openapi::jiff::Timestamp::from_second(now_s as i64)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let leader = elector.tick(now).await;
        agent.metrics.leader.set(i64::from(leader));
        if since_reconcile >= Duration::from_secs(cfg.interval_seconds) {
            since_reconcile = Duration::ZERO;
            let (mut window, secs) = agent.lock().window(now_s, agent.config.window.as_secs());
            if leader {
                // The leader writes for the whole cluster: add the other nodes' windows.
                let own_ip = std::env::var("POD_IP").ok();
                let port = agent.config.listen.port();
                match crate::k8s::peers::peer_addresses(
                    &client,
                    &cfg.namespace,
                    own_ip.as_deref(),
                    port,
                )
                .await
                {
                    Ok(peers) => {
                        for addr in peers {
                            match crate::k8s::peers::fetch(&addr, agent.config.token.as_deref())
                                .await
                            {
                                Ok(snap) => crate::k8s::peers::merge(&mut window, &snap.chains),
                                Err(e) => {
                                    tracing::warn!("skipping an agent's window this round: {e}")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("listing the other agents failed: {e}"),
                }
            }
            let (obs, attainment) = observations(&agent, &window, secs);
            let locality: Vec<_> = agent
                .config
                .services
                .iter()
                .filter_map(|(svc, spec)| {
                    Some((svc.clone(), spec.locality.as_ref()?.to_locality()?))
                })
                .collect();
            let rules = desired(&obs, &locality, &Tuning::default());
            let att = |_: &str, name: &str| attainment.get(name).copied();
            for ((ns, name), outcome) in writer.reconcile(&rules, leader, now_s, &att).await {
                match outcome {
                    Outcome::Applied => {
                        agent.metrics.dr_applies.inc();
                    }
                    Outcome::Conflict(m) => {
                        agent.metrics.dr_conflicts.inc();
                        tracing::warn!(
                            "not applied to {ns}/{name}, another manager owns a field: {m}"
                        );
                    }
                    Outcome::BudgetExhausted => {
                        agent.metrics.dr_deferred.inc();
                    }
                    Outcome::IstioMissing(m) | Outcome::Failed(m) => {
                        tracing::error!("{ns}/{name}: {m}")
                    }
                    Outcome::Recommended => {
                        tracing::info!("recommended a DestinationRule for {ns}/{name}")
                    }
                    Outcome::Unchanged | Outcome::NotLeader => {}
                }
            }
            let rolled = writer.evaluate(leader, now_s, &att).await;
            agent.metrics.dr_rollbacks.inc_by(rolled.len() as u64);
            let recs = writer
                .recommendations
                .iter()
                .map(|((ns, n), v)| (format!("{ns}/{n}"), v.clone()))
                .collect();
            match agent.recommendations.lock() {
                Ok(mut g) => *g = recs,
                Err(p) => *p.into_inner() = recs,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => since_reconcile += tick,
            _ = stop.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::ChainAgg;
    use meshtune_filter_core::{Direction, HopRecord, Sketch};

    fn chain(name: &str, services: &[(&str, u64)]) -> ChainAgg {
        let mut agg = ChainAgg::default();
        for (i, (svc, n)) in services.iter().enumerate() {
            let mut latency = Sketch::new();
            (0..*n).for_each(|_| latency.record(5_000_000));
            agg.add_record(&HopRecord {
                chain: name.into(),
                service: (*svc).into(),
                direction: Direction::Inbound,
                entry: i == 0,
                requests: *n,
                errors: 0,
                latency,
                shed: 0,
                deadline_exceeded: 0,
                retries: 0,
            });
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
}
