//! The agent's Kubernetes loop: start the ChainSLO watch, hold or follow
//! the leader Lease and, as the leader, run the tuner on the cluster's
//! merged window through the configured sink.
//!
//! Which data the leader writes from: every agent keeps its node's window;
//! the leader pulls the other agents' windows (`GET /v1/window`, found by
//! listing the agent pods) and merges them with its own, so its decisions
//! rest on the whole cluster's traffic. Non-leaders write nothing.

use crate::app::agent::Agent;
use crate::app::tuner::{guard_config, Tuner};
use crate::k8s::lease::LeaderElector;
use crate::write::Sink;
use kube::Client;
use std::collections::BTreeSet;
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

pub async fn run<S: Sink + Send + Sync + 'static>(
    agent: Arc<Agent>,
    client: Client,
    sink: S,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = agent.config.kubernetes.clone();
    let me = identity(&cfg);
    let mut elector = LeaderElector::new(
        client.clone(),
        &cfg.namespace,
        &me,
        cfg.lease_seconds as i32,
    );
    let mut tuner = Tuner::new(sink, guard_config(&agent))
        .measuring_usage(agent.config.resources.cgroup_dir.as_deref());
    tracing::info!(identity = %me, mode = %cfg.mode, sink = %tuner.sink.describe(), "kubernetes integration started");
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
            let (mut window, secs) = agent.window(now_s);
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
            let namespaces: BTreeSet<String> = agent
                .config
                .services
                .values()
                .map(|s| s.namespace.clone())
                .collect();
            let opted_out = match crate::k8s::optout::opted_out_hosts(&client, &namespaces).await {
                Ok(h) => h,
                Err(e) => {
                    // Without knowing who opted out, write nothing this round.
                    tracing::warn!(
                        "reading Services' {} annotations failed; skipping this round: {e}",
                        crate::plan::MANAGE_ANNOTATION
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(tick) => since_reconcile += tick,
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            };
            tuner
                .round(&agent, &window, secs, &opted_out, leader, now_s)
                .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => since_reconcile += tick,
            // The assurance loop asks for a round now.
            _ = agent.replan.notified() => since_reconcile = Duration::MAX,
            _ = stop.changed() => break,
        }
    }
}
