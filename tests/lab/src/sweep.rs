//! `meshtune-lab sweep`: data for the configuration model, from real Envoy.
//! A seeded Latin hypercube over the load (level and trace segment), a
//! fault on one reviews replica, and the knobs meshtune writes for reviews
//! (the service every product-page request reaches, three replicas): its
//! DestinationRule's pool and outlier detection, its VirtualService's
//! timeout and retries, applied as a user's objects by the lab's control
//! plane. Each design point runs the lab with meshtune's filter measuring
//! (its data-path control off, the agent recommending: the knobs alone
//! decide) for a few trace minutes, the agent on trace time; each trace
//! minute is one row: what the agent observed of reviews over that minute
//! (its `/v1/chains` view of the hop), the knobs in force, the outcome.
//!
//! Rows are appended as each point finishes, so a stopped sweep resumes
//! where it stopped (points already in the file are skipped).

use crate::eval::verdict::percentile;
use crate::load::open_loop_recorded;
use crate::mesh::{Mesh, MeshOptions};
use crate::services::{bookinfo_with_versions, Fault, StatsSnapshot};
use anyhow::Context;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The product-page chain's objective, ms (the lab's).
pub const SLO_MS: f64 = 60.0;
/// The replica a fault is put on.
pub const FAULTY: &str = "reviews-2";

#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub points: usize,
    pub seed: u64,
    /// Trace minutes per point (one row each).
    pub minutes: usize,
    pub seconds_per_minute: f64,
    pub trace: PathBuf,
    /// Trace segments to draw from (start minutes); a point's segment is
    /// part of its cross-validation group.
    pub segments: Vec<usize>,
    pub out: PathBuf,
}

/// Which fault a point runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    None,
    /// The replica answers 500 to this share of requests.
    Errors(f64),
    /// The replica works this many times slower.
    Slow(f64),
    /// The replica is down.
    Down,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::None => "none",
            FaultKind::Errors(_) => "errors",
            FaultKind::Slow(_) => "slow",
            FaultKind::Down => "down",
        }
    }

    fn intensity(self) -> f64 {
        match self {
            FaultKind::Errors(s) => s,
            FaultKind::Slow(f) => f,
            FaultKind::None | FaultKind::Down => 0.0,
        }
    }
}

/// One design point: load, fault and knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: usize,
    pub peak_rps: f64,
    pub segment: usize,
    pub fault: FaultKind,
    pub http2_max_requests: u32,
    pub http1_max_pending: u32,
    pub max_retries: u32,
    /// 0: no outlier detection.
    pub consecutive_5xx: u32,
    /// 0: no route timeout.
    pub timeout_ms: u32,
    pub retry_attempts: u32,
    pub per_try_timeout_ms: u32,
}

/// splitmix64: a small seeded generator (the design must be reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` points of a Latin hypercube in `dims` dimensions: in each dimension
/// every one of the `n` strata holds exactly one point.
pub fn latin_hypercube(n: usize, dims: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = Rng(seed);
    let mut columns: Vec<Vec<f64>> = Vec::new();
    for _ in 0..dims {
        let mut strata: Vec<usize> = (0..n).collect();
        // Fisher–Yates.
        for i in (1..n).rev() {
            let j = (rng.next() * (i + 1) as f64) as usize;
            strata.swap(i, j.min(i));
        }
        columns.push(
            strata
                .into_iter()
                .map(|s| (s as f64 + rng.next()) / n as f64)
                .collect(),
        );
    }
    (0..n)
        .map(|i| columns.iter().map(|c| c[i]).collect())
        .collect()
}

fn log_scale(u: f64, lo: f64, hi: f64) -> f64 {
    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
}

/// The design: `o.points` points from the hypercube, mapped to the ranges
/// meshtune's knobs take (pools and timeouts on a log scale).
pub fn design(o: &SweepOptions) -> Vec<Point> {
    latin_hypercube(o.points, 11, o.seed)
        .into_iter()
        .enumerate()
        .map(|(id, u)| {
            let fault = match (u[2] * 4.0) as usize {
                0 => FaultKind::None,
                1 => FaultKind::Errors(0.05 + 0.45 * u[3]),
                2 => FaultKind::Slow(2.0 + 8.0 * u[3]),
                _ => FaultKind::Down,
            };
            Point {
                id,
                peak_rps: 20.0 + 100.0 * u[0],
                segment: o.segments[((u[1] * o.segments.len() as f64) as usize)
                    .min(o.segments.len().saturating_sub(1))],
                fault,
                http2_max_requests: log_scale(u[4], 2.0, 1024.0).round() as u32,
                http1_max_pending: log_scale(u[5], 1.0, 1024.0).round() as u32,
                max_retries: (u[6] * 20.0) as u32,
                consecutive_5xx: match (u[7] * 6.0) as u32 {
                    0 => 0,
                    k => [1, 2, 3, 5, 10][(k - 1) as usize],
                },
                timeout_ms: if u[8] < 0.25 {
                    0
                } else {
                    log_scale((u[8] - 0.25) / 0.75, 20.0, 1000.0).round() as u32
                },
                retry_attempts: (u[9] * 4.0) as u32,
                per_try_timeout_ms: log_scale(u[10], 10.0, 500.0).round() as u32,
            }
        })
        .collect()
}

/// The user's DestinationRule and VirtualService for reviews at `p`.
pub fn istio_objects(p: &Point) -> String {
    let mut dr = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {{http2MaxRequests: {}, http1MaxPendingRequests: {}, maxRetries: {}}}\n",
        p.http2_max_requests, p.http1_max_pending, p.max_retries.max(1)
    );
    if p.consecutive_5xx > 0 {
        dr.push_str(&format!(
            "    outlierDetection: {{consecutive5xxErrors: {}, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n",
            p.consecutive_5xx
        ));
    }
    let mut route = String::from("  - route: [{destination: {host: reviews}}]\n");
    if p.timeout_ms > 0 {
        route.push_str(&format!("    timeout: {}ms\n", p.timeout_ms));
    }
    if p.retry_attempts > 0 {
        route.push_str(&format!(
            "    retries: {{attempts: {}, perTryTimeout: {}ms, retryOn: \"5xx,connect-failure,reset\"}}\n",
            p.retry_attempts, p.per_try_timeout_ms
        ));
    } else {
        route.push_str("    retries: {attempts: 0}\n");
    }
    format!(
        "{dr}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{route}"
    )
}

/// The CSV header: one documented column per line (`#`), then the names.
pub const HEADER: &str = "\
# meshtune-lab sweep: one row per design point and trace minute. Knobs are reviews' (its DestinationRule and VirtualService).
# point: design point id; group: trace segment x fault kind (held out whole in cross-validation)
# segment: trace start minute; fault: none|errors|slow|down on reviews-2; fault_intensity: error share or slow factor (not a feature: the agent does not see it)
# minute: trace minute within the point
# obs_*: the agent's view of the reviews hop (server side) over the trace minute, as /v1/chains serves it: obs_rps (per wall second), obs_error_rate, obs_p50_ms, obs_p95_ms, obs_p99_ms
# obs_inflight: requests in reviews on average by Little's law (obs_rps x obs_p50_ms); obs_max_replica_error: largest share of one reviews replica's requests it answered with an error (each replica's sidecar sees it); obs_replicas_up: reviews replicas running
# knob_http2_max_requests, knob_http1_max_pending, knob_max_retries, knob_consecutive_5xx (0: off), knob_timeout_ms (0: none), knob_retry_attempts, knob_per_try_timeout_ms
# out_p99_ms: product-page chain p99 seen by the client; out_error_share: product-page requests failed; out_goodput: product-page requests answered 200 within 60 ms / sent; out_cpu_cores: CPU of services and sidecars
point,group,segment,fault,fault_intensity,minute,obs_rps,obs_error_rate,obs_p50_ms,obs_p95_ms,obs_p99_ms,obs_inflight,obs_max_replica_error,obs_replicas_up,knob_http2_max_requests,knob_http1_max_pending,knob_max_retries,knob_consecutive_5xx,knob_timeout_ms,knob_retry_attempts,knob_per_try_timeout_ms,out_p99_ms,out_error_share,out_goodput,out_cpu_cores
";

/// Points already in `path` (a resumed sweep skips them).
pub fn done_points(path: &Path) -> BTreeSet<usize> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("point,"))
                .filter_map(|l| l.split(',').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn reviews_stats(mesh: &Mesh) -> Vec<(String, StatsSnapshot, bool)> {
    mesh.replicas
        .iter()
        .filter(|(_, r)| r.service == "reviews")
        .map(|(n, r)| (n.clone(), r.stats().unwrap_or_default(), r.is_up()))
        .collect()
}

fn cpu_micros(mesh: &Mesh) -> u64 {
    let services: u64 = mesh
        .replicas
        .values()
        .filter_map(|r| r.pid())
        .map(crate::proc::cpu_micros)
        .sum();
    let sidecars: u64 = mesh
        .envoys
        .values()
        .map(|e| crate::proc::cpu_micros(e.child.id()))
        .sum();
    services + sidecars
}

/// The agent's view of the reviews hop on the product-page chain:
/// rps, error rate, p50, p95, p99 (zeros when it has none).
fn reviews_hop(chains: Option<&serde_json::Value>) -> [f64; 5] {
    let hop = chains
        .and_then(|c| crate::mesh::chain(c, "product-page"))
        .and_then(|c| c["hops"].as_array())
        .and_then(|hops| {
            hops.iter()
                .find(|h| h["service"] == "reviews" && h["direction"] == "inbound")
                .or_else(|| hops.iter().find(|h| h["service"] == "reviews"))
        });
    let f = |k: &str| hop.and_then(|h| h[k].as_f64()).unwrap_or(0.0);
    [
        f("rps"),
        f("error_rate"),
        f("p50_ms"),
        f("p95_ms"),
        f("p99_ms"),
    ]
}

/// Runs one point; returns its CSV rows.
pub async fn run_point(p: &Point, o: &SweepOptions) -> anyhow::Result<Vec<String>> {
    let istio = tempfile::tempdir()?;
    std::fs::write(istio.path().join("reviews.yaml"), istio_objects(p))?;
    let mut mesh = Mesh::start(MeshOptions {
        services: bookinfo_with_versions(),
        istio_config_dir: Some(istio.path().to_path_buf()),
        agent_window_secs: 60,
        agent_seconds_per_minute: Some(o.seconds_per_minute),
        ..MeshOptions::default()
    })
    .await?;
    let problems = mesh.control_plane.problems();
    anyhow::ensure!(problems.is_empty(), "point {}: {problems:?}", p.id);
    match p.fault {
        FaultKind::None => {}
        FaultKind::Errors(share) => mesh.replicas[FAULTY].set_fault(Fault {
            error_share: share,
            ..Fault::default()
        })?,
        FaultKind::Slow(factor) => mesh.replicas[FAULTY].set_fault(Fault {
            slow: factor,
            ..Fault::default()
        })?,
        FaultKind::Down => {
            if let Some(r) = mesh.replicas.get_mut(FAULTY) {
                r.kill();
            }
        }
    }
    let counts = crate::trace::read_counts(&o.trace)?;
    let rates = crate::trace::scaled(&counts, p.segment, o.minutes, p.peak_rps);
    let spm = o.seconds_per_minute;
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let port = mesh.entry_port;
    let load_rates = rates.clone();
    let load = tokio::spawn(async move {
        open_loop_recorded(
            port,
            &load_rates,
            Duration::from_secs_f64(spm),
            &crate::eval::LOAD_MIX,
            &stop,
        )
        .await
    });
    // One snapshot per trace minute boundary, with the agent's view of
    // the reviews hop over the minute just ended.
    let started = Instant::now();
    let mut snaps = vec![(reviews_stats(&mesh), cpu_micros(&mesh), 0.0)];
    let mut views = Vec::new();
    for m in 1..=o.minutes {
        let at = Duration::from_secs_f64(spm * m as f64);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        snaps.push((
            reviews_stats(&mesh),
            cpu_micros(&mesh),
            started.elapsed().as_secs_f64(),
        ));
        let chains = tokio::task::block_in_place(|| mesh.chains_json());
        views.push(reviews_hop(chains.as_ref()));
    }
    let records = load.await.context("the load generator")?;
    let mut rows = Vec::new();
    let group = format!("{}x{}", p.segment, p.fault.name());
    for m in 0..o.minutes {
        let (before, cpu0, t0) = &snaps[m];
        let (after, cpu1, t1) = &snaps[m + 1];
        let secs = (t1 - t0).max(1e-3);
        let mut max_err = 0.0f64;
        let mut up = 0;
        for (name, s1, is_up) in after {
            let s0 = before
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, s, _)| *s)
                .unwrap_or_default();
            // A killed replica's counters are gone: count nothing for it.
            let r = s1.received.saturating_sub(s0.received);
            let f = s1.faulted.saturating_sub(s0.faulted);
            if r > 0 {
                max_err = max_err.max(f as f64 / r as f64);
            }
            up += usize::from(*is_up);
        }
        let pp: Vec<&crate::load::Record> = records
            .iter()
            .filter(|r| r.step == m && r.path.starts_with("/productpage"))
            .collect();
        let mut ms: Vec<f64> = pp.iter().map(|r| r.latency_ms).collect();
        ms.sort_by(f64::total_cmp);
        let failed = pp.iter().filter(|r| r.failure.is_some()).count();
        let good = pp
            .iter()
            .filter(|r| r.failure.is_none() && r.latency_ms <= SLO_MS)
            .count();
        let n = pp.len().max(1) as f64;
        let [rps, error_rate, p50, p95, p99] = views[m];
        rows.push(format!(
            "{},{group},{},{},{:.3},{m},{rps:.2},{error_rate:.4},{p50:.3},{p95:.3},{p99:.3},{:.3},{max_err:.4},{up},{},{},{},{},{},{},{},{:.2},{:.4},{:.4},{:.3}",
            p.id,
            p.segment,
            p.fault.name(),
            p.fault.intensity(),
            rps * p50 / 1e3,
            p.http2_max_requests,
            p.http1_max_pending,
            p.max_retries,
            p.consecutive_5xx,
            p.timeout_ms,
            p.retry_attempts,
            p.per_try_timeout_ms,
            percentile(&ms, 99.0),
            failed as f64 / n,
            good as f64 / n,
            (cpu1.saturating_sub(*cpu0)) as f64 / 1e6 / secs,
        ));
    }
    Ok(rows)
}

/// Runs every point not yet in `o.out`, appending its rows; `progress`
/// hears each point as it starts.
pub async fn sweep(
    o: &SweepOptions,
    progress: impl Fn(usize, usize, &Point),
) -> anyhow::Result<usize> {
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let done = done_points(&o.out);
    if !o.out.exists() {
        std::fs::write(&o.out, HEADER)?;
    }
    let todo: Vec<Point> = design(o)
        .into_iter()
        .filter(|p| !done.contains(&p.id))
        .collect();
    let total = todo.len();
    for (i, p) in todo.iter().enumerate() {
        progress(i, total, p);
        let rows = run_point(p, o).await?;
        let mut f = std::fs::OpenOptions::new().append(true).open(&o.out)?;
        for r in rows {
            writeln!(f, "{r}")?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stratum_of_every_dimension_holds_one_point() {
        let n = 17;
        let pts = latin_hypercube(n, 5, 7);
        for d in 0..5 {
            let mut strata: Vec<usize> = pts.iter().map(|p| (p[d] * n as f64) as usize).collect();
            strata.sort_unstable();
            assert_eq!(strata, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(pts, latin_hypercube(n, 5, 7), "seeded");
        assert_ne!(pts, latin_hypercube(n, 5, 8));
    }

    #[test]
    fn the_design_covers_every_fault_and_the_objects_parse() {
        let o = SweepOptions {
            points: 40,
            seed: 1,
            minutes: 3,
            seconds_per_minute: 3.0,
            trace: PathBuf::new(),
            segments: vec![80_000, 80_500],
            out: PathBuf::new(),
        };
        let d = design(&o);
        for kind in ["none", "errors", "slow", "down"] {
            assert!(d.iter().any(|p| p.fault.name() == kind), "{kind}");
        }
        for p in &d {
            let docs: Vec<serde_json::Value> =
                serde_yaml_ng::Deserializer::from_str(&istio_objects(p))
                    .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
                    .collect();
            assert_eq!(docs.len(), 2);
            assert_eq!(
                docs[0]["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"],
                p.http2_max_requests
            );
        }
    }

    #[test]
    fn a_resumed_sweep_skips_the_points_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.csv");
        std::fs::write(&f, format!("{HEADER}3,a\n3,a\n5,b\n")).unwrap();
        assert_eq!(done_points(&f), BTreeSet::from([3, 5]));
    }
}
