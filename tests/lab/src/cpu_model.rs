//! How well the CPU allocation's latency model
//! ([`meshtune_agent::plan::resources`]) predicts a real service under a
//! real CPU limit: one CPU-bound replica process, its cgroup quota swept
//! over a grid of cores × utilisations, open-loop load at each point. The
//! model's CPU per request is measured; its variability and time off the
//! CPU are fitted to the points' p50 and p99 together, and it is judged by
//! how well it then predicts their p99 (R² of log p99, mean error in ms).

use crate::replicas::Replica;
use crate::services::{one_replica, ServiceSpec};
use meshtune_agent::plan::resources::ServiceModel;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// CPU per request of the swept service, µs.
    pub cpu_us: u64,
    /// CPU limits to try, cores.
    pub quotas: Vec<f64>,
    /// Offered load at each limit, as a share of what the limit can serve.
    pub utilisations: Vec<f64>,
    /// Measured seconds per point.
    pub seconds: f64,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            cpu_us: 2000,
            quotas: vec![0.25, 0.5, 1.0],
            utilisations: vec![0.2, 0.45, 0.7],
            seconds: 6.0,
        }
    }
}

/// One measured point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub cores: f64,
    pub rps: f64,
    pub requests: usize,
    pub failed: usize,
    /// CPU the process used per request, seconds.
    pub cpu_s_per_request: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The model fitted to the points, and how well it predicts their p99.
#[derive(Debug, Clone)]
pub struct Fit {
    pub demand_s: f64,
    pub fixed_ms: f64,
    pub variability: f64,
    /// Predicted p99 per point, ms.
    pub predicted_p99_ms: Vec<f64>,
    /// R² of log p99 (predicted against measured).
    pub r2_log_p99: f64,
    pub mae_p99_ms: f64,
}

fn model(demand_s: f64, fixed_ms: f64, variability: f64, p: &Point) -> ServiceModel {
    ServiceModel {
        name: "swept".into(),
        demand_s,
        fixed_ms,
        variability,
        rps: p.rps,
        replicas: 1,
        min_cpu: 0.0,
        max_cpu: p.cores,
    }
}

/// Fits `demand_s` (CPU used ÷ requests over every point), then
/// `variability` and `fixed_ms` together: the pair whose predicted p50
/// and p99 are nearest the measured ones in log terms (a search over a
/// grid, then a finer one around the best); predicts p99.
pub fn fit(points: &[Point]) -> Fit {
    let requests: f64 = points.iter().map(|p| p.requests as f64).sum();
    let cpu: f64 = points
        .iter()
        .map(|p| p.cpu_s_per_request * p.requests as f64)
        .sum();
    let demand_s = if requests > 0.0 { cpu / requests } else { 0.0 };
    let error = |v: f64, fixed: f64| -> f64 {
        points
            .iter()
            .map(|p| {
                let m = model(demand_s, fixed, v, p);
                let d = |pred: f64, seen: f64| (pred.max(1e-3).ln() - seen.max(1e-3).ln()).powi(2);
                d(m.quantile_ms(p.cores, 99.0), p.p99_ms)
                    + d(m.quantile_ms(p.cores, 50.0), p.p50_ms)
            })
            .sum()
    };
    let max_fixed = points
        .iter()
        .map(|p| p.p50_ms - demand_s * 1e3)
        .fold(0.0f64, f64::max);
    // Variability on a log scale (0.01–10), fixed_ms on a linear one.
    let (mut v_lo, mut v_hi, mut f_lo, mut f_hi) = (0.01f64.ln(), 10f64.ln(), 0.0, max_fixed);
    let (mut variability, mut fixed_ms) = (1.0, 0.0);
    for _ in 0..4 {
        let mut best = f64::INFINITY;
        for i in 0..=40 {
            let v = (v_lo + (v_hi - v_lo) * i as f64 / 40.0).exp();
            for j in 0..=40 {
                let f = f_lo + (f_hi - f_lo) * j as f64 / 40.0;
                let e = error(v, f);
                if e < best {
                    (best, variability, fixed_ms) = (e, v, f);
                }
            }
        }
        let (vs, fs) = ((v_hi - v_lo) / 20.0, (f_hi - f_lo) / 20.0);
        (v_lo, v_hi) = (variability.ln() - vs, variability.ln() + vs);
        (f_lo, f_hi) = ((fixed_ms - fs).max(0.0), fixed_ms + fs);
    }
    let predicted: Vec<f64> = points
        .iter()
        .map(|p| model(demand_s, fixed_ms, variability, p).quantile_ms(p.cores, 99.0))
        .collect();
    let logs: Vec<(f64, f64)> = points
        .iter()
        .zip(&predicted)
        .map(|(p, q)| (p.p99_ms.max(1e-3).ln(), q.max(1e-3).ln()))
        .collect();
    let mean = logs.iter().map(|(m, _)| m).sum::<f64>() / logs.len().max(1) as f64;
    let ss_tot: f64 = logs.iter().map(|(m, _)| (m - mean).powi(2)).sum();
    let ss_res: f64 = logs.iter().map(|(m, q)| (m - q).powi(2)).sum();
    let mae = points
        .iter()
        .zip(&predicted)
        .map(|(p, q)| (p.p99_ms - q).abs())
        .sum::<f64>()
        / points.len().max(1) as f64;
    Fit {
        demand_s,
        fixed_ms,
        variability,
        predicted_p99_ms: predicted,
        r2_log_p99: if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            0.0
        },
        mae_p99_ms: mae,
    }
}

/// Poisson arrivals at `rps` for `seconds` (exponential gaps from a seeded
/// generator: many independent users, the arrivals the model assumes);
/// each request's latency (ms) and status (0: no answer).
async fn poisson(port: u16, rps: f64, seconds: f64, seed: u64) -> Vec<(f64, u16)> {
    let client = crate::http::client();
    let url = format!("http://127.0.0.1:{port}/x");
    let mut uniform = crate::load::uniforms(seed);
    let start = tokio::time::Instant::now();
    let mut at = 0.0;
    let mut set = tokio::task::JoinSet::new();
    loop {
        at += -uniform().ln() / rps.max(1e-6);
        if at >= seconds {
            break;
        }
        // Due times are absolute, so the rate holds whatever the timer's
        // resolution: requests due together leave together.
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        let (c, u) = (client.clone(), url.clone());
        set.spawn(async move {
            let t = std::time::Instant::now();
            let status = match tokio::time::timeout(
                crate::load::CLIENT_TIMEOUT,
                crate::http::get(&c, &u, &[]),
            )
            .await
            {
                Ok(Ok((s, _))) => s,
                _ => 0,
            };
            (t.elapsed().as_secs_f64() * 1e3, status)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r.ok());
    }
    out
}

/// Runs the sweep; `progress` is told each point as it starts.
pub async fn sweep(o: &SweepOptions, progress: impl Fn(&str)) -> anyhow::Result<Vec<Point>> {
    let dir = tempfile::tempdir()?;
    let spec = ServiceSpec {
        name: "cpu-bound",
        capacity: None,
        base_us: o.cpu_us,
        tail_us: 0,
        cpu_us: o.cpu_us,
        routes: vec![],
        replicas: one_replica(),
    };
    let port = crate::mesh::free_port()?;
    let mut replica =
        tokio::task::block_in_place(|| Replica::start(dir.path(), &spec, 0, port, None))?;
    let demand = o.cpu_us as f64 / 1e6;
    let total = o.quotas.len() * o.utilisations.len();
    let mut points = Vec::new();
    for &cores in &o.quotas {
        replica.limit_cpu(Some(cores))?;
        for &u in &o.utilisations {
            let rps = u * cores / demand;
            progress(&format!(
                "point {}/{total}: {cores} cores, {rps:.0} req/s ({:.0} % of what they serve)",
                points.len() + 1,
                u * 100.0
            ));
            // A second of the same load first: the queue reaches its level.
            let _ = poisson(port, rps, 1.0, points.len() as u64 * 2 + 1).await;
            let c0 = replica.cpu_seconds().unwrap_or(0.0);
            let records = poisson(port, rps, o.seconds, points.len() as u64 * 2 + 2).await;
            let c1 = replica.cpu_seconds().unwrap_or(c0);
            let mut ms: Vec<f64> = records.iter().map(|r| r.0).collect();
            ms.sort_by(f64::total_cmp);
            let requests = records.len();
            points.push(Point {
                cores,
                rps,
                requests,
                failed: records.iter().filter(|r| r.1 != 200).count(),
                cpu_s_per_request: if requests > 0 {
                    (c1 - c0) / requests as f64
                } else {
                    0.0
                },
                p50_ms: crate::eval::verdict::percentile(&ms, 50.0),
                p99_ms: crate::eval::verdict::percentile(&ms, 99.0),
            });
        }
    }
    replica.limit_cpu(None)?;
    Ok(points)
}

/// The sweep's table and its last line.
pub fn report(points: &[Point], f: &Fit) -> String {
    let mut s =
        String::from("cores   req/s  requests  failed  cpu ms/req  p50 ms  p99 ms  model p99 ms\n");
    for (p, q) in points.iter().zip(&f.predicted_p99_ms) {
        s.push_str(&format!(
            "{:>5.2} {:>7.0} {:>9} {:>7} {:>11.2} {:>7.1} {:>7.1} {:>13.1}\n",
            p.cores,
            p.rps,
            p.requests,
            p.failed,
            p.cpu_s_per_request * 1e3,
            p.p50_ms,
            p.p99_ms,
            q
        ));
    }
    s.push_str(&format!(
        "cpu-model points={} demand_ms={:.2} fixed_ms={:.2} variability={:.2} r2_log_p99={:.3} mae_p99_ms={:.1}\n",
        points.len(),
        f.demand_s * 1e3,
        f.fixed_ms,
        f.variability,
        f.r2_log_p99,
        f.mae_p99_ms
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_a_model_that_made_the_points() {
        // Points the model itself would measure: the fit gives it back.
        let (demand_s, fixed_ms, variability) = (0.002, 0.5, 0.4);
        let points: Vec<Point> = [(0.5, 50.0), (0.5, 150.0), (1.0, 300.0), (1.0, 100.0)]
            .iter()
            .map(|&(cores, rps)| {
                let m = ServiceModel {
                    name: "x".into(),
                    demand_s,
                    fixed_ms,
                    variability,
                    rps,
                    replicas: 1,
                    min_cpu: 0.0,
                    max_cpu: cores,
                };
                Point {
                    cores,
                    rps,
                    requests: 1000,
                    failed: 0,
                    cpu_s_per_request: demand_s,
                    p50_ms: m.quantile_ms(cores, 50.0),
                    p99_ms: m.quantile_ms(cores, 99.0),
                }
            })
            .collect();
        let f = fit(&points);
        assert!((f.demand_s - demand_s).abs() < 1e-12);
        assert!((f.fixed_ms - fixed_ms).abs() < 0.01, "{}", f.fixed_ms);
        assert!(
            (f.variability - variability).abs() < 0.01,
            "{}",
            f.variability
        );
        assert!(f.r2_log_p99 > 0.999 && f.mae_p99_ms < 0.05, "{f:?}");
        assert!(report(&points, &f)
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("cpu-model points=4")));
    }
}
