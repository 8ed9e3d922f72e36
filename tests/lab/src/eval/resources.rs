//! The eval's resource arms. All three run meshtune's data path and its
//! configuration tuning, so only how each replica's CPU is sized differs:
//!
//! - `static-resources`: what a Deployment usually declares: twice the
//!   most the replica used in any second of an unlimited calibration run
//!   (2 × peak; `--static-headroom` sets the factor), fixed;
//! - `vpa-like`: Kubernetes VPA's recommender target, the 90th percentile
//!   of the replica's per-second usage plus 15 %, recomputed every trace
//!   minute from everything seen so far (calibration and the run itself),
//!   SLO-blind;
//! - `meshtune-resources`: deployed as `static-resources`, then the agent
//!   measures, plans and writes each service's Deployment resources, which
//!   the lab's control plane puts on the replicas' cgroups.
//!
//! Each is judged by the CPU it was allocated (quota × time), the CPU it
//! used, its violating chain-windows and Jain's index over the chains'
//! attainment.

use crate::eval::verdict::{percentile, ChainWindow};
use crate::mesh::Mesh;
use std::collections::BTreeMap;

/// The least quota a replica is given by any policy (VPA's own floor is
/// 25 millicores; below a few the CFS period alone stalls requests).
pub const MIN_CORES: f64 = 0.025;

/// Per replica, its CPU (cores) in each second of a run.
pub type Usage = BTreeMap<String, Vec<f64>>;

/// The headroom a Deployment's declared CPU usually has over its peak.
pub const STATIC_HEADROOM: f64 = 2.0;

/// `static-resources`: `headroom` × the busiest second, per replica.
pub fn static_limits(usage: &Usage, headroom: f64) -> BTreeMap<String, f64> {
    usage
        .iter()
        .map(|(r, v)| {
            (
                r.clone(),
                (headroom * percentile_of(v, 100.0)).max(MIN_CORES),
            )
        })
        .collect()
}

/// `vpa-like`: p90 of the per-second usage + 15 %, per replica.
pub fn vpa_limits(usage: &Usage) -> BTreeMap<String, f64> {
    usage
        .iter()
        .map(|(r, v)| (r.clone(), (1.15 * percentile_of(v, 90.0)).max(MIN_CORES)))
        .collect()
}

fn percentile_of(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, p)
}

/// Puts `limits` on the replicas (by replica name).
pub fn apply(mesh: &mut Mesh, limits: &BTreeMap<String, f64>) -> anyhow::Result<()> {
    for (replica, cores) in limits {
        if let Some(r) = mesh.replicas.get_mut(replica) {
            r.limit_cpu(Some(*cores))?;
        }
    }
    Ok(())
}

/// Follows each replica's CPU second by second: what it used, and the
/// quota it had (allocated; an unlimited replica counts the machine's
/// cores).
#[derive(Debug, Default)]
pub struct Meter {
    last: BTreeMap<String, f64>,
    pub usage: Usage,
    pub allocated_cpu_s: f64,
}

impl Meter {
    /// One reading, `dt` seconds after the previous one.
    pub fn tick(&mut self, mesh: &Mesh, dt: f64) {
        let machine = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        for (name, r) in &mesh.replicas {
            let Some(now) = r.cpu_seconds() else {
                continue;
            };
            if let Some(prev) = self.last.insert(name.clone(), now) {
                // A restarted replica's counter starts again.
                let used = if now >= prev { now - prev } else { now };
                self.usage
                    .entry(name.clone())
                    .or_default()
                    .push(used / dt.max(1e-3));
            }
            self.allocated_cpu_s += r.cpu_limit().unwrap_or(machine) * dt;
        }
    }
}

/// Jain's index over the chains' attainment in `windows`.
pub fn fairness(windows: &[ChainWindow]) -> f64 {
    let mut per_chain: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for w in windows {
        let e = per_chain.entry(w.chain.as_str()).or_default();
        e.0 += w.requests;
        e.1 += w.good;
    }
    let attainment: Vec<f64> = per_chain
        .values()
        .map(|(n, g)| {
            meshtune_agent::data::attainment::attainment(*n as u64, *g as u64).unwrap_or(0.0)
        })
        .collect();
    meshtune_agent::plan::resources::jain(&attainment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_is_twice_the_peak_and_vpa_the_p90_plus_15_percent() {
        let usage: Usage = [(
            "ratings".to_string(),
            (1..=10).map(|i| i as f64 / 100.0).collect(),
        )]
        .into();
        assert!((static_limits(&usage, STATIC_HEADROOM)["ratings"] - 0.2).abs() < 1e-9);
        // A tighter headroom scales the peak, not the floor.
        assert!((static_limits(&usage, 1.4)["ratings"] - 0.14).abs() < 1e-9);
        assert!((vpa_limits(&usage)["ratings"] - 1.15 * 0.09).abs() < 1e-9);
        let idle: Usage = [("details".to_string(), vec![0.0; 5])].into();
        assert_eq!(static_limits(&idle, STATIC_HEADROOM)["details"], MIN_CORES);
    }
}
