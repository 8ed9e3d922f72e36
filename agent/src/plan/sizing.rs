//! From measurements to each managed service's container resources, as
//! Deployment objects for the write seam (pure: inputs in, objects out).
//!
//! A service is managed when the configuration gives it `max_cpu` (the
//! bounds are the consent and the limits). Per round:
//! - its model ([`ServiceModel`]): CPU-seconds per request as measured
//!   (CPU used ÷ requests served), the rate to plan for (the window's rate
//!   grown by its chains' forecast), the waiting variability configured;
//! - each chain's objective for the allocation: its SLO less the part of
//!   its median latency the managed services' CPU work does not explain
//!   (hops, sidecars, services not managed), since cores cannot buy that;
//! - [`allocate`]: the least total CPU meeting every chain, or the fairest
//!   degradation with the binding limits named;
//! - memory from the working set ([`memory_allocation`]);
//! - the Deployment body ([`resources_apply`]), unless an autoscaler
//!   sizes the Deployment ([`autoscaler_conflict`]).
//!
//! Every value written carries its reason; the whole plan is reported.

use crate::data::usage::ThrottleReading;
use crate::plan::deployment::{
    autoscaler_conflict, resources_apply, Autoscalers, ContainerAllocation,
};
use crate::plan::resources::{
    allocate, judge, memory_allocation, variability_bound_from_periods,
    variability_bound_from_quiet, ChainObjective, PeriodCount, QuietInterval, ServiceModel,
};
use crate::plan::{DesiredObject, Kind};
use meshtune_filter_core::control::Priority;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Most a service's CPU is lowered in one round, as a share of the limit
/// in force (raising is never held back).
pub const MAX_STEP_DOWN: f64 = 0.25;
/// Intervals of CPU-per-request estimates before CPU is lowered: the first
/// estimates come from a few dozen requests of a service still warming up.
pub const SETTLED_ESTIMATES: usize = 3;
/// Cores are written in Kubernetes' unit, rounded up to 10 millicores.
const STEP_CORES: f64 = 0.01;

/// What was measured of one managed service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceUsage {
    pub service: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    /// CPU-seconds per request (`None`: not measured yet).
    pub demand_s: Option<f64>,
    /// Requests per second to plan for.
    pub rps: f64,
    /// Working-set samples of one replica, MiB (empty: memory is left alone).
    pub memory_mib: Vec<f64>,
    /// Replicas sharing the service's load: each pod's container gets its
    /// share of the service's cores (the load is balanced over them).
    pub replicas: usize,
    /// Bounds per replica (as a container's resources are), cores and MiB.
    pub min_cpu: f64,
    pub max_cpu: f64,
    pub min_memory: f64,
    pub max_memory: f64,
    /// What the quota did in the latest intervals (empty: no quota read).
    pub throttling: Vec<ThrottleReading>,
    /// CPU limit in force per replica, cores (the quota the lab's cgroup
    /// has, or the container's `limits.cpu` on a cluster).
    pub limit_cores: Option<f64>,
    /// Intervals the CPU per request has been estimated over: below
    /// [`SETTLED_ESTIMATES`] the limit in force is not lowered.
    pub demand_estimates: usize,
}

impl ServiceUsage {
    /// The variability to plan with and where it comes from. Where the
    /// quota throttled some interval: the largest variability the kernel's
    /// counts over all the kept intervals, throttled and quiet, do not rule
    /// out ([`variability_bound_from_periods`]; above or below the
    /// configured one: the kernel's count wins). Only intervals without
    /// throttling: the configured one, or less where so many quiet periods
    /// rule it out ([`variability_bound_from_quiet`]).
    pub fn planned_variability(&self, configured: f64) -> (f64, VariabilitySource) {
        let Some(demand) = self.demand_s else {
            return (configured, VariabilitySource::Configured);
        };
        if self.throttling.iter().any(|r| r.share > 0.0) {
            let counts: Vec<PeriodCount> = self
                .throttling
                .iter()
                .map(|r| PeriodCount {
                    rps: r.rps,
                    limit_cores: r.limit_cores,
                    periods: r.periods,
                    throttled: (r.share * r.periods).round(),
                })
                .collect();
            if let Some(v) = variability_bound_from_periods(demand, &counts) {
                return (v, VariabilitySource::Throttled);
            }
        }
        let quiet: Vec<QuietInterval> = self
            .throttling
            .iter()
            .filter(|r| r.share == 0.0)
            .map(|r| QuietInterval {
                rps: r.rps,
                limit_cores: r.limit_cores,
                periods: r.periods,
            })
            .collect();
        match variability_bound_from_quiet(demand, &quiet) {
            Some(bound) if bound < configured => (bound, VariabilitySource::Quiet),
            _ => (configured, VariabilitySource::Configured),
        }
    }

    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.service, self.namespace)
    }
}

/// Where the variability a service is planned with comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariabilitySource {
    Configured,
    /// Fitted to the throttled periods the kernel counted.
    Throttled,
    /// Bounded by periods the kernel counted none throttled in.
    Quiet,
}

impl VariabilitySource {
    fn says(self) -> &'static str {
        match self {
            VariabilitySource::Configured => " configured",
            VariabilitySource::Throttled => {
                " at most, from the quota's throttled and quiet periods measured"
            }
            VariabilitySource::Quiet => {
                " at most, from periods measured without throttling under the quota"
            }
        }
    }
}

/// A chain as the allocation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainLoad {
    pub name: String,
    pub slo_ms: f64,
    pub percentile: f64,
    pub priority: Priority,
    /// Services the chain's requests went through (measured).
    pub services: Vec<String>,
    /// Median end-to-end latency measured, ms.
    pub median_ms: Option<f64>,
}

/// The plan: objects to write and what they rest on.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    pub objects: Vec<DesiredObject>,
    pub report: Value,
}

/// The chains' objectives for the managed services: each chain's SLO less
/// the median latency the managed services' work does not explain.
pub fn chain_objectives(chains: &[ChainLoad], models: &[ServiceModel]) -> Vec<ChainObjective> {
    chains
        .iter()
        .filter_map(|c| {
            let managed: Vec<&ServiceModel> = c
                .services
                .iter()
                .filter_map(|s| models.iter().find(|m| &m.name == s))
                .collect();
            if managed.is_empty() {
                return None;
            }
            let work_ms: f64 = managed.iter().map(|m| m.demand_s * 1e3).sum();
            let overhead = c.median_ms.map_or(0.0, |m| (m - work_ms).max(0.0));
            Some(ChainObjective {
                name: c.name.clone(),
                slo_ms: (c.slo_ms - overhead).max(1.0),
                percentile: c.percentile,
                priority: c.priority,
                services: managed.iter().map(|m| m.name.clone()).collect(),
            })
        })
        .collect()
}

/// The Deployment a service's objects start from when the sink holds none
/// (a directory): a container without resources, so both the request and
/// the limit are written.
fn bare_deployment(u: &ServiceUsage) -> Value {
    json!({
        "metadata": {"name": u.deployment, "namespace": u.namespace},
        "spec": {"template": {"spec": {"containers": [{"name": u.container}]}}}
    })
}

/// The resources every managed service should have. `live` holds the
/// Deployments the sink has, by (namespace, name); `autoscalers` the
/// namespaces' autoscalers.
pub fn desired_resources(
    services: &[ServiceUsage],
    chains: &[ChainLoad],
    variability: f64,
    live: &BTreeMap<(String, String), Value>,
    autoscalers: &BTreeMap<String, Autoscalers>,
) -> Sizing {
    let mut report = serde_json::Map::new();
    // Once per service: the model and the reason both use it.
    let planned: BTreeMap<&str, (f64, VariabilitySource)> = services
        .iter()
        .map(|u| (u.service.as_str(), u.planned_variability(variability)))
        .collect();
    let models: Vec<ServiceModel> = services
        .iter()
        .filter_map(|u| {
            Some(ServiceModel {
                name: u.service.clone(),
                demand_s: u.demand_s.filter(|d| d.is_finite() && *d > 0.0)?,
                fixed_ms: 0.0,
                variability: planned[u.service.as_str()].0,
                rps: u.rps.max(0.0),
                replicas: u.replicas.max(1),
                min_cpu: u.min_cpu * u.replicas.max(1) as f64,
                max_cpu: u.max_cpu * u.replicas.max(1) as f64,
            })
        })
        .collect();
    let waiting: Vec<&str> = services
        .iter()
        .filter(|u| !models.iter().any(|m| m.name == u.service))
        .map(|u| u.service.as_str())
        .collect();
    report.insert("not_measured_yet".into(), json!(waiting));
    let objectives = chain_objectives(chains, &models);
    let allocation = if models.is_empty() {
        None
    } else {
        match allocate(&models, &objectives) {
            Ok(a) => Some(a),
            Err(e) => {
                report.insert("error".into(), json!(e.to_string()));
                None
            }
        }
    };
    let Some(allocation) = allocation else {
        return Sizing {
            objects: Vec::new(),
            report: Value::Object(report),
        };
    };
    // Down at most a step a round from the limit in force: the throttling
    // of the lower quota is measured before the next step is taken (the
    // model's floor rests on a variability the quota's own counter corrects).
    let mut stepped = Vec::new();
    let mut cores = allocation.cores.clone();
    for u in services {
        if let (Some(c), Some(now)) = (cores.get_mut(&u.service), u.limit_cores) {
            let step = if u.demand_estimates < SETTLED_ESTIMATES {
                0.0
            } else {
                MAX_STEP_DOWN
            };
            let lowest =
                (now * u.replicas.max(1) as f64 * (1.0 - step) / STEP_CORES).ceil() * STEP_CORES;
            let lowest = lowest.min(u.max_cpu * u.replicas.max(1) as f64);
            if *c < lowest - 1e-9 {
                *c = lowest;
                stepped.push(u.service.clone());
            }
        }
    }
    let allocation = if stepped.is_empty() {
        allocation
    } else {
        judge(&models, &objectives, cores)
    };
    report.insert("stepped_down_at_most".into(), json!(stepped));
    report.insert(
        "chains".into(),
        json!(objectives
            .iter()
            .map(|o| (
                o.name.clone(),
                json!({
                    "objective_for_cpu_ms": o.slo_ms,
                    "percentile": o.percentile,
                    "services": o.services,
                    "predicted": allocation.chains.get(&o.name),
                })
            ))
            .collect::<BTreeMap<_, _>>()),
    );
    report.insert("feasible".into(), json!(allocation.feasible));
    report.insert("binding_limits".into(), json!(allocation.binding));
    report.insert("fairness".into(), json!(allocation.fairness));
    let mut per_service = serde_json::Map::new();
    let mut objects = Vec::new();
    for u in services {
        let (Some(model), Some(&cores)) = (
            models.iter().find(|m| m.name == u.service),
            allocation.cores.get(&u.service),
        ) else {
            continue;
        };
        let through: Vec<&str> = objectives
            .iter()
            .filter(|o| o.services.contains(&u.service))
            .map(|o| o.name.as_str())
            .collect();
        let cpu_reason = format!(
            "{cores:.2} cores over {} replica(s): least total CPU keeping chains {} within their \
             objectives ({:.2} ms CPU per request measured, {:.1} req/s planned, utilisation {:.0} %, \
             variability {:.2}{}){}{}",
            u.replicas.max(1),
            through.join(", "),
            model.demand_s * 1e3,
            model.rps,
            100.0 * model.rps * model.demand_s / cores,
            model.variability,
            planned[u.service.as_str()].1.says(),
            if stepped.contains(&u.service) && u.demand_estimates < SETTLED_ESTIMATES {
                format!(
                    "; held at the {:.2} cores per replica in force until CPU per request is \
                     estimated over {SETTLED_ESTIMATES} intervals ({} so far)",
                    u.limit_cores.unwrap_or_default(),
                    u.demand_estimates
                )
            } else if stepped.contains(&u.service) {
                format!(
                    "; lowered at most {:.0} % a round from the {:.2} cores per replica in force",
                    100.0 * MAX_STEP_DOWN,
                    u.limit_cores.unwrap_or_default()
                )
            } else {
                String::new()
            },
            if allocation.binding.contains(&u.service) {
                "; max_cpu binds: a chain through it misses its objective"
            } else {
                ""
            }
        );
        let memory = memory_allocation(&u.memory_mib, u.min_memory, u.max_memory);
        let mut entry = json!({
            "cores": cores,
            "demand_ms": model.demand_s * 1e3,
            "planned_rps": model.rps,
            "variability": model.variability,
            "throttled_share": u.throttling.last().map(|r| r.share),
            "limit_in_force_per_replica": u.limit_cores,
            "memory_mib": memory.as_ref().map(|m| m.mib),
        });
        let scalers = autoscalers.get(&u.namespace).cloned().unwrap_or_default();
        if let Some(why) = autoscaler_conflict(&u.deployment, &scalers.hpas, &scalers.vpas) {
            entry["written"] = json!(false);
            entry["why_not"] = json!(format!("{why}; recommending only"));
            per_service.insert(u.service.clone(), entry);
            continue;
        }
        let per_pod = cores / u.replicas.max(1) as f64;
        entry["cores_per_replica"] = json!(per_pod);
        let base = live
            .get(&(u.namespace.clone(), u.deployment.clone()))
            .cloned()
            .unwrap_or_else(|| bare_deployment(u));
        let body = resources_apply(
            &base,
            &u.container,
            ContainerAllocation {
                cpu: Some(per_pod),
                memory_mib: memory.as_ref().map(|m| m.mib),
            },
        );
        let object = match body {
            Ok(o) => o,
            Err(e) => {
                entry["written"] = json!(false);
                entry["why_not"] = json!(e.to_string());
                per_service.insert(u.service.clone(), entry);
                continue;
            }
        };
        let field = format!("template.spec.containers[{}].resources", u.container);
        let mut reasons = BTreeMap::from([(format!("{field}.cpu"), cpu_reason)]);
        if let Some(m) = &memory {
            reasons.insert(
                format!("{field}.memory"),
                format!(
                    "{:.0} MiB: working set's 90th percentile + 15 %, never below its peak + 15 %{}",
                    m.mib,
                    if m.above_max {
                        " (above max_memory: the service was seen to need more)"
                    } else {
                        ""
                    }
                ),
            );
        }
        entry["written"] = json!(true);
        per_service.insert(u.service.clone(), entry);
        objects.push(DesiredObject {
            kind: Kind::Deployment,
            namespace: u.namespace.clone(),
            name: u.deployment.clone(),
            host: u.host(),
            object,
            reasons,
        });
    }
    report.insert("services".into(), Value::Object(per_service));
    Sizing {
        objects,
        report: Value::Object(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(service: &str, demand_ms: Option<f64>, rps: f64) -> ServiceUsage {
        ServiceUsage {
            service: service.into(),
            namespace: "bookinfo".into(),
            deployment: format!("{service}-v1"),
            container: service.into(),
            demand_s: demand_ms.map(|d| d / 1e3),
            rps,
            memory_mib: vec![40.0, 42.0, 50.0],
            replicas: 1,
            min_cpu: 0.05,
            max_cpu: 2.0,
            min_memory: 32.0,
            max_memory: 512.0,
            throttling: Vec::new(),
            limit_cores: None,
            demand_estimates: SETTLED_ESTIMATES,
        }
    }

    fn chain(name: &str, slo_ms: f64, services: &[&str], median_ms: f64) -> ChainLoad {
        ChainLoad {
            name: name.into(),
            slo_ms,
            percentile: 99.0,
            priority: Priority::Normal,
            services: services.iter().map(|s| s.to_string()).collect(),
            median_ms: Some(median_ms),
        }
    }

    #[test]
    fn the_median_not_explained_by_cpu_work_comes_off_the_objective() {
        let models = vec![ServiceModel {
            name: "ratings".into(),
            demand_s: 0.004,
            fixed_ms: 0.0,
            variability: 0.4,
            rps: 50.0,
            replicas: 1,
            min_cpu: 0.05,
            max_cpu: 2.0,
        }];
        // 10 ms median, 4 of it ratings' work: 6 ms are hops and the
        // unmanaged productpage, which cores for ratings cannot buy.
        let o = chain_objectives(
            &[chain("r", 50.0, &["productpage", "ratings"], 10.0)],
            &models,
        );
        assert_eq!(o.len(), 1);
        assert!((o[0].slo_ms - 44.0).abs() < 1e-9, "{o:?}");
        assert_eq!(o[0].services, vec!["ratings"]);
        // A chain through no managed service is not the allocation's.
        assert!(chain_objectives(&[chain("p", 50.0, &["details"], 10.0)], &models).is_empty());
    }

    #[test]
    fn managed_services_get_deployment_objects_with_reasons_and_autoscaled_ones_do_not() {
        let services = vec![
            usage("ratings", Some(4.0), 50.0),
            usage("reviews", Some(2.0), 50.0),
            usage("details", None, 50.0),
        ];
        let chains = vec![chain("product", 100.0, &["reviews", "ratings"], 12.0)];
        let hpa = json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "reviews", "namespace": "bookinfo"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "reviews-v1"}}});
        let scalers = BTreeMap::from([(
            "bookinfo".to_string(),
            Autoscalers {
                hpas: vec![hpa],
                vpas: vec![],
            },
        )]);
        let s = desired_resources(&services, &chains, 0.4, &BTreeMap::new(), &scalers);
        assert_eq!(s.objects.len(), 1, "{:#}", s.report);
        let o = &s.objects[0];
        assert_eq!((o.kind, o.name.as_str()), (Kind::Deployment, "ratings-v1"));
        assert_eq!(o.host, "ratings.bookinfo.svc.cluster.local");
        let res = &o.object["spec"]["template"]["spec"]["containers"][0]["resources"];
        let cores =
            crate::plan::deployment::parse_cpu(res["limits"]["cpu"].as_str().unwrap()).unwrap();
        // At least what keeps utilisation at 90 % of 50 × 4 ms, at most max_cpu.
        assert!((0.2 / 0.9..=2.0).contains(&cores), "{res}");
        assert_eq!(res["requests"]["cpu"], res["limits"]["cpu"]);
        assert_eq!(res["limits"]["memory"], "58Mi", "p90 50 MiB + 15 %");
        assert!(o.reasons["template.spec.containers[ratings].resources.cpu"]
            .contains("4.00 ms CPU per request"));
        assert_eq!(s.report["services"]["reviews"]["written"], false);
        assert!(s.report["services"]["reviews"]["why_not"]
            .as_str()
            .unwrap()
            .contains("HorizontalPodAutoscaler reviews"));
        assert_eq!(s.report["not_measured_yet"], json!(["details"]));
    }

    #[test]
    fn each_replica_gets_its_share_of_the_service() {
        let one = desired_resources(
            &[usage("ratings", Some(4.0), 100.0)],
            &[chain("r", 100.0, &["ratings"], 6.0)],
            0.4,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let mut three = usage("ratings", Some(4.0), 100.0);
        three.replicas = 3;
        let three = desired_resources(
            &[three],
            &[chain("r", 100.0, &["ratings"], 6.0)],
            0.4,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        let total = |s: &Sizing| s.report["services"]["ratings"]["cores"].as_f64().unwrap();
        let pod = |s: &Sizing| {
            s.report["services"]["ratings"]["cores_per_replica"]
                .as_f64()
                .unwrap()
        };
        // Each replica's quota covers its own period's burst and request:
        // three replicas need more in all than one at the same load.
        assert!(
            total(&three) > total(&one),
            "{} {}",
            total(&three),
            total(&one)
        );
        assert!((pod(&three) * 3.0 - total(&three)).abs() < 1e-9);
    }

    fn cpu_of(s: &Sizing, service: &str) -> (f64, String) {
        let o = s
            .objects
            .iter()
            .find(|o| o.name == format!("{service}-v1"))
            .unwrap();
        let res = &o.object["spec"]["template"]["spec"]["containers"][0]["resources"];
        (
            crate::plan::deployment::parse_cpu(res["limits"]["cpu"].as_str().unwrap()).unwrap(),
            o.reasons[&format!("template.spec.containers[{service}].resources.cpu")].clone(),
        )
    }

    /// `u` alone on a 100 ms chain, with the configured variability 0.4.
    fn plan(u: &ServiceUsage) -> Sizing {
        desired_resources(
            std::slice::from_ref(u),
            &[chain("r", 100.0, &["ratings"], 6.0)],
            0.4,
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
    }

    #[test]
    fn throttling_measured_under_the_quota_raises_the_variability_planned_with() {
        let calm = usage("ratings", Some(4.0), 50.0);
        let (calm_cores, calm_reason) = cpu_of(&plan(&calm), "ratings");
        assert!(
            calm_reason.contains("variability 0.40 configured"),
            "{calm_reason}"
        );
        // The same quota throttled in 5 % of its periods: burstier than
        // configured, so the floor rises.
        let mut throttled = calm.clone();
        throttled.throttling = vec![ThrottleReading {
            share: 0.05,
            limit_cores: calm_cores,
            rps: 50.0,
            periods: 60.0,
        }];
        let (cores, reason) = cpu_of(&plan(&throttled), "ratings");
        assert!(cores > calm_cores, "{cores} vs {calm_cores}");
        assert!(
            reason.contains("from the quota's throttled and quiet periods measured"),
            "{reason}"
        );
        // One quiet minute (60 periods) rules out too little: the
        // configured variability stands.
        throttled.throttling[0].share = 0.0;
        assert_eq!(cpu_of(&plan(&throttled), "ratings").0, calm_cores);
        // Ten quiet intervals of 600 periods under that quota rule it out:
        // smoother than configured, so the floor comes down.
        let mut quiet = calm.clone();
        quiet.throttling = vec![
            ThrottleReading {
                share: 0.0,
                limit_cores: calm_cores,
                rps: 50.0,
                periods: 600.0,
            };
            10
        ];
        let (quiet_cores, reason) = cpu_of(&plan(&quiet), "ratings");
        assert!(quiet_cores < calm_cores, "{quiet_cores} vs {calm_cores}");
        assert!(reason.contains("without throttling"), "{reason}");
        // A throttled interval among them is weighed by its periods: it
        // lifts the plan above the quiet ones' but not to what it says
        // alone, while the same throttling in every interval lifts it more.
        quiet.throttling[0].share = 0.05;
        let (one, reason) = cpu_of(&plan(&quiet), "ratings");
        assert!(reason.contains("throttled and quiet periods"), "{reason}");
        let mut alone = quiet.clone();
        alone.throttling.truncate(1);
        let (alone_cores, _) = cpu_of(&plan(&alone), "ratings");
        assert!(
            quiet_cores < one && one < alone_cores,
            "{quiet_cores} < {one} < {alone_cores}"
        );
        quiet.throttling.iter_mut().for_each(|r| r.share = 0.05);
        let (every, _) = cpu_of(&plan(&quiet), "ratings");
        assert!(every > one && every > calm_cores, "{every} vs {one}");
    }

    #[test]
    fn cpu_comes_down_at_most_a_step_a_round_and_goes_up_at_once() {
        let mut u = usage("ratings", Some(4.0), 50.0);
        u.limit_cores = Some(2.0);
        let s = plan(&u);
        let (cores, reason) = cpu_of(&s, "ratings");
        assert!(
            (cores - 2.0 * (1.0 - MAX_STEP_DOWN)).abs() < 1e-9,
            "{cores}"
        );
        assert!(reason.contains("lowered at most 25 %"), "{reason}");
        assert_eq!(s.report["stepped_down_at_most"], json!(["ratings"]));
        // From below what the load needs it goes straight up.
        u.limit_cores = Some(0.05);
        let (up, reason) = cpu_of(&plan(&u), "ratings");
        assert!(up > 0.2 / 0.9, "{up}");
        assert!(!reason.contains("lowered"), "{reason}");
        // Before CPU per request has settled, nothing is lowered at all.
        u.limit_cores = Some(2.0);
        u.demand_estimates = 1;
        let (held, reason) = cpu_of(&plan(&u), "ratings");
        assert_eq!(held, 2.0);
        assert!(reason.contains("held at the 2.00 cores"), "{reason}");
    }

    #[test]
    fn a_live_deployment_keeps_its_request_to_limit_ratio() {
        let services = vec![usage("ratings", Some(4.0), 50.0)];
        let chains = vec![chain("r", 100.0, &["ratings"], 6.0)];
        let live = BTreeMap::from([(
            ("bookinfo".to_string(), "ratings-v1".to_string()),
            json!({"metadata": {"name": "ratings-v1", "namespace": "bookinfo"},
                   "spec": {"template": {"spec": {"containers": [{"name": "ratings",
                     "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}}]}}}}),
        )]);
        let s = desired_resources(&services, &chains, 0.4, &live, &BTreeMap::new());
        let res = &s.objects[0].object["spec"]["template"]["spec"]["containers"][0]["resources"];
        let limit =
            crate::plan::deployment::parse_cpu(res["limits"]["cpu"].as_str().unwrap()).unwrap();
        let request =
            crate::plan::deployment::parse_cpu(res["requests"]["cpu"].as_str().unwrap()).unwrap();
        assert!((request / limit - 0.25).abs() < 0.03, "{res}");
    }

    #[test]
    fn nothing_is_planned_before_anything_is_measured() {
        let s = desired_resources(
            &[usage("ratings", None, 50.0)],
            &[chain("r", 100.0, &["ratings"], 6.0)],
            0.4,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(s.objects.is_empty());
        assert_eq!(s.report["not_measured_yet"], json!(["ratings"]));
    }
}
