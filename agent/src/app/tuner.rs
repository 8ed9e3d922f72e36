//! One tuning round: observe the services in the window, plan the objects
//! meshtune wants, send them through the guard to the sink, judge earlier
//! changes, and publish what was decided (metrics, `/v1/recommendations`).
//! The Kubernetes loop runs it as the Lease holder with the cluster's
//! merged window; without a cluster, [`run_local`] runs it on a timer.

use crate::app::agent::Agent;
use crate::data::aggregate::ChainAgg;
use crate::plan::observe::observe;
use crate::plan::traffic::{desired, desired_routes, widest_hop_budgets};
use crate::write::guard::{label, Guard, GuardConfig, Mode};
use crate::write::{Outcome, Sink};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::watch;

/// The guard's settings from the agent's configuration (the same for
/// every sink).
pub fn guard_config(agent: &Agent) -> GuardConfig {
    let k = &agent.config.kubernetes;
    GuardConfig {
        mode: if k.mode == "apply" {
            Mode::Apply
        } else {
            Mode::Recommend
        },
        max_changes: k.max_changes_per_hour,
        force: k.force_conflicts,
        take_over_fields: k.take_over_fields.clone(),
        ..GuardConfig::default()
    }
}

/// The tuning loop's state: the guard and where it writes.
pub struct Tuner<S> {
    pub guard: Guard,
    pub sink: S,
}

impl<S: Sink + Sync> Tuner<S> {
    pub fn new(sink: S, config: GuardConfig) -> Self {
        Tuner {
            guard: Guard::new(config),
            sink,
        }
    }

    /// One round on `window` (covering `secs`). `opted_out` holds the hosts
    /// whose Service or namespace opted out on the cluster.
    pub async fn round(
        &mut self,
        agent: &Agent,
        window: &BTreeMap<String, ChainAgg>,
        secs: f64,
        opted_out: &BTreeSet<String>,
        leader: bool,
        now_s: u64,
    ) -> Vec<(crate::write::guard::Key, Outcome)> {
        let (obs, unknown) = observe(
            window,
            secs,
            &agent.chains(),
            &agent.config.services,
            &agent.forecast_at_longest_horizon(),
        );
        for u in &unknown {
            tracing::error!("{u}");
        }
        agent.metrics.unknown_services.set(unknown.len() as i64);
        let mut opted_out = opted_out.clone();
        for o in &obs {
            if agent
                .config
                .services
                .get(&o.service)
                .is_some_and(|s| !s.manage)
            {
                opted_out.insert(format!("{}.{}.svc.cluster.local", o.service, o.namespace));
            }
        }
        agent.metrics.opted_out_hosts.set(opted_out.len() as i64);
        let locality: Vec<_> = agent
            .config
            .services
            .iter()
            .filter_map(|(svc, spec)| Some((svc.clone(), spec.locality.as_ref()?.to_locality()?)))
            .collect();
        let mut objects = desired(&obs, &locality, &agent.config.traffic);
        // Route timeouts and retries where the chains give a hop budget.
        if let Some(policy) = agent.current_policy(now_s * 1000) {
            objects.extend(desired_routes(&obs, &widest_hop_budgets(&policy)));
        }
        let attainment: BTreeMap<String, f64> = obs
            .iter()
            .filter_map(|o| {
                Some((
                    format!("{}.{}.svc.cluster.local", o.service, o.namespace),
                    o.attainment?,
                ))
            })
            .collect();
        let outcomes = self
            .guard
            .reconcile(&self.sink, &objects, &opted_out, leader, now_s, &attainment)
            .await;
        for (key, outcome) in &outcomes {
            let what = label(key);
            match outcome {
                Outcome::Applied => {
                    agent.metrics.dr_applies.inc();
                }
                Outcome::Conflict(m) => {
                    agent.metrics.dr_conflicts.inc();
                    tracing::warn!("not applied to {what}, another manager owns a field: {m}");
                }
                Outcome::BudgetExhausted => {
                    agent.metrics.dr_deferred.inc();
                }
                Outcome::Withdrawn => {
                    agent.metrics.objects_withdrawn.inc();
                    tracing::warn!("withdrew {what}: a user's object now covers its host");
                }
                Outcome::UserOwned(by) => {
                    tracing::info!("{what}: the user's {by} covers the host; writing nothing")
                }
                Outcome::IstioMissing(m) | Outcome::Failed(m) => tracing::error!("{what}: {m}"),
                Outcome::Recommended => tracing::debug!("recommended {what}"),
                Outcome::Unchanged | Outcome::NotLeader | Outcome::OptedOut => {}
            }
        }
        agent
            .metrics
            .user_owned_hosts
            .set(self.guard.user_owned_hosts() as i64);
        let rolled = self
            .guard
            .evaluate(&self.sink, leader, now_s, &attainment)
            .await;
        agent.metrics.dr_rollbacks.inc_by(rolled.len() as u64);
        let mut report = self.guard.report();
        report["sink"] = json!(self.sink.describe());
        report["errors"] = json!(unknown.iter().map(|u| u.to_string()).collect::<Vec<_>>());
        report["opted_out"] = json!(opted_out);
        report["rollbacks"] = json!(rolled
            .iter()
            .map(|r| json!({"object": label(&r.key), "reason": r.reason}))
            .collect::<Vec<_>>());
        agent.set_tuning_report(report);
        outcomes
    }
}

/// Tunes through `sink` every `kubernetes.interval_seconds` until `stop`,
/// as the only writer (no cluster, so no Lease: one agent, one directory).
pub async fn run_local<S: Sink + Send + Sync + 'static>(
    agent: Arc<Agent>,
    sink: S,
    mut stop: watch::Receiver<bool>,
) {
    let mut tuner = Tuner::new(sink, guard_config(&agent));
    let every = std::time::Duration::from_secs(agent.config.kubernetes.interval_seconds.max(1));
    tracing::info!(
        sink = %tuner.sink.describe(),
        mode = %tuner.guard.config.mode.as_str(),
        "tuning started"
    );
    loop {
        let now_s = crate::now_secs();
        let (window, secs) = agent.window(now_s);
        tuner
            .round(&agent, &window, secs, &BTreeSet::new(), true, now_s)
            .await;
        tokio::select! {
            _ = tokio::time::sleep(crate::clock::wall_duration(every)) => {}
            _ = stop.changed() => break,
        }
    }
}
