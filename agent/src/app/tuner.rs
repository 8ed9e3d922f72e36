//! One tuning round: observe the services in the window, plan the objects
//! meshtune wants, send them through the guard to the sink, judge earlier
//! changes, and publish what was decided (metrics, `/v1/recommendations`).
//! The Kubernetes loop runs it as the Lease holder with the cluster's
//! merged window; without a cluster, [`run_local`] runs it on a timer.

use crate::app::agent::Agent;
use crate::data::aggregate::ChainAgg;
use crate::data::decisions::{Change, DecisionMode};
use crate::data::usage::{CgroupUsage, DemandTracker, RateIntegrator, ServiceSample};
use crate::learn::online::OwnRow;
use crate::plan::lookahead::candidates;
use crate::plan::model_choice::{
    apply_choice, chain_outcome, choose_for, knobs_in_force, rule_based_knobs, service_features,
    tightest_chain, ChoiceParams, ServiceInput,
};
use crate::plan::observe::observe;
use crate::plan::sizing::{desired_resources, ChainLoad, ServiceUsage};
use crate::plan::traffic::{desired, desired_routes, widest_hop_budgets};
use crate::plan::Kind;
use crate::write::guard::{label, Guard, GuardConfig, Mode};
use crate::write::{hosts_of, ObjectEvent, Outcome, Sink};
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
        max_resizes: agent.config.resources.max_resizes_per_hour,
        force: k.force_conflicts,
        take_over_fields: k.take_over_fields.clone(),
        ..GuardConfig::default()
    }
}

/// The tuning loop's state: the guard, where it writes, and what it
/// measures of the services' CPU and memory between rounds.
pub struct Tuner<S> {
    pub guard: Guard,
    pub sink: S,
    usage: Option<CgroupUsage>,
    /// Without cgroups: the metrics API's rates, integrated into CPU-seconds.
    rates: RateIntegrator,
    demand: DemandTracker,
}

impl<S: Sink + Sync> Tuner<S> {
    pub fn new(sink: S, config: GuardConfig) -> Self {
        Tuner {
            guard: Guard::new(config),
            sink,
            usage: None,
            rates: RateIntegrator::default(),
            demand: DemandTracker::default(),
        }
    }

    /// Measures the services' CPU and memory from the cgroups in `dir`
    /// (the lab's layout); without it, from the metrics API through the
    /// sink (a cluster's metrics-server).
    pub fn measuring_usage(mut self, dir: Option<&std::path::Path>) -> Self {
        self.usage = dir.map(CgroupUsage::new);
        self
    }

    /// The Deployment objects for the services whose resources meshtune
    /// manages, and the plan behind them (`None`: nothing to manage or
    /// nothing to measure with).
    async fn plan_resources(
        &mut self,
        agent: &Agent,
        window: &BTreeMap<String, ChainAgg>,
        secs: f64,
        now_s: u64,
    ) -> Option<(Vec<crate::plan::DesiredObject>, serde_json::Value)> {
        let managed: Vec<(&String, &crate::config::ServiceSpec)> = agent
            .config
            .services
            .iter()
            .filter(|(_, s)| s.max_cpu.is_some() && s.manage)
            .collect();
        if managed.is_empty() {
            return None;
        }
        // The Deployments and autoscalers first: on a cluster the pods'
        // usage is found through the Deployments' selectors.
        let mut live = BTreeMap::new();
        let mut autoscalers = BTreeMap::new();
        let namespaces: BTreeSet<&String> = managed.iter().map(|(_, s)| &s.namespace).collect();
        for ns in &namespaces {
            if let Ok(objs) = self.sink.list(Kind::Deployment, ns).await {
                for o in objs {
                    if let Some(n) = o["metadata"]["name"].as_str() {
                        live.insert(((*ns).clone(), n.to_owned()), o.clone());
                    }
                }
            }
            match self.sink.autoscalers(ns).await {
                Ok(a) => {
                    autoscalers.insert((*ns).clone(), a);
                }
                // Unknown autoscalers: writing could fight one, so recommend only.
                Err(e) => {
                    let error = format!("listing autoscalers in {ns}: {e}");
                    tracing::error!("resources: {error}");
                    return Some((Vec::new(), json!({ "error": error })));
                }
            }
        }
        let read = match &self.usage {
            Some(usage) => match usage.read() {
                Ok(r) => r,
                Err(e) => {
                    let error = format!("reading {}: {e}", usage.dir().display());
                    tracing::warn!("resources: {error}");
                    return Some((Vec::new(), json!({ "error": error })));
                }
            },
            None => match self.pod_usage(&managed, &live, now_s).await {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!("resources: {error}");
                    return Some((Vec::new(), json!({ "error": error })));
                }
            },
        };
        let mut served: BTreeMap<String, u64> = BTreeMap::new();
        for agg in agent.lock().lifetime().values() {
            for (svc, hop) in &agg.hops {
                *served.entry(svc.clone()).or_default() += hop.preferred().0.requests;
            }
        }
        self.demand
            .add(&read, &served, crate::clock::wall_seconds(now_s as f64));
        // CPU is sized for the chains' upper forecast over the next ten
        // minutes, not the expected rate: a quota below a minute's load
        // throttles at once, and the change budget slows the way back.
        let planned_rps =
            crate::plan::observe::expected_service_rps(window, secs, &agent.forecast_upper());
        let services: Vec<ServiceUsage> = managed
            .iter()
            .map(|(name, spec)| ServiceUsage {
                service: (*name).clone(),
                namespace: spec.namespace.clone(),
                deployment: spec.deployment.clone().unwrap_or_else(|| (*name).clone()),
                container: spec.container.clone().unwrap_or_else(|| (*name).clone()),
                demand_s: self.demand.demand_s(name),
                // Already per wall second (the window's rates are), as cores are.
                rps: planned_rps.get(name.as_str()).copied().unwrap_or(0.0),
                memory_mib: self.demand.memory_mib(name),
                replicas: read.get(name.as_str()).map_or(1, |s| s.replicas.max(1)),
                min_cpu: spec.min_cpu.unwrap_or(0.01),
                max_cpu: spec.max_cpu.unwrap_or(0.01),
                min_memory: spec.min_memory.unwrap_or(0.0),
                max_memory: spec.max_memory.unwrap_or(f64::MAX),
                throttling: self.demand.throttling(name),
                demand_estimates: self.demand.estimates(name),
                limit_cores: read.get(name.as_str()).and_then(|s| s.limit_cores),
            })
            .map(|mut u| {
                // The quota the lab's cgroup has; on a cluster the container's.
                if u.limit_cores.is_none() {
                    u.limit_cores = live
                        .get(&(u.namespace.clone(), u.deployment.clone()))
                        .and_then(|d| crate::plan::deployment::container_cpu(d, &u.container));
                }
                u
            })
            .collect();
        let specs = agent.chains();
        let chains: Vec<ChainLoad> = window
            .iter()
            .filter_map(|(name, agg)| {
                let spec = specs.get(name)?;
                Some(ChainLoad {
                    name: name.clone(),
                    slo_ms: spec.slo_ms,
                    percentile: spec.percentile,
                    priority: spec.priority,
                    services: agg.hops.keys().cloned().collect(),
                    median_ms: agg.end_to_end.latency.quantile(0.5).map(|ns| ns / 1e6),
                })
            })
            .collect();
        let sizing = desired_resources(
            &services,
            &chains,
            agent.config.resources.variability,
            &live,
            &autoscalers,
        );
        Some((sizing.objects, sizing.report))
    }

    /// The managed services' usage from the metrics API (through the sink),
    /// each Deployment's pods found by its selector, integrated into the
    /// CPU-seconds the demand tracker divides by requests served. An error
    /// names why CPU use is not measured.
    async fn pod_usage(
        &mut self,
        managed: &[(&String, &crate::config::ServiceSpec)],
        live: &BTreeMap<(String, String), serde_json::Value>,
        now_s: u64,
    ) -> Result<BTreeMap<String, ServiceSample>, String> {
        let mut rates = BTreeMap::new();
        let namespaces: BTreeSet<&String> = managed.iter().map(|(_, s)| &s.namespace).collect();
        for ns in namespaces {
            let pods = self.sink.pod_metrics(ns).await.map_err(|e| {
                format!("resources.cgroup_dir is not set and {e}: CPU use is not measured")
            })?;
            for (name, spec) in managed.iter().filter(|(_, s)| &s.namespace == ns) {
                let deployment = spec.deployment.as_deref().unwrap_or(name.as_str());
                let container = spec.container.as_deref().unwrap_or(name.as_str());
                if let Some(rate) = live
                    .get(&(ns.clone(), deployment.to_owned()))
                    .and_then(|d| crate::plan::deployment::deployment_usage(d, container, &pods))
                {
                    rates.insert((*name).clone(), rate);
                }
            }
        }
        // Rates are per wall second; the agent's clock may run on trace time.
        Ok(self
            .rates
            .add(crate::clock::wall_seconds(now_s as f64), &rates))
    }

    /// The configuration model's round: records this window as the agent's
    /// own rows (when a window has passed since the last), then, for each
    /// observed service with a chain objective, chooses its knobs by looking
    /// ahead and writes them into the rule-based objects. `None`: no model.
    async fn model_round(
        &mut self,
        agent: &Agent,
        window: &BTreeMap<String, ChainAgg>,
        secs: f64,
        now_s: u64,
        obs: &[crate::plan::observe::ServiceObservation],
        objects: &mut [crate::plan::DesiredObject],
    ) -> serde_json::Value {
        let learning = &agent.learning;
        let features = service_features(window, secs, &agent.replicas(now_s));
        let chains = agent.chains();
        // What is in force: the live objects for each observed host.
        let mut live: BTreeMap<(Kind, String), serde_json::Value> = BTreeMap::new();
        let namespaces: BTreeSet<&String> = obs.iter().map(|o| &o.namespace).collect();
        for ns in namespaces {
            for kind in [Kind::DestinationRule, Kind::VirtualService] {
                match self.sink.list(kind, ns).await {
                    Ok(list) => {
                        for o in list {
                            for h in hosts_of(kind, &o) {
                                live.insert((kind, h), o.clone());
                            }
                        }
                    }
                    Err(e) => tracing::warn!("listing {} in {ns}: {e}", kind.plural()),
                }
            }
        }
        let host_of = |o: &crate::plan::observe::ServiceObservation| {
            format!("{}.{}.svc.cluster.local", o.service, o.namespace)
        };
        let in_force = |host: &String| {
            knobs_in_force(
                live.get(&(Kind::DestinationRule, host.clone())),
                live.get(&(Kind::VirtualService, host.clone())),
            )
        };
        let window_s = agent.config.window.as_secs();
        if learning.due_row(now_s, window_s) {
            let rows: Vec<OwnRow> = obs
                .iter()
                .filter_map(|o| {
                    let observed = features.get(&o.service)?;
                    let (_, agg, spec) = tightest_chain(&o.service, window, &chains)?;
                    let [p99_ms, error_share, goodput] = chain_outcome(agg, spec)?;
                    let mut f = observed.clone();
                    f.extend(in_force(&host_of(o)).values());
                    Some(OwnRow {
                        at_s: now_s,
                        service: o.service.clone(),
                        features: f,
                        p99_ms,
                        error_share,
                        goodput,
                    })
                })
                .collect();
            learning.record(rows, now_s, agent.store(), &agent.metrics);
        }
        let Some(model) = learning.model() else {
            return learning.describe();
        };
        let forecasts = agent.forecasts();
        let params = ChoiceParams {
            margin: learning.spec.margin,
            threshold: learning.spec.threshold,
        };
        let candidates = candidates(learning.spec.candidates, 1);
        let mut services = Vec::new();
        for o in obs {
            let Some(observed) = features.get(&o.service) else {
                continue;
            };
            let Some((chain, agg, spec)) = tightest_chain(&o.service, window, &chains) else {
                continue;
            };
            // The forecast steps up to ten minutes: the chain's expected
            // load over its load now, applied to the service's.
            let chain_rps = agg.end_to_end.requests as f64 / secs.max(1e-9);
            let forecast_rps: Vec<f64> = forecasts
                .get(chain)
                .map(|f| {
                    f.rps
                        .range(..=10)
                        .filter(|_| chain_rps > 0.0)
                        .map(|(_, r)| observed[0] * r / chain_rps)
                        .collect()
                })
                .unwrap_or_default();
            let host = host_of(o);
            let route_written = objects
                .iter()
                .any(|d| d.host == host && d.kind == Kind::VirtualService);
            let input = ServiceInput {
                service: o.service.clone(),
                host: host.clone(),
                observed: observed.clone(),
                forecast_rps,
                chain: chain.clone(),
                spec: spec.clone(),
                in_force: in_force(&host),
            };
            let rule = rule_based_knobs(objects, &host);
            match choose_for(&*model, &input, &rule, &candidates, params, route_written) {
                Ok(c) => {
                    if c.choice.change {
                        agent.metrics.config_model_decisions.inc();
                    }
                    apply_choice(objects, &host, &c);
                    services.push(serde_json::to_value(&c).unwrap_or_default());
                }
                Err(e) => {
                    tracing::error!(
                        "configuration model on {}: {e}; rule-based knobs kept",
                        o.service
                    );
                    services.push(json!({"service": o.service, "error": e.to_string()}));
                }
            }
        }
        let mut report = learning.describe();
        report["services"] = json!(services);
        report
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
        let (mut obs, unknown) = observe(
            window,
            secs,
            &agent.chains(),
            &agent.config.services,
            &agent.forecast_at_longest_horizon(),
        );
        crate::plan::observe::add_replica_latencies(
            &mut obs,
            &agent.replicas(now_s),
            &agent.replicas_known(now_s),
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
        let model = self
            .model_round(agent, window, secs, now_s, &obs, &mut objects)
            .await;
        let resources = self.plan_resources(agent, window, secs, now_s).await;
        if let Some((deployments, _)) = &resources {
            objects.extend(deployments.iter().cloned());
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
        let predictions = predictions_by_host(&model);
        let mut logged = Vec::new();
        for mode in [DecisionMode::Applied, DecisionMode::Recommended] {
            let changes = logged_changes(&report, &outcomes, mode, &predictions);
            logged.extend(agent.log_decisions(changes, mode, now_s, &attainment));
        }
        let rolled_back: Vec<Change> = rolled
            .iter()
            .map(|r| Change {
                object: label(&r.key),
                host: String::new(),
                field: ".spec".into(),
                old: serde_json::Value::Null,
                new: json!("the object before meshtune's change"),
                reason: r.reason.clone(),
                predicted: "attainment back to its level before the change".into(),
            })
            .collect();
        logged.extend(agent.log_decisions(
            rolled_back,
            DecisionMode::RolledBack,
            now_s,
            &attainment,
        ));
        for event in object_events(&logged, now_s) {
            if let Err(e) = self.sink.record_event(&event).await {
                tracing::warn!("{e}");
            }
        }
        report["sink"] = json!(self.sink.describe());
        report["errors"] = json!(unknown.iter().map(|u| u.to_string()).collect::<Vec<_>>());
        report["opted_out"] = json!(opted_out);
        if let Some((_, plan)) = resources {
            report["resources"] = plan;
        }
        report["config_model"] = model;
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
    let mut tuner = Tuner::new(sink, guard_config(&agent))
        .measuring_usage(agent.config.resources.cgroup_dir.as_deref());
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
            _ = agent.replan.notified() => {}
            _ = stop.changed() => break,
        }
    }
}

/// What the configuration model predicted per host it chose for, in words.
fn predictions_by_host(model: &serde_json::Value) -> BTreeMap<String, String> {
    model["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let c = &s["chosen_score"];
            let cur = &s["current_score"];
            Some((
                s["host"].as_str()?.to_owned(),
                format!(
                    "configuration model, worst horizon step: p99 {:.1} ms, errors {:.2} %, goodput {:.3} (in force: p99 {:.1} ms, errors {:.2} %, goodput {:.3})",
                    c["p99_ms"].as_f64()?,
                    c["error_share"].as_f64()? * 100.0,
                    c["goodput"].as_f64()?,
                    cur["p99_ms"].as_f64()?,
                    cur["error_share"].as_f64()? * 100.0,
                    cur["goodput"].as_f64()?,
                ),
            ))
        })
        .collect()
}

/// The field changes of the objects whose outcome this round is `mode`,
/// read off the guard's report (each with its reason).
fn logged_changes(
    report: &serde_json::Value,
    outcomes: &[(crate::write::guard::Key, Outcome)],
    mode: DecisionMode,
    predictions: &BTreeMap<String, String>,
) -> Vec<Change> {
    let wanted = |o: &Outcome| match mode {
        DecisionMode::Applied => *o == Outcome::Applied,
        DecisionMode::Recommended => *o == Outcome::Recommended,
        DecisionMode::RolledBack | DecisionMode::Replanned => false,
    };
    let mut out = Vec::new();
    for (key, _) in outcomes.iter().filter(|(_, o)| wanted(o)) {
        let object = label(key);
        let entry = &report["objects"][&object];
        let host = entry["host"].as_str().unwrap_or_default().to_owned();
        let reasons = entry["reasons"].as_object();
        for c in entry["changes"].as_array().into_iter().flatten() {
            let field = c["path"].as_str().unwrap_or_default().to_owned();
            // Which host an object is for is its identity, not a decision.
            if field == ".spec.host" || field == ".spec.hosts" {
                continue;
            }
            let bare = field.strip_prefix(".spec.").unwrap_or(&field);
            // The reason of the field, or of the fields under it (an array
            // is one change: a route's timeout and retries).
            let reason = reasons
                .map(|r| {
                    r.iter()
                        .filter(|(k, _)| k.as_str() == bare || k.starts_with(bare))
                        .filter_map(|(k, v)| Some(format!("{k}: {}", v.as_str()?)))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            out.push(Change {
                object: object.clone(),
                host: host.clone(),
                old: c["live"].clone(),
                new: c["desired"].clone(),
                reason,
                predicted: predictions.get(&host).cloned().unwrap_or_else(|| {
                    "no prediction: chosen by rule (the reason gives what it is sized for)".into()
                }),
                field,
            });
        }
    }
    out
}

/// One event per object among the decisions just logged: every field it
/// changed, old → new, and why.
fn object_events(decisions: &[crate::data::decisions::Decision], now_s: u64) -> Vec<ObjectEvent> {
    let mut by_object: BTreeMap<(&str, DecisionMode), Vec<&crate::data::decisions::Decision>> =
        BTreeMap::new();
    for d in decisions {
        by_object
            .entry((d.object.as_str(), d.mode))
            .or_default()
            .push(d);
    }
    by_object
        .into_iter()
        .filter_map(|((object, mode), ds)| {
            let (kind, rest) = object.split_once(' ')?;
            let (namespace, name) = rest.split_once('/')?;
            let note = ds
                .iter()
                .map(|d| format!("{}: {} → {} ({})", d.field, d.old, d.new, d.reason))
                .collect::<Vec<_>>()
                .join("; ");
            Some(ObjectEvent {
                kind: Kind::parse(kind)?,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: match mode {
                    DecisionMode::Applied => "Applied",
                    DecisionMode::Recommended => "Recommended",
                    DecisionMode::RolledBack => "RolledBack",
                    DecisionMode::Replanned => "Replanned",
                },
                note,
                at_s: now_s,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_resources_change_is_logged_with_its_reasons() {
        // The sizing keys its reasons under the Deployment's spec, as the
        // traffic planners do theirs: a change of the containers array
        // carries the reasons of the fields under it.
        let usage = crate::plan::sizing::ServiceUsage {
            service: "ratings".into(),
            namespace: "bookinfo".into(),
            deployment: "ratings".into(),
            container: "ratings".into(),
            demand_s: Some(0.004),
            rps: 50.0,
            memory_mib: vec![40.0],
            replicas: 1,
            min_cpu: 0.05,
            max_cpu: 2.0,
            min_memory: 0.0,
            max_memory: 512.0,
            throttling: Vec::new(),
            limit_cores: None,
            demand_estimates: 3,
        };
        let chains = [ChainLoad {
            name: "r".into(),
            slo_ms: 50.0,
            percentile: 99.0,
            priority: meshtune_filter_core::control::Priority::Normal,
            services: vec!["ratings".into()],
            median_ms: Some(5.0),
        }];
        let sizing = desired_resources(&[usage], &chains, 0.4, &BTreeMap::new(), &BTreeMap::new());
        let d = &sizing.objects[0];
        let key = (
            Kind::Deployment,
            "bookinfo".to_owned(),
            "ratings".to_owned(),
        );
        let report = json!({"objects": {label(&key): {
            "host": d.host,
            "reasons": d.reasons,
            "changes": [{"path": ".spec.template.spec.containers", "live": null,
                         "desired": d.object["spec"]["template"]["spec"]["containers"]}],
        }}});
        let changes = logged_changes(
            &report,
            &[(key, Outcome::Applied)],
            DecisionMode::Applied,
            &BTreeMap::new(),
        );
        assert_eq!(changes.len(), 1);
        assert!(
            changes[0].reason.contains("resources.cpu: ") && changes[0].reason.contains("cores"),
            "{}",
            changes[0].reason
        );
        assert!(
            changes[0].reason.contains("resources.memory: "),
            "{}",
            changes[0].reason
        );
    }
}
