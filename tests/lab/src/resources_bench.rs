//! `meshtune-lab bench resources`: the same mesh and load under three CPU
//! policies, each service's replicas limited by a cgroup quota:
//! - `static-resources`: twice the CPU each service used in its busiest
//!   second (the usual generous deployment: 2 × peak);
//! - `vpa-like`: the 90th percentile of its per-second usage plus 15 %
//!   (what VPA's recommender targets), SLO-blind;
//! - `meshtune-resources`: the least total CPU that meets every chain's
//!   objective under the model of [`meshtune_agent::plan::resources`],
//!   fitted from the calibration run.
//!
//! A calibration run without limits measures, per service, the CPU its
//! replicas used per request (`/proc`) and its request rate, and per chain
//! the median latency the CPU work does not explain (hops, sidecars), which
//! the allocation keeps out of the chain's objective. Then each policy runs
//! the same load; windows of `window_s` are judged per chain as the eval
//! judges them ([`crate::eval::verdict`]).

use crate::eval::verdict::{chain_windows, ChainWindow, Objective, Sample};
use crate::load::open_loop_recorded;
use crate::mesh::{Mesh, MeshOptions, CHAINS};
use crate::services::{self, ServiceSpec};
use meshtune_agent::plan::resources::{allocate, jain, ChainObjective, ServiceModel};
use meshtune_filter_core::control::Priority;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ResourcesOptions {
    /// Offered load, requests per second (both chains, half each).
    pub rps: f64,
    /// Seconds of calibration and of each policy's run.
    pub seconds: f64,
    /// Verdict window, seconds.
    pub window_s: f64,
    /// Waiting variability the model assumes (`bench cpu-model` fits it).
    pub variability: f64,
}

impl Default for ResourcesOptions {
    fn default() -> Self {
        ResourcesOptions {
            rps: 60.0,
            seconds: 30.0,
            window_s: 5.0,
            variability: 0.4,
        }
    }
}

/// The services and which chains go through them (by the routes).
fn chain_services(specs: &[ServiceSpec], entry: &str, path: &str) -> Vec<String> {
    let mut out = vec![entry.to_owned()];
    let mut queue = vec![(entry.to_owned(), path.to_owned())];
    while let Some((svc, p)) = queue.pop() {
        let Some(spec) = specs.iter().find(|s| s.name == svc) else {
            continue;
        };
        for r in spec.routes.iter().filter(|r| p.starts_with(r.prefix)) {
            for c in &r.calls {
                if !out.iter().any(|o| o == c.service) {
                    out.push(c.service.to_owned());
                }
                queue.push((c.service.to_owned(), c.path.to_owned()));
            }
        }
    }
    out
}

/// CPU-bound Bookinfo: each request's work is all CPU, no tail.
pub fn cpu_bound_services() -> Vec<ServiceSpec> {
    let mut s = services::bookinfo();
    for svc in &mut s {
        svc.cpu_us = svc.base_us;
        svc.tail_us = 0;
        svc.capacity = None;
    }
    s
}

#[derive(Debug, Clone)]
pub struct ArmResult {
    pub arm: &'static str,
    pub cores: BTreeMap<String, f64>,
    /// Quota × time, CPU-seconds.
    pub allocated_cpu_s: f64,
    pub used_cpu_s: f64,
    pub windows: Vec<ChainWindow>,
    pub violating: usize,
    pub fairness: f64,
}

struct Measured {
    samples: Vec<Sample>,
    used_cpu_s: BTreeMap<String, f64>,
    requests: BTreeMap<String, u64>,
    /// Per service, CPU-seconds used in each second.
    per_second: BTreeMap<String, Vec<f64>>,
    seconds: f64,
}

fn cpu_of(mesh: &Mesh, service: &str) -> f64 {
    mesh.replicas
        .values()
        .filter(|r| r.service == service)
        .filter_map(|r| r.cpu_seconds())
        .sum()
}

async fn run_load(mesh: &Mesh, o: &ResourcesOptions, names: &[&str]) -> Measured {
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let paths: Vec<(&str, u32)> = vec![("/productpage", 1), ("/api/v1/ratings", 1)];
    let before: BTreeMap<String, (f64, u64)> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                (cpu_of(mesh, n), mesh.service_stats(n).worked),
            )
        })
        .collect();
    let port = mesh.entry_port;
    let seconds = o.seconds;
    let rps = o.rps;
    let load = tokio::spawn(async move {
        let steps = seconds.ceil() as usize;
        open_loop_recorded(
            port,
            &vec![rps; steps],
            Duration::from_secs(1),
            &paths,
            &stop,
        )
        .await
    });
    // Per-second CPU of each service meanwhile (VPA's view of usage).
    let mut per_second: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut last: BTreeMap<String, f64> = before.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let t0 = Instant::now();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for n in names {
            let now = cpu_of(mesh, n);
            let prev = last.insert(n.to_string(), now).unwrap_or(now);
            per_second
                .entry(n.to_string())
                .or_default()
                .push((now - prev).max(0.0));
        }
    }
    let records = load.await.unwrap_or_default();
    let elapsed = t0.elapsed().as_secs_f64();
    let samples = records
        .iter()
        .map(|r| Sample {
            window: (r.at_s / o.window_s) as usize,
            chain: CHAINS
                .iter()
                .find(|(_, prefix, _)| r.path.starts_with(prefix))
                .map_or("?", |c| c.0)
                .to_owned(),
            ok: r.status == 200,
            latency_ms: r.latency_ms,
        })
        .collect();
    let mut used_cpu_s = BTreeMap::new();
    let mut requests = BTreeMap::new();
    for (n, (cpu0, worked0)) in &before {
        used_cpu_s.insert(n.clone(), (cpu_of(mesh, n) - cpu0).max(0.0));
        requests.insert(
            n.clone(),
            mesh.service_stats(n).worked.saturating_sub(*worked0),
        );
    }
    Measured {
        samples,
        used_cpu_s,
        requests,
        per_second,
        seconds: elapsed,
    }
}

fn objectives() -> Vec<Objective> {
    CHAINS
        .iter()
        .map(|(name, _, slo)| Objective {
            chain: name.to_string(),
            percentile: 99.0,
            slo_ms: *slo,
        })
        .collect()
}

/// Runs calibration and the three policies; `progress` hears each step.
pub async fn run(o: &ResourcesOptions, progress: impl Fn(&str)) -> anyhow::Result<Vec<ArmResult>> {
    let specs = cpu_bound_services();
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let mut mesh = Mesh::start(MeshOptions {
        services: specs.clone(),
        filter: false,
        ..MeshOptions::default()
    })
    .await?;
    progress("calibrating: no limits");
    let cal = run_load(&mesh, o, &names).await;
    let chains: Vec<(String, Vec<String>, f64)> = CHAINS
        .iter()
        .map(|(name, prefix, slo)| {
            (
                name.to_string(),
                chain_services(&specs, "productpage", prefix),
                *slo,
            )
        })
        .collect();
    // Per service: CPU per request and rate.
    let mut models = Vec::new();
    for n in &names {
        let req = cal.requests[*n].max(1) as f64;
        models.push(ServiceModel {
            name: n.to_string(),
            demand_s: (cal.used_cpu_s[*n] / req).max(1e-6),
            fixed_ms: 0.0,
            variability: o.variability,
            rps: req / cal.seconds,
            min_cpu: 0.05,
            max_cpu: 2.0,
        });
    }
    // Per chain: the median latency its services' own work does not
    // explain, kept out of the objective the allocation plans for.
    let mut chain_objectives = Vec::new();
    for (name, svcs, slo) in &chains {
        let mut ms: Vec<f64> = cal
            .samples
            .iter()
            .filter(|s| &s.chain == name && s.ok)
            .map(|s| s.latency_ms)
            .collect();
        ms.sort_by(f64::total_cmp);
        let p50 = crate::eval::verdict::percentile(&ms, 50.0);
        let work_ms: f64 = svcs
            .iter()
            .filter_map(|s| models.iter().find(|m| &m.name == s))
            .map(|m| m.demand_s * 1e3)
            .sum();
        let overhead = (p50 - work_ms).max(0.0);
        progress(&format!(
            "chain {name}: services {svcs:?}, p50 {p50:.1} ms unlimited, {work_ms:.1} ms of it CPU work"
        ));
        chain_objectives.push(ChainObjective {
            name: name.clone(),
            slo_ms: (slo - overhead).max(1.0),
            percentile: 99.0,
            priority: Priority::Normal,
            services: svcs.clone(),
        });
    }
    let usage_at = |n: &str, pct: f64| {
        let mut v = cal.per_second.get(n).cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        crate::eval::verdict::percentile(&v, pct)
    };
    let plan = allocate(&models, &chain_objectives)?;
    let policies: Vec<(&'static str, BTreeMap<String, f64>)> = vec![
        (
            "static-resources",
            names
                .iter()
                .map(|n| (n.to_string(), (2.0 * usage_at(n, 100.0)).max(0.05)))
                .collect(),
        ),
        (
            "vpa-like",
            names
                .iter()
                .map(|n| (n.to_string(), (1.15 * usage_at(n, 90.0)).max(0.05)))
                .collect(),
        ),
        ("meshtune-resources", plan.cores.clone()),
    ];
    let mut out = Vec::new();
    for (arm, cores) in policies {
        progress(&format!("{arm}: {cores:.2?}"));
        for (n, c) in &cores {
            mesh.limit_service_cpu(n, Some(*c))?;
        }
        let m = run_load(&mesh, o, &names).await;
        let windows = chain_windows(&m.samples, &objectives());
        let attainment: Vec<f64> = objectives()
            .iter()
            .map(|ob| {
                let (n, good) = windows
                    .iter()
                    .filter(|w| w.chain == ob.chain)
                    .fold((0, 0), |(n, g), w| (n + w.requests, g + w.good));
                meshtune_agent::data::attainment::attainment(n as u64, good as u64).unwrap_or(0.0)
            })
            .collect();
        out.push(ArmResult {
            arm,
            allocated_cpu_s: cores.values().sum::<f64>() * m.seconds,
            used_cpu_s: m.used_cpu_s.values().sum(),
            violating: windows.iter().filter(|w| w.violates).count(),
            fairness: jain(&attainment),
            windows,
            cores,
        });
    }
    for n in &names {
        mesh.limit_service_cpu(n, None)?;
    }
    Ok(out)
}

/// The table and the `resources …` line.
pub fn report(results: &[ArmResult]) -> String {
    let mut s = String::from(
        "arm                  windows  violating  cpu_allocated_s  cpu_used_s  fairness  cores\n",
    );
    for r in results {
        s.push_str(&format!(
            "{:<20} {:>7} {:>10} {:>16.1} {:>11.1} {:>9.3}  {}\n",
            r.arm,
            r.windows.len(),
            r.violating,
            r.allocated_cpu_s,
            r.used_cpu_s,
            r.fairness,
            r.cores
                .iter()
                .map(|(k, v)| format!("{k}={v:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let windows = results.first().map_or(0, |r| r.windows.len());
    let section = |f: &dyn Fn(&ArmResult) -> String| {
        results
            .iter()
            .map(|r| format!("{}={}", r.arm, f(r)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let fairness = results
        .iter()
        .find(|r| r.arm == "meshtune-resources")
        .map_or(0.0, |r| r.fairness);
    s.push_str(&format!(
        "resources windows={windows} cpu_allocated {} violating {} fairness meshtune-resources={fairness:.3}\n",
        section(&|r| format!("{:.1}", r.allocated_cpu_s)),
        section(&|r| r.violating.to_string()),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_go_through_the_services_their_routes_call() {
        let specs = services::bookinfo();
        assert_eq!(
            chain_services(&specs, "productpage", "/productpage"),
            vec!["productpage", "details", "reviews", "ratings"]
        );
        assert_eq!(
            chain_services(&specs, "productpage", "/api/v1/ratings"),
            vec!["productpage", "ratings"]
        );
    }
}
